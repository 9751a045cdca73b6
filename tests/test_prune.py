"""LPLD pruning: a pruned file keeps whole epochs, maps them to recipe epochs, and still replays exactly."""
import os

import numpy as np
import pytest
import torch

import slc
from slc import SoftLabelDataset
from slc.format.container import FLAG_REQUIRED
from slc.errors import SlcInputError
from slc.format.sections import EPOCHS_MAP
from slc.prune import kept_epochs
from slc.models import load_teacher
from tests.conftest import run_slc, synthetic_logits
from tests.test_encode import ROOT, enc, folder, teacher  # noqa: F401 (fixtures)

GOLDEN = os.path.join(ROOT, "tests", "golden")


def test_kept_epochs_are_seeded_sorted_and_bounded():
    a = kept_epochs(300, 40, seed=3)
    assert len(a) == 8 and (np.diff(a) > 0).all() and a.max() < 300
    assert np.array_equal(a, kept_epochs(300, 40, seed=3)) and not np.array_equal(a, kept_epochs(300, 40, seed=4))
    with pytest.raises(SlcInputError, match="nearest reachable is 4x"):
        kept_epochs(4, 10)


def test_pruned_file_decodes_the_kept_epochs(tmp_path):
    z = synthetic_logits(epochs=8, samples=50, classes=12)
    r = slc.compress(z, tmp_path / "p.slc", codec="fp32", prune=4, source="logits", temperature=2.0)
    with slc.open_slc(tmp_path / "p.slc") as f:
        ids = f.epoch_ids
        assert f.shape == (2, 50, 12) and len(ids) == 2
        assert f.layout.sections[EPOCHS_MAP].flags & FLAG_REQUIRED  # a reader that cannot map epochs must refuse
        want = torch.softmax(torch.from_numpy(z[ids]) / 2.0, -1).numpy()
        np.testing.assert_allclose(np.stack([f.decode(e) for e in range(2)]), want, rtol=1e-5, atol=1e-7)
    assert r.dense_fp16 == 8 * 50 * 12 * 2  # the ratio counts against every epoch of the input
    # pruning a pruned file composes the maps
    slc.compress(tmp_path / "p.slc", tmp_path / "pp.slc", codec="fp16", prune=2)
    with slc.open_slc(tmp_path / "pp.slc") as f:
        assert f.shape[0] == 1 and f.epoch_ids[0] in ids


def test_pruned_encode_file_replays_the_teachers_crops(tmp_path, teacher, folder):  # noqa: F811
    full, pruned = tmp_path / "l.slc", tmp_path / "p.slc"
    enc(teacher, folder, full)  # 3 epochs, fp32, crops replayed from the seed
    run_slc("compress", full, "-o", pruned, "--prune", "3", "--codec", "fp32", "-q", check=True)
    ds = SoftLabelDataset(pruned, folder)
    assert ds.epochs == 1 and len(ds) == 40
    (kept,) = slc.open_slc(pruned).epoch_ids
    x = torch.stack([ds[i][0] for i in range(40)])
    with torch.no_grad():
        want = torch.softmax(load_teacher(str(teacher))(x), -1)
    torch.testing.assert_close(torch.stack([ds[i][1] for i in range(40)]), want, atol=1e-6, rtol=1e-5)
    orig = SoftLabelDataset(full, folder)
    torch.testing.assert_close(x[:5], torch.stack([orig[kept * 40 + i][0] for i in range(5)]))


def test_pruned_stored_boxes_and_mixing_follow_their_epoch(tmp_path):
    src = os.path.join(GOLDEN, "v1.1-replay.slc")  # stored boxes, cutmix, 2 epochs x 12 images
    images = os.path.join(GOLDEN, "v1.1-images.npy")
    for seed in (0, 1, 2, 3):
        out = tmp_path / f"p{seed}.slc"
        slc.compress(src, out, codec="fp16", prune=2, seed=seed)
        with slc.open_slc(out) as f:
            f.verify()
            (kept,) = f.epoch_ids
        a, b = SoftLabelDataset(out, images), SoftLabelDataset(src, images)
        for i in range(12):
            torch.testing.assert_close(a[i][0], b[kept * 12 + i][0])
        if kept == 1:
            break
    assert kept == 1  # some seed kept the second epoch, so the boxes were taken from the right place


def test_large_box_sections_are_cut_by_epoch_from_any_part_sizes():
    from slc.extras import _epochs_of

    data = bytes(range(256)) * 3  # 6 "epochs" of 128 bytes
    for part in (1, 7, 128, 500, 10_000):
        parts = [data[i:i + part] for i in range(0, len(data), part)]
        got = b"".join(_epochs_of(iter(parts), 128, np.array([1, 4, 5])))
        assert got == data[128:256] + data[512:768]


def test_lpld_sampler_draws_whole_stored_batches_at_random():
    from slc.vision.dataset import BatchPoolSampler

    class Stored:  # 3 stored epochs of 10 positions
        epochs = 3

        def __len__(self):
            return 30

    s = BatchPoolSampler(Stored(), batch_size=4, seed=1)
    first = list(s)
    assert len(first) == len(s) == 3  # as many batches as one stored epoch has
    for b in first:  # a run of positions inside one stored epoch
        assert b == list(range(b[0], b[0] + len(b))) and b[0] // 10 == b[-1] // 10
    assert list(s) == first  # seeded: a resumed run draws the same
    draws = []
    for epoch in range(8):
        s.set_epoch(epoch)
        draws.append([b[0] for b in s])
    assert len({tuple(d) for d in draws}) > 1 and len({b // 10 for d in draws for b in d}) == 3

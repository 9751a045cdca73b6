"""``slc encode``: a real (tiny) teacher over real image files, replay, resume and bad input.

The real-teacher check (EfficientNet-Lite0) is in test_example.py; these use a small TorchScript
CNN so every case runs in seconds.
"""
import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
from PIL import Image

import slc
from slc.codecs.vqae import FitConfig
from slc.format.replay import Recipe
from slc.vision.dataset import EpochSampler, SoftLabelDataset
from slc.vision.encode import encode
from slc.models import load_teacher
from tests.conftest import kill_until_done, run_slc
from tests.test_cli import one_line_error

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SUBSET = os.path.join(ROOT, "slc", "bench", "data", "fmnist_subset.npz")
SMALL = ["--size", "32", "--batch-size", "16", "--mean", "0.5,0.5,0.5", "--std", "0.5,0.5,0.5"]


class Tiny(torch.nn.Module):
    def __init__(self, classes: int = 30):
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 8, 3, stride=2)
        self.fc = torch.nn.Linear(8, classes)

    def forward(self, x):
        return self.fc(torch.relu(self.conv(x)).mean((2, 3))) * 3.0


class Shifty(Tiny):
    """A broken teacher: one more output on batches of 16."""

    def forward(self, x):
        y = self.fc(torch.relu(self.conv(x)).mean((2, 3)))
        return y if x.shape[0] != 16 else torch.cat([y, y[:, :1]], 1)


def script(model, path):
    torch.manual_seed(0)
    torch.jit.save(torch.jit.script(model), str(path))
    return path


@pytest.fixture(scope="module")
def teacher(tmp_path_factory):
    torch.manual_seed(0)
    return script(Tiny(), tmp_path_factory.mktemp("t") / "tiny.pt")


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    """An ImageFolder tree of real PNG/JPEG files: 2 classes, 40 images of mixed sizes and modes."""
    root = tmp_path_factory.mktemp("imgs") / "train"
    rng = np.random.default_rng(0)
    for c, cls in enumerate(("coat", "shirt")):
        (root / cls).mkdir(parents=True)
        for i in range(20):
            h, w = int(rng.integers(20, 60)), int(rng.integers(20, 60))
            px = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
            ext = ".png" if i % 3 else ".jpg"
            Image.fromarray(px).save(root / cls / f"{i:03d}{ext}")
    return root


def enc(teacher_path, images, out, *extra, check=True):
    return run_slc("encode", teacher_path, images, "-o", out, "--epochs", "3", *SMALL, "--codec", "fp32", "-q",
                   *extra, check=check)


def test_replayed_crops_give_the_teachers_labels(tmp_path, teacher, folder):
    out = tmp_path / "l.slc"
    enc(teacher, folder, out, "--chunk-size", "24")
    ds = SoftLabelDataset(out, folder, target=True)
    assert len(ds) == 3 * 40 and ds.classes == 30 and ds.epochs == 3
    model = load_teacher(str(teacher))
    sampler = EpochSampler(ds, epoch=4)  # epoch 4 of training replays stored epoch 1
    items = list(sampler)
    assert items == list(range(40, 80))
    x = torch.stack([ds[i][0] for i in items])
    labels = torch.stack([ds[i][1] for i in items])
    with torch.no_grad():
        want = torch.softmax(model(x), -1)
    torch.testing.assert_close(labels, want, atol=1e-6, rtol=1e-5)  # fp32 codec: exact up to float rounding
    targets = {ds[i][2] for i in items}
    assert targets == {0, 1}
    # every image once per epoch, in a shuffled order that differs between epochs
    seen = [ds.crops.image_index(i) for i in range(40)]
    assert sorted(seen) == list(range(40)) and seen != list(range(40))
    assert seen != [ds.crops.image_index(i) for i in range(40, 80)]


def test_same_seed_same_bytes_across_worker_counts(tmp_path, teacher):
    a, b, c = tmp_path / "a.slc", tmp_path / "b.slc", tmp_path / "c.slc"
    enc(teacher, SUBSET, a, "--codec", "topk", "--ratio", "3", "--workers", "0", "--invert")
    enc(teacher, SUBSET, b, "--codec", "topk", "--ratio", "3", "--workers", "2", "--invert")
    enc(teacher, SUBSET, c, "--codec", "topk", "--ratio", "3", "--workers", "0", "--invert", "--seed", "1")
    assert a.read_bytes() == b.read_bytes()
    assert a.read_bytes() != c.read_bytes()


def test_mixing_and_stored_boxes_replay(tmp_path, teacher, folder):
    out = tmp_path / "m.slc"
    enc(teacher, folder, out, "--mix", "cutmix", "--mix-group", "8", "--store-boxes", "--chunk-size", "16")
    info = json.loads(run_slc("inspect", out, "--json", check=True).stdout)
    rows = {r["section"]: r["bytes"] for r in info["sections"]}
    assert rows["crops.boxes"] == 3 * 40 * 10  # FKD-style stored boxes cost 10 bytes per label
    assert rows["images.fp"] == 40 * 16
    ds = SoftLabelDataset(out, folder)
    assert ds.crops._boxes is not None  # read from the file, not recomputed
    model = load_teacher(str(teacher))
    x = torch.stack([ds[i][0] for i in range(45, 60)])
    with torch.no_grad():
        want = torch.softmax(model(x), -1)
    torch.testing.assert_close(torch.stack([ds[i][1] for i in range(45, 60)]), want, atol=1e-6, rtol=1e-5)
    # stored boxes are the ones the seed gives
    replay = SoftLabelDataset(out, folder)
    replay.crops._boxes = None
    torch.testing.assert_close(replay[50][0], ds[50][0], atol=0, rtol=0)


def test_api_encode_fit_on_random_and_vqae(tmp_path):
    torch.manual_seed(1)
    model = Tiny(40).eval()
    r = Recipe(seed=3, size=32, mean=(0.5,) * 3, std=(0.5,) * 3, invert=True)
    res = encode(model, SUBSET, tmp_path / "v.slc", recipe=r, epochs=4, batch_size=50, codec="vqae", ratio=4,
                 temperature=4.0, fit_on="random", fit_labels=600, fit_config=FitConfig(steps=30),
                 chunk_size=250)
    assert res.codec == "vqae" and res.ratio >= 3.5
    with slc.open_slc(tmp_path / "v.slc") as f:
        assert f.shape == (4, 500, 40) and f.temperature == 4.0
        f.verify()


def test_sigkill_then_resume_is_byte_identical(tmp_path, teacher):
    # a VQAE: its encoder is not in the file, so resuming must keep it beside the partial file
    args = ["encode", teacher, SUBSET, "--epochs", "8", *SMALL, "--codec", "vqae", "--fit-steps", "30",
            "--fit-labels", "1000", "--ratio", "3", "--chunk-size", "250", "--invert", "-q"]
    whole = tmp_path / "whole.slc"
    t0 = time.monotonic()
    run_slc(*args, "-o", whole, check=True)
    duration = time.monotonic() - t0
    rng = np.random.default_rng(0)
    kills = [kill_until_done(args, tmp_path / f"r{trial}.slc", whole.read_bytes(), rng, duration, max_chunks=4)
             for trial in range(2)]
    assert sum(map(len, kills)) >= 2, kills
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r0.slc", "r1.slc", "whole.slc"]


def test_sigterm_keeps_a_resumable_partial(tmp_path, teacher):
    out = tmp_path / "t.slc"
    args = ["encode", teacher, SUBSET, "-o", out, "--epochs", "12", *SMALL, "--codec", "fp16", "--chunk-size", "100"]
    p = subprocess.Popen([sys.executable, "-m", "slc", *map(str, args)], stderr=subprocess.PIPE)
    journal = tmp_path / "t.slc.journal"
    while p.poll() is None and not (journal.exists() and journal.stat().st_size > 300):
        time.sleep(0.02)
    p.send_signal(signal.SIGTERM)
    err = p.communicate()[1].decode()
    assert p.returncode == 130 and "Traceback" not in err
    assert "rerun the same command with --resume" in err.strip().splitlines()[-1]
    assert not out.exists() and (tmp_path / "t.slc.partial").exists()
    one_line_error(run_slc(*args, "-q"), "pass --resume to continue it or --force to start over")
    one_line_error(run_slc(*args, "--resume", "--seed", "7", "-q"), "recipe.seed (0 then, 7 now)")
    run_slc(*args, "--resume", "-q", check=True)
    assert run_slc("verify", out).returncode == 0


def test_bad_images_named_and_skippable(tmp_path, teacher, folder):
    import shutil

    bad = tmp_path / "imgs"
    shutil.copytree(folder, bad)
    data = (bad / "coat" / "004.png").read_bytes()
    (bad / "coat" / "004.png").write_bytes(data[: len(data) // 2])
    one_line_error(enc(teacher, bad, tmp_path / "x.slc", check=False), "coat/004.png")
    assert not (tmp_path / "x.slc").exists()
    p = enc(teacher, bad, tmp_path / "x.slc", "--skip-bad", check=False)
    assert p.returncode == 0
    with slc.open_slc(tmp_path / "x.slc") as f:
        assert f.shape[1] == 39


def test_bad_input_is_one_line_and_leaves_nothing(tmp_path, teacher, folder):
    out = tmp_path / "o.slc"
    (tmp_path / "empty").mkdir()
    one_line_error(enc(teacher, tmp_path / "empty", out, check=False), "expected images in")
    one_line_error(enc(tmp_path / "nope.pt", folder, out, check=False), "no such file")
    torch.manual_seed(0)
    torch.save(Tiny(), tmp_path / "pickled.pt")
    one_line_error(enc(tmp_path / "pickled.pt", folder, out, check=False), "--trust-pickle")
    shifty = script(Shifty(), tmp_path / "shifty.pt")
    one_line_error(enc(shifty, folder, out, check=False), "output width to stay 30, got 31")
    one_line_error(enc(teacher, folder, out, "--mean", "0.5", check=False), "expected 3 numbers")
    one_line_error(enc(teacher, folder, out, "--device", "cuda:7", check=False), "cuda")
    assert sorted(os.listdir(tmp_path)) == ["empty", "pickled.pt", "shifty.pt"]  # no partial output anywhere
    # labels-only files cannot be replayed
    np.save(tmp_path / "z.npy", np.random.default_rng(0).normal(size=(40, 30)).astype(np.float32))
    run_slc("compress", tmp_path / "z.npy", "-o", tmp_path / "z.slc", "--codec", "fp16", "-q", check=True)
    with pytest.raises(slc.SlcInputError, match="made by `slc encode`"):
        SoftLabelDataset(tmp_path / "z.slc", folder)


def test_student_side_refuses_other_images(tmp_path, teacher, folder):
    import shutil

    out = tmp_path / "l.slc"
    enc(teacher, folder, out)
    other = tmp_path / "other"
    shutil.copytree(folder, other)
    Image.fromarray(np.zeros((30, 30, 3), np.uint8)).save(other / "shirt" / "007.png")
    with pytest.raises(slc.SlcInputError, match="shirt/007.png"):
        SoftLabelDataset(out, other)
    with pytest.raises(slc.SlcInputError, match="expected 40 images"):
        SoftLabelDataset(out, SUBSET)


def test_golden_v1_1_replay_file():
    """Pinned bytes of format 1.1: labels, recipe, fingerprints and stored boxes keep reading the same."""
    from slc.vision.augment import crop_boxes, epoch_order
    from slc.vision.dataset import read_replay
    from slc.format.sections import BOXES

    golden = os.path.join(ROOT, "tests", "golden")
    path = os.path.join(golden, "v1.1-replay.slc")
    with slc.open_slc(path) as f:
        f.verify()
        assert (f.layout.major, f.layout.minor) == (1, 1) and f.shape == (2, 12, 10)
        got = np.stack([f.decode(e) for e in range(2)])
        info = read_replay(f)
        stored = np.frombuffer(f.section_range(BOXES, 0, 2 * 12 * 10), "u1").copy()
    np.testing.assert_array_equal(got, np.load(os.path.join(golden, "v1.1-replay.expected.npy")))
    r = info.recipe
    assert (r.seed, r.size, r.mix, r.mix_group, r.boxes, r.invert) == (7, 16, "cutmix", 4, "stored", True)
    # the stored boxes are exactly what the seed gives: the RNG and box rules are pinned by this file
    sizes = np.full((12, 2), 28)
    fresh = b"".join(crop_boxes(r, e, epoch_order(r, e, 12), sizes).tobytes() for e in range(2))
    assert fresh == stored.tobytes()
    ds = SoftLabelDataset(path, os.path.join(golden, "v1.1-images.npy"))
    assert len(ds) == 24 and ds[23][0].shape == (3, 16, 16)

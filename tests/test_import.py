"""``slc import`` of SRe2L/CDA, LPLD, LPQLD and HALD folders: labels, crops, and hostile input.

The folders are written by ``tests/import_fixtures/sre2l.py`` with the structure each project's
code writes (commits named there); images are a small real-file ImageFolder of PNGs.
"""
import os
import pickle

import numpy as np
import pytest
import torch
from PIL import Image

import slc
from conftest import run_slc
from import_fixtures.sre2l import write_batches, write_images
from slc.errors import SlcInputError
from slc.format.replay import IMAGENET_MEAN, IMAGENET_STD
from slc.vision.augment import box_array

SIZE = 32
FORMATS = ["sre2l", "lpld", "lpqld", "hald"]


@pytest.fixture(scope="module")
def made(tmp_path_factory):
    """Every format's folder over the same 20 images, and its import with --codec fp32."""
    root = tmp_path_factory.mktemp("imports")
    images = str(root / "images")
    sizes = write_images(images, 20)
    out = {}
    for fmt in FORMATS:
        truth = write_batches(str(root / fmt), fmt, sizes, epochs=3, batch=8, classes=10, size=SIZE,
                              mix="mixup" if fmt == "lpld" else "cutmix")
        dst = str(root / f"{fmt}.slc")
        r = run_slc("import", "auto", str(root / fmt), "--images", images, "--size", str(SIZE), "--classes", "10",
                    "-o", dst, "--codec", "fp32", "-q")
        assert r.returncode == 0, r.stderr
        out[fmt] = (truth, dst)
    return root, images, sizes, out


def softmax(x, T):
    z = torch.as_tensor(x, dtype=torch.float32) / T
    return torch.softmax(z, -1).numpy()


@pytest.mark.parametrize("fmt", FORMATS)
def test_labels_read_back_as_their_trainer_makes_them(made, fmt):
    _, _, _, out = made
    truth, path = out[fmt]
    with slc.open_slc(path) as f:
        assert f.temperature == 20 and f.header.user["import"]["format"] == fmt
        for e, labels in enumerate(truth["labels"]):
            got = f.decode(e)
            if fmt in ("sre2l", "lpld"):  # stored logits: their target is softmax(z / 20)
                want = softmax(np.concatenate(labels), 20)
                np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-7)
            elif fmt == "lpqld":  # MR-k: softmax over the k stored logits at T, zero elsewhere
                want = np.zeros_like(got)
                rows = 0
                for values, idx in labels:
                    p = softmax(values, 20)
                    np.put_along_axis(want[rows:rows + len(p)], idx.astype(np.int64), p, 1)
                    rows += len(p)
                np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-7)
            else:  # fp16 probabilities at T=20; their rows sum to 1 only to fp16 precision, the file's exactly
                want = np.concatenate(labels)
                np.testing.assert_allclose(got, want / want.sum(1, keepdims=True), rtol=1e-5, atol=1e-7)
                np.testing.assert_allclose(got, want, rtol=2e-3)


@pytest.mark.parametrize("fmt", FORMATS)
def test_crops_are_the_boxes_their_trainer_cuts(made, fmt):
    """Order and boxes pixel-exact: PIL's rounding of the float box (SRe2L, LPLD, LPQLD), int() (HALD)."""
    root, images, sizes, out = made
    truth, path = out[fmt]
    ds = slc.SoftLabelDataset(path, images)
    files = truth["files"]
    for e, order in enumerate(truth["images"]):
        got_order, boxes = ds.crops.epoch_plan(e)
        assert got_order.tolist() == order
        got = box_array(boxes)
        for p in range(len(order)):
            if fmt != "hald":
                assert tuple(got[p]) == truth["boxes"][(e, p)]
        if fmt == "hald":  # their trainer: int(fp16 ratio * size), each of top, left, height, width
            batches = torch.load(os.path.join(root, fmt, f"epoch_{e}.tar"), weights_only=False)
            coords = torch.cat([b[0] for b in batches]).double().numpy()
            H, W = sizes[order, 0], sizes[order, 1]
            want = np.stack([(coords[:, 0] * H).astype(int), (coords[:, 1] * W).astype(int),
                             (coords[:, 2] * H).astype(int), (coords[:, 3] * W).astype(int)], 1)
            np.testing.assert_array_equal(got[:, :4], want)
    assert files or fmt == "hald"


def their_crop(path: str, box, flip: bool) -> torch.Tensor:
    """SRe2L's replay on a PIL image: resized_crop (PIL crop of the box, PIL bilinear resize), hflip,
    ToTensor, Normalize (ImageNet)."""
    y, x, h, w = box
    img = Image.open(path).convert("RGB").crop((x, y, x + w, y + h)).resize((SIZE, SIZE), Image.BILINEAR)
    if flip:
        img = img.transpose(Image.FLIP_LEFT_RIGHT)
    t = torch.from_numpy(np.asarray(img, np.float32) / 255).permute(2, 0, 1)
    return (t - torch.tensor(IMAGENET_MEAN)[:, None, None]) / torch.tensor(IMAGENET_STD)[:, None, None]


@pytest.mark.parametrize("fmt", ["sre2l", "lpld"])
def test_replayed_crops_match_their_pipeline_within_resampling(made, fmt):
    """The student's input equals SRe2L's (crop, resize, flip, normalise, then the batch's cutmix/mixup) up to
    the resampler's rounding: Pillow resizes to uint8 pixels, slc keeps floats (antialiased bilinear in both):
    measured at most 0.0175 in normalised units (1/255 of a pixel value), 0.005 on average."""
    _, images, _, out = made
    truth, path = out[fmt]
    ds = slc.SoftLabelDataset(path, images)
    names = ds.crops.images.names
    worst, mean = 0.0, []
    for e in range(2):
        order, _ = ds.crops.epoch_plan(e)
        own = [their_crop(os.path.join(images, names[order[p]]), truth["boxes"][(e, p)][:4],
                          bool(truth["boxes"][(e, p)][4])) for p in range(len(order))]
        for b0 in range(0, len(order), 8):
            batch = torch.load(truth["files"][e * 3 + b0 // 8], weights_only=False)
            index, lam, bbox = batch[2], batch[3], batch[4]
            x = torch.stack(own[b0:b0 + 8])
            if bbox is not None:
                x1, y1, x2, y2 = (int(v) for v in bbox)
                x[:, :, x1:x2, y1:y2] = x[index, :, x1:x2, y1:y2]
            else:
                x = lam * x + (1 - lam) * x[index]
            for r in range(len(x)):
                d = (ds[e * len(order) + b0 + r][0] - x[r]).abs()
                worst, mean = max(worst, float(d.max())), mean + [float(d.mean())]
    assert worst < 0.025 and np.mean(mean) < 0.008, (worst, np.mean(mean))


def test_sampler_replay_is_their_dataloader(tmp_path):
    """SRe2L stores no image indices: the order is their RandomSampler (generator seeded 42), replayed."""
    from import_fixtures.sre2l import batch_orders
    from slc.interop.batches import sampler_orders

    for n, b in ((20, 8), (37, 5)):
        theirs = batch_orders(n, b, 4)
        ours = sampler_orders(n, 4, 42)
        assert [sum(bs, []) for bs in theirs] == [o.tolist() for o in ours]


def test_inspect_says_what_was_imported(made):
    _, _, _, out = made
    r = run_slc("inspect", out["lpqld"][1], check=True)
    text = " ".join(r.stdout.decode().split())
    assert "imported from lpqld" in text and "topk 3" in text and "bytes on disk before" in text
    assert "every label's image, box and flip and mix stored" in text


def test_import_without_images_keeps_labels_and_says_so(made, tmp_path):
    root, _, _, _ = made
    r = run_slc("import", "sre2l", str(root / "sre2l"), "-o", str(tmp_path / "x.slc"), "--codec", "fp16")
    assert r.returncode == 0, r.stderr
    err = r.stderr.decode()
    assert "crops: not kept" in err and "T=20" in err
    with slc.open_slc(tmp_path / "x.slc") as f:
        assert f.shape == (3, 20, 10) and "replay" not in f.layout.sections


# ---------------------------------------------------------------- hostile input
class _Payload:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


def _copy(root, fmt, dst):
    import shutil

    shutil.copytree(root / fmt, dst)
    return dst


def _refused(args, out, needle):
    os.makedirs(os.path.dirname(out), exist_ok=True)
    r = run_slc("import", *args, "-o", str(out), "-q")
    r.stderr = r.stderr.decode()
    assert r.returncode == 1, r.stderr
    assert len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert needle in r.stderr, r.stderr
    assert not os.path.exists(out) and not [p for p in os.listdir(os.path.dirname(out)) if p.startswith(".")]
    return r.stderr


def test_hostile_folders_fail_with_one_line_and_leave_nothing(made, tmp_path):
    root, images, _, _ = made
    marker = tmp_path / "pwned"
    bad = _copy(root, "sre2l", tmp_path / "pickled")
    item = torch.load(bad / "epoch_1" / "batch_0.tar", weights_only=False)
    item[3] = _Payload(str(marker))
    torch.save(item, bad / "epoch_1" / "batch_0.tar")
    _refused(["sre2l", str(bad)], tmp_path / "out" / "a.slc", "will not unpickle")
    assert not marker.exists()  # no code ran

    cut = _copy(root, "sre2l", tmp_path / "truncated")
    data = (cut / "epoch_2" / "batch_1.tar").read_bytes()
    (cut / "epoch_2" / "batch_1.tar").write_bytes(data[:len(data) // 2])
    _refused(["sre2l", str(cut)], tmp_path / "out" / "b.slc", "batch_1.tar")

    other = _copy(root, "sre2l", tmp_path / "classes")
    item = torch.load(other / "epoch_1" / "batch_1.tar", weights_only=False)
    item[5] = torch.randn(len(item[5]), 12).half()
    torch.save(item, other / "epoch_1" / "batch_1.tar")
    _refused(["sre2l", str(other)], tmp_path / "out" / "c.slc", "expected 10 classes")

    gap = _copy(root, "sre2l", tmp_path / "gap")
    os.rename(gap / "epoch_1", gap / "epoch_9")
    _refused(["sre2l", str(gap)], tmp_path / "out" / "d.slc", "epoch_1")

    rows = _copy(root, "lpld", tmp_path / "rows")
    item = torch.load(rows / "epoch_0" / "batch_1.tar", weights_only=False)
    item = [item[0][:5], item[1][:5], item[2][:5], *item[3:5], item[5][:5]]
    torch.save(item, rows / "epoch_0" / "batch_1.tar")
    _refused(["lpld", str(rows), "--images", images, "--size", str(SIZE)], tmp_path / "out" / "e.slc", "rows")


def test_a_format_named_wrongly_is_refused(made, tmp_path):
    root, _, _, _ = made
    _refused(["hald", str(root / "sre2l")], tmp_path / "o" / "x.slc", "expected a hald folder")
    _refused(["lpqld", str(root / "lpqld")], tmp_path / "o" / "y.slc", "--classes")


def test_safe_load_refuses_code_and_reads_numpy(tmp_path):
    from slc.interop.safeload import load

    torch.save([np.zeros((2, 4), np.float16), [np.int64(3)], torch.ones(2, dtype=torch.bool)], tmp_path / "a.tar")
    a, b, c = load(tmp_path / "a.tar")
    assert a.dtype == np.float16 and int(b[0]) == 3 and c.dtype == torch.bool
    torch.save([np.array(["x", 1], dtype=object)], tmp_path / "b.tar")
    with pytest.raises(SlcInputError, match="b.tar"):
        load(tmp_path / "b.tar")
    pickle.dumps(0)


# ---------------------------------------------------------------- labels back to their trainers
def _same_batch(theirs: list, ours: list, T: float = 20.0) -> None:
    """Crop fields identical (values and types); logits equal up to a per-row constant, which softmax(z / T) drops."""
    assert torch.equal(theirs[0], ours[0]) and theirs[0].dtype == ours[0].dtype  # coords
    assert torch.equal(theirs[1], ours[1])  # flips
    assert (theirs[2] is None and ours[2] is None) or torch.equal(theirs[2], ours[2])
    assert theirs[3] == ours[3] and type(theirs[3]) is type(ours[3])
    assert (theirs[4] is None and ours[4] is None) or (
        [int(v) for v in theirs[4]] == [int(v) for v in ours[4]] and [type(v) for v in theirs[4]] == [type(v) for v in ours[4]])
    a, b = theirs[5].float(), ours[5].float()
    np.testing.assert_allclose((a - a.max(1, keepdim=True).values).numpy(), (b - b.max(1, keepdim=True).values).numpy(),
                               atol=1e-2)  # fp16 logits, written back in fp16
    np.testing.assert_allclose(torch.softmax(a / T, 1).numpy(), torch.softmax(b / T, 1).numpy(), atol=1e-4)


@pytest.mark.parametrize("fmt", ["sre2l", "lpld"])
def test_decode_layout_sre2l_writes_their_tars_back(made, tmp_path, fmt):
    root, images, _, out = made
    truth, path = out[fmt]
    dst = tmp_path / "back"
    r = run_slc("decode", path, "--layout", "sre2l", "--images", images, "-o", dst)
    assert r.returncode == 0, r.stderr
    assert sorted(os.listdir(dst)) == ["epoch_0", "epoch_1", "epoch_2", "sampler_indices_epoch.json"]
    for f in truth["files"]:
        rel = os.path.relpath(f, root / fmt)
        theirs, ours = torch.load(f, weights_only=False), torch.load(dst / rel, weights_only=False)
        assert ours[5].dtype == torch.float16
        _same_batch(theirs, ours)
    # and it imports again, as SRe2L order (sre2l) or through the index LPLD writes (both)
    again = tmp_path / "again.slc"
    r = run_slc("import", "auto", dst, "--images", images, "--size", str(SIZE), "-o", again, "--codec", "fp32", "-q")
    assert r.returncode == 0, r.stderr
    with slc.open_slc(path) as a, slc.open_slc(again) as b:
        np.testing.assert_allclose(a.decode(1), b.decode(1), atol=1e-4)
    assert run_slc("decode", path, "--layout", "sre2l", "--images", images, "-o", dst).returncode == 1  # no clobber


def test_compat_batches_are_their_loaders_batches(made):
    """SRe2LBatches yields what their patched DataLoader yields; mixing its images as their mix_aug does gives
    exactly the crops the labels were made on (slc's own replay)."""
    from slc.compat import SRe2LBatches

    _, images, _, out = made
    truth, path = out["sre2l"]
    batches = SRe2LBatches(path, images)
    ds = slc.SoftLabelDataset(path, images)
    assert len(batches) == 3
    for e in (0, 4):  # epoch 4 cycles to stored epoch 1
        for b, ((x, target, flip, coords), index, lam, bbox, soft) in enumerate(batches.loader(e)):
            theirs = torch.load(truth["files"][(e % 3) * 3 + b], weights_only=False)
            _same_batch(theirs, [coords, flip, index, lam, bbox, soft.half()])
            x1, y1, x2, y2 = (int(v) for v in bbox)
            x[:, :, x1:x2, y1:y2] = x[index, :, x1:x2, y1:y2]
            first = (e % 3) * 20 + b * 8
            for r in range(len(x)):
                assert torch.equal(x[r], ds[first + r][0])
            assert target.tolist() == [int(i) * 2 // 20 for i in truth["images"][e % 3][b * 8:b * 8 + 8]]


def test_decode_layout_of_an_encoded_file_says_which_trainer_reads_it(tmp_path):
    """A file `slc encode` made (seeded shuffle, cutmix groups of 4) exports too; its order is not SRe2L's sampler."""
    golden = os.path.join(os.path.dirname(__file__), "golden")
    dst = tmp_path / "out"
    r = run_slc("decode", os.path.join(golden, "v1.1-replay.slc"), "--layout", "sre2l", "--images",
                os.path.join(golden, "v1.1-images.npy"), "-o", dst)
    assert r.returncode == 0, r.stderr
    assert b"LPLD's trainer" in r.stderr
    first = torch.load(dst / "epoch_0" / "batch_0.tar", weights_only=False)
    assert first[2].tolist() == [2, 1, 3, 0] and [int(v) for v in first[4]] == [10, 0, 16, 5]  # the spec's example
    r = run_slc("decode", os.path.join(golden, "v1.1-replay.slc"), "--layout", "sre2l", "--images",
                os.path.join(golden, "v1.1-images.npy"), "--batch-size", "5", "-o", tmp_path / "x")
    assert r.returncode == 1 and b"--batch-size 4" in r.stderr and not (tmp_path / "x").exists()


def test_import_resumes_after_kills_to_the_same_bytes(made, tmp_path):
    """SIGKILL at random points, then --resume: the bytes of one uninterrupted import."""
    from conftest import kill_until_done

    root, images, _, _ = made
    args = ["import", "lpld", root / "lpld", "--images", images, "--size", SIZE, "--codec", "fp16", "--chunk-size", 4,
            "--epochs-per-chunk", 1, "-q"]
    whole = tmp_path / "whole.slc"
    run_slc(*args, "-o", whole, check=True)
    kills = kill_until_done(args, tmp_path / "resumed.slc", whole.read_bytes(), np.random.default_rng(0), 3.0,
                            max_chunks=4)
    assert kills


def test_train_student_trains_on_an_imported_folder(made, tmp_path):
    """`slc train-student` replays the imported crops (stored order, boxes and cutmix) end to end."""
    _, images, _, out = made
    r = run_slc("train-student", images, out["sre2l"][1], "-o", tmp_path / "run", "--epochs", "1", "--batch-size", "8")
    assert r.returncode == 0, r.stderr.decode()
    assert any(p.suffix == ".pt" for p in (tmp_path / "run").iterdir())


def test_a_pruned_lpld_run_that_stops_mid_epoch_imports_its_whole_epochs(made, tmp_path):
    """LPLD writes int(E x batches x (1 - ratio)) batches: the last epoch folder is partial and is left out, said so."""
    import json

    root, images, _, _ = made
    cut = _copy(root, "lpld", tmp_path / "pruned")
    os.remove(cut / "epoch_2" / "batch_2.tar")
    index = json.loads((cut / "sampler_indices_epoch.json").read_text())
    index["2"] = index["2"][:16]
    (cut / "sampler_indices_epoch.json").write_text(json.dumps(index))
    r = run_slc("import", "lpld", cut, "--images", images, "--size", SIZE, "-o", tmp_path / "p.slc", "--codec", "fp16")
    assert r.returncode == 0, r.stderr.decode()
    assert b"last epoch's 2 batches are left out" in r.stderr
    with slc.open_slc(tmp_path / "p.slc") as f:
        assert f.shape == (2, 20, 10)

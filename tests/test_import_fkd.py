"""``slc import fkd``: FKD's per-image ``.tar`` files (szq0214/FKD ``FKD_SLG``), labels, crops, hostile input.

The folders are written by ``tests/import_fixtures/fkd.py`` with the structure FKD's
``generate_soft_label.py`` writes (commit named there).
"""
import os

import numpy as np
import pytest
import torch

import slc
from conftest import run_slc
from import_fixtures.fkd import save_state, write_fkd
from slc.errors import SlcInputError
from slc.interop.crops import pixel_boxes
from slc.interop.fkd import open_fkd

CLASSES = 10


def image_list(n: int, classes: int = 3, seed: int = 1, big: int = 0) -> list[tuple[str, str, int, int]]:
    """``n`` images over ``classes`` folders, names out of order (the writer sorts them as ImageFolder does)."""
    rng = np.random.default_rng(seed)
    out = []
    for i in rng.permutation(n):
        h, w = (int(v) for v in rng.integers(20, 900, 2))
        if i < big:
            h, w = 3000 + int(rng.integers(0, 1000)), 2000 + int(rng.integers(0, 2000))
        out.append((f"n{int(i) % classes:08d}", f"n{int(i) % classes:08d}_{int(i)}.JPEG", h, w))
    return out


def read_all(imp) -> np.ndarray:
    e, n, _ = imp.labels.shape
    return np.stack([imp.labels.read(i, 0, n) for i in range(e)])


def epoch_crops(stream, e: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    parts = list(stream.epoch(e))
    return (np.concatenate([p.images for p in parts]), np.concatenate([p.coords for p in parts]),
            np.concatenate([p.flip for p in parts]))


@pytest.mark.parametrize("fp16", [False, True])
def test_labels_read_back_as_their_trainer_recovers_them(tmp_path, fp16):
    truth = write_fkd(str(tmp_path / "imagenet" / "train"), image_list(23), crops=7, classes=CLASSES, fp16=fp16)
    lines = []
    imp = open_fkd(str(tmp_path / "imagenet"), classes=CLASSES, log=lines.append)  # their --softlabel_path
    try:
        assert imp.labels.shape == (7, 23, CLASSES) and imp.labels.dtype == np.float32
        got = read_all(imp)
        assert got.dtype == np.float32
        # bit for bit theirs, but a remainder their trainer makes negative (fp16 top-k summing past 1) is 0
        np.testing.assert_array_equal(got, np.maximum(truth["labels"], 0))
        got_blocks = {(e, s): a for e, s, a in imp.labels.blocks(5)}
        np.testing.assert_array_equal(got_blocks[(3, 10)], truth["labels"][3, 10:15])
        assert imp.crops.names == truth["names"]
        s = imp.summary
        assert s == {"format": "fkd", "files": 23, "epochs": 7, "images": 23, "crops": 161,
                     "dtype": "float16" if fp16 else "float32", "classes": CLASSES, "topk": 5,
                     "bytes": sum(os.path.getsize(p) for p in truth["paths"])}
        assert (imp.format, imp.source, imp.temperature) == ("fkd", "probs", 1.0)
        assert imp.identity["files"] == 23 and imp.identity["bytes"] == s["bytes"]
        assert imp.identity["input"] == os.path.abspath(tmp_path / "imagenet")
    finally:
        imp.close()
    imp = open_fkd(str(tmp_path / "imagenet" / "train"), log=lines.append)  # the class folders directly
    assert imp.labels.shape == (7, 23, 1000) and any("1000 classes" in line for line in lines)
    imp.close()


def test_crops_are_the_boxes_their_trainer_cuts(tmp_path):
    """fp32 fractions: PIL's rounding of ``fraction * size`` gives back the generator's integer box exactly."""
    truth = write_fkd(str(tmp_path), image_list(30), crops=6, classes=CLASSES)
    imp = open_fkd(str(tmp_path), classes=CLASSES)
    stream = imp.crops
    assert (stream.rule, stream.mix, stream.batch, stream.epochs, stream.n) == ("round", "none", 0, 6, 30)
    for e in range(6):
        images, coords, flip = epoch_crops(stream, e)
        assert images.tolist() == list(range(30))
        np.testing.assert_array_equal(coords, truth["coords"][e].astype(np.float64))
        np.testing.assert_array_equal(flip, truth["flip"][e])
        boxes = pixel_boxes(coords, flip, truth["sizes"], "round")
        got = np.stack([boxes["y"], boxes["x"], boxes["h"], boxes["w"]], 1)
        np.testing.assert_array_equal(got, truth["boxes"][e])
        np.testing.assert_array_equal(boxes["flip"], truth["flip"][e])
    imp.close()


def test_fp16_crops_are_exact_below_1024_pixels_and_within_2_above(tmp_path):
    """fp16 keeps 11 significant bits: an edge at ``v`` pixels moves by at most ``v / 2048``, under half a
    pixel (exact after rounding) for sides below 1024; up to 2 pixels on 3000-4000 pixel images."""
    truth = write_fkd(str(tmp_path), image_list(40, big=8), crops=8, classes=CLASSES, fp16=True)
    imp = open_fkd(str(tmp_path), classes=CLASSES)
    small = truth["sizes"].max(1) < 1024
    worst = 0
    for e in range(8):
        _, coords, flip = epoch_crops(imp.crops, e)
        c = coords.copy()
        H, W = truth["sizes"][:, 0], truth["sizes"][:, 1]
        inside = np.round(c[:, 0] * H + c[:, 2] * H) <= H
        inside &= np.round(c[:, 1] * W + c[:, 3] * W) <= W
        ok = inside | small  # an edge rounded past the image is refused by pixel_boxes: checked separately
        boxes = pixel_boxes(c[ok], flip[ok], truth["sizes"][ok], "round")
        got = np.stack([boxes["y"], boxes["x"], boxes["h"], boxes["w"]], 1)
        want = truth["boxes"][e][ok]
        np.testing.assert_array_equal(got[small[ok]], want[small[ok]])
        worst = max(worst, int(np.abs(got - want).max()))
    assert worst <= 2
    imp.close()


def test_top_k_summing_past_one_leaves_no_negative_remainder(tmp_path):
    """A near-certain teacher: fp16 rounds the top-1 to 1.0 while the others stay positive. Their trainer's
    remainder ``(1 - sum) / (C - K)`` goes negative; slc's is 0 (probabilities must not be negative)."""
    from import_fixtures.fkd import recover_soft_label

    top = np.zeros((3, 2, 5), np.float16)
    top[:, 0] = np.arange(5)
    top[:, 1] = [0.99990, 2e-4, 1e-4, 5e-5, 1e-5]
    save_state(str(tmp_path / "c" / "a.tar"), [np.full((3, 4), 0.25, np.float16), np.zeros(3, bool), top])
    imp = open_fkd(str(tmp_path), classes=CLASSES)
    got = imp.labels.read(0, 0, 1)[0]
    theirs = recover_soft_label(top, CLASSES)[0]
    assert theirs[5:].max() < 0 and (got[5:] == 0).all() and (got[:5] == theirs[:5]).all()
    imp.close()


# ---------------------------------------------------------------- hostile input
class WritesMarker:
    """Unpickling this would create ``self.marker``: what a malicious label file could do."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return open, (self.marker, "w")


def refused(root, classes=CLASSES, **kw) -> str:
    """The one-line error of importing ``root`` (opening it and reading everything)."""
    with pytest.raises(SlcInputError) as err:
        imp = open_fkd(str(root), classes=classes, **kw)
        try:
            read_all(imp)
            epoch_crops(imp.crops, 0)
        finally:
            imp.close()
    msg = str(err.value)
    assert "\n" not in msg
    return msg


@pytest.fixture
def folder(tmp_path):
    root = tmp_path / "labels"
    return root, write_fkd(str(root), image_list(12), crops=5, classes=CLASSES)


@pytest.mark.parametrize("where", [0, 7])  # the first file (read by open_fkd) or a later one
def test_pickled_object_is_refused_without_running_it(folder, tmp_path, where):
    root, truth = folder
    marker = tmp_path / "pwned"
    good = torch.load(truth["paths"][where], weights_only=False)
    live = tmp_path / "live"
    save_state(str(live / "x.tar"), [good[0], good[1], WritesMarker(live / "ran")])
    torch.load(live / "x.tar", weights_only=False)  # the payload is live: a plain torch.load runs it
    assert (live / "ran").exists()
    save_state(truth["paths"][where], [good[0], good[1], WritesMarker(marker)])
    msg = refused(root)
    assert truth["paths"][where] in msg and "pickled object" in msg
    assert not marker.exists()
    save_state(truth["paths"][where], [good[0], good[1], np.array([WritesMarker(marker)], dtype=object)])
    msg = refused(root)
    assert truth["paths"][where] in msg
    assert not marker.exists()


def test_truncated_file_is_refused(folder):
    root, truth = folder
    path = truth["paths"][5]
    data = open(path, "rb").read()
    open(path, "wb").write(data[: len(data) // 2])
    msg = refused(root)
    assert path in msg and "unreadable" in msg


@pytest.mark.parametrize("change", ["crops", "k", "coords"])
def test_another_crop_count_or_k_is_refused(folder, change):
    root, truth = folder
    path = truth["paths"][9]
    coords, flip, labels = torch.load(path, weights_only=False)
    if change == "crops":
        state = [np.concatenate([coords, coords[:1]]), np.concatenate([flip, flip[:1]]),
                 np.concatenate([labels, labels[:1]])]
    elif change == "k":
        state = [coords, flip, labels[:, :, :4]]
    else:  # FKD with --num_crops not a multiple of --num_seg: fewer labels than crops
        state = [np.concatenate([coords, coords[:1]]), np.concatenate([flip, flip[:1]]), labels]
    save_state(path, state)
    msg = refused(root)
    assert path in msg and "expected" in msg


def test_class_index_past_classes_is_refused(folder):
    root, truth = folder
    path = truth["paths"][4]
    coords, flip, labels = torch.load(path, weights_only=False)
    labels[2, 0, 3] = 12.0
    save_state(path, [coords, flip, labels])
    msg = refused(root)
    assert path in msg and "class indices 0..9" in msg and "12" in msg
    msg = refused(root, classes=6)  # the fixture's top-5 of 10 classes reaches past 5 in the first file
    assert truth["paths"][0] in msg


@pytest.mark.parametrize("kind", ["hard", "smoothing"])
def test_other_label_types_are_refused(folder, kind):
    root, truth = folder
    path = truth["paths"][0]
    coords, flip, labels = torch.load(path, weights_only=False)
    top = labels[:, :, 0]
    save_state(path, [coords, flip, top[:, 0].astype(np.int64) if kind == "hard" else top])
    msg = refused(root)
    assert path in msg and f"--label_type {kind}" in msg


def test_no_label_files_is_refused(tmp_path):
    (tmp_path / "train" / "n0").mkdir(parents=True)
    assert str(tmp_path) in refused(tmp_path)


# ---------------------------------------------------------------- end to end
def test_slc_import_fkd_end_to_end(tmp_path):
    """``slc import fkd`` with the images: labels exact with --codec fp32, crops the generator's boxes."""
    from import_fixtures.sre2l import write_images
    from slc.vision.augment import box_array

    images = str(tmp_path / "images")
    sizes = write_images(images, 20)
    names = sorted(os.path.relpath(os.path.join(d, f), images) for d, _, fs in os.walk(images) for f in fs)
    listed = [(n.split("/")[0], n.split("/")[1], int(h), int(w)) for n, (h, w) in zip(names, sizes)]
    truth = write_fkd(str(tmp_path / "soft" / "train"), listed, crops=4, classes=CLASSES)
    out = str(tmp_path / "fkd.slc")
    r = run_slc("import", "fkd", str(tmp_path / "soft"), "--images", images, "--size", "32", "--classes",
                str(CLASSES), "-o", out, "--codec", "fp32", "-q")
    assert r.returncode == 0, r.stderr.decode()
    with slc.open_slc(out) as f:  # probabilities pass through log and exp on the way: within a few ulps
        assert f.temperature == 1.0 and f.header.user["import"]["format"] == "fkd"
        for e in range(4):
            np.testing.assert_allclose(f.decode(e), truth["labels"][e], rtol=1e-5, atol=0)
    ds = slc.SoftLabelDataset(out, images)
    for e in range(4):
        order, boxes = ds.crops.epoch_plan(e)
        assert order.tolist() == list(range(20))
        got = box_array(boxes)
        np.testing.assert_array_equal(got[:, :4], truth["boxes"][e])
        np.testing.assert_array_equal(got[:, 4].astype(bool), truth["flip"][e])
    r = run_slc("import", "auto", str(tmp_path / "soft"), "--classes", str(CLASSES), "-o", str(tmp_path / "b.slc"),
                "--codec", "fp32", "-q")
    assert r.returncode == 0, r.stderr.decode()

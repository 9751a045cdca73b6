"""slc.images: deterministic image sets from folders, npy, npz and HDF5, with fingerprints."""
import hashlib
import multiprocessing
import pickle
from pathlib import Path

import h5py
import numpy as np
import pytest
from PIL import Image

from slc.errors import SlcInputError
from slc.vision.images import IMAGE_EXTS, BadImage, ImageSet, open_images

EXAMPLE = Path(__file__).resolve().parent.parent / "slc" / "bench" / "data" / "fmnist_subset.npz"


def pixels(h, w, c=None, seed=0):
    shape = (h, w) if c is None else (h, w, c)
    return np.random.default_rng(seed).integers(0, 256, shape, dtype=np.uint8)


def save(path: Path, array: np.ndarray, **kw) -> np.ndarray:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path, **kw)
    return array


def hwc(a: np.ndarray, c: int) -> np.ndarray:
    """What load() should return for an array written as grey (H, W) or colour (H, W, 3)."""
    if a.ndim == 2:
        a = a[:, :, None]
    return np.repeat(a, c, axis=2) if a.shape[2] != c else a


@pytest.fixture
def tree(tmp_path):
    root = tmp_path / "tree"
    written = {
        "cat/b.png": save(root / "cat/b.png", pixels(5, 7, 3, seed=1)),
        "cat/a.png": save(root / "cat/a.png", pixels(4, 4, seed=2)),  # grey inside a colour set
        "dog/001.png": save(root / "dog/001.png", pixels(6, 3, 3, seed=3)),
        "dog/sub/z.png": save(root / "dog/sub/z.png", pixels(2, 9, 3, seed=4)),
    }
    (root / "dog/notes.txt").write_text("not an image")
    (root / "cat/.DS_Store").write_bytes(b"\0junk")
    (root / ".hidden").mkdir()
    save(root / ".hidden/x.png", pixels(3, 3, 3))
    return root, written


def test_image_folder_order_targets_sizes_pixels(tree):
    root, written = tree
    logs = []
    s = open_images(root, log=logs.append)
    assert s.names == ["cat/a.png", "cat/b.png", "dog/001.png", "dog/sub/z.png"]
    assert s.classes == ["cat", "dog"]
    assert s.targets.dtype == np.int64 and s.targets.tolist() == [0, 0, 1, 1]
    assert s.sizes.dtype == np.int64 and s.sizes.tolist() == [[4, 4], [5, 7], [6, 3], [2, 9]]
    assert s.channels == 3 and len(s) == 4 and s.skipped == [] and s.source == str(root)
    for i, name in enumerate(s.names):
        got = s.load(i)
        assert got.dtype == np.uint8 and got.shape == (*s.sizes[i], 3)
        np.testing.assert_array_equal(got, hwc(written[name], 3))
    assert logs == [f"ignored 1 non-image files in {root} (e.g. dog/notes.txt)"]
    with pytest.raises(IndexError):
        s.load(4)


def test_flat_grey_folder_has_one_channel(tmp_path):
    a = save(tmp_path / "b.png", pixels(3, 5, seed=1))
    b = save(tmp_path / "a.bmp", pixels(4, 2, seed=2))
    bits = np.random.default_rng(3).integers(0, 2, (6, 6)).astype(bool)
    Image.fromarray(bits).save(tmp_path / "c.png")  # mode "1"
    (tmp_path / "empty_sub").mkdir()  # a subfolder without images does not make a class
    s = open_images(tmp_path)
    assert s.names == ["a.bmp", "b.png", "c.png"] and s.targets is None and s.classes is None
    assert s.channels == 1
    np.testing.assert_array_equal(s.load(0), b[:, :, None])
    np.testing.assert_array_equal(s.load(1), a[:, :, None])
    np.testing.assert_array_equal(s.load(2), (bits * 255).astype(np.uint8)[:, :, None])


def test_rgba_palette_16bit_jpeg_and_gif_modes(tmp_path):
    rgba = save(tmp_path / "1_rgba.png", pixels(4, 5, 4, seed=1))
    pal = Image.fromarray(pixels(6, 4, 3, seed=2)).convert("P", palette=Image.Palette.ADAPTIVE, colors=16)
    pal.info["transparency"] = 0
    pal.save(tmp_path / "2_pal.png", transparency=0)
    deep = (np.arange(12, dtype=np.uint16).reshape(3, 4) * 5000 + 1)
    Image.fromarray(deep).save(tmp_path / "3_deep.png")
    save(tmp_path / "4_photo.jpg", pixels(8, 8, 3, seed=3), quality=90)
    frames = [Image.fromarray(np.full((5, 5, 3), v, np.uint8)) for v in (10, 200)]
    frames[0].save(tmp_path / "5_anim.gif", save_all=True, append_images=frames[1:])
    s = open_images(tmp_path)
    assert s.channels == 3
    np.testing.assert_array_equal(s.load(0), rgba[:, :, :3])
    np.testing.assert_array_equal(s.load(1), np.asarray(Image.open(tmp_path / "2_pal.png").convert("RGB")))
    expect16 = ((deep.astype(np.uint32) * 255 + 32767) // 65535).astype(np.uint8)  # scaled, not clipped
    np.testing.assert_array_equal(s.load(2), hwc(expect16, 3))
    np.testing.assert_array_equal(s.load(3), np.asarray(Image.open(tmp_path / "4_photo.jpg").convert("RGB")))
    np.testing.assert_array_equal(s.load(4), np.full((5, 5, 3), 10, np.uint8))  # frame 0 of an animation


def test_fingerprints_are_sha256_of_file_bytes_and_stable(tree, tmp_path):
    root, _ = tree
    a, b = open_images(root), open_images(root)
    assert a.fingerprints.dtype == np.uint8 and a.fingerprints.shape == (4, 16)
    np.testing.assert_array_equal(a.fingerprints, b.fingerprints)
    assert a.digest() == b.digest() and len(a.digest()) == 64
    for i, name in enumerate(a.names):
        assert a.fingerprints[i].tobytes() == hashlib.sha256((root / name).read_bytes()).digest()[:16]
    assert len({fp.tobytes() for fp in a.fingerprints}) == 4
    # Same pixels saved twice give the same fingerprint; one changed pixel changes it and the digest.
    save(tmp_path / "flat/x.png", pixels(4, 4, 3, seed=9))
    save(tmp_path / "flat/y.png", pixels(4, 4, 3, seed=9))
    c = open_images(tmp_path / "flat")
    assert c.fingerprints[0].tobytes() == c.fingerprints[1].tobytes()
    changed = pixels(4, 4, 3, seed=9)
    changed[0, 0, 0] ^= 1
    save(tmp_path / "flat/y.png", changed)
    d = open_images(tmp_path / "flat")
    assert d.fingerprints[1].tobytes() != c.fingerprints[1].tobytes() and d.digest() != c.digest()
    with pytest.raises(SlcInputError, match=r"expected y\.png unchanged since it was opened"):
        c.load(1)


def test_digest_is_documented_sha256(tree):
    s = open_images(tree[0])
    expect = hashlib.sha256((4).to_bytes(8, "little") + s.fingerprints.tobytes()).hexdigest()
    assert s.digest() == expect


@pytest.fixture
def with_bad(tmp_path):
    root = tmp_path / "bad"
    save(root / "cat/001.png", pixels(4, 4, 3, seed=1))
    save(root / "cat/002.jpg", pixels(32, 32, 3, seed=2))
    data = (root / "cat/002.jpg").read_bytes()
    (root / "cat/003.jpg").write_bytes(data[: len(data) // 2])
    (root / "cat/002.jpg").unlink()
    save(root / "dog/001.png", pixels(5, 5, 3, seed=3))
    (root / "dog/002.png").write_bytes(b"this is not a png at all" * 4)
    return root


def test_bad_images_raise_naming_the_first_and_counting_the_rest(with_bad):
    with pytest.raises(SlcInputError) as e:
        open_images(with_bad)
    msg = str(e.value)
    assert msg.startswith("expected a readable image, got cat/003.jpg (truncated file)")
    assert "1 more unreadable" in msg and "\n" not in msg


def test_skip_bad_leaves_them_out_and_logs(with_bad):
    logs = []
    s = open_images(with_bad, skip_bad=True, log=logs.append)
    assert s.names == ["cat/001.png", "dog/001.png"] and s.targets.tolist() == [0, 1]
    assert s.skipped == [BadImage("cat/003.jpg", "truncated file"),
                         BadImage("dog/002.png", "not a recognised image format")]
    assert logs == ["skipped cat/003.jpg: truncated file", "skipped dog/002.png: not a recognised image format"]
    assert s.fingerprints.shape == (2, 16) and s.sizes.tolist() == [[4, 4], [5, 5]]


def test_all_bad_with_skip_bad_is_an_error(tmp_path):
    (tmp_path / "x.png").write_bytes(b"garbage")
    with pytest.raises(SlcInputError, match="got none readable"):
        open_images(tmp_path, skip_bad=True)


def test_folder_errors(tmp_path):
    with pytest.raises(SlcInputError, match=r"expected images in .*, got none \(looked for \.jpg, \.jpeg, \.png"):
        open_images(tmp_path)
    (tmp_path / "readme.txt").write_text("hi")
    with pytest.raises(SlcInputError, match="got none"):
        open_images(tmp_path)
    save(tmp_path / "top.png", pixels(2, 2))
    save(tmp_path / "cls/a.png", pixels(2, 2))
    with pytest.raises(SlcInputError, match="either class subfolders or image files directly .* got both"):
        open_images(tmp_path)
    with pytest.raises(SlcInputError, match="no such file"):
        open_images(tmp_path / "missing")
    with pytest.raises(SlcInputError, match=r"expected a folder of images, \.npy"):
        open_images(tmp_path / "readme.txt")


def test_progress_called_per_image(tree):
    ticks = []
    open_images(tree[0], progress=ticks.append)
    assert ticks == [1] * 4


# -------------------------------------------------------------------------------------------------- arrays

def test_npy_layouts_agree(tmp_path):
    rgb = np.random.default_rng(0).integers(0, 256, (5, 6, 7, 3), dtype=np.uint8)
    np.save(tmp_path / "nhwc.npy", rgb)
    np.save(tmp_path / "nchw.npy", rgb.transpose(0, 3, 1, 2).copy())
    a, b = open_images(tmp_path / "nhwc.npy"), open_images(tmp_path / "nchw.npy")
    for s in (a, b):
        assert len(s) == 5 and s.channels == 3 and s.names == [f"#{i}" for i in range(5)]
        assert s.sizes.tolist() == [[6, 7]] * 5 and s.targets is None and s.classes is None
        for i in range(5):
            np.testing.assert_array_equal(s.load(i), rgb[i])
    np.testing.assert_array_equal(a.fingerprints, b.fingerprints)  # fingerprints are of canonical HWC pixels
    assert len({fp.tobytes() for fp in a.fingerprints}) == 5
    assert a.fingerprints[2].tobytes() == hashlib.sha256(
        np.array([6, 7, 3], "<i8").tobytes() + rgb[2].tobytes()).digest()[:16]

    grey = rgb[..., 0].copy()
    np.save(tmp_path / "nhw.npy", grey)
    np.save(tmp_path / "nhw1.npy", grey[..., None])
    np.save(tmp_path / "n1hw.npy", grey[:, None])
    sets = [open_images(tmp_path / f) for f in ("nhw.npy", "nhw1.npy", "n1hw.npy")]
    for s in sets:
        assert s.channels == 1
        np.testing.assert_array_equal(s.load(3), grey[3][:, :, None])
        np.testing.assert_array_equal(s.fingerprints, sets[0].fingerprints)
    changed = grey.copy()
    changed[4, 0, 0] ^= 1
    np.save(tmp_path / "changed.npy", changed)
    c = open_images(tmp_path / "changed.npy")
    assert c.digest() != sets[0].digest()
    np.testing.assert_array_equal(c.fingerprints[:4], sets[0].fingerprints[:4])


def test_npy_errors(tmp_path):
    np.save(tmp_path / "f.npy", np.zeros((2, 4, 4), np.float32))
    with pytest.raises(SlcInputError, match="expected uint8 images, got dtype float32"):
        open_images(tmp_path / "f.npy")
    np.save(tmp_path / "obj.npy", np.array([{"a": 1}, None], dtype=object), allow_pickle=True)
    with pytest.raises(SlcInputError, match="pickle is refused"):
        open_images(tmp_path / "obj.npy")
    np.save(tmp_path / "shape.npy", np.zeros((2, 4, 4, 5), np.uint8))
    with pytest.raises(SlcInputError, match=r"expected images of shape .* got shape \(2, 4, 4, 5\)"):
        open_images(tmp_path / "shape.npy")
    np.save(tmp_path / "none.npy", np.zeros((0, 4, 4), np.uint8))
    with pytest.raises(SlcInputError, match="expected images in"):
        open_images(tmp_path / "none.npy")
    (tmp_path / "junk.npy").write_bytes(b"not numpy")
    with pytest.raises(SlcInputError, match=r"expected an \.npy file"):
        open_images(tmp_path / "junk.npy")


def test_npz_with_labels(tmp_path):
    images = np.random.default_rng(1).integers(0, 256, (4, 3, 5, 5), dtype=np.uint8)
    np.savez_compressed(tmp_path / "d.npz", images=images, labels=np.array([3, 1, 0, 3], np.uint8))
    s = open_images(tmp_path / "d.npz")
    assert s.channels == 3 and s.targets.dtype == np.int64 and s.targets.tolist() == [3, 1, 0, 3]
    np.testing.assert_array_equal(s.load(1), images[1].transpose(1, 2, 0))
    np.savez(tmp_path / "x.npz", data=images)
    with pytest.raises(SlcInputError, match=r"expected an 'images' array in .*, got keys \['data'\]"):
        open_images(tmp_path / "x.npz")
    np.savez(tmp_path / "y.npz", images=images, targets=np.zeros(3, np.int64))
    with pytest.raises(SlcInputError, match="expected 'targets' of integers with shape"):
        open_images(tmp_path / "y.npz")


def test_h5_dataset(tmp_path):
    images = np.random.default_rng(2).integers(0, 256, (6, 4, 3, 3), dtype=np.uint8)
    path = tmp_path / "d.h5"
    with h5py.File(path, "w") as f:
        f["group/images"] = images
        f["floats"] = images.astype(np.float32)
    s = open_images(f"{path}:/group/images")
    assert len(s) == 6 and s.channels == 3 and s.sizes.tolist() == [[4, 3]] * 6
    np.testing.assert_array_equal(s.load(5), images[5])
    np.save(tmp_path / "same.npy", images)
    np.testing.assert_array_equal(s.fingerprints, open_images(tmp_path / "same.npy").fingerprints)
    s.close()
    np.testing.assert_array_equal(s.load(0), images[0])  # reopened on demand
    s.close()
    with pytest.raises(SlcInputError, match=r"expected a dataset '/nope' in .*, got datasets"):
        open_images(f"{path}:/nope")
    with pytest.raises(SlcInputError, match="expected FILE.h5:/DATASET"):
        open_images(path)
    with pytest.raises(SlcInputError, match="got dtype float32"):
        open_images(f"{path}:/floats")
    with pytest.raises(SlcInputError, match="no such file"):
        open_images(f"{tmp_path / 'missing.h5'}:/images")


def _load_sum(args):
    s, i = args
    return int(s.load(i).sum())


@pytest.mark.skipif("fork" not in multiprocessing.get_all_start_methods(), reason="needs fork")
@pytest.mark.parametrize("kind", ["h5", "npy", "folder"])
def test_load_in_forked_workers_and_after_pickling(tmp_path, kind):
    images = np.random.default_rng(3).integers(0, 256, (4, 64, 64, 3), dtype=np.uint8)
    if kind == "h5":
        with h5py.File(tmp_path / "d.h5", "w") as f:
            f["x"] = images
        spec = f"{tmp_path / 'd.h5'}:/x"
    elif kind == "npy":
        spec = tmp_path / "d.npy"
        np.save(spec, images)
    else:
        spec = tmp_path / "imgs"
        for i, im in enumerate(images):
            save(spec / f"{i}.png", im)
    s = open_images(spec)
    s.load(0)  # the parent holds an open handle before forking
    with multiprocessing.get_context("fork").Pool(2) as pool:
        assert pool.map(_load_sum, [(s, i) for i in range(4)]) == [int(im.sum()) for im in images]
    blob = pickle.dumps(s)  # what a spawned worker receives: names and fingerprints, never the pixels
    assert len(blob) < images.nbytes // 4
    np.testing.assert_array_equal(pickle.loads(blob).load(2), images[2])
    s.close()


def test_example_fmnist_subset():
    with np.load(EXAMPLE) as z:
        images, labels = z["images"], z["labels"]
    s = open_images(EXAMPLE)
    assert isinstance(s, ImageSet) and len(s) == 500 and s.channels == 1
    assert s.sizes.tolist() == [[28, 28]] * 500
    np.testing.assert_array_equal(s.targets, labels.astype(np.int64))
    np.testing.assert_array_equal(s.load(123), images[123][:, :, None])
    assert s.digest() == open_images(EXAMPLE).digest()
    assert ".png" in IMAGE_EXTS

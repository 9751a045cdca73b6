#!/usr/bin/env python
"""Real 10-class soft labels for benchmarks: the Fashion-MNIST CNN teacher of ``examples/fmnist_groundtruth.py``.

The teacher is that example's (stage 1: ``make_teacher``/``train_teacher``, 3 epochs on the 60,000
training images, crops of scale 0.25-1, seed 0), loaded from or saved to the same place the example
caches it (``${SLC_CACHE:-~/.cache/slc}/fmnist-groundtruth/teacher-cnn-e3-s0.25.ts``), so either run
reuses the other's teacher.

Crops are slc's replayable recipe as the example's ``slc encode`` makes them (``--size 28 --scale 0.25,1
--channels 1 --mean 0.286 --std 0.353``, aspect 3/4-4/3, flip 0.5, shuffled order, ``--seed``):
:func:`slc.vision.augment.crop_boxes` and :func:`~slc.vision.augment.render` on the 28 px images,
visited in ImageFolder order (class, then training index), so ``fmnist-cnn`` holds the raw logits
``slc encode`` computes for the example's ``fp16.slc`` (at its 100 epochs instead of 200), before
tempering and fp16.

Sets (``SETS``):
  fmnist-cnn          the example's distilled set (10 random training images per class,
                      ``select_ipc(..., 10, seed 0)``), 100 epochs x 100 images, recipe seed 0
  fmnist-cnn-heldout  500 OTHER training images (50 per class, seeded, none of the distilled set),
                      4 epochs, recipe seed 1

Cached as ``real_labels.py`` does, under ``${SLC_CACHE:-~/.cache/slc}/real_labels/<name>/``:
  logits.npy      float32 [E, N, 10]  raw teacher logits (position order of each epoch)
  images_idx.npy  int64   [N]   Fashion-MNIST *train* indices (ImageFolder order)
  targets.npy     int64   [N]   their classes
  crops.npy       int64   [E, N, 6]  (image position, y, x, h, w, flip) of every label
  meta.json       the parameters used

    python benchmarks/fmnist_cnn_labels.py [--name fmnist-cnn-heldout]
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "examples"))
import fmnist_groundtruth as gt  # noqa: E402

sys.path.insert(0, str(Path(__file__).parent))
from real_labels import read_cache, write_cache  # noqa: E402

from slc.format.replay import Recipe  # noqa: E402
from slc.vision.augment import crop_boxes, epoch_order, render  # noqa: E402

TEACHER_EPOCHS, TEACHER_SEED, SCALE = 3, 0, (0.25, 1.0)  # the example's defaults
IPC, SELECT_SEED = 10, 0  # the example's distilled set
HELDOUT_SEED = 20240602
SETS = {
    "fmnist-cnn": dict(images=100, epochs=100, crop_seed=0, part="distilled"),
    "fmnist-cnn-heldout": dict(images=500, epochs=4, crop_seed=1, part="other"),
}
FILES = ("logits", "images_idx", "targets", "crops")


def cache_root() -> Path:
    return Path(os.environ.get("SLC_CACHE", "~/.cache/slc")).expanduser()


def teacher(data: dict | None = None, log=print) -> tuple[torch.jit.ScriptModule, dict]:
    """The example's teacher, trained (and cached where the example caches it) if missing."""
    work = cache_root() / "fmnist-groundtruth"
    path = work / f"teacher-cnn-e{TEACHER_EPOCHS}-s{SCALE[0]:g}.ts"  # the example's tag
    info_path = path.with_suffix(".json")
    if not (path.exists() and info_path.exists()):
        work.mkdir(parents=True, exist_ok=True)
        log(f"training the example's teacher ({TEACHER_EPOCHS} epochs on 60,000 images) -> {path}")
        info = gt.train_teacher(data or gt.load_fmnist(), path, TEACHER_EPOCHS, SCALE, seed=TEACHER_SEED)
        info_path.write_text(json.dumps(info, indent=2))
    return torch.jit.load(str(path)).eval(), {"path": str(path), **json.loads(info_path.read_text())}


def select(labels: np.ndarray, part: str, images: int) -> np.ndarray:
    """Training indices in ImageFolder order (class, then index): the distilled set or ``images`` others."""
    distilled = gt.select_ipc(labels, IPC, SELECT_SEED)
    if part == "distilled":
        idx = distilled
        if len(idx) != images:
            raise ValueError(f"the distilled set has {len(idx)} images, not {images}")
    else:
        rng = np.random.default_rng(HELDOUT_SEED)
        free = np.setdiff1d(np.arange(len(labels)), distilled)
        idx = np.concatenate([rng.choice(free[labels[free] == c], images // 10, replace=False) for c in range(10)])
    return idx[np.lexsort((idx, labels[idx]))].astype(np.int64)


def recipe(seed: int) -> Recipe:
    return Recipe(seed=seed, size=28, scale=SCALE, channels=1, mean=(gt.MEAN,), std=(gt.STD,))


def generate(model, images_u8: np.ndarray, epochs: int, crop_seed: int, batch: int = 500):
    """(logits float32 [E, N, 10], crops int64 [E, N, 6]) in each epoch's position order."""
    r = recipe(crop_seed)
    n = len(images_u8)
    imgs = images_u8[..., None]  # [N, 28, 28, 1], as slc reads a greyscale PNG
    sizes = np.full((n, 2), 28, np.int64)
    logits = np.empty((epochs, n, 10), np.float32)
    crops = np.empty((epochs, n, 6), np.int64)
    with torch.inference_mode():
        for e in range(epochs):
            order = epoch_order(r, e, n)
            boxes = crop_boxes(r, e, order, sizes[order])
            crops[e] = np.stack([order] + [boxes[k].astype(np.int64) for k in ("y", "x", "h", "w", "flip")], 1)
            x = torch.stack([render(imgs[i], b, r) for i, b in zip(order, boxes)])
            for s in range(0, n, batch):
                logits[e, s:s + batch] = model(x[s:s + batch]).float().numpy()
    return logits, crops


def load_cnn_labels(name: str = "fmnist-cnn", force: bool = False, log=print) -> dict:
    """The named set (keys as ``real_labels.load_real_labels``: logits, images_idx, targets, crops, meta)."""
    p = SETS[name]
    d = cache_root() / "real_labels" / name
    cached = None if force else read_cache(d, p, FILES)
    if cached is not None:
        return cached
    data = gt.load_fmnist()
    model, info = teacher(data, log)
    idx = select(data["train_y"], p["part"], p["images"])
    t0 = time.perf_counter()
    logits, crops = generate(model, data["train_x"][idx], p["epochs"], p["crop_seed"])
    seconds = time.perf_counter() - t0
    meta = dict(name=name, teacher=info, dataset="fashion-mnist train", ipc=IPC, select_seed=SELECT_SEED,
                heldout_seed=HELDOUT_SEED, recipe=recipe(p["crop_seed"]).to_json(),
                order="ImageFolder order (class, then train index); positions per epoch by the recipe's order",
                seconds=round(seconds, 2), torch=torch.__version__, **p)
    out = dict(logits=logits, images_idx=idx, targets=data["train_y"][idx].astype(np.int64), crops=crops)
    return write_cache(d, out, meta, FILES)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--name", default="fmnist-cnn", choices=sorted(SETS))
    ap.add_argument("--force", action="store_true", help="regenerate even if cached")
    a = ap.parse_args(argv)
    t0 = time.perf_counter()
    r = load_cnn_labels(a.name, a.force)
    z = torch.from_numpy(np.asarray(r["logits"]).reshape(-1, 10))
    print(f"set {a.name}: logits {r['logits'].shape} in {time.perf_counter() - t0:.1f} s "
          f"(teacher test top-1 {100 * r['meta']['teacher']['test_top1']:.2f}%)")
    tgt = np.broadcast_to(np.asarray(r["targets"])[np.asarray(r["crops"])[..., 0]], r["logits"].shape[:2])
    print(f"  crop top-1 vs class {100 * float((z.argmax(1).numpy() == tgt.reshape(-1)).mean()):.2f}%; "
          + ", ".join(f"mean max prob T={t} {float(torch.softmax(z / t, -1).max(-1).values.mean()):.3f}" for t in (1, 4)))


if __name__ == "__main__":
    main()

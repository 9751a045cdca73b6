"""Label folders with the structure SRe2L, LPLD, LPQLD and HALD write, built from reading their code.

- SRe2L @ 8d00cba364bfa34aa1f5a8107dc041ae1be8ebe6, ``relabel/generate_soft_label.py`` and ``utils_fkd.py``:
  ``epoch_{e}/batch_{b}.tar`` = ``[coords f32 [B,4], flip bool [B], mix_index i64 [B], lam float,
  [bbx1, bby1, bbx2, bby2] numpy int64, logits f16 [B,C]]``, batches from a ``RandomSampler`` whose
  generator is seeded 42 and reused for every epoch.
- LPLD @ 63eee186e15e09a6889dda07805ce921c439aef4: the same, plus ``sampler_indices_epoch.json``.
- LPQLD @ 107c7a5dd91c3475cbbcfcd1f9a66f10de60e8d2: flat ``batch_{g}.tar`` = ``[coords f16, flip,
  mix_index u8, lam, [4 x 0-d u8 tensors], top-k logits f16 [B,k], indices i16 [B,k]]`` and
  ``sampler_indices_batch.json``; drop_last.
- HALD @ ffbca04e0256faf6c0b2cfca21b2afb8e7890d88: ``epoch_{k}.tar`` = list of ``[coords f16, flip,
  mix_index, lam, bbox, softmax f16]`` and ``sampler_indices_dict.pt`` (``randperm`` seeded 42 + epoch).

The crop parameters follow torchvision's ``RandomResizedCrop.get_params`` (drawn here from numpy);
the mix follows their ``cutmix``/``mixup``/``rand_bbox``. Returns the truth: the integer box of
every row, so a test can check what an import replays.
"""
from __future__ import annotations

import json
import math
import os

import numpy as np
import torch
from torch.utils.data import BatchSampler, RandomSampler


def rrc_params(rng: np.random.Generator, H: int, W: int, scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3)):
    """torchvision's ``RandomResizedCrop.get_params``: (i, j, h, w) integers."""
    area = H * W
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(10):
        target = area * rng.uniform(*scale)
        aspect = math.exp(rng.uniform(*log_ratio))
        w, h = int(round(math.sqrt(target * aspect))), int(round(math.sqrt(target / aspect)))
        if 0 < w <= W and 0 < h <= H:
            return int(rng.integers(0, H - h + 1)), int(rng.integers(0, W - w + 1)), h, w
    w, h = W, H
    return (H - h) // 2, (W - w) // 2, h, w


def rand_bbox(size, lam, rng):
    """Their ``rand_bbox`` (W = size[2] is the row axis): numpy int64 values."""
    W, H = size[2], size[3]
    cut_rat = np.sqrt(1.0 - lam)
    cut_w, cut_h = int(W * cut_rat), int(H * cut_rat)
    cx, cy = rng.randint(W), rng.randint(H)
    return [np.clip(cx - cut_w // 2, 0, W), np.clip(cy - cut_h // 2, 0, H),
            np.clip(cx + cut_w // 2, 0, W), np.clip(cy + cut_h // 2, 0, H)]


def batch_orders(n: int, batch: int, epochs: int, seed: int = 42, drop_last: bool = False) -> list[list[list[int]]]:
    """The batches of their relabel DataLoader: one ``RandomSampler`` (generator seeded ``seed``) for every epoch."""
    sampler = BatchSampler(RandomSampler(range(n), generator=torch.Generator().manual_seed(seed)), batch, drop_last)
    return [[list(b) for b in sampler] for _ in range(epochs)]


def _crops(sizes, images, rng):
    truth, coords, flips = [], [], []
    for i in images:
        H, W = (int(v) for v in sizes[i])
        y, x, h, w = rrc_params(rng, H, W)
        coords.append((y / H, x / W, h / H, w / W))
        flip = bool(rng.random() < 0.5)
        flips.append(flip)
        truth.append((y, x, h, w, int(flip)))
    return torch.FloatTensor(coords), torch.tensor(flips), truth


def _mix(b: int, mix: str, size: int, np_rng):
    if mix == "none":
        return None, None, None
    index = torch.randperm(b)
    if mix == "cutmix":
        lam = np_rng.beta(1.0, 1.0)
        return index, lam, rand_bbox((b, 3, size, size), lam, np_rng)
    return index, np_rng.beta(0.8, 0.8), None


def write_batches(root: str, fmt: str, sizes: np.ndarray, *, epochs: int = 2, batch: int = 8, classes: int = 10,
                  size: int = 32, mix: str = "cutmix", topk: int = 3, fp16: bool = True, seed: int = 0) -> dict:
    """Write a ``fmt`` folder (sre2l, lpld, lpqld, hald) for images of ``sizes`` [N, 2] (H, W).

    Returns ``{"boxes": {(epoch, position): (y, x, h, w, flip)}, "images": per-epoch image order,
    "labels": per-epoch float32 labels as stored (logits, probabilities or the LPQLD top-k), ...}``.
    """
    os.makedirs(root, exist_ok=True)
    rng, np_rng = np.random.default_rng(seed), np.random.RandomState(seed)
    torch.manual_seed(seed)
    n = len(sizes)
    if fmt == "hald":  # one randperm per epoch, seeded 42 + epoch, split into batches
        orders = [torch.randperm(n, generator=torch.Generator().manual_seed(42 + e)).tolist() for e in range(epochs)]
        torch.save({str(e): o for e, o in enumerate(orders)}, os.path.join(root, "sampler_indices_dict.pt"))
        groups = [[o[i:i + batch] for i in range(0, n - n % batch, batch)] for o in orders]
    else:
        groups = batch_orders(n, batch, epochs, drop_last=fmt == "lpqld")
    truth = {"boxes": {}, "images": [], "labels": [], "files": []}
    index_json, g = {}, 0
    for e, batches in enumerate(groups):
        hald_epoch, order, labels = [], [], []
        for b, images in enumerate(batches):
            coords, flips, boxes = _crops(sizes, images, rng)
            for r, box in enumerate(boxes):
                truth["boxes"][(e, len(order) + r)] = box
            order += images
            index, lam, bbox = _mix(len(images), mix, size, np_rng)
            logits = torch.randn(len(images), classes) * 3
            if fmt in ("sre2l", "lpld"):
                out = logits.half() if fp16 else logits
                item = [coords, flips, index, lam, bbox, out]
                labels.append(out.float().numpy())
            elif fmt == "lpqld":
                top = torch.topk(logits, topk, dim=1)
                values, idx = top.values.half(), top.indices.short()
                item = [coords.half(), flips, None if index is None else index.to(torch.uint8), lam,
                        None if bbox is None else [torch.tensor(v, dtype=torch.uint8) for v in bbox], values, idx]
                labels.append((values.float().numpy(), idx.numpy()))
            else:  # hald: softmax at T=20, fp16
                probs = torch.softmax(logits / 20, dim=1).half()
                item = [coords.half(), flips, index, lam, bbox, probs]
                labels.append(probs.float().numpy())
            if fmt == "hald":
                hald_epoch.append(item)
                continue
            if fmt == "lpqld":
                path = os.path.join(root, f"batch_{g}.tar")
                index_json[str(g)] = list(images)
                g += 1
            else:
                os.makedirs(os.path.join(root, f"epoch_{e}"), exist_ok=True)
                path = os.path.join(root, f"epoch_{e}", f"batch_{b}.tar")
            torch.save(item, path)
            truth["files"].append(path)
        if fmt == "hald":
            torch.save(hald_epoch, os.path.join(root, f"epoch_{e}.tar"))
        if fmt == "lpld":
            index_json[str(e)] = order
        truth["images"].append(order)
        truth["labels"].append(labels)
    if fmt == "lpld":
        with open(os.path.join(root, "sampler_indices_epoch.json"), "w") as f:
            json.dump(index_json, f)
    if fmt == "lpqld":
        with open(os.path.join(root, "sampler_indices_batch.json"), "w") as f:
            json.dump(index_json, f)
    return truth


def write_images(root: str, count: int = 20, classes: int = 2, seed: int = 0) -> np.ndarray:
    """An ImageFolder of ``count`` RGB PNGs of varied sizes (ImageFolder order); returns their sizes [N, 2]."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    sizes = []
    for i in range(count):
        c = i * classes // count
        os.makedirs(os.path.join(root, f"class{c}"), exist_ok=True)
        H, W = int(rng.integers(36, 90)), int(rng.integers(36, 90))
        img = (rng.random((H, W, 3)) * 255).astype(np.uint8)
        img = np.cumsum(img, axis=1, dtype=np.uint32).astype(np.uint8)  # some structure for resampling to show
        Image.fromarray(img).save(os.path.join(root, f"class{c}", f"img{i:03d}.png"))
        sizes.append((H, W))
    return np.asarray(sizes, np.int64)

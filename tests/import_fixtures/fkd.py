"""Write FKD soft-label folders exactly as ``FKD/FKD_SLG/generate_soft_label.py`` does (szq0214/FKD at
commit ``afd5294b43c8b8c437c4d314c01661b24569aa0e``), from a random "teacher".

Per image: ``torch.save([coords, flip, labels], ROOT/<class>/<stem>.tar)`` with coords the float32
``(i/H, j/W, h/H, w/W)`` of torchvision's ``RandomResizedCrop.get_params`` (scale (0.08, 0.936),
ratio (3/4, 4/3), their defaults), flip a bool per crop (p=0.5), and labels their
``label_quantization``: ``torch.stack([argsort(p, descending)[:k], p[top-k]])`` as float32
``[crops, 2, k]``. ``fp16=True`` is their ``--use_fp16`` branch (``np.float16`` of coords and labels;
note FKD ignores it when ``--num_crops <= --num_seg``). The dense labels returned are their
``Recover_soft_label`` (``marginal_smoothing_k*``), copied from ``FKD/utils_FKD.py``, on float32 values.
"""
from __future__ import annotations

import math
import os

import numpy as np


def rrc_params(rng: np.random.Generator, height: int, width: int, scale=(0.08, 0.936),
               ratio=(3 / 4, 4 / 3)) -> tuple[int, int, int, int]:
    """torchvision's ``RandomResizedCrop.get_params`` with numpy draws: ``(i, j, h, w)``."""
    area = height * width
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(10):
        target_area = area * rng.uniform(scale[0], scale[1])
        aspect = math.exp(rng.uniform(*log_ratio))
        w = int(round(math.sqrt(target_area * aspect)))
        h = int(round(math.sqrt(target_area / aspect)))
        if 0 < w <= width and 0 < h <= height:
            return int(rng.integers(0, height - h + 1)), int(rng.integers(0, width - w + 1)), h, w
    in_ratio = width / height
    if in_ratio < min(ratio):
        w, h = width, int(round(width / min(ratio)))
    elif in_ratio > max(ratio):
        h, w = height, int(round(height * max(ratio)))
    else:
        w, h = width, height
    return (height - h) // 2, (width - w) // 2, h, w


def label_quantization(full_label, k: int) -> np.ndarray:
    """Their ``label_quantization`` for ``marginal_smoothing_k{k}``."""
    import torch

    out = []
    for p in full_label:
        order = torch.argsort(p, descending=True)
        out.append(torch.stack([order[:k], p[order[:k]]], dim=0))
    return torch.stack(out, dim=0).detach().numpy()


def recover_soft_label(label: np.ndarray, n_classes: int) -> np.ndarray:
    """Their ``Recover_soft_label`` (``marginal_smoothing_k5``/``_k10``, K generalised), float32."""
    import torch

    label = torch.from_numpy(np.asarray(label, np.float32))
    k = label.size(2)
    index = label[:, 0, :].to(dtype=int)
    value = label[:, 1, :]
    minor_value = (torch.ones(label.size(0), 1) - torch.sum(value, dim=1, keepdim=True)) / (n_classes - k)
    minor_value = minor_value.reshape(-1, 1).repeat_interleave(n_classes, dim=1)
    return (minor_value * torch.ones(index.size(0), n_classes)).scatter_(1, index, value).numpy()


def save_state(path, state) -> None:
    """``torch.save(state, path)``, making the folder."""
    import torch

    os.makedirs(os.path.dirname(path), exist_ok=True)
    torch.save(state, path)


def write_fkd(root, images: list[tuple[str, str, int, int]], crops: int, k: int = 5, classes: int = 10,
              fp16: bool = False, seed: int = 0) -> dict:
    """Write one ``.tar`` per ``(class_name, image_basename, H, W)`` under ``root``.

    Returns, in ImageFolder order (classes sorted, then names): ``paths``, ``names`` (``class/stem``),
    ``sizes [N, 2]`` (H, W), ``boxes [crops, N, 4]`` the true integer ``(i, j, h, w)``, ``flip [crops, N]``,
    ``coords [crops, N, 4]`` and ``topk [crops, N, 2, k]`` as stored, ``labels [crops, N, classes]``
    the recovered dense float32 labels.
    """
    import torch

    rng = np.random.default_rng(seed)
    order = sorted(images, key=lambda t: (t[0], t[1].split(".")[0] + ".tar"))
    out = {"paths": [], "names": [], "sizes": np.array([(h, w) for _, _, h, w in order], np.int64).reshape(-1, 2)}
    boxes, flips, coords_all, topk_all, dense = [], [], [], [], []
    for cls, base, height, width in order:
        stem = base.split(".")[0]
        box = [rrc_params(rng, height, width) for _ in range(crops)]
        flip = np.array([rng.random() < 0.5 for _ in range(crops)], dtype=bool)
        coords = np.stack([np.array([i / height, j / width, h / height, w / width], np.float32) for i, j, h, w in box])
        logits = torch.from_numpy(rng.normal(size=(crops, classes)).astype(np.float32) * 3)
        quant = label_quantization(torch.nn.functional.softmax(logits / 1.0, dim=1), k)
        state = [np.float16(coords), flip, np.float16(quant)] if fp16 else [coords, flip, quant]
        path = os.path.join(root, cls, stem + ".tar")
        save_state(path, state)
        out["paths"].append(path)
        out["names"].append(f"{cls}/{stem}")
        boxes.append(box)
        flips.append(flip)
        coords_all.append(state[0])
        topk_all.append(state[2])
        dense.append(recover_soft_label(state[2], classes))
    swap = lambda parts: np.stack(parts).swapaxes(0, 1)  # noqa: E731  [N, crops, ...] -> [crops, N, ...]
    out.update(boxes=swap(np.array(boxes, np.int64)), flip=swap(flips), coords=swap(coords_all),
               topk=swap(topk_all), labels=swap(dense))
    return out

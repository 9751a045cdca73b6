"""Augmentations a student can replay exactly: a counter-based RNG, crop boxes, order, mixing.

Every random number is a pure function of ``(seed, stream, epoch, index, draw)`` (SplitMix64,
``formats/slc-v1.md`` "Replay"), so the crop of image ``i`` in epoch ``e`` is recomputed from
the seed in the header with zero stored bytes, in any order, in any worker process.
"""
from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from slc.format.replay import Recipe
from slc.format.sections import BOX_DTYPE

M64 = 0xFFFFFFFFFFFFFFFF
GAMMA = np.uint64(0x9E3779B97F4A7C15)
STREAM_CROP, STREAM_ORDER, STREAM_MIX = 1, 2, 3
ATTEMPTS = 10  # torchvision's RandomResizedCrop tries 10 boxes before its centre-crop fallback
DRAW_FLIP = 4 * ATTEMPTS
MIX_DRAW_LAM, MIX_DRAW_CX, MIX_DRAW_CY, MIX_DRAW_PARTNER = 0, 1, 2, 16


def _mix64(z: np.ndarray) -> np.ndarray:
    """SplitMix64's finaliser on uint64 arrays (arithmetic mod 2**64)."""
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return z ^ (z >> np.uint64(31))


def random_u64(seed: int, stream: int, epoch, index, draw) -> np.ndarray:
    """``h = mix(seed); h = mix((h ^ v) + GAMMA)`` for v in (stream, epoch, index, draw); broadcasts."""
    with np.errstate(over="ignore"):
        h = _mix64(np.asarray([seed & M64], np.uint64))
        for v in (stream, epoch, index, draw):
            h = _mix64((h ^ np.asarray(v, np.int64).astype(np.uint64)) + GAMMA)
    return h


def uniform(seed: int, stream: int, epoch, index, draw) -> np.ndarray:
    """Float64 in [0, 1): the top 53 bits of :func:`random_u64`."""
    return (random_u64(seed, stream, epoch, index, draw) >> np.uint64(11)).astype(np.float64) * 2.0 ** -53


def _randint(u: np.ndarray, n) -> np.ndarray:
    """``floor(u * n)``: an integer in [0, n) from a uniform."""
    return np.minimum(np.floor(u * n).astype(np.int64), np.asarray(n, np.int64) - 1)


def crop_boxes(recipe: Recipe, epoch: int, images: np.ndarray, sizes: np.ndarray) -> np.ndarray:
    """RandomResizedCrop boxes plus flips for ``images`` (indices) of ``sizes`` ``[n, 2]`` (H, W).

    torchvision's algorithm, vectorised: up to 10 tries of (area fraction, log aspect ratio), the
    first box that fits wins; if none does, a centre crop clamped to the ratio range.
    """
    images = np.asarray(images, np.int64)
    hgt = sizes[:, 0].astype(np.float64)
    wid = sizes[:, 1].astype(np.float64)
    area = hgt * wid
    n = len(images)
    out = np.zeros(n, BOX_DTYPE)
    done = np.zeros(n, bool)
    log_r = (math.log(recipe.ratio[0]), math.log(recipe.ratio[1]))
    for a in range(ATTEMPTS):
        u = uniform(recipe.seed, STREAM_CROP, epoch, images[:, None], np.arange(4 * a, 4 * a + 4))
        target = area * (recipe.scale[0] + (recipe.scale[1] - recipe.scale[0]) * u[:, 0])
        aspect = np.exp(log_r[0] + (log_r[1] - log_r[0]) * u[:, 1])
        w = np.round(np.sqrt(target * aspect))  # round half to even, like Python's round()
        h = np.round(np.sqrt(target / aspect))
        ok = ~done & (w > 0) & (w <= wid) & (h > 0) & (h <= hgt)
        y = _randint(u[:, 2], np.maximum(hgt - h + 1, 1).astype(np.int64))
        x = _randint(u[:, 3], np.maximum(wid - w + 1, 1).astype(np.int64))
        out["y"][ok], out["x"][ok], out["h"][ok], out["w"][ok] = y[ok], x[ok], h[ok], w[ok]
        done |= ok
    if not done.all():
        rest = ~done
        hh, ww = hgt[rest], wid[rest]
        in_ratio = ww / hh
        w = np.where(in_ratio < recipe.ratio[0], ww, np.where(in_ratio > recipe.ratio[1], np.round(hh * recipe.ratio[1]), ww))
        h = np.where(in_ratio < recipe.ratio[0], np.round(ww / recipe.ratio[0]),
                     np.where(in_ratio > recipe.ratio[1], hh, hh))
        out["h"][rest], out["w"][rest] = h, w
        out["y"][rest], out["x"][rest] = (hh - h) // 2, (ww - w) // 2
    flip = uniform(recipe.seed, STREAM_CROP, epoch, images, DRAW_FLIP) < recipe.flip
    out["flip"] = flip
    return out


def epoch_order(recipe: Recipe, epoch: int, n: int) -> np.ndarray:
    """Which image sits at each position of ``epoch``: ascending random keys, ties by index."""
    if recipe.order == "sequential":
        return np.arange(n, dtype=np.int64)
    keys = random_u64(recipe.seed, STREAM_ORDER, epoch, np.arange(n), 0)
    return np.argsort(keys, kind="stable").astype(np.int64)


@dataclass(frozen=True)
class Mix:
    """How position ``p`` is mixed with its partner (a position in the same mix group)."""

    partner: int
    lam: float  # weight of the position's own crop (mixup), or 1 - box area fraction (cutmix)
    box: tuple[int, int, int, int] = (0, 0, 0, 0)  # cutmix: y0, x0, y1, x1 in output pixels


def mix_for(recipe: Recipe, epoch: int, position: int, n: int) -> Mix | None:
    """The mix of ``position``; ``None`` without mixing. One lambda and box per group, as in SRe2L."""
    if recipe.mix == "none":
        return None
    g, b = divmod(position, recipe.mix_group)
    start = g * recipe.mix_group
    members = min(recipe.mix_group, n - start)
    keys = random_u64(recipe.seed, STREAM_MIX, epoch, g, MIX_DRAW_PARTNER + np.arange(members))
    perm = np.argsort(keys, kind="stable")  # partner of member j is member perm[j] (torch.randperm style)
    partner = start + int(perm[b])
    u = uniform(recipe.seed, STREAM_MIX, epoch, g, np.arange(3))
    lam = float(u[MIX_DRAW_LAM])
    if recipe.mix == "mixup":
        return Mix(partner, lam)
    s = recipe.size
    cut = int(s * math.sqrt(1.0 - lam))
    cy, cx = int(_randint(u[MIX_DRAW_CY:MIX_DRAW_CY + 1], s)[0]), int(_randint(u[MIX_DRAW_CX:MIX_DRAW_CX + 1], s)[0])
    y0, y1 = min(max(cy - cut // 2, 0), s), min(max(cy + cut // 2, 0), s)
    x0, x1 = min(max(cx - cut // 2, 0), s), min(max(cx + cut // 2, 0), s)
    lam = 1.0 - (y1 - y0) * (x1 - x0) / (s * s)  # the label weight the pasted area really has
    return Mix(partner, lam, (y0, x0, y1, x1))


# --------------------------------------------------------------------------- rendering
def render(image: np.ndarray, box, recipe: Recipe) -> torch.Tensor:
    """The normalised crop ``[channels, size, size]`` float32 of a uint8 ``[H, W, C]`` image.

    One fixed sequence of torch ops, used by both the teacher and the student side, so a
    replayed crop equals the teacher's bit for bit on the same machine and torch version.
    Bilinear resizing is antialiased only when the crop is larger than the output (downscaling).
    """
    y, x, h, w, flip = int(box["y"]), int(box["x"]), int(box["h"]), int(box["w"]), bool(box["flip"])
    t = torch.from_numpy(np.array(image[y:y + h, x:x + w], copy=True)).permute(2, 0, 1)[None].float()
    s = recipe.size
    if (h, w) != (s, s):
        t = F.interpolate(t, size=(s, s), mode="bilinear", align_corners=False, antialias=h > s or w > s)
    if flip:
        t = t.flip(-1)
    t = t[0]
    if t.shape[0] != recipe.channels:
        t = t.expand(recipe.channels, -1, -1) if t.shape[0] == 1 else t.mean(0, keepdim=True)
    scale, shift = _affine(recipe.mean, recipe.std, recipe.invert)
    return torch.addcmul(shift, t, scale)  # (t / 255 - mean) / std, or with 255 - t when inverting


@functools.lru_cache(maxsize=16)
def _affine(mean: tuple[float, ...], std: tuple[float, ...], invert: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel ``scale, shift`` with ``scale * pixel + shift`` = the normalised (inverted) pixel."""
    m = torch.tensor(mean, dtype=torch.float64)[:, None, None]
    sd = torch.tensor(std, dtype=torch.float64)[:, None, None]
    scale = (-1.0 if invert else 1.0) / (255.0 * sd)
    shift = ((1.0 if invert else 0.0) - m) / sd
    return scale.float(), shift.float()


def apply_mix(own: torch.Tensor, other: torch.Tensor, mix: Mix, kind: str) -> torch.Tensor:
    if kind == "mixup":
        return mix.lam * own + (1.0 - mix.lam) * other
    y0, x0, y1, x1 = mix.box
    out = own.clone()
    out[:, y0:y1, x0:x1] = other[:, y0:y1, x0:x1]
    return out


def box_array(boxes: np.ndarray) -> np.ndarray:
    """Boxes as ``int64 [n, 5]`` (y, x, h, w, flip), e.g. for comparison or export."""
    return np.stack([boxes[k].astype(np.int64) for k in ("y", "x", "h", "w", "flip")], axis=1)


__all__ = ["Recipe", "Mix", "crop_boxes", "epoch_order", "mix_for", "render", "apply_mix", "uniform",
           "random_u64", "BOX_DTYPE", "box_array"]

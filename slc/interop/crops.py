"""Crops another tool stored explicitly, turned into the replay sections of a ``.slc``.

SRe2L, LPLD, LPQLD, HALD and FKD store, per label, the crop as fractions of its source image
``(top/H, left/W, height/H, width/W)`` and a flip flag, and SRe2L-style relabelling stores the
batch's mix (a permutation of the batch, a lambda and a cutmix box). Their trainers turn the
fractions back into pixels in one of two ways, which :func:`pixel_boxes` reproduces exactly:

- ``"round"`` (SRe2L, CDA, LPLD, LPQLD, FKD): ``F.resized_crop`` on a PIL image with float
  ``top = c0*H, left = c1*W, height = c2*H, width = c3*W``; Pillow's ``crop`` rounds each edge
  (``round(left)``, ``round(top)``, ``round(left + width)``, ``round(top + height)``, half to even);
- ``"floor"`` (HALD): ``int()`` of each of ``c0*H, c1*W, c2*H, c3*W`` on a tensor.

Products and sums are in double precision, as Python's ``.item() * size`` computes them.
A cutmix box ``[bbx1, bby1, bbx2, bby2]`` replaces rows ``[bbx1, bbx2)`` and columns
``[bby1, bby2)`` (their ``rand_bbox`` calls the row axis W): stored as ``y0, x0, y1, x1``.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator

import numpy as np

from slc.errors import SlcInputError
from slc.format.sections import BOX_DTYPE, MIX_DTYPE, ORDER_DTYPE


@dataclass
class BatchCrops:
    """The crops of one stored batch (or one image's crops, for FKD), row by row."""

    images: np.ndarray  # int64 [B]: the image index of each row
    coords: np.ndarray  # float64 [B, 4]: (top/H, left/W, height/H, width/W), the stored values exactly
    flip: np.ndarray  # bool [B]
    partner: np.ndarray | None = None  # int64 [B]: the row of the batch each row is mixed with
    lam: float | None = None
    bbox: tuple[int, int, int, int] | None = None  # cutmix (bbx1, bby1, bbx2, bby2) in output pixels

    @property
    def mix(self) -> str:
        if self.partner is None:
            return "none"
        return "cutmix" if self.bbox is not None else "mixup"


class CropStream:
    """The crops of an import, epoch by epoch (a second, light pass over the files: no labels)."""

    epochs: int
    n: int  # positions (labels) per epoch
    rule: str  # "round" or "floor", see the module docstring
    mix: str = "none"  # "none", "mixup" or "cutmix": what the batches hold
    batch: int = 0  # rows per stored batch (the relabel batch size)

    def epoch(self, e: int) -> Iterator[BatchCrops]:
        raise NotImplementedError

    def check_images(self, images) -> None:
        """Fail before writing if ``images`` (an :class:`~slc.vision.images.ImageSet`) are not the labels' own,
        where the stream can tell (FKD names a file per image); the replay digest checks the rest later."""

    def order(self, e: int) -> np.ndarray:
        """The image of every position of epoch ``e`` (a stream that knows it without reading files overrides this)."""
        return np.concatenate([np.asarray(b.images, np.int64) for b in self.epoch(e)])


def pixel_boxes(coords: np.ndarray, flip: np.ndarray, sizes: np.ndarray, rule: str) -> np.ndarray:
    """``crops.boxes`` records from stored fractions ``coords [n, 4]`` of images of ``sizes [n, 2]`` (H, W)."""
    c = np.asarray(coords, np.float64)
    hgt, wid = sizes[:, 0].astype(np.float64), sizes[:, 1].astype(np.float64)
    top, left, height, width = c[:, 0] * hgt, c[:, 1] * wid, c[:, 2] * hgt, c[:, 3] * wid
    if rule == "round":
        y, x = np.round(top), np.round(left)
        h, w = np.round(top + height) - y, np.round(left + width) - x
    elif rule == "floor":
        y, x, h, w = np.trunc(top), np.trunc(left), np.trunc(height), np.trunc(width)
    else:
        raise ValueError(rule)
    # fp16 fractions of a large image can put an edge one pixel past it, where Pillow pads a black line
    # and a tensor slice stops at the edge: the box is cut at the image, as a tensor replay cuts it
    h = np.where((y + h == hgt + 1), h - 1, h)
    w = np.where((x + w == wid + 1), w - 1, w)
    ok = (y >= 0) & (x >= 0) & (h >= 1) & (w >= 1) & (y + h <= hgt) & (x + w <= wid) & np.isfinite(c).all(1)
    if not ok.all():
        p = int(np.argmin(ok))
        raise SlcInputError(f"expected crop coordinates inside their image, got {c[p].tolist()} for an image of "
                            f"{int(hgt[p])} x {int(wid[p])} (row {p})")
    out = np.zeros(len(c), BOX_DTYPE)
    out["y"], out["x"], out["h"], out["w"] = y, x, h, w
    out["flip"] = np.asarray(flip, bool)
    return out


def mix_records(batch: BatchCrops, first: int, size: int) -> np.ndarray:
    """``crops.mix`` records of a batch whose first row sits at position ``first`` of its epoch."""
    b = len(batch.images)
    out = np.zeros(b, MIX_DTYPE)
    if batch.partner is None:  # an unmixed batch in a mixed file: each row is its own partner
        out["partner"], out["lam"] = first + np.arange(b), 1.0
        return out
    partner = np.asarray(batch.partner, np.int64)
    if partner.shape != (b,) or partner.min(initial=0) < 0 or partner.max(initial=0) >= b:
        raise SlcInputError(f"expected a mix index of {b} rows within the batch, got {partner.tolist()[:8]}...")
    out["partner"], out["lam"] = first + partner, float(batch.lam if batch.lam is not None else 1.0)
    if batch.bbox is not None:
        x1, y1, x2, y2 = (int(v) for v in batch.bbox)  # their x is the row axis (dim 2)
        if not (0 <= x1 <= x2 <= size and 0 <= y1 <= y2 <= size):
            raise SlcInputError(f"expected a cutmix box inside the {size} x {size} crop, got {list(batch.bbox)}")
        out["y0"], out["y1"], out["x0"], out["x1"] = x1, x2, y1, y2
    return out


def order_records(stream: CropStream, e: int, images: int) -> bytes:
    """``crops.order`` bytes of epoch ``e``."""
    order = stream.order(e)
    _check_images(order, images, e)
    if len(order) != stream.n:
        raise SlcInputError(f"expected {stream.n} crops in epoch {e}, got {len(order)}")
    return order.astype(ORDER_DTYPE).tobytes()


def _check_images(images: np.ndarray, count: int, e: int) -> None:
    if images.min(initial=0) < 0 or images.max(initial=0) >= count:
        raise SlcInputError(f"expected image indices below {count} (the images given), got {int(images.max())} in "
                            f"epoch {e}")


def epoch_records(stream: CropStream, e: int, sizes: np.ndarray, size: int) -> tuple[bytes, bytes]:
    """``(crops.boxes, crops.mix)`` bytes of epoch ``e`` (mix empty when the file does not mix)."""
    boxes, mixes, first = [], [], 0
    for batch in stream.epoch(e):
        images = np.asarray(batch.images, np.int64)
        _check_images(images, len(sizes), e)
        boxes.append(pixel_boxes(batch.coords, batch.flip, sizes[images], stream.rule))
        if stream.mix != "none":
            mixes.append(mix_records(batch, first, size))
        first += len(images)
    if first != stream.n:
        raise SlcInputError(f"expected {stream.n} crops in epoch {e}, got {first}")
    return b"".join(b.tobytes() for b in boxes), b"".join(m.tobytes() for m in mixes)

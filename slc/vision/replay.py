"""What a student needs to replay the teacher's crops: the ``replay``, ``images.fp`` and ``crops.boxes`` sections.

All three are optional sections (a reader that only wants labels ignores them):

- ``replay``: JSON with the augmentation :class:`~slc.augment.Recipe` and the image list's
  count and digest;
- ``images.fp``: 16 bytes per image, the first half of the SHA-256 of its source bytes, so a
  student can say *which* image differs, before training starts;
- ``crops.boxes``: only with ``boxes: "stored"``, 10 bytes per label (FKD/SRe2L-style explicit
  crops), in the same (epoch, position) order as the labels.
"""
from __future__ import annotations

import numpy as np

from slc.vision.augment import BOX_DTYPE, Recipe, crop_boxes, epoch_order
from slc.format.container import header_bytes
from slc.format.replay import FP_BYTES, ReplayInfo
from slc.format.sections import FINGERPRINTS, REPLAY
from slc.errors import SlcInputError



def replay_sections(info: ReplayInfo, fingerprints: np.ndarray) -> dict[str, bytes]:
    """The sections written before the chunks."""
    fp = np.ascontiguousarray(fingerprints, np.uint8)
    if fp.shape != (info.images, FP_BYTES):
        raise SlcInputError(f"expected fingerprints of shape ({info.images}, {FP_BYTES}), got {fp.shape}")
    return {REPLAY: header_bytes(info.to_json()), FINGERPRINTS: fp.tobytes()}


def stored_boxes(recipe: Recipe, epochs: int, sizes: np.ndarray):
    """Yield the ``crops.boxes`` bytes epoch by epoch: labels are stored in position order."""
    n = len(sizes)
    for e in range(epochs):
        images = epoch_order(recipe, e, n)
        yield crop_boxes(recipe, e, images, sizes[images]).tobytes()


def boxes_bytes(epochs: int, samples: int) -> int:
    return epochs * samples * BOX_DTYPE.itemsize



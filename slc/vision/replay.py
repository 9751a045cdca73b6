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

from dataclasses import dataclass

import numpy as np

from slc.vision.augment import BOX_DTYPE, Recipe, crop_boxes, epoch_order
from slc.format.container import header_bytes, parse_json
from slc.format.sections import BOXES, FINGERPRINTS, REPLAY
from slc.errors import SlcFormatError, SlcInputError, expect

FP_BYTES = 16
MAX_REPLAY_BYTES = 1 << 16


@dataclass
class ReplayInfo:
    recipe: Recipe
    images: int
    digest: str  # sha256 hex over the image count and every fingerprint in order
    source: str = ""  # where the images came from, informational
    classes: list[str] | None = None  # ImageFolder class names, informational

    def to_json(self) -> dict:
        d = {"version": 1, "recipe": self.recipe.to_json(), "images": self.images, "digest": self.digest,
             "source": self.source}
        if self.classes is not None:
            d["classes"] = self.classes
        return d

    @classmethod
    def from_bytes(cls, data: bytes) -> "ReplayInfo":
        expect(len(data) <= MAX_REPLAY_BYTES, f"a replay section of at most {MAX_REPLAY_BYTES} bytes", len(data))
        d = parse_json(data, "replay section")
        expect(type(d.get("version")) is int and d.get("version") == 1, "replay section version 1",
               repr(d.get("version")))
        n = d.get("images")
        expect(isinstance(n, int) and not isinstance(n, bool) and n >= 1, "an image count >= 1", repr(n))
        digest = d.get("digest")
        expect(isinstance(digest, str) and len(digest) == 64 and all(c in "0123456789abcdef" for c in digest),
               "a lowercase sha256 hex digest", repr(digest)[:80])
        classes = d.get("classes")
        expect(classes is None or (isinstance(classes, list) and all(isinstance(c, str) for c in classes)),
               "a list of class names", repr(classes)[:80])
        return cls(Recipe.from_json(d.get("recipe")), n, digest, str(d.get("source", "")), classes)


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



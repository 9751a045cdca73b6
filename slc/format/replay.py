"""The ``replay`` section: how the teacher's crops were made (:class:`Recipe`) and of which images
(:class:`ReplayInfo`), so a student can make the very same crops. JSON, read without running code.

The RNG and the rendering that turn a recipe into pixels are in :mod:`slc.vision.augment`; this is
only what the file stores and how a reader validates it.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass

from slc.errors import SlcFormatError, SlcInputError, expect
from slc.format.container import parse_json

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
FP_BYTES = 16  # images.fp: the first half of each image's SHA-256
MAX_REPLAY_BYTES = 1 << 16


@dataclass(frozen=True)
class Recipe:
    """How the crops of each (epoch, image) are made, and in which order images are visited.

    Everything here is stored in the file's ``replay`` section; the student needs nothing else.
    """

    seed: int = 0
    size: int = 224  # output side in pixels
    scale: tuple[float, float] = (0.08, 1.0)  # RandomResizedCrop area fraction (SRe2L/RDED default)
    ratio: tuple[float, float] = (3 / 4, 4 / 3)
    flip: float = 0.5  # horizontal flip probability
    mean: tuple[float, ...] = IMAGENET_MEAN  # on pixels / 255
    std: tuple[float, ...] = IMAGENET_STD
    channels: int = 3  # what the teacher takes; greyscale images are repeated
    invert: bool = False  # 255 - pixel first (e.g. Fashion-MNIST for an ImageNet teacher)
    order: str = "shuffle"  # "shuffle": a seeded permutation per epoch; "sequential"; "stored": crops.order (1.7)
    mix: str = "none"  # "none", "mixup" or "cutmix" with lambda ~ U(0, 1) = Beta(1, 1), per mix group
    mix_group: int = 0  # positions per mix group (the relabel batch size); 0 when mix is "none"
    boxes: str = "replay"  # "replay": recomputed from the seed; "stored": a crops.boxes section

    def __post_init__(self):
        if not 8 <= self.size <= 4096:
            raise SlcInputError(f"expected a crop size in [8, 4096], got {self.size}")
        lo, hi = self.scale
        if not 0 < lo <= hi <= 1:
            raise SlcInputError(f"expected 0 < scale min <= max <= 1, got {self.scale}")
        lo, hi = self.ratio
        if not 0 < lo <= hi:
            raise SlcInputError(f"expected 0 < ratio min <= max, got {self.ratio}")
        if not 0 <= self.flip <= 1:
            raise SlcInputError(f"expected a flip probability in [0, 1], got {self.flip}")
        if self.channels not in (1, 3):
            raise SlcInputError(f"expected 1 or 3 channels, got {self.channels}")
        if len(self.mean) != self.channels or len(self.std) != self.channels or min(self.std) <= 0:
            raise SlcInputError(f"expected {self.channels} mean and {self.channels} positive std values, got "
                                f"mean {list(self.mean)}, std {list(self.std)}")
        if self.order not in ("shuffle", "sequential", "stored"):
            raise SlcInputError(f"expected order 'shuffle', 'sequential' or 'stored', got {self.order!r}")
        if self.order == "stored" and self.boxes != "stored":
            raise SlcInputError(f"expected boxes 'stored' with order 'stored' (imported crops), got {self.boxes!r}")
        if self.mix not in ("none", "mixup", "cutmix"):
            raise SlcInputError(f"expected mix 'none', 'mixup' or 'cutmix', got {self.mix!r}")
        if (self.mix == "none") != (self.mix_group == 0) or self.mix_group < 0:
            raise SlcInputError(f"expected a mix group >= 2 with mixup/cutmix and 0 without, got {self.mix_group} "
                                f"with mix {self.mix!r}")
        if self.boxes not in ("replay", "stored"):
            raise SlcInputError(f"expected boxes 'replay' or 'stored', got {self.boxes!r}")
        if not 0 <= self.seed < 1 << 63:
            raise SlcInputError(f"expected a seed in [0, 2**63), got {self.seed}")

    @classmethod
    def for_channels(cls, channels: int = 3, mean: tuple[float, ...] | None = None,
                     std: tuple[float, ...] | None = None, **fields) -> "Recipe":
        """A recipe whose mean/std default to ImageNet's for 3 channels, 0.5 for greyscale teachers."""
        grey = channels == 1
        return cls(channels=channels, mean=mean or ((0.5,) if grey else IMAGENET_MEAN),
                   std=std or ((0.5,) if grey else IMAGENET_STD), **fields)

    def to_json(self) -> dict:
        d = asdict(self)
        return {k: list(v) if isinstance(v, tuple) else v for k, v in d.items()}

    @classmethod
    def from_json(cls, d: dict) -> "Recipe":
        expect(isinstance(d, dict), "a recipe object in the replay section", type(d).__name__)
        known = {f for f in cls.__dataclass_fields__}
        kw = {}
        for k in ("scale", "ratio"):
            expect(k not in d or (isinstance(d[k], list) and len(d[k]) == 2), f"recipe field {k!r} as [lo, hi]",
                   repr(d.get(k))[:80])
        for k in ("invert",):
            expect(k not in d or isinstance(d[k], bool), f"recipe field {k!r} to be a boolean", repr(d.get(k))[:80])
        expect(not isinstance(d.get("flip"), bool), "recipe field 'flip' to be a number", repr(d.get("flip")))
        for k, v in d.items():
            if k not in known:
                continue  # a newer writer's field: ignore, as for the header
            kw[k] = tuple(v) if isinstance(v, list) else v
        try:
            r = cls(**kw)
            for k in ("seed", "size", "channels", "mix_group"):
                expect(isinstance(getattr(r, k), int) and not isinstance(getattr(r, k), bool),
                       f"recipe field {k!r} to be an integer", repr(getattr(r, k)))
            for k in ("scale", "ratio", "mean", "std"):
                v = getattr(r, k)
                expect(all(isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x) for x in v),
                       f"recipe field {k!r} to be finite numbers", repr(v)[:80])
        except SlcInputError as e:
            raise SlcFormatError(f"expected a valid replay recipe, got: {e}") from None
        except TypeError as e:
            expect(False, "a well-typed replay recipe", str(e))
        return r


# --------------------------------------------------------------------------- crop boxes
# BOX_DTYPE (format.sections): the 10-byte record of a crop box, as crops.boxes stores it


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

"""Part files: one job's contiguous run of a file's chunks, and joining parts into the whole file.

A part is an ``.slc`` container with every section of the whole file before the chunks (the header
says the whole file's ``epochs``), the chunks ``[first, stop)`` of the whole file's tiling with offsets
counted from its own ``chunks`` section, its labels' records of the per-label sections after the
chunks (``crops.boxes``), and two more things (format 1.6):

- a REQUIRED ``part`` section, JSON ``{"chunks": [first, stop], "of": T, "minor": m, "state": {...}}``:
  the run it holds of the ``T`` chunks, the minor version of the whole file, and the arrays of
  ``state``. Being required, it makes every reader that does not know parts refuse the file.
- ``state.<name>`` sections (optional): arrays the codec encodes with that no decoder needs (a VQAE's
  encoder), so another job can go on encoding with the same codec (``codec_from``).

A part with no chunks (``[0, 0]``) is a *codec file*: the fitted codec alone, for jobs that share it.
:func:`slc.merge` (:mod:`slc.merge_parts`) joins parts into the file one process would have written, byte for byte.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Iterable, Iterator

import numpy as np

from slc.errors import SlcInputError, expect
from slc.format.container import header_bytes, parse_json
from slc.format.tiling import Tiling

PART = "part"
STATE_PREFIX = "state."
SINCE_MINOR = 6
MAX_PART_BYTES = 1 << 20


@dataclass(frozen=True)
class PartInfo:
    """The body of a ``part`` section."""

    first: int
    stop: int
    of: int
    minor: int
    state: dict[str, dict] = field(default_factory=dict)  # name -> {"dtype", "shape"}

    @property
    def codec_only(self) -> bool:
        return self.first == self.stop

    def describe(self) -> str:
        return "a codec file (no chunks)" if self.codec_only else f"chunks {self.first}..{self.stop - 1} of {self.of}"

    def to_bytes(self) -> bytes:
        return header_bytes({"chunks": [self.first, self.stop], "of": self.of, "minor": self.minor,
                             "state": self.state})

    @classmethod
    def parse(cls, data: bytes, tiling: Tiling) -> "PartInfo":
        expect(len(data) <= MAX_PART_BYTES, f"a {PART!r} section of at most {MAX_PART_BYTES} bytes", len(data))
        d = parse_json(data, f"{PART!r} section")
        ok = (set(d) == {"chunks", "of", "minor", "state"} and isinstance(d["chunks"], list) and len(d["chunks"]) == 2
              and all(_int(v) for v in (*d["chunks"], d["of"], d["minor"])) and isinstance(d["state"], dict))
        expect(ok, f"a {PART!r} section {{chunks: [first, stop], of, minor, state}}", repr(d)[:120])
        first, stop = d["chunks"]
        total = len(tiling)
        expect(d["of"] == total, f"a part of the header's {total} chunks", f"a part of {d['of']}")
        expect(0 <= first <= stop <= total, f"a chunk range inside 0..{total}", f"{first}..{stop}")
        for name, spec in d["state"].items():
            good = (isinstance(spec, dict) and set(spec) == {"dtype", "shape"} and spec["dtype"] in ("<f4", "<f2")
                    and isinstance(spec["shape"], list) and all(_int(s) and s < 1 << 31 for s in spec["shape"]))
            expect(good, f"state {name!r} described as {{dtype '<f4' or '<f2', shape}}", repr(spec)[:80])
        return cls(first, stop, total, d["minor"], d["state"])


def _int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v >= 0


@dataclass(frozen=True)
class PartSpec:
    """Which part of the file a job writes: share ``I`` of ``N`` (``"I/N"``), epochs ``[A, B)`` (``"A:B"``),
    or the fitted codec alone (``codec_only``)."""

    share: tuple[int, int] | None = None
    epochs: tuple[int, int] | None = None
    codec_only: bool = False

    @classmethod
    def share_of(cls, text: str) -> "PartSpec":
        i, n = _pair(text, "/", "a part as I/N (0 <= I < N)")
        if not 0 <= i < n:
            raise SlcInputError(f"expected a part as I/N with 0 <= I < N, got {text!r}")
        return cls(share=(i, n))

    @classmethod
    def epoch_range(cls, text: str) -> "PartSpec":
        a, b = _pair(text, ":", "an epoch range as A:B (epochs A .. B-1)")
        if not 0 <= a < b:
            raise SlcInputError(f"expected an epoch range A:B with 0 <= A < B, got {text!r}")
        return cls(epochs=(a, b))

    def chunks(self, tiling: Tiling) -> tuple[int, int]:
        """``[first, stop)`` of ``tiling``'s chunks."""
        total = len(tiling)
        if self.codec_only:
            return 0, 0
        if self.share is not None:
            i, n = self.share
            return total * i // n, total * (i + 1) // n
        a, b = self.epochs
        if b > tiling.epochs:
            raise SlcInputError(f"expected an epoch range within the {tiling.epochs} epochs, got {a}:{b}")
        g = tiling.epochs_per_chunk
        for e in (a, b):
            if e % g and e != tiling.epochs:
                raise SlcInputError(f"expected an epoch range on chunk boundaries (chunks hold {g} epochs each: "
                                    f"multiples of {g}), got {a}:{b}; pass `epochs_per_chunk=1` to split anywhere")
        return a // g * tiling.per_epoch, -(-b // g) * tiling.per_epoch

    def to_json(self) -> dict:
        return {"share": list(self.share) if self.share else None, "epochs": list(self.epochs) if self.epochs else None,
                "codec_only": self.codec_only}


def _pair(text: str, sep: str, form: str) -> tuple[int, int]:
    try:
        a, b = (int(v) for v in text.split(sep))
    except ValueError:
        raise SlcInputError(f"expected {form}, got {text!r}") from None
    return a, b


def label_range(tiling: Tiling, first: int, stop: int) -> tuple[int, int]:
    """The labels (``epoch * samples + sample``) chunks ``[first, stop)`` hold."""

    def at(i: int) -> int:
        if i >= len(tiling):
            return tiling.epochs * tiling.samples
        e, s, _ = tiling.chunk(i)
        return e * tiling.samples + s

    return at(first), at(stop)


def byte_slice(parts: Iterable[bytes], start: int, stop: int) -> Iterator[bytes]:
    """Bytes ``[start, stop)`` of a stream of pieces."""
    pos = 0
    for p in parts:
        a, b = max(start - pos, 0), min(stop - pos, len(p))
        if a < b:
            yield p[a:b]
        pos += len(p)
        if pos >= stop:
            return


# --------------------------------------------------------------------------- comparing runs
KNOWN_AS = {"images.fp": "images (section 'images.fp')", "tokens.seq": "sequences (section 'tokens.seq')",
            "tokens.ids": "input tokens (section 'tokens.ids')", "epochs.map": "pruned epochs (section 'epochs.map')"}
JSON_SECTIONS = {"header": "header field", "replay": "crop replay field"}  # named by their first differing key



def first_difference(a: dict[str, bytes], b: dict[str, bytes]) -> str | None:
    """What differs between two runs' sections before the chunks, named for a person: ``None`` if nothing."""
    for name in list(a) + [n for n in b if n not in a]:
        if a.get(name) == b.get(name):
            continue
        if name not in a or name not in b:
            return f"section {name!r} in one and not the other"
        if name in JSON_SECTIONS:
            key, va, vb = _first_key(json.loads(a[name]), json.loads(b[name]))
            return f"{JSON_SECTIONS[name]} {key!r} ({_short(va)} vs {_short(vb)})"
        return KNOWN_AS.get(name, f"codec tensor {name!r}" if not name.startswith(STATE_PREFIX)
                            else f"codec encoder {name[len(STATE_PREFIX):]!r}")
    return None


def _first_key(a: dict, b: dict, prefix: str = "") -> tuple[str, object, object]:
    """The first (dotted) key where two JSON objects differ, and its two values."""
    for k in sorted(set(a) | set(b)):
        va, vb = a.get(k), b.get(k)
        if va != vb:
            if isinstance(va, dict) and isinstance(vb, dict):
                return _first_key(va, vb, f"{prefix}{k}.")
            return f"{prefix}{k}", va, vb
    return prefix.rstrip("."), a, b


CODEC_FIELDS = ("codec", "codec_params", "tensors")


Sections = list[tuple[str, bytes, bool]]  # (name, body, required), in file order


def adopt_codec(setup: Sections, codec: dict[str, bytes], path: str) -> Sections:
    """A job's sections before the chunks with the codec of a codec or part file (``codec``: its sections):
    its header's codec fields and its tensors, as they are. Anything else that differs is refused."""
    mine = {name: data for name, data, _ in setup}
    theirs = {k: v for k, v in codec.items() if not k.startswith(STATE_PREFIX)}
    h, hf = json.loads(mine["header"]), json.loads(theirs["header"])
    h.update({k: hf[k] for k in CODEC_FIELDS if k in hf})
    mine["header"] = header_bytes(h)
    mine.update({name: theirs[name] for name in hf.get("tensors", {}) if name in theirs})
    why = first_difference(theirs, mine)
    if why is not None:
        raise SlcInputError(f"expected a codec file of this run, got a different {why} in {path}")
    return [(name, mine[name], required) for name, _, required in setup]


def _short(v) -> str:
    s = json.dumps(v, sort_keys=True)
    return s if len(s) <= 60 else s[:57] + "..."


# --------------------------------------------------------------------------- the codec a part carries
def state_sections(state: dict[str, np.ndarray]) -> tuple[dict[str, dict], dict[str, bytes]]:
    """A codec's encoder arrays as ``part`` specs and ``state.<name>`` section bodies."""
    specs, bodies = {}, {}
    for name, a in state.items():
        a = np.ascontiguousarray(a, np.float32)
        specs[name] = {"dtype": "<f4", "shape": list(a.shape)}
        bodies[STATE_PREFIX + name] = a.astype("<f4").tobytes()
    return specs, bodies


__all__ = ["PART", "PartInfo", "PartSpec", "label_range", "byte_slice", "first_difference", "adopt_codec",
           "state_sections"]

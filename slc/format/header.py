"""The JSON header of a ``.slc`` file: label layout, temperature, codec and its tensors."""
from __future__ import annotations

from dataclasses import dataclass, field

from slc.errors import expect
from slc.format.tiling import Tiling

MAX_CLASSES = 1 << 21  # 2M: token vocabularies included
MAX_LABELS = 1 << 48
MAX_CHUNK_ELEMENTS = 1 << 28  # decoded floats per chunk: bounds what one chunk read allocates


@dataclass
class Header:
    classes: int
    epochs: int
    samples: int
    temperature: float
    source: str  # "logits" or "probs": what the labels were computed from
    codec: str
    codec_params: dict
    tensors: dict[str, dict] = field(default_factory=dict)  # section name -> {"dtype", "shape"}
    chunk_size: int = 4096
    entropy: str = "none"  # "none" or "zstd"
    writer: str = ""
    user: dict = field(default_factory=dict)
    epochs_per_chunk: int = 1  # 1.5: whole epochs stored in each chunk (slc.format.tiling)

    @property
    def tiling(self) -> Tiling:
        return Tiling(self.epochs, self.samples, self.chunk_size, self.epochs_per_chunk)

    @property
    def labels(self) -> int:
        return self.epochs * self.samples

    def to_json(self) -> dict:
        spans = {"epochs_per_chunk": self.epochs_per_chunk} if self.epochs_per_chunk > 1 else {}
        return {**spans, "classes": self.classes, "epochs": self.epochs, "samples": self.samples,
                "temperature": self.temperature, "source": self.source, "codec": self.codec,
                "codec_params": self.codec_params, "tensors": self.tensors, "chunk_size": self.chunk_size,
                "entropy": self.entropy, "writer": self.writer, "user": self.user}

    @classmethod
    def from_json(cls, d: dict) -> "Header":
        def get(key, typ, what, optional=False):
            if optional and key not in d:
                return typ()
            expect(key in d, f"header field {key!r}", f"fields {sorted(d)}")
            v = d[key]
            expect(isinstance(v, typ) and not isinstance(v, bool), f"header field {key!r} to be {what}", repr(v)[:80])
            return v

        classes = get("classes", int, "an integer")
        epochs = get("epochs", int, "an integer")
        samples = get("samples", int, "an integer")
        expect(2 <= classes <= MAX_CLASSES, f"2 <= classes <= {MAX_CLASSES}", classes)
        expect(1 <= epochs < 1 << 32 and samples >= 1, "1 <= epochs < 2**32 and samples >= 1",
               f"{epochs} x {samples}")
        expect(epochs * samples <= MAX_LABELS, f"at most {MAX_LABELS} labels", epochs * samples)
        t = get("temperature", (int, float), "a number")
        expect(0 < t <= 1e4, "a temperature in (0, 1e4]", repr(t)[:80])  # also false for NaN, no float(10**400)
        source = get("source", str, "a string")
        expect(source in ("logits", "probs"), "source 'logits' or 'probs'", repr(source))
        chunk = get("chunk_size", int, "an integer")
        expect(1 <= chunk and chunk * classes <= MAX_CHUNK_ELEMENTS,
               f"1 <= chunk_size and chunk_size x classes <= {MAX_CHUNK_ELEMENTS}", f"{chunk} x {classes}")
        entropy = get("entropy", str, "a string")
        expect(entropy in ("none", "zstd"), "entropy 'none' or 'zstd'", repr(entropy))
        per_chunk = get("epochs_per_chunk", int, "an integer", True) if "epochs_per_chunk" in d else 1
        Tiling(epochs, samples, chunk, per_chunk)  # validates it
        tensors = get("tensors", dict, "an object")
        for name, spec in tensors.items():
            ok = (isinstance(spec, dict) and set(spec) == {"dtype", "shape"} and isinstance(spec["shape"], list)
                  and all(isinstance(s, int) and not isinstance(s, bool) and 0 <= s < 1 << 31 for s in spec["shape"]))
            expect(ok, f"tensor {name!r} described as {{dtype, shape}}", repr(spec)[:80])
        return cls(classes, epochs, samples, float(t), source, get("codec", str, "a string"),
                   get("codec_params", dict, "an object"), tensors, chunk, entropy,
                   get("writer", str, "a string", True), get("user", dict, "an object", True), per_chunk)

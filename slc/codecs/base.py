"""What every codec provides. A codec turns a block of labels into one chunk payload and back."""
from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any, Callable, ClassVar, Literal

import numpy as np

from slc.errors import SlcFormatError, expect

Kind = Literal["probs", "logits"]
# ``fill(lo, hi, dst)``: write the logits of rows ``[lo, hi)`` into ``dst``, a float32 torch tensor ``(hi - lo, C)``
LogitRows = Callable[[int, int, Any], None]
UNAVAILABLE = 1 << 62  # a measured payload for plan params the input cannot give (sparse input with fewer words)


class Codec(ABC):
    """A fitted codec.

    ``encode`` takes log-probabilities at the stored temperature, shape ``(n, C)``;
    ``decode`` returns ``(labels, kind)`` where ``labels`` is ``(n, C)`` float32 and
    ``kind`` says whether they are probabilities or logits (softmax gives the label).
    Everything needed to decode lives in ``params()`` (JSON) and ``tensors()`` (arrays).
    """

    name: ClassVar[str]
    since_minor: ClassVar[int] = 0  # the format minor version that introduced this codec
    fit_seconds: float = 0.0
    keeps_top1: ClassVar[bool] = False  # every decoded label's argmax is the input's, by construction

    def __init__(self, classes: int):
        self.classes = classes

    @abstractmethod
    def params(self) -> dict: ...

    def describe(self) -> str:
        """How logs name this fitted codec (``vqae``, ``top-15``)."""
        return self.name

    def tensors(self) -> dict[str, np.ndarray]:
        return {}

    @abstractmethod
    def payload_size(self, n: int) -> int:
        """Exact raw payload bytes for ``n`` labels (lets readers bound allocations)."""

    def work_per_label(self) -> int:
        """Floats a decode allocates per label; readers bound ``chunk_size`` times this."""
        return self.classes

    def encoder_state(self) -> dict[str, np.ndarray]:
        """Arrays encoding needs that the file does not store (kept by ``--resume`` beside the partial file)."""
        return {}

    def restore_encoder_state(self, state: dict[str, np.ndarray]) -> None:
        """Inverse of :meth:`encoder_state`, for a codec rebuilt with :meth:`from_file`."""

    @abstractmethod
    def encode(self, logp: np.ndarray) -> bytes: ...

    @abstractmethod
    def decode(self, payload: bytes | memoryview, n: int) -> tuple[np.ndarray, Kind]: ...

    def logit_rows(self, payload: bytes | memoryview, n: int) -> LogitRows | None:
        """For a codec that decodes logits row by row: the payload checked as :meth:`decode` checks it, and a
        :data:`LogitRows` writing the logits ``decode`` returns, block by block (so that decoding to
        probabilities writes each output row once, :func:`slc.codecs.labels.decode_probs`). ``None``: decode only."""
        return None

    @classmethod
    def tensor_specs(cls, params: dict, classes: int) -> dict[str, tuple[str, tuple[int, ...]]]:
        """The tensors a file with these params must carry: name -> (dtype, shape)."""
        return {}

    @classmethod
    @abstractmethod
    def from_file(cls, params: dict, tensors: dict[str, np.ndarray], classes: int) -> "Codec":
        """Rebuild from stored params and tensors. Must validate ``params`` fully."""

    # ---------------------------------------------------------------- planning and fitting
    # Codecs sized by one knob (top-k's k, PCA's components, quantisation bits) describe their
    # sizes here and the generic planner in ``slc.codecs.planner`` picks the largest that fits a target.
    @classmethod
    def ladder(cls, classes: int, options: dict) -> list[dict]:
        """Candidate ``plan params``, from the smallest file to the largest."""
        raise NotImplementedError(f"{cls.name} is not sized by the generic planner")

    @classmethod
    def planned_payload(cls, params: dict, classes: int, n: int) -> int:
        """Payload bytes of ``n`` labels for planned ``params`` (as :meth:`payload_size`)."""
        raise NotImplementedError

    @classmethod
    def planned_params(cls, params: dict, classes: int) -> dict:
        """The params a codec fitted for planned ``params`` stores (what the header holds), at their widest.

        Lets the planner size the header exactly before fitting; by default the plan params are stored as they are.
        """
        return dict(params)

    @classmethod
    def planned_tensors(cls, params: dict, classes: int) -> list[int]:
        """Byte sizes of the tensor sections for planned ``params``."""
        specs = cls.tensor_specs(cls.planned_params(params, classes), classes)
        return [int(np.prod(shape)) * np.dtype(dtype).itemsize for dtype, shape in specs.values()]

    option_names: ClassVar[tuple[str, ...]] = ()  # the parameters a user may fix (``--param``), as ``ladder`` reads them
    untargeted: ClassVar[dict] = {}  # options a ladder takes when no ratio or budget sizes it

    @classmethod
    def measured_payload(cls, sample, probes: list, classes: int, options: dict) -> Callable[[dict, int], int] | None:
        """Payload bytes of ``n`` labels for plan params after zstd, measured on a fit ``sample`` (blocks of
        log-probabilities) and ``probes`` (runs of one chunk of raw rows); None where the raw size is the
        estimate. The callable also has ``calibrate(codec, probes, kind, temperature)``, which measures the
        fitted codec on the probes and corrects it (what only a fit can tell, such as value codes)."""
        return None

    @classmethod
    def fit(cls, logp: np.ndarray | None, classes: int, params: dict, seed: int = 0) -> "Codec":
        """A codec for planned ``params``, fitted on ``logp`` (log-probabilities at T) if it learns anything."""
        raise NotImplementedError

    needs_fit: ClassVar[bool] = False  # whether :meth:`fit` needs a sample of labels
    default_zstd: ClassVar[bool] = False  # whether chunks are zstd-coded unless the user says
    zstd_level: ClassVar[int] = 19


class TokenCodec(Codec):
    """A codec for token-level labels over a vocabulary: it keeps the ``k`` most probable words exactly.

    It takes dense logits with ``-inf`` (suppressed words) or already-sparse labels, and reads back
    to sparse form without building the ``(n, V)`` distribution. ``tail``: how the mass outside the
    ``k`` words is spread when read densely (:attr:`dense_tail`, over :attr:`prior_logp` if any).
    """

    k: int
    tail: str
    prior_logp: np.ndarray | None = None

    @abstractmethod
    def select(self, block: np.ndarray, kind: Kind, temperature: float):
        """Dense ``(n, V)`` logits or probabilities -> :class:`~slc.codecs.sparse.SparseLabels` at ``temperature``."""

    @abstractmethod
    def encode_sparse(self, labels) -> bytes:
        """:class:`~slc.codecs.sparse.SparseLabels` -> one chunk payload."""

    @abstractmethod
    def decode_sparse(self, payload: bytes | memoryview, n: int):
        """One chunk payload -> :class:`~slc.codecs.sparse.SparseLabels` of ``n`` tokens."""

    @abstractmethod
    def dense(self, labels) -> tuple[np.ndarray, Kind]:
        """Decoded :class:`~slc.codecs.sparse.SparseLabels` -> dense ``(n, V)`` labels, as :meth:`decode` gives them."""

    @property
    @abstractmethod
    def dense_tail(self) -> str:
        """How a dense read spreads the tail: ``"prior"``, ``"capped"`` or ``"uniform"``."""

    @classmethod
    @abstractmethod
    def reduce_sample(cls, blocks, classes: int, params: dict):
        """What :meth:`fit` keeps of sampled blocks (dense log-probabilities or sparse labels): a vocabulary's
        worth of dense rows would not fit in memory."""


def param(params: dict, key: str, typ: type | tuple[type, ...], lo: float | None = None,
          hi: float | None = None, choices: tuple | None = None):
    """Fetch and validate one codec parameter from an untrusted header."""
    expect(key in params, f"codec parameter {key!r}", f"params {sorted(params)}")
    v = params[key]
    ok = isinstance(v, typ) and not (isinstance(v, bool) and typ in (int, float, (int, float)))
    expect(ok, f"codec parameter {key!r} of type {getattr(typ, '__name__', typ)}", repr(v))
    if lo is not None or hi is not None:
        expect((lo is None or v >= lo) and (hi is None or v <= hi), f"{key} in [{lo}, {hi}]", v)
    if choices is not None:
        expect(v in choices, f"{key} in {list(choices)}", repr(v))
    return v


def split_payload(payload: bytes | memoryview, *sizes: int) -> list[memoryview]:
    view = memoryview(payload)
    if sum(sizes) != len(view):
        raise SlcFormatError(f"expected a payload of {sum(sizes)} bytes, got {len(view)}")
    out, pos = [], 0
    for s in sizes:
        out.append(view[pos:pos + s])
        pos += s
    return out

"""Token-level labels: exact top-k word indices, vector-quantised values, a modelled tail (paper section 4.2).

Per token the payload holds the k most probable words as *frequency ranks* (rank 0 is the word
most often in a fit sample's top k) written as byte planes, then the values. Ranks are small and
skewed, so the planes' high bytes are nearly constant and chunk zstd takes them to well under a
byte per index (measured 0.75 B at V = 72,547) while any vocabulary up to 2^32 words fits.

Values are the collapsed (k+1)-class distribution (the k words, then the tail as one class),
coded by a VQAE (``values = "vqae"``: ``m`` codes of ``log2 K`` bits per token) or kept as
bfloat16 probabilities (``values = "bf16"``, the usual "top-k in bf16" reference), or kept exactly as
float32 log-probabilities (``values = "f32"``, format 1.7: what ``slc import`` of another tool's top-k
keeps bit for bit).

The tail (mass outside the k words) goes to the other words by ``tail``:

- ``prior``: in proportion to a stored distribution ``q`` over the vocabulary (the fit sample's mean
  teacher distribution mixed with ``1 - prior_weight`` of uniform), renormalised over each token's
  unstored words;
- ``capped`` (the default): as ``prior``, but no unstored word gets more than the smallest stored
  probability (water-filling: the words the prior favours most are held at that cap, the rest share
  in proportion), so the k stored words stay the k most probable; 4-10% lower KL than ``prior`` and
  top-1 kept where ``prior`` lost it (measured on the KJV trigram labels);
- ``uniform``: equally (FKD's smoothing); ``mr``: nowhere, the k words are renormalised;
  ``mrs``: each unstored word gets the smallest stored probability, then all are renormalised.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Iterable

import numpy as np
import torch
import zstandard

from slc.format.bitpack import bits_for, pack_bits, packed_size, unpack_bits
from slc.errors import SlcFormatError, SlcInputError, expect
from slc.codecs.labels import PROB_FLOOR
from slc.codecs.sparse import SparseLabels, collapse, mixed_prior, expand, select_topk, truncate, uncollapse
from slc.codecs.vqae import FitConfig
from slc.codecs.base import UNAVAILABLE, TokenCodec, param, split_payload
from slc.codecs.fitting import check_tensors
from slc.codecs.vqae import VQAECodec

TAILS = ("prior", "capped", "uniform", "mr", "mrs")
PRIOR_TAILS = ("prior", "capped")  # the tails that store a prior
VALUES = ("vqae", "bf16", "f32")
PREFIX = "topk-vq."
DEFAULTS = {"values": "vqae", "m": 8, "codes": 256, "tail": "capped", "prior_weight": 0.99}
UNTARGETED_K = 64  # k when no ratio or budget sizes it (the usual top-k of offline LM distillation)
MAX_K = 4096
K_STEP = 1.05  # the k ladder's step: fine enough that some k lands in [R, 1.1 R] after zstd


@dataclass
class TokenSample:
    """What fitting needs from a sample of labels: its top-k rows and its mean distribution."""

    sparse: SparseLabels
    prob_sum: np.ndarray  # (V,) float64 sum of the sampled distributions
    rows: int


def index_bytes(vocab: int) -> int:
    return (bits_for(vocab) + 7) // 8


def rank_planes(ranks: np.ndarray, nbytes: int) -> bytes:
    """Byte planes of ``ranks``: all low bytes, then all second bytes, ... (zstd finds the runs)."""
    r = np.ascontiguousarray(ranks, dtype="<u4").reshape(-1)
    return r.view(np.uint8).reshape(-1, 4)[:, :nbytes].T.tobytes()


def plane_ranks(data: bytes | memoryview, count: int, nbytes: int) -> np.ndarray:
    planes = np.frombuffer(data, np.uint8).reshape(nbytes, count)
    out = np.zeros((count, 4), np.uint8)
    out[:, :nbytes] = planes.T
    return out.view("<u4").reshape(count)


def f32_values(idx: np.ndarray, logp: np.ndarray) -> SparseLabels:
    """Stored float32 log-probabilities (``values = "f32"``): each at most 0 (or ``-inf``), a mass of at most 1."""
    k = logp.shape[1] if logp.ndim == 2 else 0
    with np.errstate(over="ignore", invalid="ignore"):
        total = np.exp(logp.astype(np.float64)).sum(1)
    ok = len(logp) == 0 or (not np.isnan(logp).any() and logp.max() <= 1e-3 and total.max() <= 1 + 1e-2 * k)
    expect(ok, "top-k log-probabilities at most 0, with a mass of at most 1", "values out of range")
    with np.errstate(divide="ignore"):
        tail = np.log(np.clip(1 - total, 0, None)).astype(np.float32)
    return SparseLabels(idx, logp.astype(np.float32), tail)


def bf16_bits(x: np.ndarray) -> np.ndarray:
    """Round float32 to bfloat16 (nearest even) and return the 16-bit patterns."""
    return torch.from_numpy(np.ascontiguousarray(x, np.float32)).to(torch.bfloat16).view(torch.int16).numpy().view("<u2")


def from_bf16(bits: np.ndarray) -> np.ndarray:
    return (np.asarray(bits, np.uint32) << 16).view(np.float32)


class TopKVQCodec(TokenCodec):
    name = "topk-vq"
    keeps_top1 = True
    since_minor = 3
    default_zstd = True  # the rank planes are made for it
    zstd_level = 12  # 3% larger than 19 on the KJV ranks, 5x faster (benchmarks/bench_tokens.py)
    needs_fit = True

    def __init__(self, classes: int, k: int, order: np.ndarray, values: VQAECodec | None, tail: str,
                 prior_logp: np.ndarray | None, prior_weight: float | None, raw: str = "bf16"):
        super().__init__(classes)
        self.k, self.order, self.values_codec, self.tail = k, np.asarray(order, np.int64), values, tail
        self.values = "vqae" if values is not None else raw  # raw: "bf16" or "f32" values, stored as they are
        if self.values == "f32":
            self.since_minor = 7  # a 1.3-1.6 reader refuses the value cleanly
        self.nbytes = index_bytes(classes)
        self.prior_weight = prior_weight
        self.prior_logp = None if prior_logp is None else np.asarray(prior_logp, np.float32)
        self.word_of, self.rank_of = rank_order(self.order, classes)

    # ---------------------------------------------------------------- storage
    def params(self) -> dict:
        p = {"k": self.k, "index_bytes": self.nbytes, "ranked": len(self.order), "values": self.values,
             "tail": self.tail}
        if self.tail in PRIOR_TAILS:
            p["prior_weight"] = self.prior_weight
        if self.values_codec is not None:
            p["vq"] = self.values_codec.params()
        return p

    def tensors(self) -> dict[str, np.ndarray]:
        t = {PREFIX + "order": self.order.astype("<u4")}
        if self.prior_logp is not None:
            t[PREFIX + "prior"] = self.prior_logp.astype("<f2")
        if self.values_codec is not None:
            t.update({PREFIX + name.split(".", 1)[1]: a for name, a in self.values_codec.tensors().items()})
        return t

    @classmethod
    def _checked(cls, params: dict, classes: int) -> dict:
        p = {"k": param(params, "k", int, 1, min(MAX_K, classes - 1)),
             "ranked": param(params, "ranked", int, 0, classes),
             "values": param(params, "values", str, choices=VALUES),
             "tail": param(params, "tail", str, choices=TAILS)}
        param(params, "index_bytes", int, choices=(index_bytes(classes),))
        if p["tail"] in PRIOR_TAILS:
            p["prior_weight"] = float(param(params, "prior_weight", (int, float), 0.0, 1.0))
        if p["values"] == "vqae":
            expect(isinstance(params.get("vq"), dict), "codec parameter 'vq' (an object)", repr(params.get("vq")))
            p["vq"] = params["vq"]
            VQAECodec._checked(p["vq"], p["k"] + 1)
        return p

    @classmethod
    def tensor_specs(cls, params, classes):
        p = cls._checked(params, classes)
        specs = {PREFIX + "order": ("<u4", (p["ranked"],))}
        if p["tail"] in PRIOR_TAILS:
            specs[PREFIX + "prior"] = ("<f2", (classes,))
        if p["values"] == "vqae":
            for name, spec in VQAECodec.tensor_specs(p["vq"], p["k"] + 1).items():
                specs[PREFIX + name.split(".", 1)[1]] = spec
        return specs

    @classmethod
    def from_file(cls, params, tensors, classes):
        p = cls._checked(params, classes)
        specs = cls.tensor_specs(params, classes)
        order = tensors[PREFIX + "order"]
        expect(tuple(order.shape) == specs[PREFIX + "order"][1], "an order tensor of the declared length",
               list(order.shape))
        if order.size:
            expect(int(order.max()) < classes, f"ranked words < {classes}", int(order.max()))
            expect(np.unique(order).size == order.size, "distinct words in the rank order", "a repeated word")
        prior = None
        if p["tail"] in PRIOR_TAILS:
            check_tensors({PREFIX + "prior": tensors[PREFIX + "prior"]}, {PREFIX + "prior": specs[PREFIX + "prior"]})
            prior = tensors[PREFIX + "prior"].astype(np.float32)
        values = None
        if p["values"] == "vqae":
            inner = {"vqae." + name[len(PREFIX):]: a for name, a in tensors.items()
                     if name not in (PREFIX + "order", PREFIX + "prior")}
            values = VQAECodec.from_file(p["vq"], inner, p["k"] + 1)
        return cls(classes, p["k"], order, values, p["tail"], prior, p.get("prior_weight"), raw=p["values"])

    def encoder_state(self) -> dict[str, np.ndarray]:
        return {} if self.values_codec is None else self.values_codec.encoder_state()

    def restore_encoder_state(self, state: dict[str, np.ndarray]) -> None:
        if self.values_codec is not None:
            self.values_codec.restore_encoder_state(state)

    # ---------------------------------------------------------------- coding
    def payload_size(self, n: int) -> int:
        return self.planned_payload(self.params(), self.classes, n)

    def work_per_label(self) -> int:
        extra = 0 if self.values_codec is None else self.values_codec.work_per_label()
        return self.classes + 4 * self.k + extra

    def encode(self, logp: np.ndarray) -> bytes:
        return self.encode_sparse(select_topk(logp, self.k))

    def select(self, block: np.ndarray | torch.Tensor, kind: str, temperature: float) -> SparseLabels:
        """Top k of raw teacher output (logits or probabilities) at ``temperature``, without a dense log-softmax.

        A tensor is selected where it is (the teacher's device): only the top k and the tails reach the host.
        """
        x = block.float() if isinstance(block, torch.Tensor) else torch.from_numpy(np.ascontiguousarray(block, np.float32))
        if kind == "probs":
            x = x.clamp_min(PROB_FLOOR).log()
        return select_topk(x / temperature if temperature != 1 else x, self.k, normalised=False)

    def encode_sparse(self, s: SparseLabels) -> bytes:
        n = len(s)
        if s.k < self.k:
            raise SlcInputError(f"expected at least k={self.k} words per token, got {s.k} (use `options=k={s.k}`)")
        s = truncate(s, self.k)
        ranks = rank_planes(self.rank_of[s.indices], self.nbytes)
        if self.values == "f32":
            return ranks + np.ascontiguousarray(s.logp, "<f4").tobytes()
        if self.values_codec is None:
            return ranks + bf16_bits(np.exp(s.logp)).tobytes()
        codes = self.values_codec.codes(collapse(s))
        return ranks + pack_bits(codes.numpy(), self.values_codec.bits) if n else ranks

    def decode_sparse(self, payload: bytes | memoryview, n: int) -> SparseLabels:
        """The stored words (most probable first for bf16 values), their log-probabilities and the tail."""
        k = self.k
        raw_idx, raw_vals = split_payload(payload, n * k * self.nbytes, self.payload_size(n) - n * k * self.nbytes)
        ranks = plane_ranks(raw_idx, n * k, self.nbytes)
        if n and int(ranks.max()) >= self.classes:
            raise SlcFormatError(f"expected word ranks < {self.classes}, got {int(ranks.max())}")
        idx = self.word_of[ranks].reshape(n, k)
        if self.values == "f32":
            s = f32_values(idx, np.frombuffer(raw_vals, "<f4").reshape(n, k))
        elif self.values_codec is None:
            p = from_bf16(np.frombuffer(raw_vals, "<u2")).reshape(n, k)
            total = p.sum(1, dtype=np.float64)
            ok = n == 0 or (p.min() >= 0 and p.max() <= 1 and total.max() <= 1 + 1e-2 * k)
            expect(ok, "top-k probabilities in [0, 1] summing to at most 1", "values out of range")
            with np.errstate(divide="ignore"):
                logp = np.log(p)
                tail = np.log(np.clip(1 - total, 0, None)).astype(np.float32)
            s = SparseLabels(idx, logp, tail)
        else:
            vq = self.values_codec
            codes = unpack_bits(raw_vals, n * vq.m, vq.bits)
            if codes.size and codes.max() >= vq.k:
                raise SlcFormatError(f"expected code indices < {vq.k}, got {codes.max()}")
            out, _ = vq.decode_codes(torch.from_numpy(codes).view(n, vq.m))
            s = uncollapse(idx, out)
        return self.apply_tail(s)

    def apply_tail(self, s: SparseLabels) -> SparseLabels:
        """``mr`` and ``mrs`` change the stored values; ``prior``, ``capped`` and ``uniform`` only how the tail spreads."""
        if self.tail == "mr":
            lp = torch.log_softmax(torch.from_numpy(s.logp), 1).numpy()
            return SparseLabels(s.indices, lp, np.full(len(s), -np.inf, np.float32))
        if self.tail == "mrs":
            lp = torch.from_numpy(s.logp)
            rest = lp.min(1).values + np.log(self.classes - self.k)
            z = torch.logaddexp(lp.logsumexp(1), rest)
            return SparseLabels(s.indices, (lp - z[:, None]).numpy(), (rest - z).numpy())
        return s

    @property
    def dense_tail(self) -> str:
        """How the dense label spreads the tail (``slc.sparse.expand``'s and ``kd_loss``'s ``tail_mode``):
        ``mr``/``mrs`` rows are already adjusted when decoded, and what is left spreads uniformly."""
        return self.tail if self.tail in PRIOR_TAILS else "uniform"

    def check_distinct(self, s: SparseLabels) -> None:
        srt = np.sort(s.indices, axis=1)
        expect(not (srt[:, 1:] == srt[:, :-1]).any(), "distinct words in each token's top k", "a repeated word")

    def decode(self, payload, n):
        return self.dense(self.decode_sparse(payload, n))

    def dense(self, s: SparseLabels) -> tuple[np.ndarray, str]:
        """Decoded sparse rows as dense ``(n, V)`` log-probabilities, the tail spread by :attr:`dense_tail`
        (row by row: any rows of a chunk give what decoding the whole chunk gives them)."""
        self.check_distinct(s)
        return expand(s, self.classes, self.dense_tail, self.prior_logp), "logits"

    # ---------------------------------------------------------------- planning and fitting
    untargeted = {"k": UNTARGETED_K}

    @classmethod
    def ladder(cls, classes, options):
        """One rung for a given ``k``; else k from 1 to min(V - 1, 4096) in steps of about 5%."""
        p = {**DEFAULTS, **options}
        unknown = sorted(set(p) - set(DEFAULTS) - {"k", "steps"})
        if unknown:
            raise ValueError(f"parameters in {sorted(['k', *DEFAULTS])}, not {unknown}")
        for key in ("k", "m", "codes"):
            if key in p and (not isinstance(p[key], int) or isinstance(p[key], bool)):
                raise ValueError(f"an integer {key}, got {p[key]!r}")
        if "k" in p and (not 1 <= p["k"] < classes or p["k"] > MAX_K):
            raise ValueError(f"1 <= k < V ({classes}) and k <= {MAX_K}, got k={p['k']}")
        if p["values"] not in VALUES or p["tail"] not in TAILS:
            raise ValueError(f"values in {VALUES} and tail in {TAILS}, got {p['values']!r}, {p['tail']!r}")
        ks = [p["k"]] if "k" in p else k_ladder(min(MAX_K, classes - 1))
        ks = [k for k in ks if p["m"] <= 4 * (k + 1)]  # m codes share the k + 1 values
        if not 2 <= p["codes"] <= 1 << 16 or not 1 <= p["m"] or not ks:
            raise ValueError(f"2 <= codes <= 65536 and 1 <= m <= 4(k+1), got codes={p['codes']}, m={p['m']}")
        if not 0 <= float(p["prior_weight"]) <= 1:
            raise ValueError(f"0 <= prior_weight <= 1, got {p['prior_weight']}")
        return [{**p, "k": k} for k in ks]

    @classmethod
    def measured_payload(cls, sample, probes, classes, options):
        """Chunks are zstd-coded: rank planes shrink 2-10x there (more the larger k is), value codes 2-4x,
        so a ladder is sized by measured bytes (:class:`ZstdCost`)."""
        rungs = cls.ladder(classes, options)
        if len(rungs) == 1:
            return None
        return ZstdCost.measure(sample, probes, classes, [r["k"] for r in rungs], cls.zstd_level)

    @classmethod
    def planned_payload(cls, params, classes, n):
        idx = n * params["k"] * index_bytes(classes)
        if params["values"] in ("bf16", "f32"):
            return idx + (2 if params["values"] == "bf16" else 4) * n * params["k"]
        vq = params.get("vq") or {"k": params["codes"], "dh": params["m"], "dc": 1}
        return idx + packed_size(n * (vq["dh"] // vq["dc"]), bits_for(vq["k"]))

    @classmethod
    def planned_params(cls, params, classes):
        p = {"k": params["k"], "index_bytes": index_bytes(classes), "ranked": classes,  # at most: every word ranked
             "values": params["values"], "tail": params["tail"]}
        if params["tail"] in PRIOR_TAILS:
            p["prior_weight"] = float(params["prior_weight"])
        if params["values"] == "vqae":
            dc = latent_width(params["k"], params["m"])
            p["vq"] = VQAECodec.planned_params({"k": params["codes"], "dc": dc, "dh": dc * params["m"]},
                                               params["k"] + 1)
        return p

    option_names = ("k", *DEFAULTS, "steps")

    @classmethod
    def reduce_sample(cls, blocks, classes: int, params: dict) -> TokenSample:
        """Keep only what fitting needs from sampled blocks of log-probabilities (or sparse labels)."""
        parts, total, rows = [], np.zeros(classes, np.float64), 0
        for block in blocks:
            if isinstance(block, SparseLabels) and block.k < params["k"]:
                raise SlcInputError(f"expected at least k={params['k']} words per token, got {block.k} "
                                    f"(use `options=k={block.k}`)")
            s = truncate(block, params["k"]) if isinstance(block, SparseLabels) else select_topk(block, params["k"])
            if isinstance(block, SparseLabels):  # a sparse input's tail is spread uniformly for the prior
                rest = np.exp(s.tail.astype(np.float64)) / (classes - s.k)
                total += rest.sum()
                np.add.at(total, s.indices.reshape(-1), np.exp(s.logp.astype(np.float64)).reshape(-1)
                          - np.repeat(rest, s.k))
            else:
                total += np.exp(np.asarray(block, np.float64)).sum(0)
            parts.append(s)
            rows += len(s)
        sparse = SparseLabels(np.concatenate([p.indices for p in parts]), np.concatenate([p.logp for p in parts]),
                              np.concatenate([p.tail for p in parts]))
        return TokenSample(sparse, total, rows)

    @classmethod
    def fit(cls, sample, classes, params, seed=0):
        if not isinstance(sample, TokenSample):
            sample = cls.reduce_sample([sample], classes, params)
        k = params["k"]
        s = SparseLabels(sample.sparse.indices[:, :k], sample.sparse.logp[:, :k], sample.sparse.tail)
        order = frequency_order(np.bincount(s.indices.reshape(-1), minlength=classes))
        prior = None
        w = float(params["prior_weight"])
        if params["tail"] in PRIOR_TAILS:
            prior = mixed_prior(sample.prob_sum / max(sample.rows, 1), w)
        values = None
        if params["values"] == "vqae":
            dc = latent_width(k, params["m"])
            cfg = FitConfig(seed=seed, steps=int(params.get("steps", FitConfig.steps)))
            values = VQAECodec.fit(collapse(s), params["codes"], dc, dc * params["m"], cfg, "<f2")
        return cls(classes, k, order, values, params["tail"], prior, w if params["tail"] in PRIOR_TAILS else None,
                   raw=params["values"])


def frequency_order(counts: np.ndarray) -> np.ndarray:
    """The words seen in a fit sample's top k, most often first (ties by word id): the stored rank order."""
    return np.argsort(-counts, kind="stable")[: int((counts > 0).sum())]


def rank_order(order: np.ndarray, classes: int) -> tuple[np.ndarray, np.ndarray]:
    """(rank -> word, word -> rank): the stored order first, then every other word in id order."""
    seen = np.zeros(classes, bool)
    seen[order] = True
    word_of = np.concatenate([order, np.flatnonzero(~seen)])
    rank_of = np.empty(classes, np.int64)
    rank_of[word_of] = np.arange(classes)
    return word_of, rank_of


def k_ladder(top: int) -> list[int]:
    """1, 2, ..., then steps of about ``K_STEP`` up to ``top`` (included)."""
    ks, x = [], 1.0
    while round(x) <= top:
        if not ks or round(x) > ks[-1]:
            ks.append(int(round(x)))
        x *= K_STEP
    return ks if ks[-1] == top else [*ks, top]


def top_indices(block, k: int) -> np.ndarray:
    """The ``k`` most probable words of each row, most probable first (fewer if sparse input holds fewer)."""
    if isinstance(block, SparseLabels):
        return block.indices[:, :k]
    x = torch.from_numpy(np.ascontiguousarray(block, np.float32))
    return torch.topk(x, min(k, x.shape[1]), dim=1, sorted=True).indices.numpy()


class ZstdCost:
    """A ``topk-vq`` chunk's bytes after zstd at any k of a ladder, measured before fitting (a planner ``payload``).

    The ranks: each k's word order is the one :meth:`TopKVQCodec.fit` makes (top-k counts over the
    fit sample), and the bytes come from compressing ``probes`` (runs of one chunk of consecutive
    tokens) as the writer does. On real 5,000-word labels each of these matters: random rows
    compress 20% worse than consecutive ones, a run of 512 tokens 40% worse than 4,096, an order
    fitted on the probe itself is 6% optimistic, and one chunk can be 7% below the file's mean.
    The values: their codes exist only after fitting, so they count at ``values_share`` of their raw
    bytes until :meth:`calibrate` measures it (0.13-0.47 on the KJV slice; 0.5 before).
    """

    ROWS = 4096  # rows of a sample block ranked at once

    def __init__(self, ks: list[int], counts: np.ndarray, probes: list[np.ndarray], classes: int, level: int):
        self.ks, self.counts, self.probes, self.classes, self.level = ks, counts, probes, classes, level
        self.rows = sum(len(p) for p in probes)
        self.values_share = 0.5
        self.seen: dict[int, float] = {}

    @classmethod
    def measure(cls, sample: Iterable, probes: list, classes: int, ks: list[int], level: int) -> "ZstdCost":
        top = ks[-1]
        bucket = np.searchsorted(np.asarray(ks), np.arange(top), side="right")  # position p counts from rung bucket[p]
        counts = np.zeros(len(ks) * classes, np.int64)
        for block in sample:
            for s in range(0, len(block), cls.ROWS):
                idx = top_indices(rows_of(block, s, s + cls.ROWS), top)
                counts += np.bincount((bucket[:idx.shape[1]] * classes + idx).reshape(-1), minlength=counts.size)
        return cls(ks, counts.reshape(len(ks), classes), [top_indices(p, top) for p in probes], classes, level)

    def zstd(self, data: bytes) -> int:
        return len(zstandard.ZstdCompressor(level=self.level).compress(data))

    def ranks(self, k: int) -> float:
        """Bytes per token of ``k`` ranks after zstd (infinite past the words sparse input holds)."""
        if k > min(p.shape[1] for p in self.probes):
            return math.inf
        if k not in self.seen:
            _, rank_of = rank_order(frequency_order(self.counts[: self.ks.index(k) + 1].sum(0)), self.classes)
            nbytes = index_bytes(self.classes)
            self.seen[k] = sum(self.zstd(rank_planes(rank_of[p[:, :k]], nbytes)) for p in self.probes) / self.rows
        return self.seen[k]

    def __call__(self, params: dict, n: int) -> int:
        k = params["k"]
        if self.ranks(k) == math.inf:
            return UNAVAILABLE
        values = TopKVQCodec.planned_payload(params, self.classes, n) - n * k * index_bytes(self.classes)
        return math.ceil(self.ranks(k) * n + self.values_share * values)

    def calibrate(self, codec: "TopKVQCodec", blocks: list, kind: str, temperature: float) -> float:
        """Measure ``values_share`` with the fitted ``codec`` on the probes' raw ``blocks``; returns it."""
        total, values = 0, 0
        for block in blocks:
            s = block if isinstance(block, SparseLabels) else codec.select(block, kind, temperature)
            total += self.zstd(codec.encode_sparse(s))
            values += codec.payload_size(len(block)) - len(block) * codec.k * codec.nbytes
        spent = total - self.ranks(codec.k) * self.rows
        self.values_share = float(np.clip(spent / max(values, 1), 0, 1))
        return self.values_share


def rows_of(block, start: int, stop: int):
    """Rows ``start:stop`` of a dense block or of :class:`SparseLabels`."""
    if isinstance(block, SparseLabels):
        return SparseLabels(block.indices[start:stop], block.logp[start:stop], block.tail[start:stop])
    return block[start:stop]


def latent_width(k: int, m: int) -> int:
    """d_c per code: the (k+1) values share ``m`` codes; 40 latent dimensions are plenty (measured)."""
    return max(1, -(-min(k + 1, 40) // m))

"""The hybrid codec: the teacher's top ``k`` classes stored exactly, everything else by a VQAE.

Per label the payload holds the ``k`` most probable class indices, most probable first, bit-packed at
``ceil(log2 C)`` bits, then ``m`` VQAE codes. Two ways to spend the codes (``rest``):

- ``full``: the VQAE codes the whole label, as the ``vqae`` codec does; decoding then permutes the
  decoded values so that the stored classes hold the ``k`` largest, in order (:func:`rank_fix`).
  The shape of the label is the VQAE's; only which class is which is corrected. Best on flat
  labels (high T, many classes), where the VQAE alone puts the wrong class first on 20-50% of labels.
- ``collapsed``: the VQAE codes the ``(k+1)``-class collapsed label (the ``k`` stored values, then
  the rest as one class), and the rest is spread over the other classes by a stored prior capped
  at the smallest stored value (the ``topk-vq`` token codec's ``capped`` tail). Best on peaked
  labels (T=1), where a few classes hold nearly all the mass.
- ``pca`` (format 1.5): principal components of the whole label, as the ``pca`` codec stores them,
  rank-fixed like ``full``. Best where the label is wide and smooth (thousands of classes at T=4, any
  C at T=20), where the PCA alone beats every VQAE but puts the wrong class first on 25-45% of labels.

Either way the decoded label's top ``k`` classes are the teacher's, in the teacher's order: its
argmax is exact by construction (the agreement ``auto`` requires).
"""
from __future__ import annotations

import numpy as np
import torch

from slc.codecs.base import Codec, param, split_payload
from slc.codecs.fitting import check_tensors
from slc.codecs.labels import rank_fix, rank_fix_
from slc.codecs.pca import PCACodec
from slc.codecs.sparse import collapse, expand, mixed_prior, select_topk, uncollapse
from slc.codecs.vqae import FitConfig, VQAECodec
from slc.errors import expect
from slc.format.bitpack import bits_for, pack_bits, packed_size, unpack_bits

PREFIX = "hybrid."
MAX_ONE_CODE_BITS = 12  # the widest single code the ladder offers (4,096 codes)
RESTS = ("full", "collapsed", "pca")
# what codes the rest: (its codec_params member, its class, the prefix of its tensors as it names them)
INNER = {"full": ("vq", VQAECodec, "vqae."), "collapsed": ("vq", VQAECodec, "vqae."), "pca": ("pca", PCACodec, "pca.")}
DEFAULTS = {"rest": "full", "top": 1, "codes": 256, "prior_weight": 0.99}
MAX_TOP = 1024
MAX_SEGMENTS = 4096
CLASSES_PER_CODE, MAX_COLLAPSED_CODES = 4, 32
COLLAPSED_LATENT = 40  # latent dims of the collapsed VQAE (topk-vq's measured width)
# C x d_h of the full VQAE at most: its fit's cost grows with it (500 steps of 512 labels), and on real
# 5,000-class labels more codes fitted worse (KL 0.70 at d_h=1,008 against 0.40 at 250, T=1); past it
# the ladder stores more exact classes instead
FULL_WORK = 1 << 20


class HybridCodec(Codec):
    name = "hybrid"
    keeps_top1 = True
    since_minor = 4
    needs_fit = True

    def __init__(self, classes: int, top: int, rest: str, inner: VQAECodec | PCACodec,
                 prior_logp: np.ndarray | None = None, prior_weight: float | None = None):
        super().__init__(classes)
        if not 1 <= top < classes:
            raise ValueError(f"expected 1 <= top < classes ({classes}), got top={top}")
        self.top, self.rest, self.inner = top, rest, inner
        self.index_bits = bits_for(classes)
        self.prior_logp = None if prior_logp is None else np.asarray(prior_logp, np.float32)
        self.prior_weight = prior_weight
        self.fit_info = getattr(inner, "fit_info", {})
        if rest == "pca":
            self.since_minor = 5

    def describe(self) -> str:
        if self.rest == "pca":
            return f"hybrid top-{self.top} + {self.inner.k} pca components"
        return f"hybrid top-{self.top} + {self.inner.m}x{self.inner.bits}-bit {self.rest}"

    # ---------------------------------------------------------------- storage
    def params(self) -> dict:
        p = {"top": self.top, "index_bits": self.index_bits, "rest": self.rest,
             INNER[self.rest][0]: self.inner.params()}
        if self.rest == "collapsed":
            p["prior_weight"] = self.prior_weight
        return p

    def tensors(self) -> dict[str, np.ndarray]:
        t = {PREFIX + name.split(".", 1)[1]: a for name, a in self.inner.tensors().items()}
        if self.prior_logp is not None:
            t[PREFIX + "prior"] = self.prior_logp.astype("<f2")
        return t

    @classmethod
    def _checked(cls, params: dict, classes: int) -> dict:
        p = {"top": param(params, "top", int, 1, min(MAX_TOP, classes - 1)),
             "rest": param(params, "rest", str, choices=RESTS)}
        param(params, "index_bits", int, choices=(bits_for(classes),))
        key, inner, _ = INNER[p["rest"]]
        expect(isinstance(params.get(key), dict), f"codec parameter {key!r} (an object)", repr(params.get(key)))
        p[key] = params[key]
        inner._checked(p[key], cls.inner_classes(p, classes))
        if p["rest"] == "collapsed":
            p["prior_weight"] = float(param(params, "prior_weight", (int, float), 0.0, 1.0))
        return p

    @staticmethod
    def inner_classes(p: dict, classes: int) -> int:
        """Width of what the rest's codec codes: the label, or the collapsed ``top + 1`` classes."""
        return p["top"] + 1 if p["rest"] == "collapsed" else classes

    @classmethod
    def tensor_specs(cls, params, classes):
        p = cls._checked(params, classes)
        key, inner, _ = INNER[p["rest"]]
        specs = {PREFIX + name.split(".", 1)[1]: spec
                 for name, spec in inner.tensor_specs(p[key], cls.inner_classes(p, classes)).items()}
        if p["rest"] == "collapsed":
            specs[PREFIX + "prior"] = ("<f2", (classes,))
        return specs

    @classmethod
    def from_file(cls, params, tensors, classes):
        p = cls._checked(params, classes)
        check_tensors(tensors, cls.tensor_specs(params, classes))
        key, inner_cls, prefix = INNER[p["rest"]]
        inner = {prefix + name[len(PREFIX):]: a for name, a in tensors.items() if name != PREFIX + "prior"}
        codec = inner_cls.from_file(p[key], inner, cls.inner_classes(p, classes))
        prior = None
        if p["rest"] == "collapsed":
            prior = tensors[PREFIX + "prior"].astype(np.float32)
            expect(bool(np.isfinite(prior).all()), f"finite values in {PREFIX}prior", "NaN or inf")
        return cls(classes, p["top"], p["rest"], codec, prior, p.get("prior_weight"))

    def encoder_state(self) -> dict[str, np.ndarray]:
        return self.inner.encoder_state()

    def restore_encoder_state(self, state: dict[str, np.ndarray]) -> None:
        self.inner.restore_encoder_state(state)

    # ---------------------------------------------------------------- coding
    def payload_size(self, n: int) -> int:
        return packed_size(n * self.top, self.index_bits) + self.inner.payload_size(n)

    def work_per_label(self) -> int:
        return 3 * self.classes + self.inner.work_per_label()

    def encode(self, logp: np.ndarray) -> bytes:
        s = select_topk(logp, self.top)
        return pack_bits(s.indices, self.index_bits) + self.inner.encode(collapse(s) if self.rest == "collapsed"
                                                                         else logp)

    def split(self, payload, n: int) -> tuple[np.ndarray, memoryview]:
        """The payload's stored classes, checked, as ``(n, top)`` int64, and the rest's payload."""
        raw_idx, raw_rest = split_payload(payload, packed_size(n * self.top, self.index_bits),
                                          self.inner.payload_size(n))
        idx = unpack_bits(raw_idx, n * self.top, self.index_bits).reshape(n, self.top).astype(np.int64)
        if n:
            expect(int(idx.max()) < self.classes, f"class indices < {self.classes}", int(idx.max()))
            srt = np.sort(idx, axis=1)
            expect(not (srt[:, 1:] == srt[:, :-1]).any(), "distinct classes in each label's top k",
                   "a repeated class")
        return idx, raw_rest

    def logit_rows(self, payload, n):
        if self.rest != "full":  # collapsed: the tail is spread over the whole label; pca: whole chunks only
            return None
        idx, raw_rest = self.split(payload, n)
        inner = self.inner.logit_rows(raw_rest, n)
        if inner is None:
            return None
        top = torch.from_numpy(idx)

        def fill(lo: int, hi: int, dst: torch.Tensor) -> None:
            inner(lo, hi, dst)
            rank_fix_(dst, top[lo:hi])
        return fill

    def decode(self, payload, n):
        idx, raw_rest = self.split(payload, n)
        out, kind = self.inner.decode(raw_rest, n)
        if kind == "probs":
            out = np.log(np.maximum(out, 1e-30))
        if self.rest == "collapsed":
            out = expand(uncollapse(idx, out), self.classes, "capped", self.prior_logp)
        return rank_fix(out, idx), "logits"

    # ---------------------------------------------------------------- planning and fitting
    @classmethod
    def ladder(cls, classes, options):
        from slc.codecs.planner import preferred_dc

        p = {**DEFAULTS, **options}
        unknown = sorted(set(p) - set(DEFAULTS) - {"m", "dc", "components", "steps", "config"})
        if unknown:
            raise ValueError(f"parameters in {sorted([*DEFAULTS, 'm', 'dc', 'components', 'steps'])}, not {unknown}")
        for key in ("top", "codes", *(k for k in ("m", "dc", "components") if k in p)):
            if not isinstance(p[key], int) or isinstance(p[key], bool):
                raise ValueError(f"an integer {key}, got {p[key]!r}")
        if p["rest"] not in RESTS:
            raise ValueError(f"rest in {RESTS}, got {p['rest']!r}")
        if not 1 <= p["top"] < classes or p["top"] > MAX_TOP:
            raise ValueError(f"1 <= top < C ({classes}) and top <= {MAX_TOP}, got top={p['top']}")
        if not 2 <= p["codes"] <= 1 << 16:
            raise ValueError(f"2 <= codes <= 65536, got codes={p['codes']}")
        if p["rest"] == "pca":  # components 1 .. C-1 of fp16 coefficients, as the pca codec plans them
            ks = [p["components"]] if "components" in p else range(1, classes)
            if not all(1 <= k < classes for k in ks):
                raise ValueError(f"1 <= components < C ({classes}), got {p['components']}")
            return [{"rest": "pca", "top": p["top"], "components": k} for k in ks]
        base = {"rest": p["rest"], "codes": p["codes"]}
        if p["rest"] == "collapsed":
            base["prior_weight"] = float(p["prior_weight"])
            # exact classes are worth more than precise values: one 8-bit code per 4 stored classes (measured on
            # real 200- and 1000-class labels at T=1, 40x-200x: 2.7x lower KL than 8 codes for fewer classes)
            tops = [p["top"]] if "top" in options else range(1, min(classes - 1, MAX_TOP) + 1)
            rungs = [{**base, "top": t, "m": m, "dc": p.get("dc") or -(-min(t + 1, COLLAPSED_LATENT) // m)}
                     for t in tops for m in ([p["m"]] if "m" in p else [collapsed_codes(t)])]
            return cls.fewer_bits(rungs, options)
        ms = [p["m"]] if "m" in p else [m for m in range(1, MAX_SEGMENTS + 1) if m * preferred_dc(classes, m) *
                                        classes <= FULL_WORK] or [1]
        rungs = [{**base, "top": p["top"], "m": m, "dc": p.get("dc") or preferred_dc(classes, m)} for m in ms]
        if "m" not in p and "top" not in options and len(ms) < MAX_SEGMENTS:  # past the VQAE's cap: more exact classes
            last = rungs[-1]
            rungs += [{**last, "top": t} for t in range(last["top"] + 1, min(classes - 1, MAX_TOP) + 1)]
        return cls.fewer_bits(rungs, options)

    @staticmethod
    def fewer_bits(rungs: list[dict], options: dict) -> list[dict]:
        """Around one full code per label (few classes), one code of 1 to 12 bits: below it for high ratios,
        above it for the bits a second code would overshoot (measured on real 10-class labels at T=4: one
        12-bit code has 0.55x the KL of one 8-bit code)."""
        if "codes" in options or not rungs or rungs[0]["m"] != 1:
            return rungs
        one = rungs[0]
        more = [{**one, "codes": 1 << b} for b in range(bits_for(one["codes"]) + 1, MAX_ONE_CODE_BITS + 1)]
        return [{**one, "codes": 1 << b} for b in range(1, bits_for(one["codes"]))] + [one] + more + rungs[1:]

    @classmethod
    def _vq_plan(cls, params: dict) -> dict:
        return {"k": params["codes"], "dc": params["dc"], "dh": params["dc"] * params["m"]}

    @classmethod
    def planned_payload(cls, params, classes, n):
        rest = (PCACodec.planned_payload(cls._pca_params(params), classes, n) if params["rest"] == "pca"
                else packed_size(n * params["m"], bits_for(params["codes"])))
        return packed_size(n * params["top"], bits_for(classes)) + rest

    @staticmethod
    def _pca_params(params: dict) -> dict:
        return {"components": params["components"], "domain": "logit", "eps": 1e-8}

    @classmethod
    def planned_params(cls, params, classes):
        p = {"top": params["top"], "index_bits": bits_for(classes), "rest": params["rest"]}
        if params["rest"] == "pca":
            p["pca"] = cls._pca_params(params)
            return p
        p["vq"] = VQAECodec.planned_params(cls._vq_plan(params), cls.inner_classes(params, classes))
        if params["rest"] == "collapsed":
            p["prior_weight"] = float(params["prior_weight"])
        return p

    option_names = ("rest", "top", "codes", "m", "dc", "components", "prior_weight", "steps")

    @classmethod
    def fit(cls, logp, classes, params, seed=0):
        if params["rest"] == "pca":
            return cls(classes, params["top"], "pca", PCACodec.fit(logp, classes, cls._pca_params(params), seed))
        cfg = FitConfig(**params["config"]) if params.get("config") else FitConfig(seed=seed)
        if "steps" in params:
            cfg.steps = int(params["steps"])
        vq = cls._vq_plan(params)
        if params["rest"] == "full":
            codec = VQAECodec.fit(logp, vq["k"], vq["dc"], vq["dh"], cfg, "<f2")
            return cls(classes, params["top"], "full", codec)
        w = float(params["prior_weight"])
        prior = mixed_prior(np.exp(np.asarray(logp, np.float64)).mean(0), w)
        codec = VQAECodec.fit(collapse(select_topk(logp, params["top"])), vq["k"], vq["dc"], vq["dh"], cfg, "<f2")
        return cls(classes, params["top"], "collapsed", codec, prior, w)


def collapsed_codes(top: int) -> int:
    """Codes per label of the collapsed form for ``top`` stored classes."""
    return min(MAX_COLLAPSED_CODES, -(-top // CLASSES_PER_CODE))

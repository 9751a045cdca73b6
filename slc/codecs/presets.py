"""The codecs users pick (``codec="topk"``): which stored codec, with which fixed options, planned and fitted how.

A :class:`Preset` is the one place that knows a name's rules; nothing outside this package tests a
codec's name as a string. ``auto`` is the preset that fits the others it names and keeps the one
with the lower held-out KL.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Callable

from slc.codecs import codec_class
from slc.errors import SlcInputError

if TYPE_CHECKING:
    import numpy as np

AUTO_HOLDOUT = 4096  # labels of the fit sample kept out of fitting to choose between codecs
DEFAULT = "auto"  # the preset a user gets without naming one
LOSSLESS = "fp16"  # the preset labels are kept dense in (the ceiling of every student table)


@dataclass(frozen=True)
class Preset:
    """A codec as users name it.

    ``codec``: the stored codec. ``planner``: ``"vqae"`` (k, d_c and d_h sized to the target),
    ``"ladder"`` (the codec's own sizes, :meth:`Codec.ladder`) or ``"fixed"`` (no target: dense).
    ``fit``: ``"kl"`` (our VQAE recipe), ``"paper"`` (the paper's), or ``None`` (the codec's own).
    ``sizes``: which of ``k``, ``dc``, ``dh`` it takes as size parameters. ``chooses``: for ``auto``,
    the presets it picks from.
    """

    name: str
    codec: str
    options: dict = field(default_factory=dict)
    planner: str = "ladder"
    fit: str | None = None
    tensor_dtype: str = "<f2"
    sizes: tuple[str, ...] = ()
    chooses: tuple[str, ...] = ()

    @property
    def cls(self):
        """The stored codec's class (imports its module)."""
        return codec_class(self.codec)

    @property
    def keeps_top1(self) -> bool:
        """Whether every label's argmax is stored exactly (the stored codec's :attr:`Codec.keeps_top1`)."""
        return self.cls.keeps_top1

    @property
    def sized(self) -> bool:
        """Whether a target ratio or budget sizes it (dense codecs have a fixed ratio)."""
        return self.planner != "fixed"

    def candidates(self, classes: int) -> tuple[str, ...]:
        """The presets ``auto`` fits for labels of ``classes`` classes (:data:`AUTO_MAX_CLASSES`)."""
        return tuple(n for n in self.chooses if classes <= AUTO_MAX_CLASSES.get(n, classes))

    @property
    def fits_vqae(self) -> bool:
        return self.fit in ("kl", "paper")

    @property
    def option_names(self) -> tuple[str, ...]:
        """The codec parameters a user may fix (``--param``); none for ``auto`` and the VQAE (its sizes are k/dc/dh)."""
        return () if self.planner == "vqae" else self.cls.option_names

    @property
    def needs_fit(self) -> bool:
        return self.fits_vqae or self.cls.needs_fit

    def fit_config(self, steps: int | None = None, config=None):
        """The VQAE fit recipe: ``config`` as given, else this preset's with ``steps`` if given."""
        from slc.codecs.vqae import FitConfig

        if config is not None:
            return config
        kw = {} if steps is None else {"steps": steps}
        return FitConfig.paper(**kw) if self.fit == "paper" else FitConfig(**kw)

    def fit_steps(self, steps: int | None, options: dict) -> dict | None:
        """Optimizer steps of the fit, however this preset takes them: its VQAE recipe (returned, as a dict)
        or a codec option (set in ``options``); refused for a codec that fits nothing by steps."""
        if steps is None:
            return None
        if self.fits_vqae:
            return self.fit_config(steps).to_json()
        if "steps" in self.option_names:
            options["steps"] = steps
            return None
        stepped = ", ".join(p.name for p in PRESETS.values() if p.fits_vqae or "steps" in p.option_names)
        raise SlcInputError(f"expected `fit_steps` only with a codec fitted by gradient steps ({stepped}), got "
                            f"`codec='{self.name}'`")

    def build(self, params: dict, logp: np.ndarray | None, classes: int, *, tensor_dtype: str | None = None,
              fit_config=None, progress: Callable | None = None, seed: int = 0):
        """The codec for planned ``params``, fitted on ``logp`` (log-probabilities at T) where it learns anything."""
        if self.fits_vqae and self.planner == "ladder":  # a codec with a VQAE inside: the recipe goes with its params
            params = {**params, "config": self.fit_config(config=fit_config).to_json()}
        elif self.fits_vqae:
            from slc.codecs.vqae import VQAECodec

            return VQAECodec.fit(logp, params["k"], params["dc"], params["dh"], self.fit_config(config=fit_config),
                                 tensor_dtype or self.tensor_dtype, progress)
        t0 = time.perf_counter()
        codec = self.cls.fit(logp, classes, params, seed)
        codec.fit_seconds = time.perf_counter() - t0
        return codec


PRESETS: dict[str, Preset] = {p.name: p for p in (
    # auto: the lowest held-out KL among those that keep the teacher's top-1 (the hybrids and top-k by
    # construction); plain vqae is the hybrid without its index bits and loses top-1 on 20-50% of labels
    Preset("auto", "hybrid", fit="kl", chooses=("hybrid", "hybrid-prior", "hybrid-pca", "topk", "pca")),
    # the teacher's top classes exact, the rest by a VQAE of the label (flat labels) or of its top values (peaked)
    Preset("hybrid", "hybrid", fit="kl"),
    Preset("hybrid-prior", "hybrid", {"rest": "collapsed"}, fit="kl"),
    # the top classes exact, principal components of the label for the rest (wide, smooth labels)
    Preset("hybrid-pca", "hybrid", {"rest": "pca"}),
    Preset("vqae", "vqae", planner="vqae", fit="kl", sizes=("k", "dc", "dh")),
    Preset("vqae-paper", "vqae", planner="vqae", fit="paper", tensor_dtype="<f4", sizes=("k", "dc", "dh")),
    # baselines follow the papers they come from (Table 3, eqs. S15-S17)
    Preset("topk", "topk", sizes=("k",)),  # FKD: the rest of the mass spread uniformly
    Preset("topk-mr", "topk-mr", sizes=("k",)),  # LPQLD MR
    Preset("topk-mrs", "topk-mrs", sizes=("k",)),  # LPQLD MRS
    Preset("pca", "pca"),
    Preset("quant", "quant"),
    Preset("vq-noae", "vq", sizes=("k", "dc")),  # the paper's "Ours w/o AE"
    Preset("topk-vq", "topk-vq"),  # token-level: exact top-k words, VQAE values, prior tail
    Preset("fp16", "dense", {"dtype": "<f2"}, planner="fixed"),
    Preset("fp32", "dense", {"dtype": "<f4"}, planner="fixed"),
)}


# ``auto`` leaves a candidate out above this many classes. The full-label VQAE of ``hybrid`` lost to
# hybrid-prior or hybrid-pca by 3-35x in KL in all six cells on real 5,000-class labels (T 1 and 4,
# 10-100x), and its fit passes 2 minutes at 21,843 classes whatever its width (0.43 s a step).
AUTO_MAX_CLASSES = {"hybrid": 4096}


def preset(name: str) -> Preset:
    if name not in PRESETS:
        raise SlcInputError(f"expected a codec in {list(PRESETS)}, got {name!r}")
    return PRESETS[name]


MIN_AGREEMENT = 0.995  # auto's floor on top-1 agreement with the input, on held-out labels


def held_out_score(codec, logp: np.ndarray) -> tuple[float, float]:
    """Mean KL(y || decoded) of ``codec`` on log-probabilities ``logp`` and the share of labels whose argmax it
    keeps, a few thousand rows at a time."""
    from slc.codecs.labels import kl_to_decoded, retemper

    kl, same = 0.0, 0
    for s in range(0, len(logp), 4096):
        block = logp[s:s + 4096]
        labels, kind = codec.decode(codec.encode(block), len(block))
        q = retemper(labels, kind, 1.0, "probs")
        kl += float(kl_to_decoded(block, q).sum())
        same += int((q.argmax(1) == block.argmax(1)).sum())
    n = max(len(logp), 1)
    return kl / n, same / n


def choose(auto: Preset, plans: dict, refused: dict, logp: np.ndarray, classes: int, *, tensor_dtype: str | None,
           fit_config, progress, log: Callable[[str], None], min_agreement: float = MIN_AGREEMENT):
    """``auto``: fit each of ``plans`` (preset name -> plan, all to the same bytes) and keep the one with the lowest
    KL on the last labels of the fit sample, held out, among those that keep the argmax of at least
    ``min_agreement`` of them; ``refused`` names those out of reach."""
    if not plans:  # the nearest reachable ratio of them all
        raise min(refused.values(), key=lambda e: e.smallest)
    for name, err in refused.items():
        log(f"auto: {name} cannot reach the target (its smallest file is {err.smallest:,} bytes)")
    hold = min(AUTO_HOLDOUT, len(logp) // 5)
    fit_part, held = (logp[:-hold], logp[-hold:]) if hold >= 64 else (logp, logp)
    fitted, scores = {}, {}
    for name, plan in plans.items():
        fitted[name] = PRESETS[name].build(plan.params, fit_part, classes, tensor_dtype=tensor_dtype,
                                           fit_config=fit_config, progress=progress)
        scores[name] = held_out_score(fitted[name], held)
    ok = [n for n in auto.chooses if n in plans and scores[n][1] >= min_agreement]
    log(f"auto: on {len(held):,} held-out labels (KL, top-1 agreement): " + ", ".join(
        f"{fitted[n].describe()} {scores[n][0]:.4g}, {100 * scores[n][1]:.1f}% ({plans[n].ratio:.1f}x)"
        for n in auto.chooses if n in plans))
    if not ok:
        exact = [e.smallest for n, e in refused.items() if PRESETS[n].keeps_top1]
        dense = next(iter(plans.values())).dense_fp16
        near = (f"; the nearest ratio that keeps it is {math.floor(10 * dense / min(exact)) / 10:.1f}x"
                if exact else "")
        raise SlcInputError(f"expected a codec that keeps the teacher's top-1 on >= {100 * min_agreement:g}% of "
                            f"labels at this target, got at most {100 * max(s[1] for s in scores.values()):.1f}%"
                            f"{near} (`min_agreement=0` lifts the constraint)")
    best = min(ok, key=lambda n: scores[n][0])  # ties: the first named
    log(f"auto: -> {fitted[best].describe()}: KL {scores[best][0]:.4g}, top-1 agreement {100 * scores[best][1]:.1f}%")
    return fitted[best], plans[best]

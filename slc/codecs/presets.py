"""The codecs users pick (``codec="topk"``): which stored codec, with which fixed options, planned and fitted how.

A :class:`Preset` is the one place that knows a name's rules; nothing outside this package tests a
codec's name as a string. ``auto`` is the preset that fits the others it names and keeps the one
with the lower held-out KL.
"""
from __future__ import annotations

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
    def sized(self) -> bool:
        """Whether a target ratio or budget sizes it (dense codecs have a fixed ratio)."""
        return self.planner != "fixed"

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
        raise SlcInputError(f"expected `fit_steps` only with a codec fitted by gradient steps (auto, vqae, "
                            f"vqae-paper, topk-vq), got `codec='{self.name}'`")

    def build(self, params: dict, logp: np.ndarray | None, classes: int, *, tensor_dtype: str | None = None,
              fit_config=None, progress: Callable | None = None, seed: int = 0):
        """The codec for planned ``params``, fitted on ``logp`` (log-probabilities at T) where it learns anything."""
        if self.fits_vqae:
            from slc.codecs.vqae import VQAECodec

            return VQAECodec.fit(logp, params["k"], params["dc"], params["dh"], self.fit_config(config=fit_config),
                                 tensor_dtype or self.tensor_dtype, progress)
        t0 = time.perf_counter()
        codec = self.cls.fit(logp, classes, params, seed)
        codec.fit_seconds = time.perf_counter() - t0
        return codec


PRESETS: dict[str, Preset] = {p.name: p for p in (
    Preset("auto", "vqae", planner="vqae", fit="kl", chooses=("vqae", "topk")),
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


def preset(name: str) -> Preset:
    if name not in PRESETS:
        raise SlcInputError(f"expected a codec in {list(PRESETS)}, got {name!r}")
    return PRESETS[name]


def mean_kl(codec, logp: np.ndarray) -> float:
    """Mean KL(y || decoded) of ``codec`` on log-probabilities ``logp``, a few thousand rows at a time."""
    from slc.codecs.labels import kl_to_decoded, retemper

    total = 0.0
    for s in range(0, len(logp), 4096):
        block = logp[s:s + 4096]
        labels, kind = codec.decode(codec.encode(block), len(block))
        total += float(kl_to_decoded(block, retemper(labels, kind, 1.0, "probs")).sum())
    return total / max(len(logp), 1)


def choose(auto: Preset, plans: dict, refused: dict, logp: np.ndarray, classes: int, *, tensor_dtype: str | None,
           fit_config, progress, log: Callable[[str], None]):
    """``auto``: fit each of ``plans`` (preset name -> plan, all to the same bytes) and keep the one with the
    lower KL on the last labels of the fit sample, held out; ``refused`` names those out of reach."""
    if not plans:  # the nearest reachable ratio of them all
        raise min(refused.values(), key=lambda e: e.smallest)
    if refused:
        (ok, plan), (other, err) = next(iter(plans.items())), next(iter(refused.items()))
        log(f"auto: {other} cannot reach the target ({err}) -> {ok}")
        return PRESETS[ok].build(plan.params, logp, classes, tensor_dtype=tensor_dtype, fit_config=fit_config,
                                 progress=progress), plan
    hold = min(AUTO_HOLDOUT, len(logp) // 5)
    fit_part, held = (logp[:-hold], logp[-hold:]) if hold >= 64 else (logp, logp)
    fitted = {name: PRESETS[name].build(plan.params, fit_part, classes, tensor_dtype=tensor_dtype,
                                        fit_config=fit_config, progress=progress) for name, plan in plans.items()}
    kls = {name: mean_kl(codec, held) for name, codec in fitted.items()}
    best = min(auto.chooses, key=lambda name: kls[name])  # ties: the first named
    log(f"auto: KL on {len(held):,} held-out labels: " + ", ".join(
        f"{fitted[n].describe()} {kls[n]:.4g} ({plans[n].ratio:.1f}x)" for n in auto.chooses)
        + f" -> {fitted[best].name}")
    return fitted[best], plans[best]


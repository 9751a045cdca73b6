"""What the fitted baselines (``pca``, ``quant``, ``vq``) share: the label domain they work in,
planner options, tensor checks, fp16 rounding and single-threaded (deterministic) fitting."""
from __future__ import annotations

from contextlib import contextmanager

import numpy as np
import torch

from ..errors import SlcFormatError, SlcInputError, expect
from .base import param

DOMAINS = ("logit", "prob")
FP16_MAX = float(np.finfo(np.float16).max)


@contextmanager
def one_thread():
    """Run torch on one thread: multi-threaded reductions sum in a varying order (see ``fit_vqae``)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def domain_eps(params: dict) -> tuple[str, float]:
    """Validate ``domain`` and ``eps`` of stored params (``eps > 0`` for the prob domain)."""
    domain = param(params, "domain", str, choices=DOMAINS)
    eps = param(params, "eps", (int, float), 0.0, 1.0)
    if domain == "prob" and not eps > 0:
        raise SlcFormatError(f"expected eps > 0 for the prob domain, got {eps}")
    return domain, float(eps)


def plan_option(options: dict, key: str, default, typ, **limits):
    """A user-fixed planner option, validated like a stored param but reported as bad input."""
    if key not in options or options[key] is None:
        return default
    try:
        return param(options, key, typ, **limits)
    except SlcFormatError as e:
        raise SlcInputError(str(e)) from None


def plan_domain_eps(options: dict, default_domain: str) -> tuple[str, float]:
    domain = plan_option(options, "domain", default_domain, str, choices=DOMAINS)
    eps = float(plan_option(options, "eps", 1e-8, (int, float), lo=0.0, hi=1.0))
    if domain == "prob" and not eps > 0:
        raise SlcInputError(f"expected eps > 0 for the prob domain, got {eps}")
    return domain, eps


def check_tensors(tensors: dict[str, np.ndarray], specs: dict[str, tuple[str, tuple[int, ...]]]) -> None:
    """Each declared tensor present with its shape, and finite."""
    for name, (_, shape) in specs.items():
        expect(name in tensors, f"tensor {name!r}", f"tensors {sorted(tensors)}")
        arr = tensors[name]
        expect(tuple(arr.shape) == shape, f"tensor {name!r} of shape {list(shape)}", list(arr.shape))
        if not np.isfinite(arr).all():
            raise SlcFormatError(f"expected finite values in {name}, got NaN or inf")


def fp16_round(a) -> np.ndarray:
    """What a reader sees of an fp16 tensor, as fp32."""
    return np.asarray(a, np.float32).astype("<f2").astype(np.float32)


def check_sample(logp: np.ndarray | None, classes: int, codec: str) -> None:
    """A fit sample must be ``(n >= 1, classes)`` log-probabilities."""
    if logp is None or logp.ndim != 2 or logp.shape[1] != classes or logp.shape[0] < 1:
        raise SlcInputError(f"expected a sample of (n, {classes}) labels to fit {codec}, got "
                            f"{None if logp is None else logp.shape}")

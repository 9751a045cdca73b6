"""Codecs: each turns a block of labels into one chunk payload and back (:mod:`slc.codecs.base`).

The registry maps the ``codec`` name in a file's header to its class. A codec's module (and
torch, which most of them need) is imported only when that codec is asked for, so naming codecs,
planning with presets and reading this package's registry cost no torch.
"""
from __future__ import annotations

import importlib

from slc.errors import SlcFormatError

# stored codec name -> (module in this package, class)
REGISTRY: dict[str, tuple[str, str]] = {
    "dense": ("dense", "DenseCodec"), "topk": ("topk", "TopKCodec"), "topk-mr": ("topk", "TopKMRCodec"),
    "topk-mrs": ("topk", "TopKMRSCodec"), "vqae": ("vqae", "VQAECodec"), "pca": ("pca", "PCACodec"),
    "quant": ("quant", "QuantCodec"), "vq": ("vq", "VQCodec"), "topk-vq": ("topkvq", "TopKVQCodec"),
    "hybrid": ("hybrid", "HybridCodec"),
}
_CLASSES = {cls: (module, name) for name, (module, cls) in REGISTRY.items()}


def codec_class(name: str):
    """The codec class a file names (``type[Codec]``); a name this slc does not know is a format error."""
    if name not in REGISTRY:
        raise SlcFormatError(f"expected a codec in {sorted(REGISTRY)}, got {name!r} (written by a newer slc?)")
    module, cls = REGISTRY[name]
    return getattr(importlib.import_module(f"slc.codecs.{module}"), cls)


def __getattr__(name: str):  # ``from slc.codecs import VQAECodec``: loads that codec's module only
    if name in _CLASSES:
        return codec_class(_CLASSES[name][1])
    if name in ("Codec", "TokenCodec"):
        return getattr(importlib.import_module("slc.codecs.base"), name)
    raise AttributeError(f"module 'slc.codecs' has no attribute {name!r}")


__all__ = ["REGISTRY", "codec_class", "Codec", "TokenCodec", *_CLASSES]

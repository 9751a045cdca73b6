"""Codec registry: the ``codec`` name in a file's header picks the class that decodes it."""
from __future__ import annotations

from ..errors import SlcFormatError
from .base import Codec, Kind
from .dense import DenseCodec
from .pca import PCACodec
from .quant import QuantCodec
from .topk import TopKCodec, TopKMRCodec, TopKMRSCodec
from .topkvq import TopKVQCodec
from .vq import VQCodec
from .vqae import VQAECodec

CODECS: dict[str, type[Codec]] = {c.name: c for c in (DenseCodec, TopKCodec, TopKMRCodec, TopKMRSCodec, VQAECodec,
                                                       PCACodec, QuantCodec, VQCodec, TopKVQCodec)}


def codec_class(name: str) -> type[Codec]:
    if name not in CODECS:
        raise SlcFormatError(f"expected a codec in {sorted(CODECS)}, got {name!r} (written by a newer slc?)")
    return CODECS[name]


__all__ = ["CODECS", "Codec", "Kind", "DenseCodec", "TopKCodec", "TopKMRCodec", "TopKMRSCodec", "VQAECodec",
           "PCACodec", "QuantCodec", "VQCodec", "TopKVQCodec", "codec_class"]

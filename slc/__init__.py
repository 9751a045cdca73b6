"""slc: soft-label compression for dataset distillation and offline knowledge distillation.

The public API is re-exported here lazily (PEP 562): ``import slc`` costs milliseconds and no
torch; each name loads its module the first time it is used.
"""
from __future__ import annotations

import importlib

__version__ = "0.11.0"

_EXPORTS = {
    "SlcError": "slc.errors", "SlcFormatError": "slc.errors", "SlcInputError": "slc.errors",
    "SlcFile": "slc.reader", "open_slc": "slc.reader",
    "compress": "slc.compression", "CompressOptions": "slc.compression", "open_labels": "slc.sources",
    "Recipe": "slc.vision.augment", "SoftLabelDataset": "slc.vision.dataset", "EpochSampler": "slc.vision.dataset",
    "DistributedEpochSampler": "slc.vision.dataset",
    "encode": "slc.vision.encode",
    "encode_lm": "slc.lm.encode", "TokenLabelDataset": "slc.lm.dataset", "collate_tokens": "slc.lm.dataset",
    "kd_loss": "slc.lm.distill", "SparseLabels": "slc.codecs.sparse",
    "merge": "slc.merge_parts", "PartSpec": "slc.format.parts",
    "open_import": "slc.interop.write", "import_file": "slc.interop.write", "SRe2LBatches": "slc.compat",
}
__all__ = [*_EXPORTS, "__version__"]


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module 'slc' has no attribute {name!r}")
    value = getattr(importlib.import_module(_EXPORTS[name]), name)
    globals()[name] = value  # once loaded, a plain attribute
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))

"""The codec names users pick (``--codec``), and which stored codec and options each means."""
from __future__ import annotations

# Codecs the generic planner sizes (``Codec.ladder``): preset -> (codec name, fixed options).
# Baselines follow the papers they come from (Table 3, eqs. S15-S17).
LADDER_PRESETS: dict[str, tuple[str, dict]] = {
    "topk": ("topk", {}),  # FKD: the rest of the mass spread uniformly
    "topk-mr": ("topk-mr", {}),  # LPQLD MR
    "topk-mrs": ("topk-mrs", {}),  # LPQLD MRS
    "pca": ("pca", {}),
    "quant": ("quant", {}),
    "vq-noae": ("vq", {}),  # the paper's "Ours w/o AE"
    "topk-vq": ("topk-vq", {}),  # token-level: exact top-k words, VQAE values, prior tail
    "fp16": ("dense", {"dtype": "<f2"}),
    "fp32": ("dense", {"dtype": "<f4"}),
}
PRESETS = ("auto", "vqae", "vqae-paper", *LADDER_PRESETS)

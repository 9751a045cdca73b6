"""Labels other tools wrote: read them without running their code, and write them back.

``slc import`` reads SRe2L/CDA, LPLD, LPQLD, HALD and FKD label folders (crops included) and vLLM
``prompt_logprobs`` JSONL and DistillKit parquet (token labels); ``slc decode --layout sre2l``
writes the SRe2L batch layout back (:mod:`slc.compat`, which also feeds their training loops).
"""
from __future__ import annotations

import os


def detect(src: str) -> str:
    """The format of ``src`` from its layout, or a one-line error saying what was looked for."""
    from slc.errors import SlcInputError
    from slc.interop.batches import detect as batch_layout

    if os.path.isdir(src):
        found = batch_layout(src)
        if found:
            return found
        for _, _, files in os.walk(src):
            if any(f.endswith(".tar") for f in files):
                return "fkd"
            if any(f.endswith(".parquet") for f in files):
                return "distillkit"
    elif src.endswith((".jsonl", ".json", ".jsonl.gz")):
        return "vllm"
    elif src.endswith(".parquet"):
        return "distillkit"
    raise SlcInputError(f"expected a folder of SRe2L/LPLD/LPQLD/HALD batch files or FKD per-image files, a vLLM "
                        f".jsonl or a DistillKit .parquet, got {src} (name the format: slc import FORMAT SRC)")

"""Where the bytes of a ``.slc`` go, and what the same bytes would buy with the paper's baselines."""
from __future__ import annotations

from slc.codecs import codec_class
from slc.codecs.base import TokenCodec
from slc.format.container import ENTRY, PREAMBLE
from slc.reader import SlcFile
from slc.codecs.planner import dense_bytes, paper_pca_bytes, paper_topk_bytes
from slc.format.replay import MAX_REPLAY_BYTES, ReplayInfo
from slc.format.sections import BOXES, REPLAY, TOKENS_IDS


def inspect(path: str, against: str | None = None) -> dict:
    """What ``slc inspect`` shows: :func:`breakdown`, and with ``against`` (the original labels) the fidelity."""
    from slc.fidelity import fidelity_against
    from slc.reader import open_slc

    with open_slc(path) as f:
        info = breakdown(f)
        if against:
            info["fidelity"] = fidelity_against(f, against)
    return info


def breakdown(f: SlcFile) -> dict:
    """A JSON-ready summary: sizes by section, bits per label, ratios, baseline equivalents."""
    h = f.header
    size = f.layout.file_length
    labels = h.labels
    rows = []
    accounted = 0
    for s in sorted(f.layout.sections.values(), key=lambda s: s.offset):
        rows.append({"section": s.name, "bytes": s.length, "share": s.length / size})
        accounted += s.length
    framing = size - accounted  # preamble, alignment padding, section table
    rows.append({"section": "(preamble, table, padding)", "bytes": framing, "share": framing / size})
    chunks = f.layout.sections["chunks"].length
    raw = sum(c.raw_length for c in f.index)
    fp16 = dense_bytes(labels, h.classes, 2)
    topk_k = max((k for k in range(1, h.classes) if paper_topk_bytes(labels, h.classes, k) <= size), default=0)
    pca_k = max((k for k in range(1, h.classes) if paper_pca_bytes(labels, h.classes, k) <= size), default=0)
    replay = None
    if REPLAY in f.layout.sections:
        info = ReplayInfo.from_bytes(f.section(REPLAY, MAX_REPLAY_BYTES))
        boxes = f.layout.sections.get(BOXES)
        replay = {"recipe": info.recipe.to_json(), "images": info.images, "digest": info.digest,
                  "source": info.source, "box_bytes_per_label": boxes.length / labels if boxes else 0.0}
    imported = h.user.get("import") if isinstance(h.user.get("import"), dict) else None
    return {
        "replay": replay, "tokens": token_summary(f), "imported": imported,
        "path": f.path, "format_version": f"{f.layout.major}.{f.layout.minor}", "writer": h.writer,
        "codec": h.codec, "codec_params": _without_fit(h.codec_params),
        "keeps_top1": codec_class(h.codec).keeps_top1,
        "fit": h.codec_params.get("fit") or h.codec_params.get("vq", {}).get("fit", {}),
        "epochs": h.epochs, "samples": h.samples, "classes": h.classes, "labels": labels,
        "temperature": h.temperature, "source": h.source, "chunk_size": h.chunk_size, "chunks": len(f.index),
        "epochs_per_chunk": h.epochs_per_chunk,
        "labels_per_chunk": [min(c.count for c in f.index), max(c.count for c in f.index)] if f.index else [0, 0],
        "entropy": h.entropy, "bytes": size, "sections": rows,
        "bits_per_label": 8 * size / labels, "payload_bits_per_label": 8 * chunks / labels,
        "zstd_saving": 1 - chunks / raw if raw else 0.0,
        "ratio_vs_fp16": fp16 / size, "ratio_vs_fp32": 2 * fp16 / size,
        "dense_fp16_bytes": fp16, "dense_fp32_bytes": 2 * fp16,
        "same_bytes_topk_k": topk_k, "same_bytes_pca_components": pca_k,
        "overhead_bytes": PREAMBLE.size + ENTRY.size * len(f.layout.sections),
    }


def _without_fit(params: dict) -> dict:
    """Codec parameters without their fit records (provenance, shown apart), at any depth."""
    return {k: _without_fit(v) if isinstance(v, dict) else v for k, v in params.items() if k != "fit"}


def token_summary(f: SlcFile) -> dict | None:
    """Per-token sizes of a token-level file, against dense fp16 and against top-k in bf16 with int32 indices."""
    if not isinstance(f.codec, TokenCodec):
        return None
    h, k = f.header, f.codec.k
    ids = f.layout.sections.get(TOKENS_IDS)
    label_bytes = f.layout.file_length - (ids.length if ids else 0)  # the input tokens are data, not labels
    per = label_bytes / h.samples
    return {"tokens": h.samples, "sequences": f.sequences, "k": k, "token_ids": ids is not None,
            "bytes_per_token": per, "label_bytes": label_bytes, "ratio_vs_fp16": 2 * h.classes / per,
            "topk_bf16_int32_bytes_per_token": 6 * k, "ratio_vs_topk_bf16_int32": 6 * k / per,
            "ratio_vs_top20_bf16_int32": 120 / per, "same_bytes_bf16_int32_k": int(per // 6)}

"""``slc bench --tokens``: the token-level codec at several budgets on the user's own LM labels.

Each row is a real ``.slc`` written by :func:`slc.compress` (fitted on the first ``1 - holdout``
of the tokens) and scored on the held-out rest against the input distributions over the whole
vocabulary. Next to each row, the plain scheme the paper and most KD code use, top-k' in bf16 with
int32 indices (6 bytes per word, the rest spread uniformly), at the same bytes per token
(``k' = bytes / 6``), scored on the same tokens.
"""
from __future__ import annotations

import os
import tempfile
import time
from typing import Callable

import numpy as np
import torch

from slc.bench.report import keep_folder
from slc.compression import compress
from slc.errors import SlcError, SlcInputError
from slc.codecs.labels import detect_source, to_logp
from slc.reader import open_slc
from slc.sources import open_labels
from slc.codecs.sparse import SparseLabels, expand, kl_rows, select_topk

DEFAULT_ROWS = ("k=8", "k=16", "k=32", "k=64", "k=128", "k=64,tail=prior", "k=20,values=bf16",
                "k=20,values=bf16,tail=prior", "k=20,values=bf16,tail=uniform")
RECALL_K = 20
BLOCK = 256  # held-out tokens scored at a time: (BLOCK, V) floats per array


def parse_row(spec: str) -> dict:
    """``"k=64,m=8,tail=prior"`` -> topk-vq options."""
    out: dict = {}
    for item in filter(None, spec.split(",")):
        key, eq, value = item.partition("=")
        if not eq or not key:
            raise SlcInputError(f"expected KEY=VALUE,... for a token bench row, got {spec!r}")
        for cast in (int, float, str):
            try:
                out[key] = cast(value)
                break
            except ValueError:
                pass
    return out


def bf16_topk(teacher: np.ndarray, k: int) -> SparseLabels:
    """Top-k in bf16 probabilities (int32 indices): the tail is whatever the rounded values leave."""
    s = select_topk(teacher, k)
    p = torch.from_numpy(np.exp(s.logp)).to(torch.bfloat16).float()
    with np.errstate(divide="ignore"):
        return SparseLabels(s.indices, np.log(p.numpy()), np.log(np.clip(1 - p.sum(1).numpy(), 0, None)))


def score_file(path: str, src, kind: str, start: int, ks: list[int]) -> dict:
    """KL, top-20 recall and top-1 of a file's held-out tokens, and the KL of bf16 top-k' for each k' in ``ks``."""
    n, vocab = src.shape[1], src.shape[2]
    kl, recall, top1, base = [], [], [], {k: [] for k in ks}
    with open_slc(path) as f:
        for a in range(start, n, BLOCK):
            b = min(n, a + BLOCK)
            teacher = to_logp(src.read(0, a, b), kind, f.temperature)
            stored = f.sparse(a, b)
            q = f.decode(0, a, b, out="logits") / f.temperature
            kl.append(kl_rows(teacher, q))
            true = torch.topk(torch.from_numpy(teacher), RECALL_K, 1).indices.numpy()
            recall.append([len(np.intersect1d(t, s)) / RECALL_K for t, s in zip(true, stored.indices)])
            top1.append(q.argmax(1) == teacher.argmax(1))
            for k in ks:
                base[k].append(kl_rows(teacher, expand(bf16_topk(teacher, k), vocab, "uniform")))
    cat = np.concatenate
    return {"kl": float(cat(kl).mean()), "recall": float(cat(recall).mean()), "top1": float(cat(top1).mean()),
            "baseline_kl": {k: float(cat(v).mean()) for k, v in base.items()}}


def run_token_bench(labels, rows: tuple[str, ...] = DEFAULT_ROWS, *, holdout: float = 0.2, source: str = "auto",
                    seed: int = 0, fit_steps: int | None = None, fit_labels: int | None = None,
                    workdir: str | None = None, force: bool = False, log: Callable[[str], None] | None = None) -> dict:
    """topk-vq at each row's options on held-out tokens, next to bf16 + int32 top-k' at the same bytes.

    ``workdir``: keep the files there (a new or empty folder, or any with ``force``); else a temporary one.
    """
    log = log or (lambda line: None)
    if workdir:
        keep_folder(workdir, force)
    if not 0 < holdout < 1:
        raise SlcInputError(f"expected a held-out share in (0, 1), got {holdout}")
    src = open_labels(labels)
    tmp = None if workdir else tempfile.TemporaryDirectory(prefix="slc-bench-")
    wd = workdir or tmp.name
    out_rows = []
    try:
        e_count, n, vocab = src.shape
        if e_count != 1 or not src.seekable:
            raise SlcInputError(f"expected token labels (tokens, V) in a file, got {src.shape} from {src.name}")
        start = n - max(1, round(n * holdout))
        kind = source if source != "auto" else detect_source(src.read(0, 0, min(n, 64)))
        log(f"token labels: {n:,} tokens x {vocab:,} words ({kind}) from {src.name}; fitting on tokens < {start:,}, "
            f"scoring {n - start:,} held-out tokens")
        for spec in rows:
            options = parse_row(spec)
            if fit_steps:
                options["steps"] = fit_steps
            path = os.path.join(wd, f"topk-vq-{spec.replace(',', '-').replace('=', '')}.slc")
            t0 = time.perf_counter()
            try:
                r = compress(src, path, codec="topk-vq", source=kind, options=options, seed=seed, force=True,
                             fit_samples=start, **({"fit_labels": fit_labels} if fit_labels else {}))
            except SlcError as e:
                out_rows.append({"row": spec, "error": str(e)})
                log(f"{spec}: {e}")
                continue
            wall = time.perf_counter() - t0
            per = r.bytes / n
            same_k = int(per // 6)
            with open_slc(path) as f:
                t1 = time.perf_counter()
                f.sparse()
                decode_tps = n / (time.perf_counter() - t1)
                k, params = f.codec.k, {key: v for key, v in f.codec.params().items() if key != "vq"}
            scored = score_file(path, src, kind, start, [same_k] if same_k else [])
            row = {"row": spec, "k": k, "params": params, "bytes": r.bytes, "bytes_per_token": per,
                   "ratio_vs_fp16": 2 * vocab / per, "ratio_vs_topk_bf16_int32": 6 * k / per, "path": path,
                   "kl": scored["kl"], "recall": scored["recall"], "top1": scored["top1"], "same_bytes_k": same_k,
                   "same_bytes_kl": scored["baseline_kl"].get(same_k), "compress_tps": n / wall,
                   "decode_tps": decode_tps}
            out_rows.append(row)
            log(f"{spec}: {per:.1f} B/token ({row['ratio_vs_fp16']:.0f}x), KL {row['kl']:.4f}; bf16 top-{same_k} "
                f"at the same bytes: KL {row['same_bytes_kl'] if same_k else float('nan'):.4f}")
        # the reference scheme itself: top-20 in bf16 with int32 indices, 120 B/token (computed, not a file)
        ref = {k: [] for k in (RECALL_K,)}
        for a in range(start, n, BLOCK):
            teacher = to_logp(src.read(0, a, min(n, a + BLOCK)), kind, 1.0)
            ref[RECALL_K].append(kl_rows(teacher, expand(bf16_topk(teacher, RECALL_K), vocab, "uniform")))
        reference = {"row": f"top-{RECALL_K} bf16 + int32 indices, uniform tail (computed)", "k": RECALL_K,
                     "bytes_per_token": 6.0 * RECALL_K, "ratio_vs_fp16": 2 * vocab / (6 * RECALL_K),
                     "kl": float(np.concatenate(ref[RECALL_K]).mean()), "recall": 1.0}
    finally:
        src.close()
        if tmp is not None:
            tmp.cleanup()
    return {"labels": src.name, "tokens": n, "vocab": vocab, "source": kind, "holdout_start": start,
            "reference": reference, "rows": out_rows}


HEADER = ["row", "B/token", "vs fp16", "vs top-k bf16+int32", "KL", "top-20 recall", "top-1",
          "bf16+int32 same bytes", "its KL", "compress tok/s", "decode tok/s"]


def token_columns(r: dict) -> list[str]:
    if "error" in r:
        return [r["row"], "-", "-", "-", "-", "-", "-", "-", "-", "-", r["error"][:60]]
    pct = lambda v: f"{100 * v:.1f}%"  # noqa: E731
    same = f"top-{r['same_bytes_k']}" if r.get("same_bytes_k") else "-"
    return [r["row"], f"{r['bytes_per_token']:.1f}", f"{r['ratio_vs_fp16']:,.0f}x",
            f"{r['ratio_vs_topk_bf16_int32']:.2f}x" if "ratio_vs_topk_bf16_int32" in r else "1.00x",
            f"{r['kl']:.4f}", pct(r["recall"]), pct(r["top1"]) if "top1" in r else "-", same,
            f"{r['same_bytes_kl']:.4f}" if r.get("same_bytes_kl") is not None else "-",
            f"{r['compress_tps']:,.0f}" if "compress_tps" in r else "-",
            f"{r['decode_tps']:,.0f}" if "decode_tps" in r else "-"]


LEGEND = ("B/token: whole .slc file bytes per token (codebook, prior, rank order and sequence offsets included). "
          "KL: KL(teacher || decoded) over the whole vocabulary on held-out tokens (the codec is fitted on the "
          "others). top-20 recall: share of the teacher's 20 most probable words the file stores exactly. "
          "bf16+int32 same bytes: plain top-k' with bf16 values and int32 indices (6 B per word, uniform tail) at "
          "k' = B/token / 6, scored on the same tokens. compress tok/s: the whole compress call (reading the "
          "input, fitting, encoding).")


def token_markdown(result: dict) -> str:
    lines = ["| " + " | ".join(HEADER) + " |", "|" + "---|" * len(HEADER)]
    lines += ["| " + " | ".join(token_columns(r)) + " |" for r in [result["reference"], *result["rows"]]]
    return "\n".join(lines + ["", LEGEND, ""])


def token_plot(result: dict, path: str, force: bool = False) -> None:
    """KL against bytes per token: the file rows, and bf16 + int32 top-k' at the same bytes."""
    from slc.bench.plots import pyplot, save_png

    plt = pyplot()
    ok = [r for r in result["rows"] if "error" not in r]
    fig, ax = plt.subplots(figsize=(6.5, 4.5))
    for name, pick in (("topk-vq, VQAE values", lambda r: r["params"]["values"] == "vqae"),
                       ("topk-vq, bf16 values", lambda r: r["params"]["values"] == "bf16")):
        pts = sorted((r for r in ok if pick(r)), key=lambda r: r["bytes_per_token"])
        if pts:
            ax.plot([r["bytes_per_token"] for r in pts], [r["kl"] for r in pts], "o-", label=name)
    pts = sorted((r for r in ok if r.get("same_bytes_kl") is not None), key=lambda r: r["bytes_per_token"])
    ax.plot([r["bytes_per_token"] for r in pts], [r["same_bytes_kl"] for r in pts], "s--",
            label="top-k' bf16 + int32, uniform tail (same bytes)")
    ref = result["reference"]
    ax.plot([ref["bytes_per_token"]], [ref["kl"]], "r*", ms=12, label=ref["row"])
    ax.set(xscale="log", xlabel="bytes per token", ylabel="KL(teacher || decoded), held out",
           title=f"token labels: {result['tokens']:,} tokens, V={result['vocab']:,}")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=7)
    fig.tight_layout()
    save_png(fig, path, force)


__all__ = ["DEFAULT_ROWS", "run_token_bench", "token_markdown", "token_plot", "token_columns", "HEADER"]

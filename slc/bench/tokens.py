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
from dataclasses import dataclass, field
from typing import Callable, Iterator

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
ROW_KEYS = ("row", "k", "params", "bytes", "bytes_per_token", "ratio_vs_fp16", "ratio_vs_topk_bf16_int32", "path", "kl",
            "recall", "top1", "same_bytes_k", "same_bytes_kl", "compress_tps", "decode_tps")  # a row's JSON order
MEMORY_BYTES = 2 << 30  # held-out log-probabilities larger than this (float32) go to a temporary memmap


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


@dataclass
class HeldOut:
    """The held-out tokens at one temperature, read and normalised once: what every row is scored against."""

    logp: np.ndarray  # (tokens, V) float32 teacher log-probabilities, in memory or a temporary memmap
    top: np.ndarray  # (tokens, RECALL_K) the teacher's most probable words
    argmax: np.ndarray  # (tokens,) the teacher's top word
    start: int  # the first held-out token
    temperature: float
    baselines: dict[int, np.ndarray] = field(default_factory=dict)

    def blocks(self) -> Iterator[tuple[int, int, np.ndarray]]:
        """``(first token, stop, teacher log-probabilities)``, BLOCK tokens at a time."""
        n = len(self.logp)
        for a in range(0, n, BLOCK):
            yield self.start + a, self.start + min(n, a + BLOCK), np.asarray(self.logp[a:a + BLOCK])

    def baseline(self, k: int) -> np.ndarray:
        """Per-token KL of bf16 top-k with int32 indices and a uniform tail; computed once per k."""
        if k not in self.baselines:
            vocab = self.logp.shape[1]
            self.baselines[k] = np.concatenate([kl_rows(t, expand(bf16_topk(t, k), vocab, "uniform"))
                                                for _, _, t in self.blocks()])
        return self.baselines[k]


def read_held_out(src, kind: str, start: int, temperature: float, scratch: str) -> HeldOut:
    """Tokens ``[start, n)`` of ``src`` as log-probabilities at ``temperature``, with their top words.

    Above :data:`MEMORY_BYTES` they go to a float32 ``.npy`` memmap in ``scratch``.
    """
    n, vocab = src.shape[1], src.shape[2]
    shape = (n - start, vocab)
    if shape[0] * vocab * 4 > MEMORY_BYTES:
        logp = np.lib.format.open_memmap(os.path.join(scratch, f"held-out-T{temperature:g}.npy"), "w+", np.float32,
                                         shape)
    else:
        logp = np.empty(shape, np.float32)
    top, argmax = np.empty((shape[0], RECALL_K), np.int64), np.empty(shape[0], np.int64)
    for a in range(start, n, BLOCK):
        i = slice(a - start, min(n, a + BLOCK) - start)
        teacher = to_logp(src.read(0, a, min(n, a + BLOCK)), kind, temperature)
        logp[i] = teacher
        top[i] = torch.topk(torch.from_numpy(teacher), RECALL_K, 1).indices.numpy()
        argmax[i] = teacher.argmax(1)
    return HeldOut(logp, top, argmax, start, temperature)


def score_file(path: str, held: HeldOut, ks: list[int]) -> dict:
    """KL, top-20 recall and top-1 of a file's held-out tokens, and the KL of bf16 top-k' for each k' in ``ks``."""
    kl, hits, top1 = [], [], []
    with open_slc(path) as f:
        t = f.temperature
        if t != held.temperature:
            raise ValueError(f"expected held-out tokens at the file's temperature {t:g}, got {held.temperature:g}")
        for a, b, teacher in held.blocks():
            stored = f.sparse(a, b)
            q = f.decode(0, a, b, out="logits") / t
            kl.append(kl_rows(teacher, q))
            i = slice(a - held.start, b - held.start)
            hits.append((held.top[i, :, None] == stored.indices[:, None, :]).any(2).sum(1))
            top1.append(q.argmax(1) == held.argmax[i])
    cat = np.concatenate
    return {"kl": float(cat(kl).mean()), "recall": float((cat(hits) / RECALL_K).mean()),
            "top1": float(cat(top1).mean()), "baseline_kl": {k: float(held.baseline(k).mean()) for k in ks}}


def compress_row(src, spec: str, kind: str, start: int, wd: str, seed: int, fit_steps: int | None,
                 fit_labels: int | None) -> tuple[dict, float]:
    """Write one row's ``.slc``: its row fields (bytes, ratios, speeds, ...) and its temperature."""
    n, vocab = src.shape[1], src.shape[2]
    options = parse_row(spec)
    if fit_steps:
        options["steps"] = fit_steps
    path = os.path.join(wd, f"topk-vq-{spec.replace(',', '-').replace('=', '')}.slc")
    t0 = time.perf_counter()
    r = compress(src, path, codec="topk-vq", source=kind, options=options, seed=seed, force=True,
                 fit_samples=start, **({"fit_labels": fit_labels} if fit_labels else {}))
    wall = time.perf_counter() - t0
    per = r.bytes / n
    with open_slc(path) as f:
        t1 = time.perf_counter()
        f.sparse()
        decode_tps = n / (time.perf_counter() - t1)
        k, params, temperature = f.codec.k, {key: v for key, v in f.codec.params().items() if key != "vq"}, f.temperature
    return {"row": spec, "k": k, "params": params, "bytes": r.bytes, "bytes_per_token": per,
            "ratio_vs_fp16": 2 * vocab / per, "ratio_vs_topk_bf16_int32": 6 * k / per, "path": path,
            "same_bytes_k": int(per // 6), "compress_tps": n / wall, "decode_tps": decode_tps}, temperature


def run_token_bench(labels, rows: tuple[str, ...] = DEFAULT_ROWS, *, holdout: float = 0.2, source: str = "auto",
                    seed: int = 0, fit_steps: int | None = None, fit_labels: int | None = None,
                    workdir: str | None = None, force: bool = False, log: Callable[[str], None] | None = None) -> dict:
    """topk-vq at each row's options on held-out tokens, next to bf16 + int32 top-k' at the same bytes.

    ``workdir``: keep the files there (a new or empty folder, or any with ``force``); else a temporary one.
    The held-out tokens are read and normalised once (per temperature), and each bf16 top-k' scored once.
    """
    log = log or (lambda line: None)
    if workdir:
        keep_folder(workdir, force)
    if not 0 < holdout < 1:
        raise SlcInputError(f"expected a held-out share in (0, 1), got {holdout}")
    src = open_labels(labels)
    tmp = tempfile.TemporaryDirectory(prefix="slc-bench-")  # the files unless kept, and a big held-out memmap
    held: dict[float, HeldOut] = {}
    out_rows = []
    try:
        e_count, n, vocab = src.shape
        if e_count != 1 or not src.seekable:
            raise SlcInputError(f"expected token labels (tokens, V) in a file, got {src.shape} from {src.name}")
        start = n - max(1, round(n * holdout))
        kind = source if source != "auto" else detect_source(src.read(0, 0, min(n, 64)))
        log(f"token labels: {n:,} tokens x {vocab:,} words ({kind}) from {src.name}; fitting on tokens < {start:,}, "
            f"scoring {n - start:,} held-out tokens")

        def held_at(t: float) -> HeldOut:
            if t not in held:
                held.clear()  # one temperature at a time: the rows share the input's, the reference is at 1
                held[t] = read_held_out(src, kind, start, t, tmp.name)
            return held[t]

        for spec in rows:
            try:
                row, t = compress_row(src, spec, kind, start, workdir or tmp.name, seed, fit_steps, fit_labels)
            except SlcError as e:
                out_rows.append({"row": spec, "error": str(e)})
                log(f"{spec}: {e}")
                continue
            same_k = row["same_bytes_k"]
            scored = score_file(row["path"], held_at(t), [same_k] if same_k else [])
            row.update(kl=scored["kl"], recall=scored["recall"], top1=scored["top1"],
                       same_bytes_kl=scored["baseline_kl"].get(same_k))
            row = {key: row[key] for key in ROW_KEYS}
            out_rows.append(row)
            log(f"{spec}: {row['bytes_per_token']:.1f} B/token ({row['ratio_vs_fp16']:.0f}x), KL {row['kl']:.4f}; "
                f"bf16 top-{same_k} at the same bytes: KL {row['same_bytes_kl'] if same_k else float('nan'):.4f}")
        # the reference scheme itself: top-20 in bf16 with int32 indices, 120 B/token (computed, not a file)
        reference = {"row": f"top-{RECALL_K} bf16 + int32 indices, uniform tail (computed)", "k": RECALL_K,
                     "bytes_per_token": 6.0 * RECALL_K, "ratio_vs_fp16": 2 * vocab / (6 * RECALL_K),
                     "kl": float(held_at(1.0).baseline(RECALL_K).mean()), "recall": 1.0}
    finally:
        held.clear()
        src.close()
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

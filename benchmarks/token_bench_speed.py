"""``slc bench --tokens`` wall time: the old per-row scoring against the held-out tokens read once (issue 20, item 5).

The old bench re-read and re-normalised the held-out tokens for every row, recomputed the
teacher's top 20 and every bf16 top-k' baseline, and decoded each row's file to dense one
256-token block at a time through ``SlcFile.decode``, which decodes the block's whole chunk
(capped tail included) for every block. ``old_run_token_bench`` below is that code as it was
(``git show 70cd146:slc/bench/tokens.py``); the new one is :func:`slc.bench.tokens.run_token_bench`.
Both write the same files (same seed) and must give the same numbers, which this script checks
(every field but the paths and the speeds; exact equality).

Default input: the first 6,144 tokens of the real KJV trigram labels (``kjv-trigram-5000``: 5,000
words, made by ``benchmarks/kjv_slice_labels.py``), fitted on 4,915, scored on 1,229 (5 blocks;
the files' chunks hold 4,096 tokens, as in the full bench), rows ``k=64`` (VQAE values, the
default capped tail) and ``k=20,values=bf16,tail=uniform``; median of ``--repeats`` runs, old and
new alternating. The full 9-row bench on all 20,480 tokens: ``slc bench LOGITS --tokens``.

    python benchmarks/token_bench_speed.py [--labels FILE.npy] [--tokens 6144] [--rows "k=64;k=20,values=bf16"]
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from rich.console import Console
from rich.table import Table

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
import slc.bench.tokens as tokens  # noqa: E402
from slc.bench.tokens import BLOCK, DEFAULT_ROWS, RECALL_K, bf16_topk, parse_row  # noqa: E402
from slc.codecs.labels import detect_source, to_logp  # noqa: E402
from slc.codecs.sparse import expand, kl_rows  # noqa: E402
from slc.compression import compress  # noqa: E402
from slc.errors import SlcError  # noqa: E402
from slc.reader import open_slc  # noqa: E402
from slc.sources import open_labels  # noqa: E402

KJV = Path(os.environ.get("SLC_CACHE", Path.home() / ".cache" / "slc")) / "real_labels"


# ---------------------------------------------------------------- the old scoring, as it was (70cd146)
def old_score_file(path: str, src, kind: str, start: int, ks: list[int]) -> dict:
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


def old_run_token_bench(labels, rows, *, holdout: float = 0.2, seed: int = 0, fit_steps: int | None = None) -> dict:
    src = open_labels(labels)
    tmp = tempfile.TemporaryDirectory(prefix="slc-bench-")
    wd = tmp.name
    out_rows = []
    try:
        e_count, n, vocab = src.shape
        start = n - max(1, round(n * holdout))
        kind = detect_source(src.read(0, 0, min(n, 64)))
        for spec in rows:
            options = parse_row(spec)
            if fit_steps:
                options["steps"] = fit_steps
            path = os.path.join(wd, f"topk-vq-{spec.replace(',', '-').replace('=', '')}.slc")
            t0 = time.perf_counter()
            try:
                r = compress(src, path, codec="topk-vq", source=kind, options=options, seed=seed, force=True,
                             fit_samples=start)
            except SlcError as e:
                out_rows.append({"row": spec, "error": str(e)})
                continue
            wall = time.perf_counter() - t0
            per = r.bytes / n
            same_k = int(per // 6)
            with open_slc(path) as f:
                t1 = time.perf_counter()
                f.sparse()
                decode_tps = n / (time.perf_counter() - t1)
                k, params = f.codec.k, {key: v for key, v in f.codec.params().items() if key != "vq"}
            scored = old_score_file(path, src, kind, start, [same_k] if same_k else [])
            out_rows.append({"row": spec, "k": k, "params": params, "bytes": r.bytes, "bytes_per_token": per,
                             "ratio_vs_fp16": 2 * vocab / per, "ratio_vs_topk_bf16_int32": 6 * k / per, "path": path,
                             "kl": scored["kl"], "recall": scored["recall"], "top1": scored["top1"],
                             "same_bytes_k": same_k, "same_bytes_kl": scored["baseline_kl"].get(same_k),
                             "compress_tps": n / wall, "decode_tps": decode_tps})
        ref = {k: [] for k in (RECALL_K,)}
        for a in range(start, n, BLOCK):
            teacher = to_logp(src.read(0, a, min(n, a + BLOCK)), kind, 1.0)
            ref[RECALL_K].append(kl_rows(teacher, expand(bf16_topk(teacher, RECALL_K), vocab, "uniform")))
        reference = {"row": f"top-{RECALL_K} bf16 + int32 indices, uniform tail (computed)", "k": RECALL_K,
                     "bytes_per_token": 6.0 * RECALL_K, "ratio_vs_fp16": 2 * vocab / (6 * RECALL_K),
                     "kl": float(np.concatenate(ref[RECALL_K]).mean()), "recall": 1.0}
    finally:
        src.close()
        tmp.cleanup()
    return {"labels": src.name, "tokens": n, "vocab": vocab, "source": kind, "holdout_start": start,
            "reference": reference, "rows": out_rows}


# ---------------------------------------------------------------- measuring
def comparable(result: dict) -> dict:
    """A result without what differs between two runs of the same bench: the files' paths and the speeds."""
    drop = {"path", "compress_tps", "decode_tps"}
    return {**result, "rows": [{k: v for k, v in r.items() if k not in drop} for r in result["rows"]]}


class Split:
    """Seconds in each stage of the new bench, by wrapping its module-level steps."""

    STAGES = {"compress_row": "compress (fit + encode) + sparse decode", "read_held_out": "read + normalise held out",
              "score_file": "score (dense decode, KL, recall; baselines)"}

    def __init__(self) -> None:
        self.seconds = dict.fromkeys(self.STAGES, 0.0)
        self.original = {name: getattr(tokens, name) for name in self.STAGES}
        for name, fn in self.original.items():
            setattr(tokens, name, self.timed(name, fn))

    def restore(self) -> None:
        for name, fn in self.original.items():
            setattr(tokens, name, fn)

    def timed(self, name: str, fn):
        def wrapper(*args, **kwargs):
            t = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                self.seconds[name] += time.perf_counter() - t
        return wrapper


def labels_file(path: str, count: int | None, folder: str) -> str:
    """``path``, or its first ``count`` tokens in a new .npy."""
    if not count:
        return path
    out = os.path.join(folder, "slice.npy")
    x = np.load(path, mmap_mode="r")
    np.save(out, x[:count] if x.ndim == 2 else x[:, :count])
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--labels", default=str(KJV / "kjv-trigram-5000" / "logits.npy"))
    ap.add_argument("--tokens", type=int, default=6144, help="only the first N tokens of --labels (0: all)")
    ap.add_argument("--rows", default="k=64;k=20,values=bf16,tail=uniform", help="';'-separated rows ('default': "
                    "the 9 default rows)")
    ap.add_argument("--fit-steps", type=int)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    rows = DEFAULT_ROWS if a.rows == "default" else tuple(filter(None, a.rows.split(";")))
    con = Console(width=130)
    with tempfile.TemporaryDirectory() as d:
        labels = labels_file(a.labels, a.tokens, d)
        shape = np.load(labels, mmap_mode="r").shape[-2:]
        con.print(f"{labels}: {shape[0]:,} tokens x {shape[1]:,} words, {len(rows)} rows, {a.repeats} repeats")
        old_t, new_t, splits, first = [], [], [], None
        for i in range(a.repeats):
            t = time.perf_counter()
            old = old_run_token_bench(labels, rows, fit_steps=a.fit_steps)
            old_t.append(time.perf_counter() - t)
            split = Split()
            t = time.perf_counter()
            new = tokens.run_token_bench(labels, rows, fit_steps=a.fit_steps)
            new_t.append(time.perf_counter() - t)
            split.restore()
            splits.append(split.seconds)
            if comparable(old) != comparable(new):
                raise SystemExit(f"different results in repeat {i}:\nold {comparable(old)}\nnew {comparable(new)}")
            first = first or new
            con.print(f"repeat {i}: old {old_t[-1]:.1f} s, new {new_t[-1]:.1f} s, results identical")
    med = statistics.median
    t = Table(title=f"slc bench --tokens wall time, {shape[0]:,} x {shape[1]:,} ({len(rows)} rows, "
                    f"{shape[0] - first['holdout_start']:,} held-out tokens), median of {a.repeats}")
    for col in ("", "seconds", "vs old"):
        t.add_column(col, justify="left" if not col else "right")
    t.add_row("old: per-row re-read, re-normalise, chunk decode per block", f"{med(old_t):.2f}", "1.00x")
    t.add_row("new: held out read once, baselines cached by k'", f"{med(new_t):.2f}", f"{med(old_t) / med(new_t):.2f}x")
    for name, label in Split.STAGES.items():
        t.add_row(f"  new: {label}", f"{med(s[name] for s in splits):.2f}", "")
    con.print(t)
    con.print(f"results identical in all {a.repeats} repeats (KL, recall, top-1, baseline KLs, bytes; exact); "
              f"reference KL {first['reference']['kl']:.6f}")
    for r in first["rows"]:
        if "error" not in r:
            con.print(f"  {r['row']}: KL {r['kl']:.6f}, recall {r['recall']:.4f}, top-1 {r['top1']:.4f}, "
                      f"bf16 top-{r['same_bytes_k']} KL {r['same_bytes_kl']}")


if __name__ == "__main__":
    main()

#!/usr/bin/env python
"""Train a small student LM from token-level soft labels; compare it with the teacher on held-out text.

  python examples/lm_student.py [--quick] [--slc labels.slc ...] [--steps N]

Teacher: the pocketsphinx trigram LM over the KJV Bible (V = 72,547 words), cached by
``benchmarks/lm_labels.py``: ``logp.npy`` holds p(word t | the words before t in its verse) for
20,480 tokens. Student: a neural trigram LM (the two previous words of the verse, or <s> / a pad
id at its start, embedded, an MLP, logits tied to the embeddings). Every label source trains the
same student (same init, same batches, same steps) on the first ~16k tokens (whole verses); the
last ~4k tokens (whole verses) are held out. Label sources:

- hard: cross-entropy on the words that followed (the floor);
- dense: the teacher's full distribution, read per batch from the cache (the ceiling);
- top-20 bf16 + int32: the top 20 probabilities rounded to bfloat16, tail 1 - their sum spread
  uniformly (dense-mode KD); top-20 exact with collapsed (k+1)-class KD;
- ``--slc FILE`` (repeatable): an .slc of these tokens (``slc compress logp.npy -o f.slc --codec
  topk-vq --seq seq.npy``), read with ``slc.open_slc(f).sparse(start, stop)``, dense-mode KD with
  the file's tail model.

The teacher's rows sum to 1 +- 1e-3 (backoff); they are renormalised when read.
"""
from __future__ import annotations

import argparse
import ctypes
import json
import math
import os
import resource
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F

from slc.lm.distill import kd_loss
from slc.codecs.sparse import SparseLabels, select_topk

CACHE = Path(os.environ.get("SLC_CACHE", Path.home() / ".cache" / "slc")) / "kjv-trigram"
RESULTS = Path(__file__).resolve().parent / "results"


def peak_rss_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2 ** 20  # KiB on Linux


@contextmanager
def keep_freed_memory():
    """While training: glibc gives big freed buffers back to the OS, so every step page-faults its (batch, V)
    tensors in again; keeping them in the heap makes a step about a third faster here (Linux/glibc only).
    Afterwards the defaults come back and the heap is trimmed (else fragmentation grows the RSS)."""
    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.mallopt(-3, 1 << 30)  # M_MMAP_THRESHOLD
        libc.mallopt(-1, 1 << 30)  # M_TRIM_THRESHOLD
    except (OSError, AttributeError):
        libc = None
    try:
        yield
    finally:
        if libc is not None:
            libc.mallopt(-3, 128 << 10)
            libc.mallopt(-1, 128 << 10)
            libc.malloc_trim(0)


class TeacherRows:
    """Rows of ``logp.npy`` by plain reads (the mmap only gives shape and offset): memory stays bounded."""

    def __init__(self, path: Path):
        m = np.load(path, mmap_mode="r")
        (self.n, self.V), self.offset = m.shape, m.offset
        assert m.dtype == np.float32 and m.flags.c_contiguous
        del m
        self.fd = os.open(path, os.O_RDONLY)

    def __call__(self, rows: np.ndarray) -> np.ndarray:
        """Renormalised log-probabilities (len(rows), V), one read per run of consecutive rows."""
        rows = np.asarray(rows, np.int64)
        out = np.empty((len(rows), self.V), np.float32)
        cut = np.flatnonzero(np.diff(rows) != 1) + 1
        for a, b in zip(np.r_[0, cut], np.r_[cut, len(rows)]):
            view, pos = memoryview(out[a:b]).cast("B"), self.offset + int(rows[a]) * self.V * 4
            while len(view):
                got = os.preadv(self.fd, [view], pos)
                if got <= 0:
                    raise OSError(f"short read from the teacher cache at byte {pos}")
                view, pos = view[got:], pos + got
        t = torch.from_numpy(out)
        t -= t.logsumexp(1, keepdim=True)
        return out


@dataclass
class Data:
    ctx: np.ndarray  # (N, 2) int64: the two previous words [w_{t-2}, w_{t-1}]; <s> or PAD at a verse start
    targets: np.ndarray  # (N,) the word that followed
    train: np.ndarray  # token rows
    test: np.ndarray
    V: int


def load_data(train_tokens: int, test_tokens: int) -> tuple[Data, TeacherRows]:
    """Contexts as the teacher saw them (benchmarks/lm_labels.py), and a whole-verse train/test split."""
    teacher = TeacherRows(CACHE / "logp.npy")
    V, N = teacher.V, teacher.n
    targets = np.load(CACHE / "targets.npy").astype(np.int64)
    text = np.load(CACHE / "text.npy").astype(np.int64)
    seq = np.load(CACHE / "seq.npy")
    bos = (CACHE / "vocab.txt").read_text().split("\n").index("<s>")
    pos = np.arange(N)
    start = seq[np.searchsorted(seq, pos, side="right") - 1]
    w1 = np.where(pos - 1 >= start, text[pos - 1], bos)
    w2 = np.where(pos - 2 >= start, text[pos - 2], np.where(pos - 1 >= start, bos, V))  # V: the pad id
    inner = seq[1:-1]
    test0 = int(inner[np.argmin(np.abs(inner - (N - test_tokens)))])
    train1 = int(inner[np.argmin(np.abs(np.minimum(inner, test0) - train_tokens))])
    train1 = min(train1, test0)
    return Data(np.stack([w2, w1], 1), targets, np.arange(train1), np.arange(test0, N), V), teacher


class TrigramLM(torch.nn.Module):
    """Embeddings of the two previous words -> MLP -> logits tied to the word embeddings (plus a bias)."""

    def __init__(self, V: int, dim: int = 128, hidden: int = 512):
        super().__init__()
        self.V = V
        self.emb = torch.nn.Embedding(V + 1, dim)  # + the pad id
        torch.nn.init.normal_(self.emb.weight, std=dim ** -0.5)
        self.mlp = torch.nn.Sequential(torch.nn.Linear(2 * dim, hidden), torch.nn.GELU(),
                                       torch.nn.Linear(hidden, dim), torch.nn.LayerNorm(dim))
        self.bias = torch.nn.Parameter(torch.zeros(V))

    def forward(self, ctx: torch.Tensor) -> torch.Tensor:
        h = self.mlp(self.emb(ctx).flatten(1))
        return F.linear(h, self.emb.weight[:self.V], self.bias)


@dataclass
class Source:
    """A label source: ``labels(rows)`` gives (n, V) log-probabilities (dense) or SparseLabels (sparse)."""
    name: str
    kind: str  # "hard" | "dense" | "sparse"
    labels: Callable[[np.ndarray], np.ndarray | SparseLabels] | None = None
    mode: str = "dense"  # kd_loss mode for sparse labels
    prior_logp: np.ndarray | None = None
    tail: str | None = None  # kd_loss tail_mode for sparse labels (the file's)
    bytes_per_token: float | None = None
    note: str = ""


def take(s: SparseLabels, rows: np.ndarray) -> SparseLabels:
    return SparseLabels(s.indices[rows], s.logp[rows], s.tail[rows])


def bf16(s: SparseLabels) -> SparseLabels:
    """Top-k probabilities rounded through bfloat16; the tail is 1 - their sum (as topk-vq's bf16 values)."""
    p = torch.from_numpy(s.logp).exp().to(torch.bfloat16).float()
    total = p.double().sum(1).numpy()
    with np.errstate(divide="ignore"):
        return SparseLabels(s.indices, torch.log(p).numpy(), np.log(np.clip(1 - total, 0, None)).astype(np.float32))


def slc_source(path: str, train: np.ndarray, V: int) -> Source:
    """Labels of token rows ``train`` from an .slc file (reader API: open_slc(path).sparse(start, stop))."""
    import slc

    with slc.open_slc(path) as f:
        if not hasattr(f, "sparse"):
            raise SystemExit(f"{path}: this slc has no SlcFile.sparse (token-level reads); update slc")
        s0, s1 = int(train[0]), int(train[-1]) + 1
        s = f.sparse(s0, s1)
        codec = f.codec
        samples = getattr(getattr(f, "header", None), "samples", None) or len(f)
    if s.indices.max() >= V:
        raise SystemExit(f"{path}: vocabulary mismatch: labels index word {s.indices.max()} but the student has {V}")
    tail = getattr(codec, "tail", "uniform")
    prior = codec.prior_logp  # None unless the file's tail spreads by its prior
    name = f"{Path(path).name} ({getattr(codec, 'name', '?')} k={s.k}, {tail} tail)"
    note = f"{name}: {os.path.getsize(path):,} bytes for {samples:,} tokens, dense-mode KD with the file's tail"
    if samples > s1:
        note += ("; the file also holds the held-out tokens: fit its codec on the training tokens only "
                 "(`slc bench --tokens --keep DIR` files are fitted on the first 80%)")
    return Source(name, "sparse", lambda rows: take(s, rows - s0), "dense", prior,
                  codec.dense_tail, os.path.getsize(path) / samples, note)


def batches(train: np.ndarray, steps: int, batch: int, seed: int) -> list[np.ndarray]:
    """The same shuffled epochs for every source; rows sorted within a batch (fewer, longer reads)."""
    rng, out, order = np.random.default_rng(seed), [], np.empty(0, np.int64)
    while len(out) < steps:
        if len(order) < batch:
            order = np.r_[order, rng.permutation(train)]
        out.append(np.sort(order[:batch]))
        order = order[batch:]
    return out


def loss_of(src: Source, logits: torch.Tensor, targets: torch.Tensor, lab) -> torch.Tensor:
    if src.kind == "hard":
        return F.cross_entropy(logits, targets)
    if src.kind == "dense":
        return F.kl_div(F.log_softmax(logits, 1), torch.from_numpy(lab), log_target=True, reduction="batchmean")
    prior = None if src.prior_logp is None else torch.as_tensor(src.prior_logp)
    return kd_loss(logits, torch.from_numpy(lab.indices), torch.from_numpy(lab.logp), torch.from_numpy(lab.tail),
                   mode=src.mode, prior_logp=prior, tail_mode=src.tail)


def train(src: Source, init: dict, data: Data, plan: list[np.ndarray], lr: float, args) -> tuple[TrigramLM, dict]:
    from tqdm import tqdm

    torch.manual_seed(args.seed)
    model = TrigramLM(data.V, args.dim, args.hidden)
    model.load_state_dict(init)
    opt = torch.optim.Adam(model.parameters(), lr=lr, fused=True)
    steps, warm = len(plan), max(1, len(plan) // 20)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda i: min(1.0, (i + 1) / warm) * 0.5 * (1 + math.cos(math.pi * min(i, steps) / steps)))
    fetch = (lambda rows: src.labels(rows)) if src.labels else (lambda rows: None)
    t0, losses = time.perf_counter(), []
    with keep_freed_memory(), ThreadPoolExecutor(1) as pool, \
            tqdm(total=steps * args.batch, unit="tok", unit_scale=True, desc=src.name[:40], file=sys.stderr,
                 dynamic_ncols=True) as bar:
        nxt = pool.submit(fetch, plan[0])
        for i, rows in enumerate(plan):
            lab = nxt.result()
            if i + 1 < steps:
                nxt = pool.submit(fetch, plan[i + 1])  # read the next batch's labels while this one trains
            logits = model(torch.from_numpy(data.ctx[rows]))
            loss = loss_of(src, logits, torch.from_numpy(data.targets[rows]), lab)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            losses.append(loss.item())
            bar.update(len(rows))
            if i % 10 == 0 or i + 1 == steps:
                bar.set_postfix(loss=f"{np.mean(losses[-10:]):.3f}")
    return model, {"train_s": time.perf_counter() - t0, "final_loss": float(np.mean(losses[-20:]))}


@torch.no_grad()
def evaluate(model: TrigramLM, data: Data, teacher: TeacherRows, t_argmax: np.ndarray, block: int = 256) -> dict:
    """Held-out: student perplexity on the true next words, KL(teacher || student) over all V words, top-1 agreement."""
    model.eval()
    nll = kl = agree = 0.0
    blocks = [data.test[i:i + block] for i in range(0, len(data.test), block)]
    with ThreadPoolExecutor(1) as pool:
        nxt = pool.submit(teacher, blocks[0])
        for j, rows in enumerate(blocks):
            p = torch.from_numpy(nxt.result())
            if j + 1 < len(blocks):
                nxt = pool.submit(teacher, blocks[j + 1])
            q = F.log_softmax(model(torch.from_numpy(data.ctx[rows])), 1)
            nll -= q.gather(1, torch.from_numpy(data.targets[rows])[:, None]).sum().item()
            kl += F.kl_div(q, p, log_target=True, reduction="sum").item()
            agree += (q.argmax(1).numpy() == t_argmax[rows - data.test[0]]).sum()
    model.train()
    n = len(data.test)
    return {"student_ppl": math.exp(nll / n), "kl": kl / n, "top1_agree": agree / n}


def teacher_pass(data: Data, teacher: TeacherRows, k: int, block: int = 512) -> tuple[SparseLabels, dict, np.ndarray]:
    """One blocked read of the cache: top-k sparse labels of the train rows, the teacher's held-out statistics."""
    from tqdm import tqdm

    parts, lp_target, argmax = [], [], []
    rows_all = np.r_[data.train, data.test]
    for i in tqdm(range(0, len(rows_all), block), desc="teacher top-k", unit="block", file=sys.stderr):
        rows = rows_all[i:i + block]
        lp = teacher(rows)
        tr, te = rows < data.train[-1] + 1, rows >= data.test[0]
        if tr.any():
            parts.append(select_topk(lp[tr], k))
        if te.any():
            lp_target.append(np.take_along_axis(lp[te], data.targets[rows[te]][:, None], 1)[:, 0])
            argmax.append(lp[te].argmax(1))
    s = SparseLabels(*(np.concatenate([getattr(p, f) for p in parts]) for f in ("indices", "logp", "tail")))
    lpt = np.concatenate(lp_target)
    return s, {"teacher_ppl": math.exp(-lpt.mean())}, np.concatenate(argmax)


def markdown(title: str, cols: list[str], body: list[list[str]], notes: list[str]) -> str:
    def row(cells: list[str]) -> str:
        return "| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |"

    out = [f"## {title}", "", row(cols), "|" + "---|" * len(cols)] + [row(r) for r in body]
    return "\n".join(out + [""] + [f"- {n}" for n in notes]) + "\n"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--slc", action="append", default=[], help="an .slc of the cached tokens (repeatable)")
    ap.add_argument("--quick", action="store_true", help="a 1-2 minute smoke run (4k train tokens, 1k test)")
    ap.add_argument("--train-tokens", type=int, default=16384)
    ap.add_argument("--test-tokens", type=int, default=4096)
    ap.add_argument("--steps", type=int, default=None, help="training steps per source (default 256; quick 24)")
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--dim", type=int, default=128)
    ap.add_argument("--hidden", type=int, default=512)
    ap.add_argument("-k", type=int, default=20, help="stored words per token for the top-k rows")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", type=Path, default=None,
                    help="write OUT.json and OUT.md (default examples/results/lm_student; none with --quick)")
    a = ap.parse_args()
    if a.quick:
        a.train_tokens, a.test_tokens = 4096, 1024
    steps = a.steps or (24 if a.quick else 256)
    out = a.out or (None if a.quick else RESULTS / "lm_student")
    torch.set_num_threads(a.threads)
    from rich.console import Console
    from rich.table import Table

    con = Console(stderr=True)
    if not (CACHE / "logp.npy").exists():
        con.print(f"no teacher cache at {CACHE}: run `python benchmarks/lm_labels.py` first")
        return 2
    t_start = time.perf_counter()
    data, teacher = load_data(a.train_tokens, a.test_tokens)
    con.print(f"V = {data.V:,} words; train tokens [0, {len(data.train):,}), held-out [{data.test[0]:,}, "
              f"{data.test[-1] + 1:,}) = {len(data.test):,} tokens; {steps} steps x {a.batch} tokens "
              f"= {steps * a.batch / len(data.train):.1f} epochs per source")
    t0 = time.perf_counter()
    exact, tstats, t_argmax = teacher_pass(data, teacher, a.k)
    prep_s = time.perf_counter() - t0
    tstats[f"top{a.k}_mass"] = float(np.exp(exact.logp.astype(np.float64)).sum(1).mean())
    con.print(f"teacher: held-out perplexity {tstats['teacher_ppl']:.1f}; top-{a.k} mass on the train tokens "
              f"{tstats[f'top{a.k}_mass']:.3f} (mean); {prep_s:.0f} s, peak RSS {peak_rss_gb():.2f} GB")
    tr0 = int(data.train[0])
    sources = [
        Source("hard labels (floor)", "hard", None, bytes_per_token=4, note="cross-entropy on the next word"),
        Source("dense teacher (ceiling)", "dense", teacher, bytes_per_token=4 * data.V,
               note="full fp32 rows, KL over all words"),
        Source(f"top-{a.k} bf16 + int32, uniform tail", "sparse", lambda r, s=bf16(exact): take(s, r - tr0), "dense",
               bytes_per_token=6 * a.k, note="dense-mode KD"),
        Source(f"top-{a.k} exact, collapsed KD", "sparse", lambda r: take(exact, r - tr0), "collapsed",
               bytes_per_token=8 * a.k + 4, note="fp32 values + int32 indices + tail; (k+1)-class KL"),
    ]
    for path in a.slc:
        sources.append(slc_source(path, data.train, data.V))

    torch.manual_seed(a.seed)
    init = {k: v.clone() for k, v in TrigramLM(data.V, a.dim, a.hidden).state_dict().items()}
    plan = batches(data.train, steps, a.batch, a.seed)
    rows = []
    for src in sources:
        model, info = train(src, init, data, plan, a.lr, a)
        t0 = time.perf_counter()
        ev = evaluate(model, data, teacher, t_argmax)
        rows.append({"labels": src.name, "kind": src.kind, "kd_mode": src.mode if src.kind == "sparse" else None,
                     "bytes_per_token": src.bytes_per_token, "note": src.note, **info, **ev,
                     "eval_s": time.perf_counter() - t0, "peak_rss_gb": peak_rss_gb()})
        con.print(f"{src.name}: student perplexity {ev['student_ppl']:.1f}, KL {ev['kl']:.3f}, "
                  f"top-1 agreement {100 * ev['top1_agree']:.1f}% ({info['train_s']:.0f} s, peak RSS "
                  f"{peak_rss_gb():.2f} GB)")
    floor, ceil = rows[0]["kl"], rows[1]["kl"]
    for r in rows:
        r["kept"] = (floor - r["kl"]) / (floor - ceil) if floor != ceil else float("nan")
    total_s = time.perf_counter() - t_start

    title = (f"student trigram LM on {len(data.train):,} KJV tokens from a 72,547-word trigram teacher; "
             f"held-out {len(data.test):,} tokens")
    cols = ["labels", "bytes/token", "student ppl", "teacher ppl", "KL(teacher||student)", "top-1 agree", "kept",
            "train s"]
    body = [[r["labels"], f"{r['bytes_per_token']:,.0f}", f"{r['student_ppl']:.1f}", f"{tstats['teacher_ppl']:.1f}",
             f"{r['kl']:.3f}", f"{100 * r['top1_agree']:.1f}%", f"{100 * r['kept']:.0f}%", f"{r['train_s']:.0f}"]
            for r in rows]
    notes = [f"student: {a.dim}-d tied embeddings, MLP {2 * a.dim}-{a.hidden}-{a.dim}, "
             f"{sum(v.numel() for v in init.values()):,} parameters; Adam lr {a.lr:g} (warmup + cosine), "
             f"{steps} steps x {a.batch} tokens, seed {a.seed}, same init and batches for every row",
             "ppl: exp(mean -log p(true next word)) on the held-out tokens; KL over all words; top-1 agree: "
             "student argmax = teacher argmax",
             "kept: share of the floor-to-ceiling drop in held-out KL that a label source keeps",
             "bytes/token: label storage (hard: int32 word; dense: fp32 row; .slc: whole file / tokens)",
             f"teacher: top-{a.k} words hold {100 * tstats[f'top{a.k}_mass']:.1f}% of the mass on average "
             "(train tokens)",
             f"total {total_s:.0f} s on {a.threads} threads (teacher pass {prep_s:.0f} s)"]
    if rows[0]["student_ppl"] < rows[1]["student_ppl"]:
        notes.append(f"the hard-label student learns the KJV text itself, while the teacher is a general English LM "
                     f"(perplexity {tstats['teacher_ppl']:.0f} here): on true-word perplexity the floor wins; KL and "
                     "top-1 agreement measure how much of the teacher a label source passes on")
    notes += [src.note for src in sources[4:]]
    t = Table(title=title, title_justify="left")
    for c in cols:
        t.add_column(c, justify="left" if c == "labels" else "right")
    for b in body:
        t.add_row(*b)
    Console(width=None if sys.stdout.isatty() else 160).print(t)
    for n in notes:
        print(f"- {n}")
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        settings = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(a).items()}
        result = {"title": title, "settings": {**settings, "steps": steps, "V": data.V,
                                               "train_tokens": len(data.train), "test_tokens": len(data.test),
                                               "test_start": int(data.test[0])},
                  "teacher": tstats, "rows": rows, "notes": notes, "total_s": total_s, "teacher_pass_s": prep_s}
        out.with_suffix(".json").write_text(json.dumps(result, indent=1))
        out.with_suffix(".md").write_text(markdown(title, cols, body, notes))
        con.print(f"wrote {out.with_suffix('.json')} and {out.with_suffix('.md')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

#!/usr/bin/env python
"""Does ``encode`` / ``encode-lm`` under ``torchrun`` scale with the ranks, and how fast is ``merge``?

Every run is a real ``python -m torch.distributed.run --standalone --nproc-per-node N`` of this file
(``--worker``), which calls :func:`slc.encode` / :func:`slc.encode_lm` as a user's script does: rank 0
fits the codec, every rank writes its share of the chunks as a part, rank 0 merges them. Every rank
runs with ``OMP_NUM_THREADS=1`` (torchrun's default for N > 1, set for N = 1 too: torch's CPU
arithmetic depends on the thread count) and every N > 1 output is checked byte-identical to N = 1.

Workloads (real data):
  vision-sleep  Fashion-MNIST, the 500 bundled images (slc/bench/data/fmnist_subset.npz), 32 px crops;
                a teacher that sleeps ``--sleep`` s per batch (an accelerator: no CPU taken from the
                ranks) and returns a fixed linear map of 4x4-pooled pixels (100 classes); codecs
                ``fp16`` (nothing fitted) and ``vqae`` (fitted on rank 0 while the others wait)
  lm-sleep      the KJV Bible (``bible -p /usr/lib``, tokenised as benchmarks/lm_labels.py does), one
                verse a sequence, a 5,000-word vocabulary (``<unk>`` + the 4,999 most frequent words);
                an LM that sleeps ``--lm-sleep`` s per forward (one per verse) and returns a fixed
                embedding x linear map; codec ``topk-vq`` (fitted)
  effnet        the real EfficientNet-Lite0 (ImageNet-1k, TorchScript exported once into
                ``${SLC_CACHE:-~/.cache/slc}/scale_out/``) on the same images at 64 px, fp16: on 2 CPU
                cores the ranks share the cores, so this measures contention, not scale-out
Phases (timed in the worker by wrapping slc.compression's stage functions and the teacher's forward):
  start    torchrun launch -> this file runs on rank 0 (interpreter + torchrun)
  imports  torch + slc imports on rank 0
  setup    teacher, images/text, the probe forward, the gloo group (waits for the slowest rank)
  fit      rank 0: the teacher over the fit sample + the codec fit (+ the shared codec file); the other
           ranks wait. ``fit teacher`` is the teacher's share of it
  teacher  the scale-out phase: every rank runs the teacher over its chunks, encodes and writes its part
           (from the fit's end to the slowest rank's last chunk); the labels it writes (all but the fit
           sample rank 0 keeps) per second are the teacher-phase throughput, ``eff`` = throughput / (N x the
           1-rank throughput), target >= 0.9; ``thrown away``: labels the teacher computed in the phase
           beyond those, as a share of them
  barrier  the last part written -> rank 0 starts the merge
  merge    rank 0 joins the parts (slc.compression's call of ``merge``)
  finish   after the merge, inside slc: OUT.parts/ removed, the result sent to every rank
  exit     the ranks' and torchrun's exit
Merge: ``slc compress big.npy --part I/4 --codec fp16`` of ``--merge-mb`` MB of synthetic fp16 logits,
then ``merge`` (the function, median of ``--repeats``; the CLI once) against ``shutil.copyfile`` of the
same part files (with and without fsync: merge fsyncs its output) and one zlib.crc32 pass over the bytes.

    python benchmarks/scale_out.py [--ranks 1,2,4,8] [--effnet-ranks 1,2] [--merge-mb 400] [--out examples/results]
"""
from __future__ import annotations

import time

T_PROCESS = time.time()  # a worker's start, before any heavy import

import argparse  # noqa: E402
import hashlib  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import re  # noqa: E402
import shutil  # noqa: E402
import statistics  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
from concurrent.futures import ThreadPoolExecutor  # noqa: E402
from pathlib import Path  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).parent))
IMAGES = ROOT / "slc" / "bench" / "data" / "fmnist_subset.npz"
TAG = "0.9"


# ============================================================================ worker (one rank)
class Recorder:
    """Intervals of the stages this rank went through, and every teacher forward, in wall-clock seconds."""

    def __init__(self):
        self.spans: dict[str, list] = {}
        self.forwards: list = []
        self.lines: list = []

    def log(self, line: str) -> None:
        self.lines.append([time.time(), line])

    def wrap(self, owner, name: str, key: str, tag=None) -> None:
        """Replace ``owner.name`` by a timed call (skipped with a note if slc renamed it)."""
        fn = getattr(owner, name, None)
        if fn is None:
            self.log(f"bench: no {owner.__name__}.{name} to time")
            return
        spans = self.spans.setdefault(key, [])

        def timed(*args, **kwargs):
            t0 = time.time()
            try:
                return fn(*args, **kwargs)
            finally:
                spans.append([t0, time.time(), tag(*args, **kwargs) if tag else ""])

        setattr(owner, name, timed)


def instrument(rec: Recorder) -> None:
    import slc.compression as C
    import slc.distributed as D

    def write_tag(job, *a, **k):
        part = getattr(job, "part", None)
        return "codec" if part is not None and getattr(part, "codec_only", False) else "data"

    rec.wrap(C, "fit_here", "fit_here")
    rec.wrap(C, "fit_shared", "fit_shared")
    rec.wrap(C, "write", "write", write_tag)
    rec.wrap(C, "merge", "merge")
    rec.wrap(D, "group", "group")
    rec.wrap(D.Group, "broadcast", "broadcast")
    rec.wrap(D.Group, "barrier", "barrier")


def sleep_vision_teacher(classes: int, seconds: float, rec: Recorder):
    import torch
    import torch.nn.functional as F

    class SleepTeacher(torch.nn.Module):
        """An accelerator-like teacher: a fixed wait per batch, then a cheap deterministic map of the pixels."""

        def __init__(self):
            super().__init__()
            g = torch.Generator().manual_seed(0)
            self.fc = torch.nn.Linear(48, classes)
            with torch.no_grad():
                self.fc.weight.copy_(torch.randn(classes, 48, generator=g) * 2)
                self.fc.bias.copy_(torch.randn(classes, generator=g))

        def forward(self, x):
            t0 = time.time()
            time.sleep(seconds)
            y = self.fc(F.adaptive_avg_pool2d(x, 4).flatten(1))
            rec.forwards.append([t0, time.time(), int(x.shape[0])])
            return y

    return SleepTeacher().eval()


def timed_teacher(model, rec: Recorder):
    """``model`` with each forward recorded (kept as a submodule: encode fingerprints its weights)."""
    import torch

    class Timed(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.inner = model

        def forward(self, x):
            t0 = time.time()
            y = self.inner(x)
            rec.forwards.append([t0, time.time(), int(x.shape[0])])
            return y

    return Timed().eval()


def sleep_lm_teacher(vocab: int, seconds: float, rec: Recorder):
    import torch

    from slc.lm.teacher import LMTeacher

    class SleepLM(torch.nn.Module):
        """A causal-LM stand-in: a fixed wait per forward, then embedding x linear logits ``(B, L, V)``."""

        def __init__(self):
            super().__init__()
            g = torch.Generator().manual_seed(0)
            self.emb = torch.nn.Embedding(vocab, 16)
            self.out = torch.nn.Linear(16, vocab)
            with torch.no_grad():
                self.emb.weight.copy_(torch.randn(vocab, 16, generator=g))
                self.out.weight.copy_(torch.randn(vocab, 16, generator=g))
                self.out.bias.copy_(torch.randn(vocab, generator=g))

        def forward(self, ids):
            t0 = time.time()
            time.sleep(seconds)
            y = self.out(self.emb(ids))
            rec.forwards.append([t0, time.time(), int(ids.numel())])
            return y

    return LMTeacher(SleepLM(), device="cpu", kind="module", vocab=vocab)


def worker(spec_path: str) -> None:
    spec = json.loads(Path(spec_path).read_text())
    rank = int(os.environ.get("RANK", "0"))
    t_proc = T_PROCESS
    import torch  # noqa: F401

    import slc
    import slc.compression  # noqa: F401
    t_imported = time.time()
    rec = Recorder()
    instrument(rec)
    w = spec["workload"]
    if w["kind"] == "lm":
        teacher = sleep_lm_teacher(w["vocab"], w["sleep"], rec)
        t_call = time.time()
        res = slc.encode_lm(teacher, w["text"], spec["out"], vocab_file=w["vocab_file"], log=rec.log,
                            **w["options"])
    else:
        if w["teacher"] == "sleep":
            teacher = sleep_vision_teacher(w["classes"], w["sleep"], rec)
        else:
            from slc.models import load_teacher

            teacher = timed_teacher(load_teacher(w["teacher"]), rec)
        t_call = time.time()
        res = slc.encode(teacher, str(IMAGES), spec["out"], epochs=w["epochs"], batch_size=w["batch"], log=rec.log,
                         **w["options"])
    t_return = time.time()
    out = dict(rank=rank, world=int(os.environ.get("WORLD_SIZE", "1")), t_proc=t_proc, t_imported=t_imported,
               t_call=t_call, t_return=t_return, spans=rec.spans, forwards=rec.forwards, lines=rec.lines,
               labels=int(res.labels) if rank == 0 else 0, bytes=int(res.bytes), codec=res.codec,
               fit_seconds=float(res.fit.get("seconds", 0.0)))
    Path(spec["timing"], f"rank{rank}.json").write_text(json.dumps(out))


# ============================================================================ driver
def run_torchrun(n: int, spec: dict, tmp: Path) -> dict:
    """One torchrun of ``n`` ranks; the per-rank timings, the driver's wall time and the output's sha256."""
    timing = tmp / f"timing-{spec['name']}-{n}"
    shutil.rmtree(timing, ignore_errors=True)
    timing.mkdir()
    spec = {**spec, "timing": str(timing)}
    spec_path = timing / "spec.json"
    spec_path.write_text(json.dumps(spec))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(n), __file__,
           "--worker", str(spec_path)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    busy0, ours0, load0 = machine_busy(), children_cpu(), os.getloadavg()[0]
    t0 = time.time()
    p = subprocess.run(cmd, capture_output=True, env=env, cwd=ROOT)
    t1 = time.time()
    busy, ours = machine_busy() - busy0, children_cpu() - ours0
    if p.returncode != 0:
        raise SystemExit(f"torchrun {n} x {spec['name']} failed ({p.returncode}):\n{p.stderr.decode()[-4000:]}")
    ranks = sorted((json.loads(f.read_text()) for f in timing.glob("rank*.json")), key=lambda r: r["rank"])
    if len(ranks) != n:
        raise SystemExit(f"expected {n} rank timings, got {len(ranks)}")
    digest = hashlib.sha256(Path(spec["out"]).read_bytes()).hexdigest()
    cores = os.cpu_count() or 1
    return dict(t_launch=t0, t_end=t1, ranks=ranks, sha256=digest, bytes=Path(spec["out"]).stat().st_size,
                load=max(load0, os.getloadavg()[0]), ours_cpu=ours / ((t1 - t0) * cores),
                others=max(0.0, busy - ours) / ((t1 - t0) * cores))


def machine_busy() -> float:
    """CPU-seconds all processes on this machine have spent busy since boot (``/proc/stat``), or 0."""
    try:
        with open("/proc/stat") as f:
            v = [int(x) for x in f.readline().split()[1:]]
    except OSError:
        return 0.0
    return (sum(v[:8]) - v[3] - v[4]) / os.sysconf("SC_CLK_TCK")  # all but idle and iowait


def children_cpu() -> float:
    import resource

    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def phases(run: dict) -> dict:
    """The wall time split into phases (they add up to it), and the teacher-phase throughput."""
    ranks, r0 = run["ranks"], run["ranks"][0]
    s0 = r0["spans"]
    n = len(ranks)
    fit_here = s0["fit_here"][0]
    fit_start = fit_here[0]
    fit_end = s0["fit_shared"][0][1] if n > 1 else fit_here[1]
    data_writes = [next(s for s in r["spans"]["write"] if s[2] == "data") for r in ranks]
    write_end = max(s[1] for s in data_writes)
    merge = s0.get("merge", [])
    if not merge and n > 1:  # slc's own log line, if merge was not found to time
        for t, line in r0["lines"]:
            if m := re.match(r"merge: .* in ([0-9.]+) s", line):
                merge = [[t - float(m.group(1)), t, "log"]]
    merge_s = merge[0][1] - merge[0][0] if merge else 0.0
    merge_end = merge[0][1] if merge else write_end
    labels = r0["labels"]
    # The scale-out phase's useful labels: all but the fit sample rank 0 keeps for its own chunks. Every forward
    # after the fit is counted too: what is over is teacher work the ranks did and threw away.
    fit_labels = sum(f[2] for f in r0["forwards"] if fit_start <= f[0] < fit_end)
    teacher_labels = labels - min(fit_labels, rank0_share(r0, labels, n))
    computed = sum(f[2] for r in ranks for f in r["forwards"] if fit_end <= f[0] <= write_end)
    teacher_s = write_end - fit_end
    if teacher_labels <= 0 or teacher_s <= 0:
        raise SystemExit(f"expected labels left after the fit sample, got none of {labels}: make the run longer")
    fit_teacher = sum(min(f[1], fit_end) - f[0] for f in r0["forwards"] if fit_start <= f[0] < fit_end)
    busy = [sum(f[1] - f[0] for f in r["forwards"] if fit_end <= f[0] <= write_end) for r in ranks]
    ends = [s[1] for s in data_writes]
    group = s0.get("group", [])
    out = dict(
        n=n, wall=run["t_end"] - run["t_launch"], labels=labels,
        start=r0["t_proc"] - run["t_launch"], imports=r0["t_imported"] - r0["t_proc"],
        setup=fit_start - r0["t_imported"], group_join=group[0][1] - group[0][0] if group else 0.0,
        fit=fit_end - fit_start, fit_teacher=fit_teacher, fit_codec_file=fit_end - fit_here[1], fit_labels=fit_labels,
        teacher=teacher_s, teacher_labels=teacher_labels, throughput=teacher_labels / teacher_s,
        extra_labels=computed - teacher_labels,  # labelled by the teacher in the phase and not written
        teacher_busy=sum(busy) / (n * teacher_s),  # share of the phase the ranks spent inside the teacher
        imbalance=max(ends) - min(ends),  # first rank done -> last rank done
        merge=merge_s, bytes=run["bytes"], sha256=run["sha256"], load=run["load"], others=run["others"],
        ours_cpu=run["ours_cpu"],
        slowest_start=max(r["t_proc"] for r in ranks) - run["t_launch"],
        slowest_imports=max(r["t_imported"] - r["t_proc"] for r in ranks),
    )
    out["per_rank"] = [dict(rank=r["rank"], labels=sum(f[2] for f in r["forwards"] if fit_end <= f[0] <= write_end),
                            teacher_s=b, done_s=w[1] - fit_end) for r, b, w in zip(ranks, busy, data_writes)]
    returned = max(r["t_return"] for r in ranks)
    out["tail"] = merge[0][0] - write_end if merge else 0.0  # the barrier: last part written -> merge starts
    out["finish"] = r0["t_return"] - merge_end  # after the merge, inside slc: OUT.parts/ removed, the result sent
    out["exit"] = run["t_end"] - returned  # the ranks' and torchrun's exit
    out["end_to_end"] = labels / out["wall"]
    return out


def rank0_share(r0: dict, labels: int, n: int) -> int:
    """The labels of rank 0's chunks: from its log line "rank 0: chunks A..B of T written", else labels / n."""
    if n == 1:
        return labels
    for _, line in r0["lines"]:
        if m := re.match(r"rank 0: chunks (\d+)\.\.(\d+) of (\d+)", line):
            a, b, total = map(int, m.groups())
            return labels * (b - a + 1) // total
    return labels // n


def kjv_text(folder: Path, verses: int, vocab: int) -> tuple[str, str, int]:
    """The first ``verses`` KJV verses as text (one a line) and a vocabulary file of ``vocab`` words."""
    from collections import Counter

    import lm_labels

    allv = lm_labels.verses()
    counts = Counter(w for v in allv for w in v)
    words = ["<unk>"] + [w for w, _ in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))[:vocab - 1]]
    text, voc = folder / "kjv.txt", folder / "kjv-vocab.txt"
    chosen = [v for v in allv if v][:verses]
    text.write_text("\n".join(" ".join(v) for v in chosen) + "\n")
    voc.write_text("\n".join(words) + "\n")
    return str(text), str(voc), sum(map(len, chosen))


def effnet_teacher() -> str:
    from slc.bench.demo import export_teacher

    path = Path(os.environ.get("SLC_CACHE", "~/.cache/slc")).expanduser() / "scale_out" / "efficientnet-lite0.ts"
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        export_teacher(path)
    return str(path)


def workloads(a, tmp: Path) -> list[tuple[dict, list[int]]]:
    ranks = [int(r) for r in a.ranks.split(",")]
    crops = dict(size=32, invert=True, mean=(0.5,) * 3, std=(0.5,) * 3)
    per_chunk = dict(chunk_size=500, epochs_per_chunk=1)  # one epoch a chunk: 40 chunks to share out
    vision = dict(kind="vision", teacher="sleep", classes=100, sleep=a.sleep, epochs=a.epochs, batch=a.batch)
    out = []
    if "fp16" in a.only:
        out.append((dict(name="vision-sleep fp16", workload={**vision, "options": {**crops, **per_chunk, "codec": "fp16"}}),
                    ranks))
    if "vqae" in a.only:
        vq = {**crops, **per_chunk, "codec": "vqae", "ratio": 10, "fit_labels": a.fit_labels,
              "fit_config": {"steps": a.fit_steps}}
        out.append((dict(name="vision-sleep vqae", workload={**vision, "options": vq}), ranks))
    if "lm" in a.only:
        text, vocab_file, tokens = kjv_text(tmp, a.verses, 5000)
        lm = dict(kind="lm", vocab=5000, sleep=a.lm_sleep, text=text, vocab_file=vocab_file, tokens=tokens,
                  options={"chunk_size": -(-tokens // 40), "fit_labels": a.fit_labels,  # 40 chunks, as vision
                           "options": {"k": 32, "steps": a.fit_steps}})
        out.append((dict(name="lm-sleep topk-vq", workload=lm), ranks))
    if "effnet" in a.only:
        eff = dict(kind="vision", teacher=effnet_teacher(), epochs=a.effnet_epochs, batch=64,
                   options=dict(size=64, invert=True, mean=(127 / 255,) * 3, std=(128 / 255,) * 3, codec="fp16",
                                chunk_size=500, epochs_per_chunk=1))
        out.append((dict(name="effnet fp16", workload=eff), [int(r) for r in a.effnet_ranks.split(",")]))
    return out


def scale_out(a, tmp: Path, say) -> list[dict]:
    rows = []
    for spec, ranks in workloads(a, tmp):
        try:
            rows += scale_one(spec, ranks, tmp, say)
        except (SystemExit, Exception) as e:  # one workload failing leaves the others' rows
            say(f"{spec['name']}: failed: {e}")
            rows.append({"workload": spec["name"], "error": str(e)[-2000:]})
        for n in ranks:
            (tmp / f"{spec['name'].replace(' ', '-')}-{n}.slc").unlink(missing_ok=True)
    return rows


def scale_one(spec: dict, ranks: list[int], tmp: Path, say) -> list[dict]:
    """``spec`` at each rank count; the first must be 1 (the baseline every output is compared with)."""
    if ranks[0] != 1:
        raise SystemExit("expected the first rank count to be 1 (the baseline)")
    rows, base = [], None
    for n in ranks:
        out = tmp / f"{spec['name'].replace(' ', '-')}-{n}.slc"
        ph = phases(run_torchrun(n, {**spec, "out": str(out)}, tmp))
        base = base or ph
        if n > 1:
            out.unlink()
        ph["identical"] = ph["sha256"] == base["sha256"]
        if not ph["identical"]:
            raise SystemExit(f"{spec['name']}: {n} ranks wrote a file that differs from 1 rank's")
        ph["speedup"] = base["wall"] / ph["wall"]
        ph["eff"] = ph["throughput"] / (n * base["throughput"])
        rows.append({"workload": spec["name"], **ph})
        say(f"{spec['name']} N={n}: wall {ph['wall']:.1f} s, teacher {ph['throughput']:.0f} labels/s "
            f"(eff {ph['eff']:.2f}), fit {ph['fit']:.1f} s, merge {ph['merge']:.2f} s, other CPU "
            f"{100 * ph['others']:.0f}%")
    return rows


def _merge_api():
    """``merge``, ``open_part``, ``setup_bytes``, ``first_difference`` and the ``slc`` package."""
    import slc
    from slc.format.parts import first_difference
    from slc.merge_parts import merge, open_part, setup_bytes

    return merge, open_part, setup_bytes, first_difference, slc


def slc_cli(*args) -> None:
    """``python -m slc ARGS`` as a user runs it; its error output if it fails."""
    p = subprocess.run([sys.executable, "-m", "slc", *map(str, args)], capture_output=True, cwd=ROOT,
                       env={**os.environ, "OMP_NUM_THREADS": "1"})
    if p.returncode != 0:
        raise SystemExit(f"slc {' '.join(map(str, args))} failed ({p.returncode}): {p.stderr.decode()[-2000:]}")


def merge_bench(a, tmp: Path, say) -> dict:
    import zlib

    import numpy as np

    merge, open_part, setup_bytes, first_difference, slc = _merge_api()
    folder = tmp / "merge"
    folder.mkdir()
    classes = 1000
    rows = a.merge_mb * 1_000_000 // (2 * classes)
    big = folder / "big.npy"
    m = np.lib.format.open_memmap(big, "w+", np.float16, (1, rows, classes))
    rng = np.random.default_rng(0)
    for s in range(0, rows, 16384):
        e = min(rows, s + 16384)
        m[0, s:e] = (rng.standard_normal((e - s, classes), np.float32) * 3).astype(np.float16)
    m.flush()
    del m
    parts = [folder / f"part{i}.slc" for i in range(4)]
    t0 = time.perf_counter()  # four separate jobs, as a job array runs them (here two at a time on the cores)
    with ThreadPoolExecutor(2) as pool:
        list(pool.map(lambda i: slc_cli("compress", big, "-o", parts[i], "--part", f"{i}/4", "--codec", "fp16",
                                        "--logits", "--chunk-size", min(4096, rows // 16), "-q"), range(4)))
    compress_s = time.perf_counter() - t0
    big.unlink()
    total = sum(p.stat().st_size for p in parts)
    say(f"merge: 4 parts of {total / 4e6:.0f} MB written by `slc compress --part I/4` "
        f"({compress_s:.0f} s); timing {a.repeats} repeats")
    out = folder / "merged.slc"

    def timed(fn) -> float:
        t0 = time.perf_counter()
        fn()
        return time.perf_counter() - t0

    def copy(fsync: bool):
        for i, p in enumerate(parts):
            dst = folder / f"copy{i}"
            shutil.copyfile(p, dst)
            if fsync:
                fd = os.open(dst, os.O_RDONLY)
                os.fsync(fd)
                os.close(fd)

    def crc_pass():
        for p in parts:
            with open(p, "rb") as f:
                value = 0
                while block := f.read(1 << 24):
                    value = zlib.crc32(block, value)

    def open_all():
        opened = [open_part(str(p)) for p in parts]
        ref = setup_bytes(opened[0])
        for q in opened[1:]:
            assert first_difference(ref, setup_bytes(q)) is None
        for q in opened:
            q.f.close()

    times: dict[str, list[float]] = {k: [] for k in ("merge", "copy", "copy_fsync", "crc32", "open")}
    for _ in range(a.repeats):  # interleaved, so page cache and disk state are alike for each
        out.unlink(missing_ok=True)
        times["merge"].append(timed(lambda: merge([str(p) for p in parts], str(out))))
        times["copy"].append(timed(lambda: copy(False)))
        times["copy_fsync"].append(timed(lambda: copy(True)))
        times["crc32"].append(timed(crc_pass))
        times["open"].append(timed(open_all))
    merged = out.stat().st_size
    with slc.open_slc(out) as f:
        f.verify()
    out.unlink()
    t0 = time.perf_counter()
    slc_cli("merge", *parts, "-o", out, "-q")
    cli = time.perf_counter() - t0
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-c", f"import {merge.__module__}"], check=True, cwd=ROOT)
    cli_start = time.perf_counter() - t0
    shutil.rmtree(folder)
    med = {k: statistics.median(v) for k, v in times.items()}
    return dict(parts=4, part_bytes=total, merged_bytes=merged, repeats=a.repeats, compress_part_s=compress_s,
                seconds=times, median=med, cli_s=cli, cli_import_s=cli_start,
                gbps={k: total / med[k] / 1e9 for k in ("merge", "copy", "copy_fsync", "crc32")},
                cli_gbps=total / cli / 1e9)


# ============================================================================ tables
def tables(rows: list[dict], merged: dict | None):
    from rich.table import Table

    out = [f"[red]{r['workload']}: failed: {r['error']}" for r in rows if "error" in r]
    rows = [r for r in rows if "error" not in r]
    t = Table(title="scale-out under torchrun: teacher-phase throughput vs N x the 1-rank run (target eff >= 0.9)")
    for col in ("workload", "N", "labels", "wall s", "speedup", "teacher labels/s", "eff", "teacher busy",
                "thrown away", "end-to-end labels/s", "identical"):
        t.add_column(col, justify="right" if col != "workload" else "left")
    for r in rows:
        t.add_row(r["workload"], str(r["n"]), f"{r['labels']:,}", f"{r['wall']:.1f}", f"{r['speedup']:.2f}x",
                  f"{r['throughput']:,.0f}", f"{r['eff']:.2f}", f"{100 * r['teacher_busy']:.0f}%",
                  f"{100 * r['extra_labels'] / r['teacher_labels']:.0f}%", f"{r['end_to_end']:,.0f}",
                  "yes" if r["identical"] else "NO")
    out.append(t)
    t = Table(title="where the wall time goes (s; the phases add up to wall; other CPU: the machine's other load)")
    for col in ("workload", "N", "start", "imports", "setup", "(group)", "fit", "(fit teacher)", "teacher",
                "(imbalance)", "barrier", "merge", "finish", "exit", "wall", "not teacher", "other CPU"):
        t.add_column(col, justify="right" if col != "workload" else "left")
    for r in rows:
        t.add_row(r["workload"], str(r["n"]), f"{r['start']:.1f}", f"{r['imports']:.1f}", f"{r['setup']:.1f}",
                  f"{r['group_join']:.1f}", f"{r['fit']:.1f}", f"{r['fit_teacher']:.1f}", f"{r['teacher']:.1f}",
                  f"{r['imbalance']:.1f}", f"{r['tail']:.2f}", f"{r['merge']:.2f}", f"{r['finish']:.2f}",
                  f"{r['exit']:.1f}", f"{r['wall']:.1f}", f"{r['wall'] - r['teacher']:.1f}",
                  f"{100 * r['others']:.0f}%")
    out.append(t)
    if merged:
        t = Table(title=f"merge of {merged['parts']} parts, {merged['part_bytes'] / 1e6:,.0f} MB (median of "
                        f"{merged['repeats']}; page-cache warm; last column: merge()'s time / this one's)")
        for col in ("operation", "median s", "GB/s", "merge / this"):
            t.add_column(col, justify="right" if col != "operation" else "left")
        med, names = merged["median"], {"merge": "slc merge() (fsyncs its output)", "copy": "shutil.copyfile",
                                        "copy_fsync": "shutil.copyfile + fsync", "crc32": "zlib.crc32, one pass"}
        for k, label in names.items():
            t.add_row(label, f"{med[k]:.3f}", f"{merged['gbps'][k]:.2f}", f"{med['merge'] / med[k]:.2f}x")
        t.add_row("`slc merge` CLI, once (process start included)", f"{merged['cli_s']:.3f}",
                  f"{merged['cli_gbps']:.2f}", f"{med['merge'] / merged['cli_s']:.2f}x")
        t.add_row("  of which starting python and importing the merge module", f"{merged['cli_import_s']:.3f}", "", "")
        t.add_row("opening + checking the 4 parts (one-time, in merge())", f"{med['open']:.4f}", "", "")
        out.append(t)
    return out


def markdown(rows: list[dict], merged: dict | None, wall: float) -> str:
    failed = [f"- {r['workload']}: failed: {r['error'].splitlines()[0]}" for r in rows if "error" in r]
    rows = [r for r in rows if "error" not in r]
    lines = [f"# Scale-out under torchrun (slc {TAG}, {os.cpu_count()} CPU cores, no GPU)", "",
             "`python benchmarks/scale_out.py` - every N > 1 output byte-identical to N = 1. "
             f"Benchmark wall time {wall / 60:.1f} min.", "",
             "Teacher phase: from the end of rank 0's fit to the slowest rank's last chunk (every rank runs the "
             "teacher on its share, encodes and writes its part); eff = its labels/s / (N x the 1-rank labels/s). "
             "Teacher busy: the share of that phase the ranks spent inside the teacher. Thrown away: labels the "
             "teacher computed in that phase beyond those written, as a share of them. Fit: rank 0 runs the "
             "teacher over the fit sample and fits the codec while the others wait (in brackets: the teacher's "
             "part). Not teacher: wall minus the teacher phase (what does not shrink with N). Other CPU: the rest "
             "of the machine's load during the run (other processes), as a share of all cores.", "",
             "| workload | N | labels | wall s | speedup | teacher labels/s | eff (vs N x 1-rank) | teacher busy | "
             "thrown away | start | imports | setup | fit (its teacher) | teacher phase | merge | finish + exit | not teacher | "
             "other CPU |",
             "|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|"]
    for r in rows:
        lines.append(f"| {r['workload']} | {r['n']} | {r['labels']:,} | {r['wall']:.1f} | {r['speedup']:.2f}x | "
                     f"{r['throughput']:,.0f} | {r['eff']:.2f} | {100 * r['teacher_busy']:.0f}% | "
                     f"{100 * r['extra_labels'] / r['teacher_labels']:.0f}% | {r['start']:.1f} | "
                     f"{r['imports']:.1f} | {r['setup']:.1f} | {r['fit']:.1f} ({r['fit_teacher']:.1f}) | "
                     f"{r['teacher']:.1f} | {r['merge']:.2f} | {r['tail'] + r['finish'] + r['exit']:.1f} | "
                     f"{r['wall'] - r['teacher']:.1f} | {100 * r['others']:.0f}% |")
    if merged:
        med = merged["median"]
        lines += ["", f"Merge of {merged['parts']} parts, {merged['part_bytes'] / 1e6:,.0f} MB, median of "
                      f"{merged['repeats']} (page cache warm):", "",
                  "| operation | median s | GB/s | merge / this |", "|---|--:|--:|--:|"]
        for k, label in (("merge", "slc merge() (fsyncs)"), ("copy", "shutil.copyfile"),
                         ("copy_fsync", "shutil.copyfile + fsync"), ("crc32", "zlib.crc32, one pass")):
            lines.append(f"| {label} | {med[k]:.3f} | {merged['gbps'][k]:.2f} | {med['merge'] / med[k]:.2f}x |")
        lines.append(f"| `slc merge` CLI once | {merged['cli_s']:.3f} | {merged['cli_gbps']:.2f} | |")
        lines.append(f"| of which starting python and importing the merge module | {merged['cli_import_s']:.3f} | | |")
        lines.append(f"| opening + checking the parts (one-time, in merge()) | {med['open']:.4f} | | |")
    return "\n".join(lines + ([""] + failed if failed else [])) + "\n"


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    ap.add_argument("--ranks", default="1,2,4,8", help="rank counts of the sleep-teacher runs (1 first)")
    ap.add_argument("--effnet-ranks", default="1,2", help="rank counts of the EfficientNet-Lite0 runs")
    ap.add_argument("--only", default="fp16,vqae,lm,effnet,merge", help="which parts to run")
    ap.add_argument("--sleep", type=float, default=0.08, help="vision teacher: seconds per batch")
    ap.add_argument("--batch", type=int, default=50)
    ap.add_argument("--epochs", type=int, default=40, help="of the 500 images (one chunk each)")
    ap.add_argument("--lm-sleep", type=float, default=0.02, help="LM teacher: seconds per forward (one verse)")
    ap.add_argument("--verses", type=int, default=1500)
    ap.add_argument("--fit-labels", type=int, default=2000, help="fit sample of vqae and topk-vq (labels)")
    ap.add_argument("--fit-steps", type=int, default=100, help="fit steps of vqae and topk-vq")
    ap.add_argument("--effnet-epochs", type=int, default=16)
    ap.add_argument("--merge-mb", type=int, default=400, help="MB of fp16 labels split into 4 parts")
    ap.add_argument("--repeats", type=int, default=5, help="of each merge and copy timing")
    ap.add_argument("--out", default="examples/results")
    a = ap.parse_args(argv)
    if a.worker:
        return worker(a.worker)
    from rich.console import Console

    import slc
    import torch

    con = Console(width=200)
    t_start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="slc-scale-out-") as d:
        tmp = Path(d)
        rows = scale_out(a, tmp, con.log)
        merged = None
        if "merge" in a.only:
            try:
                merged = merge_bench(a, tmp, con.log)
            except (SystemExit, Exception) as e:
                con.log(f"merge: failed: {e}")
    wall = time.perf_counter() - t_start
    for t in tables(rows, merged):
        con.print(t)
    con.print(f"benchmark wall time: {wall:.0f} s")
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    params = {k: v for k, v in vars(a).items() if k not in ("worker", "out")}
    (out / f"scale_out_{TAG}.json").write_text(json.dumps(
        {"slc": slc.__version__, "torch": torch.__version__, "cpus": os.cpu_count(), "params": params,
         "wall_s": wall, "runs": rows, "merge": merged}, indent=1))
    (out / f"scale_out_{TAG}.md").write_text(markdown(rows, merged, wall))


if __name__ == "__main__":
    main()

"""`slc encode` on CPU: slc's own overhead over teacher-only inference, and peak RSS against epochs.

    python benchmarks/bench_encode.py                 # default: ~5 min on 2 idle cores
    python benchmarks/bench_encode.py --quick         # ~1-2 min: 1 epoch, 1 repeat, 1,000 images x 2/10 epochs for RSS
    python benchmarks/bench_encode.py --json out.json --codecs vqae,topk --workers 0,1 --breakdown always

Teacher: the pretrained EfficientNet-Lite0 (ImageNet-1k) as TorchScript, exported once with
examples/export_teacher.py into $SLC_CACHE/bench/ (or --teacher PATH). Images: the 500 real
Fashion-MNIST images of slc/bench/data/fmnist_subset.npz, inverted, mean/std 0.498/0.502.

Overhead rows (one process; every repeat runs all rows back to back, so load drift hits all alike):
  teacher only       the TorchScript forward on pre-made channels_last crop batches (torch.inference_mode,
                     same threads, same batch size and batch boundaries, same number of crops): the baseline
  slc.encode(...)    the whole API call (opening and fingerprinting the images, replayed crops, DataLoader,
                     teacher, codec fit, encode, checksummed atomic write), per codec and DataLoader workers
  overhead           (encode - teacher) / teacher, paired within a repeat, median over repeats; for a fitted
                     codec also with the fit's seconds (result.fit["seconds"]) taken out. Target: <= 10%.
RSS rows: `slc encode` (the CLI, in a fresh child process: its own VmHWM from /proc/self/status, not
ru_maxrss, which a child inherits from its parent) on 1,000 Fashion-MNIST train images for 5 and 50
epochs. 50 epochs at 112 px would take ~10 minutes of teacher time, so these runs use --rss-size 32 and
by default a tiny TorchScript teacher with 1,000 outputs (labels as wide as the real ones): memory growth
with the epoch count is what is measured. Target: 50 epochs within 200 MB of 5.
Breakdown (--breakdown auto: when an overhead exceeds 10%): per-crop cost of each stage of slc's
pipeline measured in isolation, as % of the teacher's per-crop forward time.
"""
from __future__ import annotations

import argparse
import gzip
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from contextlib import nullcontext
from pathlib import Path

import numpy as np
import torch
from rich.console import Console
from rich.table import Table

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT))

from slc.vision.augment import Recipe, render  # noqa: E402
from slc.vision.dataset import CropDataset  # noqa: E402
from slc.vision.encode import ENCODE_FIT_LABELS, encode, model_fingerprint  # noqa: E402
from slc.vision.images import open_images  # noqa: E402
from slc.models import load_teacher  # noqa: E402

MEAN, STD = (0.498, 0.498, 0.498), (0.502, 0.502, 0.502)  # (x - 127) / 128, EfficientNet-Lite0's input
FMNIST_TRAIN = Path(os.environ.get("FMNIST_DIR", "/usr/share/datasets/fashion-mnist")) / "train-images-idx3-ubyte.gz"
SUBSET = ROOT / "slc" / "bench" / "data" / "fmnist_subset.npz"
TARGET_OVERHEAD = 0.10
TARGET_RSS_MB = 200.0


# --------------------------------------------------------------------------- helpers
def cache_dir() -> Path:
    d = Path(os.environ.get("SLC_CACHE", "~/.cache/slc")).expanduser() / "bench"
    d.mkdir(parents=True, exist_ok=True)
    return d


def real_teacher(path: str | None, console: Console) -> str:
    """The EfficientNet-Lite0 TorchScript file: --teacher, or exported once into the cache."""
    if path:
        return path
    out = cache_dir() / "efficientnet-lite0.pt"
    if not out.exists():
        console.print(f"exporting EfficientNet-Lite0 to {out} (once) ...")
        tmp = out.with_suffix(".tmp.pt")
        subprocess.run([sys.executable, str(ROOT / "examples" / "export_teacher.py"), "-o", str(tmp)], check=True,
                       stdout=subprocess.DEVNULL)
        os.replace(tmp, out)
    return str(out)


def tiny_teacher(path: str) -> str:
    """A 3x3 conv (stride 2), ReLU, global average pool and a 1,000-way linear layer, as TorchScript."""

    class Tiny(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = torch.nn.Conv2d(3, 32, 3, stride=2, padding=1)
            self.fc = torch.nn.Linear(32, 1000)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return 8.0 * self.fc(torch.relu(self.conv(x)).mean((2, 3)))

    torch.manual_seed(0)
    torch.jit.save(torch.jit.script(Tiny().eval()), path)
    return path


def thousand_images(path: str, n: int) -> str:
    """The first ``n`` Fashion-MNIST train images as [n, 28, 28] uint8 .npy (the 500-image subset tiled
    if the Debian dataset-fashion-mnist files are missing)."""
    if FMNIST_TRAIN.exists():
        with gzip.open(FMNIST_TRAIN) as fh:
            imgs = np.frombuffer(fh.read(), np.uint8, offset=16).reshape(-1, 28, 28)[:n]
        what = f"first {n} Fashion-MNIST train images"
    else:
        with np.load(SUBSET) as z:
            sub = z["images"]
        imgs = np.concatenate([sub] * -(-n // len(sub)))[:n]
        what = f"the 500-image subset tiled to {n} ({FMNIST_TRAIN} missing)"
    np.save(path, np.ascontiguousarray(imgs))
    return what


def batch_plan(n: int, epochs: int, batch_size: int, chunk_size: int) -> list[int]:
    """Batch sizes in the order TeacherSource.blocks feeds the teacher (batches never cross a chunk)."""
    sizes = []
    for _ in range(epochs):
        for c0 in range(0, n, chunk_size):
            c1 = min(n, c0 + chunk_size)
            sizes += [min(c1, a + batch_size) - a for a in range(c0, c1, batch_size)]
    return sizes


def med(xs: list[float]) -> float:
    return statistics.median(xs)


def spread(xs: list[float], fmt: str = "{:+.1f}%", scale: float = 100.0) -> str:
    if len(xs) < 2:
        return ""
    return f" [{fmt.format(min(xs) * scale)} .. {fmt.format(max(xs) * scale)}]"


def loadavg() -> str:
    try:
        return " / ".join(f"{x:.2f}" for x in os.getloadavg())
    except OSError:
        return "?"


def cpu_snapshot() -> tuple[float, float]:
    """(seconds all CPUs were busy, seconds this process and its reaped children ran), both since boot/start."""
    try:
        with open("/proc/stat") as fh:
            f = [int(x) for x in fh.readline().split()[1:]]
        busy = (sum(f[:8]) - f[3] - f[4]) / os.sysconf("SC_CLK_TCK")  # all but idle and iowait
    except (OSError, ValueError, IndexError):
        busy = float("nan")
    t = os.times()
    return busy, t.user + t.system + t.children_user + t.children_system


def foreign_share(before: tuple[float, float], after: tuple[float, float], wall: float) -> float:
    """Share of the machine's CPUs that *other* processes used between two snapshots (0 = undisturbed)."""
    other = (after[0] - before[0]) - (after[1] - before[1])
    return max(0.0, other) / (wall * (os.cpu_count() or 1))


def settle(max_wait: float, threshold: float = 0.10) -> float:
    """Wait (at most ``max_wait`` s) for a second in which other processes use under ``threshold`` of the CPUs."""
    t_end = time.perf_counter() + max_wait
    share = float("nan")
    while True:
        a, t0 = cpu_snapshot(), time.perf_counter()
        time.sleep(1.0)
        share = foreign_share(a, cpu_snapshot(), time.perf_counter() - t0)
        if share < threshold or time.perf_counter() >= t_end:
            return share


def cpu_model() -> str:
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "?"


# --------------------------------------------------------------------------- overhead
def premade_batches(images: str, recipe: Recipe, batch_size: int, chunk_size: int) -> list[torch.Tensor]:
    """One epoch of real crops in the encode run's batch boundaries, stacked and channels_last, untimed."""
    imgs = open_images(images)
    crops = CropDataset(imgs, recipe, 1)
    n = len(imgs)
    out, i = [], 0
    for b in batch_plan(n, 1, batch_size, chunk_size):
        out.append(torch.stack([crops[j] for j in range(i, i + b)]).contiguous(memory_format=torch.channels_last))
        i += b
    imgs.close()
    return out


def time_teacher(model, batches: list[torch.Tensor], epochs: int) -> tuple[float, np.ndarray]:
    t0 = time.perf_counter()
    with torch.inference_mode():
        for _ in range(epochs):
            for x in batches:
                y = model(x).float().numpy()
    return time.perf_counter() - t0, y


def time_encode(model, images: str, out: str, recipe: Recipe, args, codec: str, workers: int) -> dict:
    kw = dict(ratio=args.ratio) if codec not in ("fp16", "fp32") else {}
    t0 = time.perf_counter()
    res = encode(model, images, out, recipe=recipe, epochs=args.epochs, batch_size=args.batch_size, device="cpu",
                 workers=workers, codec=codec, temperature=args.temperature, chunk_size=args.chunk_size,
                 force=True, **kw)
    wall = time.perf_counter() - t0
    return {"seconds": wall, "fit_seconds": float(res.fit.get("seconds", 0.0)), "bytes": res.bytes,
            "ratio": res.ratio, "codec": res.codec, "params": res.plan.params}


# --------------------------------------------------------------------------- breakdown
class one_thread:
    """torch.set_num_threads(1) inside the block (what a DataLoader worker runs with)."""

    def __enter__(self):
        self.threads = torch.get_num_threads()
        torch.set_num_threads(1)

    def __exit__(self, *exc):
        torch.set_num_threads(self.threads)


def breakdown(model, images: str, recipe: Recipe, args, teacher_s_per_crop: float, logits: np.ndarray,
              params: dict) -> list[dict]:
    """Per-crop seconds of each slc stage alone (same process, same threads), and as % of the forward."""
    from torch.utils.data import DataLoader

    from slc.codecs import TopKCodec, VQAECodec
    from slc.codecs.planner import plan_for
    from slc.codecs.labels import to_logp
    from slc.codecs.vqae import FitConfig

    rows = []
    threads = torch.get_num_threads()

    def add(what, seconds, per, note=""):
        rows.append({"stage": what, "us_per_crop": 1e6 * seconds / per,
                     "pct_of_teacher": 100 * seconds / per / teacher_s_per_crop, "note": note})

    t0 = time.perf_counter()
    imgs = open_images(images)
    t = time.perf_counter() - t0
    n = len(imgs)
    add("open_images (scan + fingerprint every image), once per run", t, args.epochs * n, f"{1e3 * t:.1f} ms once")
    t0 = time.perf_counter()
    model_fingerprint(model)
    t = time.perf_counter() - t0
    add("model_fingerprint (sha256 of the weights), once per run", t, args.epochs * n, f"{1e3 * t:.0f} ms once")
    crops = CropDataset(imgs, recipe, args.epochs)
    t0 = time.perf_counter()
    order, boxes = crops.epoch_plan(0)
    t = time.perf_counter() - t0
    add("CropDataset.epoch_plan (order + crop boxes), once per epoch", t, n, f"{1e3 * t:.1f} ms per epoch")
    reps = 3
    t0 = time.perf_counter()
    for _ in range(reps):
        for i in range(n):
            imgs.load(i)
    t_load = (time.perf_counter() - t0) / reps
    reader = imgs._reader  # noqa: SLF001  the same rows without the sha256 re-check
    t0 = time.perf_counter()
    for _ in range(reps):
        for i in range(n):
            reader.rows(i, i + 1)
    t_rows = (time.perf_counter() - t0) / reps
    add("ImageSet.load (read row + sha256 re-check)", t_load, n, f"re-check alone {1e6 * (t_load - t_rows) / n:.1f} us")
    pix = [imgs.load(int(order[p])) for p in range(n)]
    for th in (threads, 1):
        with one_thread() if th == 1 else nullcontext():
            t0 = time.perf_counter()
            for p in range(n):
                render(pix[p], boxes[p], recipe)
            t = time.perf_counter() - t0
        add(f"augment.render, {th} torch thread(s)", t, n, "as in a DataLoader worker" if th == 1 else "as workers=0")
    t0 = time.perf_counter()
    xs = [crops[i] for i in range(n)]
    add(f"CropDataset[i] (load + render), {threads} thread(s)", time.perf_counter() - t0, n)
    for th in (threads, 1):
        with one_thread() if th == 1 else nullcontext():
            t0 = time.perf_counter()
            for a in range(0, n, args.batch_size):
                torch.stack(xs[a:a + args.batch_size]).contiguous(memory_format=torch.channels_last)
            t = time.perf_counter() - t0
        add(f"torch.stack (collate) + channels_last, {th} thread(s)", t, n)
    batches = [list(range(a, min(n, a + args.batch_size))) for a in range(0, n, args.batch_size)]
    for w, th in [(0, threads), (0, 1)] + [(w, 1) for w in sorted(set(args.workers)) if w]:
        ds = CropDataset(imgs, recipe, 1)
        with one_thread() if (w == 0 and th == 1) else nullcontext():
            t0 = time.perf_counter()
            for x in DataLoader(ds, batch_sampler=batches, num_workers=w, prefetch_factor=4 if w else None):
                x.contiguous(memory_format=torch.channels_last)
            t = time.perf_counter() - t0
        add(f"DataLoader(workers={w}), one epoch of crops, no teacher, {th} thread(s) making crops", t, n,
            "incl. worker start; runs beside the teacher" if w else "")
    # codecs, fitted on the teacher's real logits (tiled to the run's label count)
    e, c = args.epochs, logits.shape[-1]
    flat = np.concatenate([logits] * -(-e * n // len(logits)))[: e * n]
    lp = to_logp(flat, "logits", args.temperature)
    for codec in ("vqae", "topk"):
        p = params.get(codec) or plan_for(codec, (e, n, c), args.chunk_size, ratio=args.ratio).params
        enc = (VQAECodec.fit(lp, p["k"], p["dc"], p["dh"], FitConfig(), "<f2") if codec == "vqae"
               else TopKCodec(c, p["k"]))
        t0 = time.perf_counter()
        for _ in range(reps):
            for s in range(0, e * n, n):
                enc.encode(to_logp(flat[s:s + n], "logits", args.temperature))
        add(f"to_logp + {codec} encode ({', '.join(f'{k}={v}' for k, v in p.items())}), fitted",
            (time.perf_counter() - t0) / reps, e * n)
    imgs.close()
    return rows


# --------------------------------------------------------------------------- peak RSS
CHILD = r"""
import json, os, sys, time, atexit
a = json.loads(sys.argv[1])
t0 = time.perf_counter()
def report():
    st = {}
    for line in open("/proc/self/status"):
        if line.startswith(("VmHWM:", "VmRSS:")):
            st[line.split(":")[0]] = int(line.split()[1])
    st["seconds"] = time.perf_counter() - t0
    with open(a["report"], "w") as fh:
        json.dump(st, fh)
atexit.register(report)
sys.argv = ["slc"] + a["argv"]
import torch
torch.set_num_threads(a["threads"])
from slc.cli import main
main()
"""


def rss_run(teacher: str, images: str, out: str, epochs: int, codec: str, args, report: str) -> dict:
    argv = ["encode", teacher, images, "-o", out, "--epochs", str(epochs), "--size", str(args.rss_size),
            "--invert", "--mean", ",".join(map(str, MEAN)), "--std", ",".join(map(str, STD)),
            "--batch-size", str(args.batch_size), "--device", "cpu", "--codec", codec, "-T", str(args.temperature),
            "--force", "-q"]
    if codec not in ("fp16", "fp32"):
        argv += ["--ratio", str(args.ratio)]
    if os.path.exists(report):
        os.remove(report)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.run([sys.executable, "-c", CHILD, json.dumps({"argv": argv, "report": report, "threads": args.rss_threads})], env=env,
                          capture_output=True, text=True)
    if proc.returncode:
        raise SystemExit(f"slc encode (RSS run, {epochs} epochs) failed with exit code {proc.returncode}:\n"
                         f"{proc.stderr[-3000:]}")
    with open(report) as fh:
        st = json.load(fh)
    return {"peak_mb": st["VmHWM"] / 1024, "seconds": st["seconds"], "bytes": os.path.getsize(out)}


# --------------------------------------------------------------------------- main
def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true",
                    help="1 epoch (500 crops), 1 repeat; RSS on 1,000 images x 2 and 10 epochs")
    ap.add_argument("--teacher", help="TorchScript teacher [default: EfficientNet-Lite0, exported into the cache]")
    ap.add_argument("--images", default=str(SUBSET), help="images for the overhead rows [%(default)s]")
    ap.add_argument("--epochs", type=int, default=4, help="epochs of crops per overhead run [4: 2,000 crops]")
    ap.add_argument("--size", type=int, default=112, help="crop side for the overhead rows [112]")
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--chunk-size", type=int, default=4096)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--codecs", default="vqae", help="comma-separated: vqae, topk, auto, fp16 [vqae]")
    ap.add_argument("--workers", default="0,1", help="comma-separated DataLoader worker counts [0,1]")
    ap.add_argument("--ratio", type=float, default=40.0)
    ap.add_argument("-T", "--temperature", type=float, default=4.0)
    ap.add_argument("--threads", type=int, help="torch threads [torch's default]")
    ap.add_argument("--breakdown", choices=("auto", "always", "never"), default="auto",
                    help="per-stage costs: auto = when an overhead exceeds 10%%")
    ap.add_argument("--settle", type=float, default=30.0,
                    help="before each repeat, wait up to this many seconds for other processes to leave the CPUs "
                         "idle (a shared machine); 0: don't [30]")
    ap.add_argument("--skip-overhead", action="store_true")
    ap.add_argument("--skip-rss", action="store_true")
    ap.add_argument("--rss-images", type=int, default=1000)
    ap.add_argument("--rss-epochs", default="5,50", help="two epoch counts to compare [5,50]")
    ap.add_argument("--rss-size", type=int, default=32, help="crop side for the RSS runs [32]")
    ap.add_argument("--rss-teacher", choices=("tiny", "real"), default="tiny",
                    help="tiny: conv + 1,000-way linear (fast); real: EfficientNet-Lite0 (~2 ms/crop at 32 px)")
    ap.add_argument("--rss-threads", type=int, default=1,
                    help="torch threads in the RSS runs [1: memory does not depend on it, time does]")
    ap.add_argument("--rss-codecs", default="vqae,topk", help="comma-separated codecs for the RSS runs [vqae,topk]")
    ap.add_argument("--json", help="also write every measurement to this JSON file")
    args = ap.parse_args()
    if args.quick:
        args.epochs, args.repeats = 1, 1
        if args.rss_epochs == "5,50":
            args.rss_epochs = "2,10"
    args.workers = [int(w) for w in args.workers.split(",")]
    codecs = [c.strip() for c in args.codecs.split(",") if c.strip()]
    rss_codecs = [c.strip() for c in args.rss_codecs.split(",") if c.strip()]
    rss_epochs = [int(e) for e in args.rss_epochs.split(",")]
    if args.threads:
        torch.set_num_threads(args.threads)
    console = Console(width=None if sys.stdout.isatty() else 190)
    t_start = time.perf_counter()
    env = {"python": platform.python_version(), "torch": torch.__version__, "numpy": np.__version__,
           "torch_threads": torch.get_num_threads(), "cpu_count": os.cpu_count(),
           "affinity": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
           "cpu": cpu_model(), "loadavg_start": loadavg()}
    console.print(f"torch {env['torch']} ({env['torch_threads']} threads), numpy {env['numpy']}, "
                  f"Python {env['python']}; {env['cpu_count']} CPUs ({env['affinity']} usable): {env['cpu']}; "
                  f"load average {env['loadavg_start']}")
    results: dict = {"env": env, "args": {k: v for k, v in vars(args).items()}}
    rows: list[tuple[str, ...]] = []
    teacher_path = real_teacher(args.teacher, console)
    model = load_teacher(teacher_path)
    recipe = Recipe(size=args.size, mean=MEAN, std=STD, invert=True)

    with tempfile.TemporaryDirectory(prefix="bench_encode_") as wd:
        over_bad = False
        if not args.skip_overhead:
            n_img = len(open_images(args.images))
            crops_total = args.epochs * n_img
            console.print(f"overhead: {n_img} images x {args.epochs} epochs = {crops_total:,} crops of {args.size} px, "
                          f"batch {args.batch_size}, {args.repeats} repeat(s); codecs {codecs}, workers {args.workers}")
            batches = premade_batches(args.images, recipe, args.batch_size, args.chunk_size)
            with torch.inference_mode():  # warm-up: TorchScript's profiling executor specialises on early calls
                for x in batches[:3] + batches[-1:]:
                    model(x)
            variants = [(c, w) for c in codecs for w in args.workers]
            runs: dict = {"teacher": [], **{f"{c}/w{w}": [] for c, w in variants}}
            logits = None
            foreign: dict = {k: [] for k in runs}
            for r in range(args.repeats):
                quiet = settle(args.settle) if args.settle else float("nan")
                a = cpu_snapshot()
                t, _ = time_teacher(model, batches, args.epochs)
                runs["teacher"].append(t)
                foreign["teacher"].append(foreign_share(a, cpu_snapshot(), t))
                line = [f"repeat {r + 1} (others' CPU before: {100 * quiet:.0f}%): teacher {crops_total / t:,.1f} "
                        f"crops/s [others {100 * foreign['teacher'][-1]:.0f}%]"]
                for c, w in variants:
                    a = cpu_snapshot()
                    m = time_encode(model, args.images, os.path.join(wd, "o.slc"), recipe, args, c, w)
                    m["foreign"] = foreign_share(a, cpu_snapshot(), m["seconds"])
                    runs[f"{c}/w{w}"].append(m)
                    foreign[f"{c}/w{w}"].append(m["foreign"])
                    line.append(f"{c} w{w} {crops_total / m['seconds']:,.1f} crops/s "
                                f"({100 * (m['seconds'] - t) / t:+.1f}%, fit {m['fit_seconds']:.1f} s) "
                                f"[others {100 * m['foreign']:.0f}%]")
                console.print("  " + "; ".join(line))
            with torch.inference_mode():
                logits = np.concatenate([model(x).float().numpy() for x in batches])
            teach = runs["teacher"]
            t_med = med(teach)
            fmed = lambda k: f"{100 * med(foreign[k]):.0f}%"  # noqa: E731
            best_t = min(teach)
            rows.append(("teacher only (baseline): TorchScript forward on pre-made batches",
                         f"{crops_total / t_med:,.1f} crops/s", f"{1e3 * t_med / crops_total:.2f} ms/crop",
                         "-", f"{1e3 * best_t / crops_total:.2f} ms/crop", fmed("teacher"), ""))
            over: dict = {"teacher_seconds": teach, "teacher_foreign": foreign["teacher"], "crops": crops_total,
                          "variants": {}}
            target = f"<= +{100 * TARGET_OVERHEAD:.0f}%"
            for c, w in variants:
                key = f"{c}/w{w}"
                ms = runs[key]
                ov = [(m["seconds"] - t) / t for m, t in zip(ms, teach)]
                ov_nofit = [(m["seconds"] - m["fit_seconds"] - t) / t for m, t in zip(ms, teach)]
                fit = [m["fit_seconds"] for m in ms]
                s_med = med([m["seconds"] for m in ms])
                best = min(m["seconds"] for m in ms) / best_t - 1
                best_nofit = min(m["seconds"] - m["fit_seconds"] for m in ms) / best_t - 1
                p = ms[0]["params"]
                name = f"slc.encode, codec {ms[0]['codec']} ({', '.join(f'{k}={v}' for k, v in p.items())}), workers={w}"
                rows.append((name + ", all in", f"{crops_total / s_med:,.1f} crops/s",
                             f"{1e3 * s_med / crops_total:.2f} ms/crop", f"{100 * med(ov):+.1f}%" + spread(ov),
                             f"{100 * best:+.1f}%", fmed(key), target))
                if med(fit) > 0:
                    rows.append((f"  of which codec fit ({ms[0]['codec']}, on {min(crops_total, ENCODE_FIT_LABELS):,} labels, "
                                 "1 thread)", f"{med(fit):.2f} s", f"{1e3 * med(fit) / crops_total:.2f} ms/crop",
                                 f"{100 * med([f / t for f, t in zip(fit, teach)]):.1f}% of teacher", "", "", ""))
                    rows.append(("  ... overhead without the fit", "", "",
                                 f"{100 * med(ov_nofit):+.1f}%" + spread(ov_nofit), f"{100 * best_nofit:+.1f}%", "",
                                 target))
                worst = med(ov_nofit) if med(fit) > 0 else med(ov)
                over_bad |= worst > TARGET_OVERHEAD
                over["variants"][key] = {"runs": ms, "overhead": ov, "overhead_without_fit": ov_nofit,
                                         "overhead_median": med(ov), "overhead_without_fit_median": med(ov_nofit),
                                         "overhead_best_of": best, "overhead_without_fit_best_of": best_nofit,
                                         "fit_seconds_median": med(fit), "ratio": ms[0]["ratio"]}
            results["overhead"] = over
            if args.breakdown == "always" or (args.breakdown == "auto" and over_bad):
                console.print("breakdown: timing each stage alone ...")
                params = {v["runs"][0]["codec"]: v["runs"][0]["params"] for v in over["variants"].values()}
                bd = breakdown(model, args.images, recipe, args, t_med / crops_total, logits, params)
                results["breakdown"] = bd
                bt = Table(title=f"where slc's time goes ({args.size} px crops; teacher {1e3 * t_med / crops_total:.2f} "
                                 "ms/crop = 100%)")
                for col in ("stage", "us / crop", "% of teacher", "note"):
                    bt.add_column(col, justify="left" if col in ("stage", "note") else "right")
                for b in bd:
                    bt.add_row(b["stage"], f"{b['us_per_crop']:,.1f}", f"{b['pct_of_teacher']:.2f}%", b["note"])
                console.print(bt)

        if not args.skip_rss:
            img_path = os.path.join(wd, "images.npy")
            what = thousand_images(img_path, args.rss_images)
            if args.rss_teacher == "tiny":
                t_path, t_name = tiny_teacher(os.path.join(wd, "tiny.pt")), "tiny conv+linear teacher (1,000 outputs)"
            else:
                t_path, t_name = teacher_path, "EfficientNet-Lite0"
            console.print(f"peak RSS: `slc encode` on {what}, {args.rss_size} px, {t_name}, epochs {rss_epochs}, "
                          f"codecs {rss_codecs} (fresh child processes)")
            rss: dict = {"images": what, "teacher": t_name, "size": args.rss_size, "runs": {}}
            for c in rss_codecs:
                got = {}
                for e in rss_epochs:
                    got[e] = rss_run(t_path, img_path, os.path.join(wd, "rss.slc"), e, c, args,
                                     os.path.join(wd, "rss.json"))
                    console.print(f"  {c}, {e} epochs: peak RSS {got[e]['peak_mb']:,.0f} MB, "
                                  f"{got[e]['seconds']:.1f} s, {got[e]['bytes']:,} bytes")
                lo, hi = min(rss_epochs), max(rss_epochs)
                diff = got[hi]["peak_mb"] - got[lo]["peak_mb"]
                fitted = c in ("auto", "vqae", "vqae-paper")
                sample = (f"; codec fit on {min(ENCODE_FIT_LABELS, lo * args.rss_images):,} / {min(ENCODE_FIT_LABELS, hi * args.rss_images):,}"
                          " labels" if fitted else "; no fit")
                rows.append((f"`slc encode` peak RSS, codec {c}, {args.rss_images:,} images x {lo} / {hi} epochs "
                             f"({args.rss_size} px, {t_name}{sample})",
                             f"{got[lo]['peak_mb']:,.0f} / {got[hi]['peak_mb']:,.0f} MB",
                             f"{got[lo]['seconds']:.0f} / {got[hi]['seconds']:.0f} s wall",
                             f"{diff:+,.0f} MB", "", "", f"<= +{TARGET_RSS_MB:.0f} MB"))
                rss["runs"][c] = {str(e): v for e, v in got.items()} | {"diff_mb": diff}
            results["rss"] = rss

    total = time.perf_counter() - t_start
    env["loadavg_end"] = loadavg()
    results["seconds"] = total
    table = Table(title=f"slc encode on CPU: EfficientNet-Lite0 teacher, {env['torch_threads']} torch threads, "
                        f"{env['cpu_count']} CPUs, T={args.temperature:g}, ratio {args.ratio:g} "
                        f"(medians of {args.repeats} repeats)")
    for col in ("what", "measured", "per crop / wall", "vs teacher only: median [min .. max]",
                f"best of {args.repeats}", "others' CPU", "target"):
        table.add_column(col, justify="left" if col == "what" else "right")
    for r in rows:
        table.add_row(*r)
    console.print(table)
    console.print("overhead = (encode - teacher) / teacher, paired within a repeat; best of R = fastest encode / "
                  "fastest teacher - 1; others' CPU = share of all CPUs used by other processes during the runs "
                  "(from /proc/stat; 0% = undisturbed)")
    console.print(f"took {total:.0f} s; load average at start {env['loadavg_start']}, at end {env['loadavg_end']} "
                  f"(a load above {env['cpu_count']} means other processes shared the CPUs)")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(results, fh, indent=2, default=str)


if __name__ == "__main__":
    main()

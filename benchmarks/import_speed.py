"""How fast does ``slc import`` read an SRe2L label folder, in how much memory, and how much smaller is the result?

The folder is real: a pretrained EfficientNet-Lite0 (ImageNet, 1000 classes) relabels 500 real
Fashion-MNIST images over 40 epochs of cutmixed crops (``slc encode --codec fp16``: 20,000 labels),
and ``slc decode --layout sre2l`` writes them in SRe2L's layout (fp16 logits, batches of 100,
``epoch_{e}/batch_{b}.tar``). Built once and cached under ``~/.cache/slc/import_bench``.

Measured in one run, medians of ``--repeat`` (default 5), alternating:

- ``torch.load loop``: ``torch.load`` of every batch file (SRe2L's own reader), the baseline;
- ``slc reader``: :class:`slc.interop.batches.BatchLabels` over the same files, block by block, as
  ``slc import`` reads them (weights_only loading, checks, fp16 logits to float32);
- ``import_file (fp16, in process)``: :func:`slc.interop.write.import_file` with ``--codec fp16`` and the
  crops, without the interpreter's start-up and imports;
- ``slc import --codec fp16`` and ``--ratio 40`` (the default codec), whole CLI runs with
  ``--images`` (crops kept): wall time, labels/s and peak RSS of the process;
- ``slc compress --ratio 40`` of the same labels from one ``.npy`` (no crops): what the codec costs
  whatever the input, so the import's own overhead is the difference.

    python benchmarks/import_speed.py [--repeat 5]
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
IMAGES = ROOT / "slc" / "bench" / "data" / "fmnist_subset.npz"
CACHE = Path(os.environ.get("SLC_CACHE", "~/.cache/slc")).expanduser() / "import_bench"
EPOCHS, BATCH = 40, 100
CROPS = ["--size", "64", "--invert", "--mean", "0.498,0.498,0.498", "--std", "0.502,0.502,0.502"]


def slc(*args, check=True) -> tuple[float, int, subprocess.CompletedProcess]:
    """Run the CLI; (wall seconds, peak RSS bytes of that process)."""
    t0 = time.perf_counter()
    p = subprocess.Popen([sys.executable, "-m", "slc", *map(str, args)], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(p.pid, 0)
    wall = time.perf_counter() - t0
    out, err = p.stdout.read(), p.stderr.read()
    rc = os.waitstatus_to_exitcode(status)
    if check and rc != 0:
        raise SystemExit(f"slc {' '.join(map(str, args))} failed:\n{err.decode()[-2000:]}")
    return wall, usage.ru_maxrss * 1024, subprocess.CompletedProcess(args, rc, out, err)


def build() -> Path:
    """The SRe2L-layout folder from the real teacher (cached)."""
    sys.path.insert(0, str(ROOT / "benchmarks"))
    from scale_out import effnet_teacher

    folder = CACHE / "sre2l"
    if folder.exists():
        return folder
    CACHE.mkdir(parents=True, exist_ok=True)
    encoded = CACHE / "encoded.slc"
    if not encoded.exists():
        print(f"relabelling {EPOCHS} epochs of 500 images with EfficientNet-Lite0 (once; minutes on a CPU)...")
        slc("encode", effnet_teacher(), IMAGES, "-o", encoded, "--epochs", EPOCHS, "--codec", "fp16", *CROPS,
            "--mix", "cutmix", "--mix-group", BATCH, "--batch-size", BATCH, "--force")
    slc("decode", encoded, "--layout", "sre2l", "--images", IMAGES, "-o", folder)
    return folder


def torch_load_loop(folder: Path) -> tuple[float, int]:
    import torch

    t0, rows = time.perf_counter(), 0
    for e in range(EPOCHS):
        for f in sorted((folder / f"epoch_{e}").iterdir()):
            rows += len(torch.load(f, weights_only=False)[5])
    return time.perf_counter() - t0, rows


def slc_reader(folder: Path) -> tuple[float, int]:
    from slc.interop.batches import open_batches

    t0 = time.perf_counter()
    imp = open_batches(str(folder))
    rows = sum(len(a) for _, _, a in imp.labels.blocks(4096))
    imp.close()
    return time.perf_counter() - t0, rows


def import_in_process(folder: Path, out: Path) -> float:
    from slc.compression import CompressOptions
    from slc.interop.batches import open_batches
    from slc.interop.write import import_file

    t0 = time.perf_counter()
    imp = open_batches(str(folder))
    try:
        import_file(imp, out, CompressOptions(codec="fp16"), images=str(IMAGES), size=64, force=True)
    finally:
        imp.close()
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--out", default=str(ROOT / "examples" / "results" / "import_0.10"))
    a = ap.parse_args()
    folder = build()
    files = sorted(folder.rglob("*.tar"))
    before = sum(f.stat().st_size for f in files) + (folder / "sampler_indices_epoch.json").stat().st_size
    times: dict[str, list[float]] = {}
    rss: dict[str, list[int]] = {}
    sizes: dict[str, int] = {}
    with tempfile.TemporaryDirectory() as tmp:
        npy = Path(tmp) / "labels.npy"
        slc("decode", CACHE / "encoded.slc", "--logits", "-o", npy)
        for r in range(a.repeat):
            t, labels = torch_load_loop(folder)
            times.setdefault("torch.load loop (baseline)", []).append(t)
            t, n = slc_reader(folder)
            assert n == labels
            times.setdefault("slc reader (BatchLabels)", []).append(t)
            times.setdefault("import_file --codec fp16 (in process)", []).append(
                import_in_process(folder, Path(tmp) / "in.slc"))
            for name, codec in (("slc import --codec fp16", ["--codec", "fp16"]),
                                ("slc import --ratio 40", ["--ratio", "40"])):
                out = Path(tmp) / f"x{r}.slc"
                wall, peak, _ = slc("import", "sre2l", folder, "--images", IMAGES, *CROPS[:2], "-o", out, "-q",
                                    *codec)
                times.setdefault(name, []).append(wall)
                rss.setdefault(name, []).append(peak)
                sizes[name] = out.stat().st_size
                out.unlink()
            out = Path(tmp) / "c.slc"
            wall, peak, _ = slc("compress", npy, "--logits", "-T", "20", "--ratio", "40", "-o", out, "-q", "--force")
            times.setdefault("slc compress --ratio 40 (same labels, .npy)", []).append(wall)
            rss.setdefault("slc compress --ratio 40 (same labels, .npy)", []).append(peak)
            print(f"round {r + 1}/{a.repeat} done", file=sys.stderr)
        startup, _, _ = slc("--version")
    rows = []
    base = statistics.median(times["torch.load loop (baseline)"])
    for name, ts in times.items():
        med = statistics.median(ts)
        rows.append({"what": name, "seconds": med, "labels_per_s": labels / med, "vs_baseline": base / med,
                     "peak_rss_mb": statistics.median(rss[name]) / 2**20 if name in rss else None,
                     "bytes": sizes.get(name), "ratio_vs_folder": before / sizes[name] if name in sizes else None})
    result = {"labels": labels, "classes": 1000, "files": len(files), "folder_bytes": before,
              "cli_startup_s": startup, "repeat": a.repeat, "rows": rows,
              "self_peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}
    report(result, a.out)


def report(result: dict, out: str) -> None:
    from rich.console import Console
    from rich.table import Table

    t = Table(title=f"slc import of an SRe2L folder: {result['labels']:,} labels x 1000 classes, {result['files']} "
                    f"files, {result['folder_bytes']:,} bytes (medians of {result['repeat']})")
    for c in ("what", "seconds", "labels/s", "x baseline speed", "peak RSS", "bytes after", "smaller"):
        t.add_column(c, justify="left" if c == "what" else "right")
    md = ["| what | seconds | labels/s | x baseline speed | peak RSS | bytes after | smaller |", "|---|--:|--:|--:|--:|--:|--:|"]
    for r in result["rows"]:
        cells = [r["what"], f"{r['seconds']:.2f}", f"{r['labels_per_s']:,.0f}", f"{r['vs_baseline']:.2f}",
                 f"{r['peak_rss_mb']:.0f} MB" if r["peak_rss_mb"] else "-",
                 f"{r['bytes']:,}" if r["bytes"] else "-", f"{r['ratio_vs_folder']:.1f}x" if r["ratio_vs_folder"] else "-"]
        t.add_row(*cells)
        md.append("| " + " | ".join(cells) + " |")
    Console().print(t)
    note = (f"CLI start-up without torch (slc --version): {result['cli_startup_s']:.2f} s; `slc import` also imports "
            "torch, and both are in the CLI rows, not in the in-process one.")
    print(note)
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    Path(out + ".json").write_text(json.dumps(result, indent=1) + "\n")
    Path(out + ".md").write_text("\n".join(md) + "\n\n" + note + "\n")


if __name__ == "__main__":
    main()

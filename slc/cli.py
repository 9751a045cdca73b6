"""The ``slc`` command line: a thin click layer over the library. The only module importing click."""
from __future__ import annotations

import functools
import json
import os
import signal
import sys

import click
import numpy as np

from . import __version__
from .errors import SlcError


def handle_errors(fn):
    """Library errors and OS errors become one ``Error: ...`` line and a non-zero exit."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except SlcError as e:
            raise click.ClickException(str(e)) from None
        except (IndexError, ValueError) as e:
            raise click.ClickException(str(e)) from None
        except OSError as e:
            if isinstance(e, BrokenPipeError):  # `slc decode ... | head` is fine
                os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
                sys.exit(0)
            where = f": {e.filename}" if e.filename else ""
            raise click.ClickException(f"{e.strerror or e}{where}") from None
        except KeyboardInterrupt:
            click.echo("Error: interrupted; no output was written", err=True)
            sys.exit(130)

    return wrapper


def progress_bar(total: int, desc: str, unit: str = "label"):
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit=unit, unit_scale=True, file=sys.stderr, dynamic_ncols=True,
                disable=None, smoothing=0.1)


def console():
    from rich.console import Console

    return Console(stderr=False, highlight=False)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="slc")
def cli():
    """slc: compress teacher soft labels for dataset distillation and offline KD."""


# --------------------------------------------------------------------------- compress
@cli.command()
@click.argument("labels")
@click.option("-o", "--output", required=True, help="Output .slc path.")
@click.option("--codec", default="auto", show_default=True,
              type=click.Choice(["auto", "vqae", "vqae-paper", "topk", "fp16", "fp32"]),
              help="auto: fit vqae and size top-k to the same bytes, keep the lower held-out KL. "
                   "vqae: log-domain VQAE fitted with KL. vqae-paper: the paper's recipe exactly.")
@click.option("--logits", "source", flag_value="logits", help="LABELS are logits.")
@click.option("--probs", "source", flag_value="probs", help="LABELS are probabilities.")
@click.option("-T", "--temperature", type=float, default=1.0, show_default=True,
              help="Temperature the student will train at; stored in the file, fidelity is measured at it.")
@click.option("--ratio", type=float, help="Target compression ratio against dense fp16 labels [default: 40].")
@click.option("--budget", help="Target file size, e.g. 120MB or 1.5GiB.")
@click.option("--k", "k", type=int, help="Codebook size (VQAE) or kept classes (top-k).")
@click.option("--dc", type=int, help="Code dimension d_c (VQAE).")
@click.option("--dh", type=int, help="Latent dimension d_h (VQAE); d_c must divide it.")
@click.option("--chunk-size", type=int, default=4096, show_default=True, help="Labels per chunk.")
@click.option("--zstd", is_flag=True, help="zstd-code each chunk (kept only where it saves bytes).")
@click.option("--tensor-dtype", type=click.Choice(["fp16", "fp32"]),
              help="Codebook/decoder precision [default: fp16; fp32 for vqae-paper].")
@click.option("--fit-labels", type=int, default=65536, show_default=True, help="Labels sampled to fit the codec.")
@click.option("--fit-steps", type=int, help="Optimizer steps when fitting a VQAE.")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--force", is_flag=True, help="Overwrite an existing output.")
@click.option("-q", "--quiet", is_flag=True, help="No plan, no progress bars.")
@handle_errors
def compress(labels, output, codec, source, temperature, ratio, budget, k, dc, dh, chunk_size, zstd,
             tensor_dtype, fit_labels, fit_steps, seed, force, quiet):
    """Compress soft labels into an .slc file.

    LABELS is an .npy of shape (N, C) or (E, N, C), an HDF5 dataset FILE.h5:/path,
    or - for an npy stream on stdin.

    \b
    Example:
        slc compress teacher_logits.npy -o labels.slc --logits -T 4 --ratio 40
    """
    from .compress import compress as run
    from .sizing import parse_size
    from .sources import open_labels
    from .vqae import FitConfig

    fit_config = None
    if fit_steps is not None:
        fit_config = FitConfig.paper(steps=fit_steps) if codec == "vqae-paper" else FitConfig(steps=fit_steps)
    src = open_labels(labels)
    e, n, c = src.shape
    bars = {}

    def log(line):
        if not quiet:
            click.echo(line, err=True)

    log(f"labels: {e} epochs x {n} samples x {c} classes from {src.name}")

    def fit_progress(step, total, loss):
        if quiet:
            return
        if "fit" not in bars:
            bars["fit"] = progress_bar(total, "fit", "step")
        bars["fit"].update(1)
        bars["fit"].set_postfix(loss=f"{loss:.4g}", refresh=False)
        if step == total:
            bars["fit"].close()

    def progress(count, written):
        if quiet:
            return
        if "enc" not in bars:
            bars["enc"] = progress_bar(e * n, "encode")
            bars["done"] = 0
        bars["done"] += count
        dense = bars["done"] * c * 2
        bars["enc"].update(count)
        bars["enc"].set_postfix_str(f"{written / 1e6:.1f} MB written, {dense / max(written, 1):.1f}x vs fp16",
                                    refresh=False)

    try:
        result = run(src, output, codec=codec, source=source or "auto", temperature=temperature, ratio=ratio,
                     budget=parse_size(budget) if budget else None, k=k, dc=dc, dh=dh, chunk_size=chunk_size,
                     zstd=zstd, tensor_dtype={"fp16": "<f2", "fp32": "<f4", None: None}[tensor_dtype],
                     fit_labels=fit_labels, fit_config=fit_config, seed=seed, force=force, log=log, fit_progress=fit_progress,
                     progress=progress)
    finally:
        for b in bars.values():
            if hasattr(b, "close"):
                b.close()
        src.close()
    click.echo(f"wrote {output}: {result.bytes:,} bytes, {result.ratio:.1f}x vs dense fp16 "
               f"({result.source}, T={temperature:g}, codec {result.codec})", err=True)


# --------------------------------------------------------------------------- decode
@cli.command()
@click.argument("file", type=click.Path(dir_okay=False))
@click.option("-o", "--output", required=True, help="out.npy, out.h5 (dataset /labels) or - for an npy stream.")
@click.option("--epoch", "epochs", type=int, multiple=True, help="Epoch(s) to decode (default: all).")
@click.option("--start", type=int, default=0, show_default=True, help="First sample.")
@click.option("--stop", type=int, help="One past the last sample (default: all).")
@click.option("--logits", "out_kind", flag_value="logits", help="Write logits (softmax(x / T) is the label).")
@click.option("--probs", "out_kind", flag_value="probs", default=True, help="Write probabilities (default).")
@click.option("-T", "--temperature", type=float, help="Re-temper to this temperature (default: the stored one).")
@click.option("--dtype", type=click.Choice(["float32", "float16"]), default="float32", show_default=True)
@click.option("--force", is_flag=True, help="Overwrite an existing output.")
@handle_errors
def decode(file, output, epochs, start, stop, out_kind, temperature, dtype, force):
    """Decode labels from an .slc file, streaming in bounded memory.

    The output has shape (N, C) for one epoch and (E, N, C) otherwise.

    \b
    Example:
        slc decode labels.slc --epoch 0 -o - | python consumer.py
    """
    from .export import export

    if temperature is not None and not temperature > 0:
        raise click.BadParameter(f"expected a temperature > 0, got {temperature}", param_hint="--temperature")
    export(file, output, list(epochs) or None, start, stop, out_kind or "probs", temperature, dtype, force)


# --------------------------------------------------------------------------- inspect
@cli.command()
@click.argument("file", type=click.Path(dir_okay=False))
@click.option("--against", help="Original labels (.npy / FILE.h5:/path) to measure fidelity against.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of tables.")
@handle_errors
def inspect(file, against, as_json):
    """Show where the bytes of an .slc file go (and, with --against, how faithful it is).

    \b
    Example:
        slc inspect labels.slc --against teacher_logits.npy
    """
    from .breakdown import breakdown
    from .evaluate import fidelity_against
    from .reader import open_slc

    with open_slc(file) as f:
        info = breakdown(f)
        if against:
            info["fidelity"] = fidelity_against(f, against)
    if as_json:
        click.echo(json.dumps(info, indent=2))
        return
    from rich.table import Table

    con = console()
    p = ", ".join(f"{k}={v}" for k, v in info["codec_params"].items())
    con.print(f"[bold]{file}[/bold]  .slc v{info['format_version']}  written by {info['writer']}")
    con.print(f"{info['epochs']} epochs x {info['samples']} samples x {info['classes']} classes "
              f"= {info['labels']:,} labels from {info['source']} at T={info['temperature']:g}; "
              f"codec {info['codec']} ({p}); {info['chunks']} chunks of {info['chunk_size']}, entropy {info['entropy']}")
    t = Table(title="bytes by section")
    t.add_column("section")
    t.add_column("bytes", justify="right")
    t.add_column("share", justify="right")
    t.add_column("bits / label", justify="right")
    for r in info["sections"]:
        t.add_row(r["section"], f"{r['bytes']:,}", f"{100 * r['share']:.2f}%", f"{8 * r['bytes'] / info['labels']:.2f}")
    t.add_row("[bold]total[/bold]", f"[bold]{info['bytes']:,}[/bold]", "100%", f"{info['bits_per_label']:.2f}")
    con.print(t)
    s = Table(title="compared with")
    s.add_column("baseline")
    s.add_column("bytes", justify="right")
    s.add_column("ratio", justify="right")
    s.add_row("dense fp16 (eq. S11)", f"{info['dense_fp16_bytes']:,}", f"{info['ratio_vs_fp16']:.2f}x")
    s.add_row("dense fp32", f"{info['dense_fp32_bytes']:,}", f"{info['ratio_vs_fp32']:.2f}x")
    s.add_row("top-k in the same bytes (eq. S15)", f"k = {info['same_bytes_topk_k']}", "")
    s.add_row("PCA in the same bytes (eq. S16)", f"{info['same_bytes_pca_components']} components", "")
    if info["entropy"] == "zstd":
        s.add_row("zstd saving on the chunk payloads", f"{100 * info['zstd_saving']:.2f}%", "")
    con.print(s)
    if "fidelity" in info:
        fid = info["fidelity"]
        t = Table(title=f"fidelity against {against} at T={info['temperature']:g}")
        for col in ("labels", "KL(orig || decoded)", "top-1 agreement", "top-5 overlap"):
            t.add_column(col, justify="right")
        t.add_row(f"{fid['labels']:,}", f"{fid['kl']:.5f}", f"{100 * fid['top1_agreement']:.2f}%",
                  f"{100 * fid['top5_overlap']:.2f}%")
        con.print(t)


# --------------------------------------------------------------------------- verify
@cli.command()
@click.argument("file", type=click.Path(dir_okay=False))
@handle_errors
def verify(file):
    """Check every checksum and structural rule of an .slc file; exit 0 if valid, 1 if not."""
    from .errors import SlcFormatError
    from .reader import open_slc

    try:
        with open_slc(file) as f:
            f.verify()
            n = len(f)
    except SlcFormatError as e:
        click.echo(f"INVALID {file}: {e}")
        sys.exit(1)
    click.echo(f"OK {file}: {n:,} labels, all checksums match")


def _return_big_buffers_to_the_os() -> None:
    """Serve allocations over 4 MB with mmap (glibc), so freed label blocks leave RSS.

    Without this glibc's adaptive threshold moves multi-MB blocks onto the heap, where
    fragmentation doubled peak RSS on some runs of a 1M-label compress (0.8 vs 1.65 GB).
    """
    try:
        import ctypes

        libc = ctypes.CDLL("libc.so.6")
        libc.mallopt(-3, 4 << 20)  # M_MMAP_THRESHOLD
    except (OSError, AttributeError):
        pass


def main() -> None:
    _return_big_buffers_to_the_os()
    if hasattr(signal, "SIGPIPE"):
        signal.signal(signal.SIGPIPE, signal.SIG_DFL)  # behave like a Unix filter in pipelines
    cli(prog_name="slc")

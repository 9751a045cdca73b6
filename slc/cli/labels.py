"""``slc compress``, ``decode``, ``inspect``, ``verify``: labels in and out of ``.slc`` files."""
from __future__ import annotations

import json
import sys

import click

from slc.cli.common import (Reporter, alone, codec_options, compress_options, console, done, handle_errors,
                            human_bytes, part_options, part_spec, wrote)


@click.command()
@click.argument("labels")
@click.option("-o", "--output", required=True, help="Output .slc path.")
@click.option("--logits", "source", flag_value="logits", help="LABELS are logits.")
@click.option("--probs", "source", flag_value="probs", help="LABELS are probabilities.")
@click.option("--prune", type=float, help="LPLD pruning: keep a random 1/PRUNE of the epochs (stacks with --codec; "
              "--ratio still counts against all epochs).")
@click.option("--indices", help="Already-sparse token labels: LABELS are (tokens, k) log-probabilities (or "
              "probabilities) over the whole vocabulary and this .npy / FILE.h5:/dataset holds their word indices.")
@click.option("--vocab", type=int, help="Vocabulary size of --indices input.")
@click.option("--seq", "seq", help="Token labels: sequence boundaries, an .npy of offsets [0, ..., tokens] or of "
              "lengths, so `slc.open_slc(f).sequence(i)` reads sequence i directly.")
@click.option("--token-ids", help="Token labels: an .npy of the input token at each position (stored as tokens.ids).")
@codec_options
@part_options
@handle_errors
def compress(labels, output, source, prune, indices, vocab, seq, token_ids, force, resume, quiet, share, epoch_range,
             fit_only, codec_from, **codec):
    """Compress soft labels into an .slc file.

    LABELS is an .npy of shape (N, C) or (E, N, C), an HDF5 dataset FILE.h5:/path,
    or - for an npy stream on stdin. Token-level LM labels are (tokens, V) logits or
    log-probabilities (--codec topk-vq), or already sparse with --indices.

    \b
    Examples:
        slc compress teacher_logits.npy -o labels.slc --logits -T 4 --ratio 40
        slc compress lm_logits.npy -o tokens.slc --codec topk-vq --seq offsets.npy
        slc compress topk_logp.npy --indices topk_ids.npy --vocab 50257 -o tokens.slc --codec topk-vq
    """
    from slc.compression import compress as run
    from slc.sources import open_labels, read_ints

    opts = compress_options(**codec, source=source or "auto", prune=prune)
    src = open_labels(labels, indices=indices, vocab=vocab)
    e, n, c = src.shape
    rep = Reporter(quiet)
    rep.log(f"labels: {e} epochs x {n} samples x {c} classes from {src.name}")
    try:
        result = run(src, output, opts, force=force, resume=resume, log=rep.log, fit_progress=rep.fit,
                     sequences=read_ints(seq, "seq"), token_ids=read_ints(token_ids, "token_ids"),
                     progress=rep.written(None if share or epoch_range or not alone() else e * n, "encode", "label"),
                     part=part_spec(share, epoch_range, fit_only),
                     codec_from=codec_from)
    finally:
        rep.close()
        src.close()
    wrote(output, result, f"({result.source}, T={result.temperature:g}, codec {result.codec})")


@click.command()
@click.argument("parts", nargs=-1, required=True, type=click.Path(dir_okay=False))
@click.option("-o", "--output", required=True, help="The whole .slc file.")
@click.option("--force", is_flag=True, help="Overwrite an existing output.")
@click.option("-q", "--quiet", is_flag=True, help="No progress bar.")
@handle_errors
def merge(parts, output, force, quiet):
    """Join part files (--part, --epoch-range) into the file one run would have written.

    The parts may come in any order; they must be of one run (header, recipe, images, codec) and
    cover every chunk once. The result is byte-identical to a single-process run.

    \b
    Example:
        slc merge labels.part0.slc labels.part1.slc -o labels.slc
    """
    import time

    from slc.merge_parts import merge as run

    rep = Reporter(quiet)
    t0 = time.perf_counter()
    try:
        size = run(list(parts), output, force=force, log=rep.log,
                   progress=None if quiet else lambda n: rep.bar("merge", None, "B").update(n))
    finally:
        rep.close()
    seconds = time.perf_counter() - t0
    click.echo(f"wrote {output}: {size:,} bytes from {len(parts)} parts in {seconds:.1f} s "
               f"({human_bytes(int(size / max(seconds, 1e-9)))}/s)", err=True)


@click.command()
@click.argument("file", type=click.Path(dir_okay=False))
@click.option("-o", "--output", required=True, help="out.npy, out.h5 (dataset /labels) or - for an npy stream.")
@click.option("--epoch", "epochs", type=int, multiple=True, help="Epoch(s) to decode (default: all).")
@click.option("--start", type=int, default=0, show_default=True, help="First sample.")
@click.option("--stop", type=int, help="One past the last sample (default: all).")
@click.option("--logits", "out_kind", flag_value="logits", help="Write logits (softmax(x / T) is the label).")
@click.option("--probs", "out_kind", flag_value="probs", default=True, help="Write probabilities (default).")
@click.option("-T", "--temperature", type=float, help="Re-temper to this temperature (default: the stored one).")
@click.option("--dtype", type=click.Choice(["float32", "float16"]), help="[default: float32; float16 with --layout, as SRe2L stores]")
@click.option("--sparse", is_flag=True, help="Token files: write the stored top-k words, log-probabilities and tail "
              "per token (npy records, or HDF5 datasets indices/logp/tail/offsets) instead of V floats per token.")
@click.option("--layout", type=click.Choice(["sre2l"]), help="Write OUTPUT as a folder their trainer reads: sre2l is "
              "SRe2L/CDA/LPLD's epoch_{e}/batch_{b}.tar (+ sampler_indices_epoch.json), with every crop, flip and mix.")
@click.option("--images", help="--layout: the images the file's crops replay on (their coordinates need the sizes).")
@click.option("--batch-size", type=int, help="--layout: labels per batch file [default: the file's mix group].")
@click.option("--force", is_flag=True, help="Overwrite an existing output.")
@handle_errors
def decode(file, output, epochs, start, stop, out_kind, temperature, dtype, force, sparse, layout, images, batch_size):
    """Decode labels from an .slc file, streaming in bounded memory.

    The output has shape (N, C) for one epoch and (E, N, C) otherwise.

    \b
    Examples:
        slc decode labels.slc --epoch 0 -o - | python consumer.py
        slc decode labels.slc --layout sre2l --images train/ -o FKD_labels/   # for SRe2L's train_FKD.py
    """
    if layout:
        return decode_layout(file, output, images, batch_size, dtype or "float16", force,
                             [n for n, v in (("--epoch", epochs), ("--start", start), ("--stop", stop),
                                             ("--logits", out_kind == "logits"), ("-T", temperature),
                                             ("--sparse", sparse)) if v])
    from slc.decode import export

    export(file, output, list(epochs) or None, start, stop, out_kind or "probs", temperature, dtype or "float32", force,
           sparse)


@click.command()
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
    from slc.inspect import inspect as run

    info = run(file, against)
    if as_json:
        click.echo(json.dumps(info, indent=2))
        return
    con = console()
    for part in (summary(file, info), sections_table(info), baselines_table(info), tokens_table(info),
                 fidelity_table(info, against)):
        if part is not None:
            con.print(part)


@click.command()
@click.argument("file", type=click.Path(dir_okay=False))
@click.option("--part", "as_part", is_flag=True, help="FILE is a part file (--part, --epoch-range), not a whole file.")
@handle_errors
def verify(file, as_part):
    """Check every checksum and structural rule of an .slc file; exit 0 if valid, 1 if not."""
    from slc.errors import SlcFormatError
    from slc.reader import SlcFile

    try:
        with SlcFile(file, part=as_part) as f:
            if as_part and f.part is None:
                raise SlcFormatError("expected a part file (--part), got a whole .slc file")
            f.verify()
            n = sum(c.count for c in f.index)
            what = f"part, {f.part.describe()}, " if f.part else ""
    except SlcFormatError as e:
        click.echo(f"INVALID {file}: {e}")
        sys.exit(1)
    click.echo(f"OK {file}: {what}{n:,} labels, all checksums match")


# --------------------------------------------------------------------------- what inspect prints
def table(title: str, columns: list[str], rows: list[list[str]], right_from: int = 1):
    from rich.table import Table

    t = Table(title=title)
    for i, col in enumerate(columns):
        t.add_column(col, justify="right" if i >= right_from else "left")
    for r in rows:
        t.add_row(*r)
    return t


def decode_layout(file, output, images, batch_size, dtype, force, others) -> None:
    from slc.errors import SlcInputError
    from slc.compat import write_sre2l

    if others:
        raise SlcInputError(f"expected no {', '.join(others)} with --layout (it writes every label, as logits)")
    if not images:
        raise SlcInputError("expected --images with --layout (crop coordinates are fractions of each image's size)")
    rep = Reporter(False)
    try:
        count = write_sre2l(file, images, output, batch_size=batch_size, dtype=dtype, force=force, log=rep.log,
                            progress=rep.counted("decode", "label"))
    finally:
        rep.close()
    done(f"wrote {output}: {count:,} batch files (epoch_{{e}}/batch_{{b}}.tar) and sampler_indices_epoch.json")


def summary(file: str, info: dict) -> str:
    p = ", ".join(f"{k}={v}" for k, v in info["codec_params"].items())
    lo, hi = info["labels_per_chunk"]
    per_chunk = f"{lo:,} labels" if lo == hi else f"{lo:,}-{hi:,} labels"
    if info.get("epochs_per_chunk", 1) > 1:
        per_chunk += f" ({info['epochs_per_chunk']} epochs each)"
    lines = [f"[bold]{file}[/bold]  .slc v{info['format_version']}  written by {info['writer']}",
             f"{info['epochs']} epochs x {info['samples']} samples x {info['classes']} classes "
             f"= {info['labels']:,} labels from {info['source']} at T={info['temperature']:g}; "
             f"codec {info['codec']} ({p}); {info['chunks']} chunk{'s' if info['chunks'] != 1 else ''} of {per_chunk}, entropy {info['entropy']}"]
    lines.append("top-1: every label's most probable class is stored exactly (100% agreement by construction)"
                 if info["keeps_top1"] else "top-1: not stored apart from the rest; `slc inspect --against LABELS` measures "
                 "the agreement")
    imp = info.get("imported")
    if imp:
        found = ", ".join(f"{k} {v:,}" if isinstance(v, int) else f"{k} {v}" for k, v in imp.items()
                          if k not in ("format", "bytes") and v is not None)
        before = imp.get("bytes")
        size = (f"; {before:,} bytes on disk before, {info['bytes']:,} after ({before / info['bytes']:.1f}x smaller)"
                if isinstance(before, int) and before else "")
        lines.append(f"imported from {imp.get('format')}: {found}{size}")
    if info["replay"] and info["replay"]["recipe"]["order"] == "stored":
        rp, r = info["replay"], info["replay"]["recipe"]
        mix = f", {r['mix']} per batch of {r['mix_group']}" if r["mix"] != "none" else ""
        lines.append(f"crops: {rp['images']} images ({rp['source']}), imported: every label's image, box and flip"
                     f"{' and mix' if mix else ''} stored ({r['size']}px{mix})")
    elif info["replay"]:
        rp, r = info["replay"], info["replay"]["recipe"]
        how = (f"stored boxes, {rp['box_bytes_per_label']:.0f} B/label" if r["boxes"] == "stored"
               else "recomputed from the seed, 0 B/label")
        mix = f", {r['mix']} in groups of {r['mix_group']}" if r["mix"] != "none" else ""
        lines.append(f"crops: {rp['images']} images ({rp['source']}), RandomResizedCrop {r['size']}px scale "
                     f"{r['scale'][0]:g}-{r['scale'][1]:g}, flip {r['flip']:g}{mix}, {r['order']} order, seed "
                     f"{r['seed']}: {how}")
    return "\n".join(lines)


def sections_table(info: dict):
    rows = [[r["section"], f"{r['bytes']:,}", f"{100 * r['share']:.2f}%", f"{8 * r['bytes'] / info['labels']:.2f}"]
            for r in info["sections"]]
    rows.append(["[bold]total[/bold]", f"[bold]{info['bytes']:,}[/bold]", "100%", f"{info['bits_per_label']:.2f}"])
    return table("bytes by section", ["section", "bytes", "share", "bits / label"], rows)


def baselines_table(info: dict):
    rows = [["dense fp16 (eq. S11)", f"{info['dense_fp16_bytes']:,}", f"{info['ratio_vs_fp16']:.2f}x"],
            ["dense fp32", f"{info['dense_fp32_bytes']:,}", f"{info['ratio_vs_fp32']:.2f}x"],
            ["top-k in the same bytes (eq. S15)", f"k = {info['same_bytes_topk_k']}", ""],
            ["PCA in the same bytes (eq. S16)", f"{info['same_bytes_pca_components']} components", ""]]
    if info["entropy"] == "zstd":
        rows.append(["zstd saving on the chunk payloads", f"{100 * info['zstd_saving']:.2f}%", ""])
    return table("compared with", ["baseline", "bytes", "ratio"], rows)


def tokens_table(info: dict):
    tk = info["tokens"]
    if not tk:
        return None
    rows = [["this file (labels)", f"{tk['bytes_per_token']:.2f}", ""],
            ["dense fp16", f"{2 * info['classes']:,}", f"{tk['ratio_vs_fp16']:.1f}x smaller"],
            [f"top-{tk['k']} bf16 + int32 indices", f"{tk['topk_bf16_int32_bytes_per_token']:,}",
             f"{tk['ratio_vs_topk_bf16_int32']:.2f}x smaller"],
            ["top-20 bf16 + int32 indices", "120", f"{tk['ratio_vs_top20_bf16_int32']:.2f}x smaller"],
            ["bf16 + int32 top-k in the same bytes", f"k = {tk['same_bytes_bf16_int32_k']}", ""]]
    title = (f"token labels: {tk['tokens']:,} tokens in {tk['sequences']:,} sequences"
             + (" (input token ids stored)" if tk["token_ids"] else ""))
    return table(title, ["per token", "bytes", "this file is"], rows)


def fidelity_table(info: dict, against: str | None):
    fid = info.get("fidelity")
    if fid is None:
        return None
    return table(f"fidelity against {against} at T={info['temperature']:g}",
                 ["labels", "KL(orig || decoded)", "top-1 agreement", "top-5 overlap"],
                 [[f"{fid['labels']:,}", f"{fid['kl']:.5f}", f"{100 * fid['top1_agreement']:.2f}%",
                   f"{100 * fid['top5_overlap']:.2f}%"]], right_from=0)

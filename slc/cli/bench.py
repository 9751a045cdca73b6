"""``slc bench`` (every codec on your labels, or topk-vq on token labels) and ``slc demo`` (all of it on real data)."""
from __future__ import annotations

import json
import os

import click

from slc.cli.common import Reporter, console, floats, handle_errors
from slc.errors import SlcInputError


@click.command()
@click.argument("labels")
@click.option("--codecs", help="Comma-separated codecs; prune (LPLD, fp16) and pruneR+CODEC stack pruning "
              "[default: auto,vqae,vqae-paper,vq-noae,topk,topk-mr,topk-mrs,pca,quant,prune4+vqae].")
@click.option("--ratios", default="10,20,40,100,200", show_default=True, help="Target ratios against dense fp16.")
@click.option("-T", "--temperature", "temperatures", type=float, multiple=True,
              help="Temperature(s) to fit and score at, repeatable [default: the file's, or 1].")
@click.option("--holdout", type=float, default=0.2, show_default=True,
              help="Share of each epoch's positions (the last ones) held out of fitting and scored.")
@click.option("--logits", "source", flag_value="logits", help="LABELS are logits.")
@click.option("--probs", "source", flag_value="probs", help="LABELS are probabilities.")
@click.option("--fit-steps", type=int, help="Optimizer steps when fitting a VQAE.")
@click.option("--fit-labels", type=int, help="Labels sampled to fit each codec [default: 65,536].")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--plot", "plot_path", help="Write a rate-distortion PNG (KL against bytes, one line per codec).")
@click.option("--json", "json_path", help="Write every row as JSON here (- for stdout).")
@click.option("--markdown", "md_path", help="Write the table as markdown here.")
@click.option("--keep", "keep_dir", help="Keep every .slc written, in this folder.")
@click.option("--student", "student_images", help="Also train a student per row on these images (LABELS must be "
              "an .slc from `slc encode`), plus a hard-label floor and the input as ceiling.")
@click.option("--teacher", help="With --student: TorchScript teacher to score students against on --heldout.")
@click.option("--heldout", help="With --student: held-out images for --teacher.")
@click.option("--val", help="With --student: ImageFolder with ground-truth classes.")
@click.option("--arch", default="convnet-w64", show_default=True, help="With --student: the student network.")
@click.option("--epochs", type=int, help="With --student: training epochs [default: the stored epochs].")
@click.option("--batch-size", type=int, default=64, show_default=True)
@click.option("--lr", type=float, default=1e-3, show_default=True)
@click.option("--size", type=int, help="With --student: student input size.")
@click.option("--tokens", is_flag=True, help="LABELS are token-level LM labels (tokens, V): bench topk-vq at several "
              "budgets against top-k in bf16 with int32 indices at the same bytes.")
@click.option("--rows", help="With --tokens: ';'-separated topk-vq options per row [default: k=8;k=16;k=32;k=64;"
              "k=128;k=64,tail=prior;k=20,values=bf16;k=20,values=bf16,tail=prior;k=20,values=bf16,tail=uniform].")
@click.option("--force", is_flag=True, help="Overwrite --plot/--json/--markdown outputs and reuse --keep.")
@click.option("-q", "--quiet", is_flag=True)
@handle_errors
def bench(labels, codecs, ratios, temperatures, holdout, source, fit_steps, fit_labels, seed, plot_path, json_path,
          md_path, keep_dir, student_images, teacher, heldout, val, arch, epochs, batch_size, lr, size, tokens, rows,
          force, quiet):
    """Every codec at every ratio on your labels: bytes, held-out KL, agreement, speed.

    LABELS is an .npy, an HDF5 dataset FILE.h5:/path, or an .slc (e.g. dense fp16 from `slc encode`).
    A codec or ratio that cannot be used is reported in its row; the others go on.

    \b
    Examples:
        slc bench labels-fp16.slc --ratios 10,40,100 -T 1 -T 4 --plot rd.png
        slc bench lm_logp.npy --tokens --rows "k=16;k=64;k=20,values=bf16" --plot tokens.png
    """
    from slc.bench.report import check_outputs

    check_outputs(plot_path, md_path, json_path, force)
    if tokens and (codecs or student_images or temperatures):
        raise SlcInputError("expected --rows (not --codecs, --student or -T) with --tokens")
    if rows and not tokens:
        raise SlcInputError("expected --rows only with --tokens")
    rep = Reporter(quiet)
    try:
        if tokens:
            result, render = bench_tokens(labels, rows, holdout, source, fit_steps, fit_labels, seed, keep_dir, force,
                                          rep)
        else:
            students = student_images and (student_images, arch, epochs, batch_size, lr, seed, size, teacher, heldout,
                                           val)
            result, render = bench_codecs(labels, codecs, ratios, temperatures, holdout, source, fit_steps,
                                          fit_labels, seed, keep_dir, force, students, rep)
    finally:
        rep.close()
    render(result, plot_path, md_path, json_path, force)


def bench_codecs(labels, codecs, ratios, temperatures, holdout, source, fit_steps, fit_labels, seed, keep, force,
                 students, rep: Reporter):
    from slc.bench.codecs import DEFAULT_CODECS, BenchConfig, Students, bench
    from slc.compression import CompressOptions

    opts = CompressOptions.of(chunk_size=4096, seed=seed, source=source or "auto",
                              **({"fit_labels": fit_labels} if fit_labels else {}))
    cfg = BenchConfig(codecs=tuple(codecs.split(",")) if codecs else DEFAULT_CODECS,
                      ratios=floats(ratios, None, "--ratios"), temperatures=temperatures or None, holdout=holdout,
                      fit_steps=fit_steps, options=opts)
    who = None
    if students:
        from slc.vision.train import TrainConfig

        images, arch, epochs, batch_size, lr, seed, size, teacher, heldout, val = students
        who = Students(images, TrainConfig(student=arch, epochs=epochs, batch_size=batch_size, lr=lr, seed=seed,
                                           size=size), teacher, heldout, val)
    result = bench(labels, cfg, keep=keep, force=force, students=who, log=rep.log,
                   progress=lambda name, n: rep.trained(f"student: {name}", n))
    return result, render_codecs


def render_codecs(result: dict, plot_path, md_path, json_path, force) -> None:
    from rich.table import Table

    from slc.bench.codecs import UNREACHABLE, columns, header, markdown, plot
    from slc.bench.report import write_results

    students = "reference_rows" in result
    e, n, c = result["shape"]
    t = Table(title=f"slc bench: {result['labels']} ({e} x {n} x {c} {result['source']}); held-out positions "
                    f"{result['holdout_start']}..{n - 1} of each epoch")
    for i, col in enumerate(header(result, students)):
        t.add_column(col, justify="left" if i == 0 else "right", no_wrap=True)
    for r in result.get("reference_rows", []) + result["rows"]:
        t.add_row(*columns(r, result, students))
    con = console(wide=True)
    con.print(t)
    for line in result["verdicts"] + [f"note: {n}" for n in result["notes"]]:
        con.print(line)
    for r in result["rows"]:  # the table says "unreachable (max ...)"; other errors in full
        if "error" in r and not UNREACHABLE.search(r["error"]):
            con.print(f"{r['codec']} {r['target'] or 1:g}x: {r['error']}")
    for r in result["refused"]:
        con.print(f"refused: {r['error']}")
    write_results(result, plot_path and (lambda: plot(result, plot_path, force)), md_path,
                  md_path and markdown(result, students), json_path, force)


def bench_tokens(labels, rows, holdout, source, fit_steps, fit_labels, seed, keep, force, rep: Reporter):
    from slc.bench.tokens import DEFAULT_ROWS, run_token_bench

    result = run_token_bench(labels, tuple(filter(None, rows.split(";"))) if rows else DEFAULT_ROWS,
                             holdout=holdout, source=source or "auto", seed=seed, fit_steps=fit_steps,
                             fit_labels=fit_labels, workdir=keep, force=force, log=rep.log)
    return result, render_tokens


def render_tokens(result: dict, plot_path, md_path, json_path, force) -> None:
    from rich.table import Table

    from slc.bench.report import write_results
    from slc.bench.tokens import HEADER, LEGEND, token_columns, token_markdown, token_plot

    t = Table(title=f"slc bench --tokens: {result['labels']} ({result['tokens']:,} tokens x {result['vocab']:,} "
                    f"words); held-out tokens {result['holdout_start']:,}..{result['tokens'] - 1:,}")
    for i, col in enumerate(HEADER):
        t.add_column(col, justify="left" if i == 0 else "right")
    for r in [result["reference"], *result["rows"]]:
        t.add_row(*token_columns(r))
    con = console(wide=True)
    con.print(t)
    con.print(LEGEND)
    write_results(result, plot_path and (lambda: token_plot(result, plot_path, force)), md_path,
                  md_path and token_markdown(result), json_path, force)


@click.command()
@click.option("-o", "--out-dir", default="slc-demo", show_default=True, help="Folder for every file the demo makes.")
@click.option("--quick", is_flag=True, help="A smaller run (about 1 minute on 2 idle cores) that checks the "
              "pipeline end to end.")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
@click.option("--force", is_flag=True, help="Reuse a folder that is not empty, overwriting what the demo writes.")
@click.option("--resume", is_flag=True, help="Continue an interrupted demo in --out-dir: finished steps are kept.")
@click.option("-q", "--quiet", is_flag=True)
@handle_errors
def demo(out_dir, quick, as_json, force, resume, quiet):
    """The whole pipeline on real data: teacher, encode, compress, inspect, students, table, plot.

    A pretrained EfficientNet-Lite0 relabels real Fashion-MNIST images; the labels are stored dense
    (fp16) and re-coded 10x, 40x and 100x; the same student trains on each and on hard labels, and
    is scored against the teacher on held-out images. About 9 minutes on 2 idle CPU cores.
    """
    from slc.bench.demo import FULL, QUICK, run_demo

    rep = Reporter(quiet)
    try:
        result = run_demo(out_dir, QUICK if quick else FULL, force=force, resume=resume, hooks=demo_hooks(rep))
    except KeyboardInterrupt as e:
        e.slc_hint = (f"what is finished is kept in {out_dir}/; rerun the same command with --resume to continue "
                      "(--force starts over)")
        raise
    finally:
        rep.close()
    if as_json:
        click.echo(json.dumps(result, indent=2))
        return
    from slc.bench.demo import HEADER, columns
    from slc.cli.labels import table

    c = result["config"]
    con = console()
    con.print(table(f"{c['student']} students on {10 * c['per_class']} Fashion-MNIST images x {c['train_epochs']} "
                    f"epochs, EfficientNet-Lite0 labels at T={c['temperature']:g}; scored on {c['heldout']} held-out",
                    HEADER, [columns(r) for r in result["rows"]], right_from=2))
    stages = ", ".join(f"{k} {v:.0f} s" for k, v in result["seconds"].items() if k != "total")
    con.print(f"{result['seconds']['total']:.0f} s in all ({stages}); table: {out_dir}/demo.md, "
              f"plot: {out_dir}/demo.png")


def demo_hooks(rep: Reporter):
    """The demo's progress, drawn: one bar per stage, log lines above it, a line per file inspected."""
    from slc.bench.demo import Hooks

    class CliHooks(Hooks):
        def log(self, line):
            rep.log(line)

        def fit(self, step, total, loss):
            rep.fit(step, total, loss)

        def written(self, total, desc, unit, advance=True):
            rep.close()
            return rep.written(total, desc, unit, advance)

        def trained(self, name, total):
            rep.close()
            return rep.trained(f"student: {name}", total)

        def stage(self, name, info):
            rep.close()
            parts = ", ".join(f"{r['section']} {100 * r['share']:.0f}%" for r in info["sections"] if r["share"] >= 0.01)
            rep.log(f"inspect {os.path.basename(info['path'])}: {info['bytes']:,} B = {info['ratio_vs_fp16']:.1f}x vs "
                    f"fp16, codec {info['codec']}, {info['bits_per_label']:.1f} bits/label ({parts})")

    return CliHooks()

#!/usr/bin/env python
"""Is the default codec the best at every temperature and ratio, and does it keep the teacher's top-1?

Real labels: EfficientNet-Lite0 over Fashion-MNIST crops (``benchmarks/real_labels.py``): 24 epochs x
1,000 images fit the codecs, 4 x 500 other images score them (held out). ``--classes 200`` takes a fixed
slice of the 1,000 ImageNet classes (every fifth, renormalised by a softmax over the slice).

``--set`` picks other real label sets (raw logits / log-probabilities, tempered here at each T):

- ``fmnist-cnn`` (10 classes): the Fashion-MNIST CNN teacher of ``examples/fmnist_groundtruth.py`` on
  that example's distilled set (10 training images per class), 100 epochs x 100 replayable crops
  (28 px, scale 0.25-1), frame (100, 100, 10); held out: 4 epochs x 500 other training images
  (``benchmarks/fmnist_cnn_labels.py``).
- ``kjv-trigram-5000`` (5,000 classes): next-word distributions of the pocketsphinx trigram LM over
  the KJV Bible, restricted to the LM's 5,000 most probable words by unigram probability and
  renormalised over them; 20,480 token positions, frame (1, 20480, 5000); held out: 2,000 positions
  of the verses that follow (``benchmarks/kjv_slice_labels.py``).

``--skip`` leaves codecs out (shown as "skipped"; only ``vqae`` and ``topk-mrs``, which ``auto`` does
not choose from). The fit time of every codec is recorded (``fit_s``); for the sets above the
markdown adds a table of them.

Every codec is planned for the whole file of the training labels (``plan_for``, real bytes) and fitted
on a sample of them as ``slc compress`` does; ``auto``'s pick is made by its own rule
(:func:`slc.codecs.presets.choose`: the lowest KL on the sample's last 4,096 labels among codecs that keep
the argmax of >= 99.5% of them), from the same fitted candidates. Scores: mean KL(teacher || decoded)
at the file's T, and top-1 agreement with the teacher, on the held-out labels.

    python benchmarks/default_codec.py                     # T 1,2,4,20 x ratios 10,20,40,100,200
    python benchmarks/default_codec.py --classes 200 --temperatures 1,4 --ratios 10,40,100
    python benchmarks/default_codec.py --set fmnist-cnn --temperatures 1,4 --ratios 10,40,100
    python benchmarks/default_codec.py --set kjv-trigram-5000 --temperatures 1,4 --ratios 10,40,100
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).parent))
from real_labels import load_real_labels  # noqa: E402

from slc.codecs.labels import to_logp  # noqa: E402
from slc.codecs.planner import Frame, Unreachable, plan_for  # noqa: E402
from slc.codecs.presets import AUTO_HOLDOUT, MIN_AGREEMENT, PRESETS, held_out_score  # noqa: E402

CODECS = ("hybrid", "hybrid-prior", "hybrid-pca", "topk", "pca", "vqae", "topk-mrs")
FIT_LABELS = 16_384
DEFAULT_SET = "fmnist-effnet-l0"
SETS = (DEFAULT_SET, "fmnist-cnn", "kjv-trigram-5000")
SKIPPABLE = ("vqae", "topk-mrs")  # not auto candidates


def set_labels(name: str):
    """Training and held-out labels of a non-default set, and what they are (for the JSON)."""
    if name == "fmnist-cnn":
        from fmnist_cnn_labels import load_cnn_labels as load
    else:
        from kjv_slice_labels import load_slice_labels as load
    tr, he = load(name, log=lambda m: print(m, file=sys.stderr)), load(name + "-heldout",
                                                                       log=lambda m: print(m, file=sys.stderr))
    about = {"train": tr["meta"], "held_out": he["meta"]}
    return np.asarray(tr["logits"], np.float32), np.asarray(he["logits"], np.float32), about


def labels(classes: int):
    train = np.asarray(load_real_labels("fmnist-effnet-l0", progress=False)["logits"], np.float32)
    held = np.asarray(load_real_labels("fmnist-effnet-l0-heldout", progress=False)["logits"], np.float32)
    if classes != train.shape[-1]:
        step = train.shape[-1] // classes
        train, held = train[..., ::step][..., :classes], held[..., ::step][..., :classes]
    return train, held


def cell(train: np.ndarray, held_logp: np.ndarray, t: float, ratio: float, seed: int = 0,
         skip: tuple[str, ...] = ()) -> dict:
    e, n, c = train.shape
    frame = Frame.of(train.shape, 4096, temperature=t)
    rng = np.random.default_rng(seed)
    pick = np.sort(rng.choice(e * n, size=min(FIT_LABELS, e * n), replace=False))
    sample = to_logp(train.reshape(-1, c)[pick], "logits", t)
    fit_part, choose_part = sample[:-AUTO_HOLDOUT], sample[-AUTO_HOLDOUT:]
    out = {}
    for name in CODECS:
        if name in skip:
            continue
        try:
            plan = plan_for(name, train.shape, 4096, ratio=ratio, frame=frame)
        except Unreachable:
            out[name] = None
            continue
        t0 = time.perf_counter()
        codec = PRESETS[name].build(plan.params, fit_part, c, seed=seed)
        fit_s = time.perf_counter() - t0
        print(f"  T={t:g} {ratio:g}x {name}: fit {fit_s:.1f} s ({codec.describe()})", file=sys.stderr, flush=True)
        kl, agree = held_out_score(codec, held_logp)
        out[name] = {"codec": codec.describe(), "bytes": plan.bytes, "ratio": plan.ratio, "kl": kl,
                     "agreement": agree, "fit_s": fit_s,
                     "choose": held_out_score(codec, choose_part) if name in PRESETS["auto"].candidates(c) else None}
    ok = [n for n in PRESETS["auto"].candidates(c) if out.get(n) and out[n]["choose"][1] >= MIN_AGREEMENT]
    out["auto"] = dict(out[min(ok, key=lambda n: out[n]["choose"][0])], preset=min(
        ok, key=lambda n: out[n]["choose"][0])) if ok else None
    return out


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--set", default=DEFAULT_SET, choices=SETS, help="which real labels (see the docstring)")
    ap.add_argument("--classes", type=int, default=None, help=f"{DEFAULT_SET} only: 1000, or a slice [default: 1000]")
    ap.add_argument("--skip", default="", help=f"codecs to leave out, of {','.join(SKIPPABLE)}")
    ap.add_argument("--temperatures", default="1,2,4,20")
    ap.add_argument("--ratios", default="10,20,40,100,200")
    ap.add_argument("--json", type=Path, default=None)
    ap.add_argument("--markdown", type=Path, default=None)
    ap.add_argument("--from-json", type=Path, default=None, help="render a saved run instead of measuring")
    args = ap.parse_args(argv)
    if args.from_json:
        saved = json.loads(args.from_json.read_text())
        render(saved["rows"], saved["classes"], saved.get("set"))
        if args.markdown:
            args.markdown.write_text(markdown(saved["rows"], saved["classes"], saved.get("set")))
        return
    skip = tuple(filter(None, args.skip.split(",")))
    if set(skip) - set(SKIPPABLE):
        ap.error(f"--skip takes {', '.join(SKIPPABLE)}, got {args.skip}")
    torch.manual_seed(0)
    about = None
    if args.set == DEFAULT_SET:
        args.classes = args.classes or 1000
        train, held = labels(args.classes)
    else:
        train, held, about = set_labels(args.set)
        if args.classes not in (None, train.shape[-1]):
            ap.error(f"--classes applies to {DEFAULT_SET} only ({args.set} has {train.shape[-1]} classes)")
        args.classes = train.shape[-1]
    print(f"labels: train {train.shape}, held out {held.shape}", flush=True)
    name = None if args.set == DEFAULT_SET else args.set  # the default set's outputs stay as they were
    rows = []
    for t in map(float, args.temperatures.split(",")):
        held_logp = to_logp(held.reshape(-1, held.shape[-1]), "logits", t)
        for ratio in map(float, args.ratios.split(",")):
            res = cell(train, held_logp, t, ratio, skip=skip)
            rows.append({"T": t, "ratio": ratio, **res})
            print(json.dumps(rows[-1], default=float), flush=True)
    if args.json:
        saved = {"classes": args.classes, "rows": rows}
        if name:
            saved = {"set": name, "classes": args.classes, "frame": list(train.shape), "held_out": list(held.shape),
                     "fit_labels": min(FIT_LABELS, train.shape[0] * train.shape[1]), "skipped": list(skip),
                     "labels": about, "rows": rows}
        args.json.write_text(json.dumps(saved, indent=1, default=float))
    render(rows, args.classes, name)
    if args.markdown:
        args.markdown.write_text(markdown(rows, args.classes, name))


def cells(row: dict) -> list[str]:
    """One row: T, target, the default (its codec), the best other codec, their KL ratio, topk, vqae."""
    def fmt(r):
        return "skipped" if r == "skipped" else "unreachable" if r is None else f"{r['kl']:.4f} ({100 * r['agreement']:.1f}%, {r['ratio']:.1f}x)"

    a = row["auto"]
    others = {n: row[n] for n in CODECS if row.get(n) and (a is None or n != a["preset"])}
    best = min(others, key=lambda n: others[n]["kl"]) if others else None
    ratio = f"{a['kl'] / others[best]['kl']:.3f}" if a and best else "-"
    return [f"{row['T']:g}", f"{row['ratio']:g}x", f"{a['preset']} {fmt(a)}" if a else "none",
            f"{best} {fmt(others[best])}" if best else "-", ratio, fmt(row.get("topk", "skipped")),
            fmt(row.get("vqae", "skipped"))]


COLUMNS = ["T", "target", "default: codec KL (agreement, ratio)", "best other codec", "default / best", "topk", "vqae"]


def fit_cells(row: dict, classes: int) -> list[str]:
    """One row of fit seconds: T, target, each codec ("-" unreachable, "skipped"), and auto's fits summed."""
    def sec(n):
        r = row.get(n, "skipped")
        return r if r == "skipped" else "-" if r is None else f"{r['fit_s']:.1f}"

    fits = [row[n]["fit_s"] for n in PRESETS["auto"].candidates(classes) if row.get(n)]
    return [f"{row['T']:g}", f"{row['ratio']:g}x", *map(sec, CODECS), f"{sum(fits):.1f}" if fits else "-"]


FIT_COLUMNS = ["T", "target", *CODECS, "auto (sum of its candidates' fits)"]


def markdown(rows: list[dict], classes: int, name: str | None = None) -> str:
    title = f"{classes} classes: held-out KL (top-1 agreement, whole-file ratio)"
    lines = [f"{name}, {title}" if name else title, "",
             "| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    lines += ["| " + " | ".join(cells(r)) + " |" for r in rows]
    if name:  # the default set's file stays as it was
        lines += ["", "Fit seconds (each codec on the same sample, 2 shared CPU cores; - unreachable)", "",
                  "| " + " | ".join(FIT_COLUMNS) + " |", "|" + "---|" * len(FIT_COLUMNS)]
        lines += ["| " + " | ".join(fit_cells(r, classes)) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def render(rows: list[dict], classes: int, name: str | None = None) -> None:
    from rich.console import Console

    what = f"{name}, {classes} classes" if name else f"{classes} classes"
    Console().print(table(f"the default against every codec, {what}: held-out KL (top-1 agreement, ratio)",
                          COLUMNS, [cells(r) for r in rows]))
    if name:
        Console().print(table(f"fit seconds, {what}", FIT_COLUMNS, [fit_cells(r, classes) for r in rows]))


def table(title: str, columns: list[str], body: list[list[str]]):
    from rich.table import Table

    tab = Table(title=title)
    for col in columns:
        tab.add_column(col, justify="right")
    for row in body:
        tab.add_row(*row)
    return tab

if __name__ == "__main__":
    main()

#!/usr/bin/env python
"""Is the default codec the best at every temperature and ratio, and does it keep the teacher's top-1?

Real labels: EfficientNet-Lite0 over Fashion-MNIST crops (``benchmarks/real_labels.py``): 24 epochs x
1,000 images fit the codecs, 4 x 500 other images score them (held out). ``--classes 200`` takes a fixed
slice of the 1,000 ImageNet classes (every fifth, renormalised by a softmax over the slice).

Every codec is planned for the whole file of the training labels (``plan_for``, real bytes) and fitted
on a sample of them as ``slc compress`` does; ``auto``'s pick is made by its own rule
(:func:`slc.codecs.presets.choose`: the lowest KL on the sample's last 4,096 labels among codecs that keep
the argmax of >= 99.5% of them), from the same fitted candidates. Scores: mean KL(teacher || decoded)
at the file's T, and top-1 agreement with the teacher, on the held-out labels.

    python benchmarks/default_codec.py                     # T 1,2,4,20 x ratios 10,20,40,100,200
    python benchmarks/default_codec.py --classes 200 --temperatures 1,4 --ratios 10,40,100
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

CODECS = ("hybrid", "hybrid-prior", "topk", "pca", "vqae", "topk-mrs")
FIT_LABELS = 16_384


def labels(classes: int):
    train = np.asarray(load_real_labels("fmnist-effnet-l0", progress=False)["logits"], np.float32)
    held = np.asarray(load_real_labels("fmnist-effnet-l0-heldout", progress=False)["logits"], np.float32)
    if classes != train.shape[-1]:
        step = train.shape[-1] // classes
        train, held = train[..., ::step][..., :classes], held[..., ::step][..., :classes]
    return train, held


def cell(train: np.ndarray, held_logp: np.ndarray, t: float, ratio: float, seed: int = 0) -> dict:
    e, n, c = train.shape
    frame = Frame.of(train.shape, 4096, temperature=t)
    rng = np.random.default_rng(seed)
    pick = np.sort(rng.choice(e * n, size=min(FIT_LABELS, e * n), replace=False))
    sample = to_logp(train.reshape(-1, c)[pick], "logits", t)
    fit_part, choose_part = sample[:-AUTO_HOLDOUT], sample[-AUTO_HOLDOUT:]
    out = {}
    for name in CODECS:
        try:
            plan = plan_for(name, train.shape, 4096, ratio=ratio, frame=frame)
        except Unreachable:
            out[name] = None
            continue
        t0 = time.perf_counter()
        codec = PRESETS[name].build(plan.params, fit_part, c, seed=seed)
        fit_s = time.perf_counter() - t0
        kl, agree = held_out_score(codec, held_logp)
        out[name] = {"codec": codec.describe(), "bytes": plan.bytes, "ratio": plan.ratio, "kl": kl,
                     "agreement": agree, "fit_s": fit_s,
                     "choose": held_out_score(codec, choose_part) if name in PRESETS["auto"].chooses else None}
    ok = [n for n in PRESETS["auto"].chooses if out.get(n) and out[n]["choose"][1] >= MIN_AGREEMENT]
    out["auto"] = dict(out[min(ok, key=lambda n: out[n]["choose"][0])], preset=min(
        ok, key=lambda n: out[n]["choose"][0])) if ok else None
    return out


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--classes", type=int, default=1000)
    ap.add_argument("--temperatures", default="1,2,4,20")
    ap.add_argument("--ratios", default="10,20,40,100,200")
    ap.add_argument("--json", type=Path, default=None)
    ap.add_argument("--markdown", type=Path, default=None)
    ap.add_argument("--from-json", type=Path, default=None, help="render a saved run instead of measuring")
    args = ap.parse_args(argv)
    if args.from_json:
        saved = json.loads(args.from_json.read_text())
        render(saved["rows"], saved["classes"])
        if args.markdown:
            args.markdown.write_text(markdown(saved["rows"], saved["classes"]))
        return
    torch.manual_seed(0)
    train, held = labels(args.classes)
    print(f"labels: train {train.shape}, held out {held.shape}", flush=True)
    rows = []
    for t in map(float, args.temperatures.split(",")):
        held_logp = to_logp(held.reshape(-1, held.shape[-1]), "logits", t)
        for ratio in map(float, args.ratios.split(",")):
            res = cell(train, held_logp, t, ratio)
            rows.append({"T": t, "ratio": ratio, **res})
            print(json.dumps(rows[-1], default=float), flush=True)
    if args.json:
        args.json.write_text(json.dumps({"classes": args.classes, "rows": rows}, indent=1, default=float))
    render(rows, args.classes)
    if args.markdown:
        args.markdown.write_text(markdown(rows, args.classes))


def cells(row: dict) -> list[str]:
    """One row: T, target, the default (its codec), the best other codec, their KL ratio, topk, vqae."""
    def fmt(r):
        return "unreachable" if r is None else f"{r['kl']:.4f} ({100 * r['agreement']:.1f}%, {r['ratio']:.1f}x)"

    a = row["auto"]
    others = {n: row[n] for n in CODECS if row.get(n) and (a is None or n != a["preset"])}
    best = min(others, key=lambda n: others[n]["kl"]) if others else None
    ratio = f"{a['kl'] / others[best]['kl']:.3f}" if a and best else "-"
    return [f"{row['T']:g}", f"{row['ratio']:g}x", f"{a['preset']} {fmt(a)}" if a else "none",
            f"{best} {fmt(others[best])}" if best else "-", ratio, fmt(row["topk"]), fmt(row["vqae"])]


COLUMNS = ["T", "target", "default: codec KL (agreement, ratio)", "best other codec", "default / best", "topk", "vqae"]


def markdown(rows: list[dict], classes: int) -> str:
    lines = [f"{classes} classes: held-out KL (top-1 agreement, whole-file ratio)", "",
             "| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    return "\n".join(lines + ["| " + " | ".join(cells(r)) + " |" for r in rows]) + "\n"


def render(rows: list[dict], classes: int) -> None:
    from rich.console import Console
    from rich.table import Table

    tab = Table(title=f"the default against every codec, {classes} classes: held-out KL (top-1 agreement, ratio)")
    for col in COLUMNS:
        tab.add_column(col, justify="right")
    for row in rows:
        tab.add_row(*cells(row))
    Console().print(tab)


if __name__ == "__main__":
    main()

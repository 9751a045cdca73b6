#!/usr/bin/env python
"""hybrid-pca against pca at the same whole-file bytes, on the 5,000-class trigram labels at T=4.

A quick check of one cell family (the full table is ``default_codec.py --set kjv-trigram-5000``, whose
whole-label VQAE fits take minutes a cell): both codecs planned for the file ``(1, 20480, 5000)`` with
``plan_for``, fitted on 12,288 sampled training labels, scored on the 2,000 held-out positions.

    python benchmarks/hybrid_pca_check.py [--ratios 10,40,100] [-T 4]
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from kjv_slice_labels import load_slice_labels  # noqa: E402

from slc.codecs.labels import to_logp  # noqa: E402
from slc.codecs.planner import plan_for  # noqa: E402
from slc.codecs.presets import PRESETS, held_out_score  # noqa: E402


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--ratios", default="10,40,100")
    ap.add_argument("-T", "--temperature", type=float, default=4.0)
    a = ap.parse_args(argv)
    train = np.asarray(load_slice_labels("kjv-trigram-5000")["logits"]).reshape(-1, 5000)
    held = np.asarray(load_slice_labels("kjv-trigram-5000-heldout")["logits"]).reshape(-1, 5000)
    pick = np.sort(np.random.default_rng(0).choice(len(train), 12_288, replace=False))
    fit, ref = to_logp(train[pick], "logits", a.temperature), to_logp(held, "logits", a.temperature)
    rows = []
    for ratio in map(float, a.ratios.split(",")):
        for name in ("hybrid-pca", "pca"):
            plan = plan_for(name, (1, len(train), 5000), 4096, ratio=ratio)
            codec = PRESETS[name].build(plan.params, fit, 5000)
            kl, agree = held_out_score(codec, ref)
            rows.append([f"{ratio:g}x", name, codec.describe(), f"{plan.ratio:.1f}x", f"{kl:.4f}", f"{100 * agree:.1f}%"])
            print(" | ".join(rows[-1]), flush=True)
    from rich.console import Console
    from rich.table import Table

    tab = Table(title=f"hybrid-pca against pca, 5,000 classes, T={a.temperature:g} (held-out KL, top-1 agreement)")
    for col in ("target", "codec", "shape", "ratio", "KL", "agreement"):
        tab.add_column(col, justify="right")
    for r in rows:
        tab.add_row(*r)
    Console().print(tab)


if __name__ == "__main__":
    main()

"""Rate-distortion of every codec on real 1000-class soft labels: `slc bench` on the cached real labels.

EfficientNet-Lite0 logits over 24 epochs of augmented crops of 1,000 Fashion-MNIST images
(generated once by real_labels.py, cached under ~/.cache/slc). Every option after the script
name goes to `slc bench` unchanged; the README's table is

    python benchmarks/fidelity.py -T 1 -T 4 --fit-steps 300 --markdown rd.md --plot rd.png
"""
from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))


def main() -> None:
    from real_labels import _cache_root, load_real_labels

    from slc.cli import cli

    load_real_labels("fmnist-effnet-l0")  # generates the cache on first use
    path = _cache_root(None) / "fmnist-effnet-l0" / "logits.npy"
    cli(["bench", str(path), "--logits", *sys.argv[1:]], prog_name="fidelity.py")


if __name__ == "__main__":
    main()

#!/usr/bin/env bash
# The built-in real example, end to end: a pretrained ImageNet teacher (EfficientNet-Lite0)
# relabels 500 real Fashion-MNIST images x 16 augmented crops; slc compresses the 8,000
# 1000-class soft labels 40x at temperature 4, shows where the bytes go and how faithful
# the labels stay, and streams them back out through a pipe.
#   bash examples/quickstart.sh [WORKDIR]
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
out=${1:-slc-quickstart}
mkdir -p "$out"
python "$here/make_labels.py" -o "$out/logits.npy" --epochs 16
slc compress "$out/logits.npy" -o "$out/labels.slc" --logits -T 4 --ratio 40 --force
slc inspect "$out/labels.slc" --against "$out/logits.npy"
slc decode "$out/labels.slc" --epoch 0 -o - | python -c "
import slc
src = slc.open_labels('-')  # an npy stream, read block by block in bounded memory
rows = sum(len(block) for _, _, block in src.blocks(1024))
print(f'epoch 0 streamed through a pipe: {rows} labels x {src.shape[2]} classes')"
slc verify "$out/labels.slc"

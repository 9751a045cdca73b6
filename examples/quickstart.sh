#!/usr/bin/env bash
# The built-in real example, end to end: a pretrained ImageNet teacher (EfficientNet-Lite0)
# relabels 500 real Fashion-MNIST images x 16 epochs of random-resized crops (8,000 1000-class
# soft labels). `slc encode` stores them densely (fp16) and `slc compress` re-codes them 40x at
# temperature 4, keeping the crop-replay sections; then: where the bytes go, how faithful the
# labels stay, a pipe, a checksum pass, and a training loop that replays the teacher's crops.
#   bash examples/quickstart.sh [WORKDIR]
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
out=${1:-slc-quickstart}
images="$here/../slc/bench/data/fmnist_subset.npz"  # the package data slc demo uses
mkdir -p "$out"
python "$here/export_teacher.py" -o "$out/teacher.pt"
# EfficientNet-Lite0 takes (x - 127) / 128; Fashion-MNIST is inverted to dark-on-light like photos
slc encode "$out/teacher.pt" "$images" -o "$out/labels-fp16.slc" --codec fp16 -T 4 \
    --epochs 16 --size 64 --invert --mean 0.498,0.498,0.498 --std 0.502,0.502,0.502 --force
slc compress "$out/labels-fp16.slc" -o "$out/labels.slc" -T 4 --ratio 40 --force
slc inspect "$out/labels.slc" --against "$out/labels-fp16.slc"
slc decode "$out/labels.slc" --epoch 0 -o - | python -c "
import slc
src = slc.open_labels('-')  # an npy stream, read block by block in bounded memory
rows = sum(len(block) for _, _, block in src.blocks(1024))
print(f'epoch 0 streamed through a pipe: {rows} labels x {src.shape[2]} classes')"
slc verify "$out/labels.slc"
python "$here/train_loop.py" "$out/labels-fp16.slc" "$images" --teacher "$out/teacher.pt" --epochs 1
python "$here/train_loop.py" "$out/labels.slc" "$images" --epochs 1

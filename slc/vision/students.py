"""Built-in students (no torchvision): ResNet-18 (ImageNet and small-image stems), ConvNet, a mobile net.

``build_student(name, classes, channels)``; ``list_students()`` names them. Any other architecture
comes in as TorchScript or ``package.module:factory`` (see :mod:`slc.teacher`).
"""
from __future__ import annotations

from typing import Callable

import torch
from torch import nn

from slc.errors import SlcInputError


class BasicBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.down = None
        if stride != 1 or cin != cout:
            self.down = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return torch.relu(out + (x if self.down is None else self.down(x)))


class ResNet18(nn.Module):
    """ResNet-18. ``small=True``: 3x3 stride-1 stem and no max-pool (CIFAR-style, for <= 64 px inputs)."""

    def __init__(self, classes: int, channels: int = 3, small: bool = False):
        super().__init__()
        if small:
            self.stem = nn.Sequential(nn.Conv2d(channels, 64, 3, 1, 1, bias=False), nn.BatchNorm2d(64), nn.ReLU())
        else:
            self.stem = nn.Sequential(nn.Conv2d(channels, 64, 7, 2, 3, bias=False), nn.BatchNorm2d(64), nn.ReLU(),
                                      nn.MaxPool2d(3, 2, 1))
        layers, cin = [], 64
        for cout, stride in ((64, 1), (128, 2), (256, 2), (512, 2)):
            layers += [BasicBlock(cin, cout, stride), BasicBlock(cout, cout, 1)]
            cin = cout
        self.layers = nn.Sequential(*layers)
        self.fc = nn.Linear(512, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.layers(self.stem(x)).mean((2, 3)))


class ConvNet(nn.Module):
    """The dataset-distillation ConvNet: ``depth`` x (conv 3x3, ``width``, instance norm, ReLU, avg-pool 2), linear."""

    def __init__(self, classes: int, channels: int = 3, width: int = 128, depth: int = 3):
        super().__init__()
        blocks, cin = [], channels
        for _ in range(depth):
            blocks += [nn.Conv2d(cin, width, 3, padding=1), nn.GroupNorm(width, width, affine=True), nn.ReLU(),
                       nn.AvgPool2d(2)]
            cin = width
        self.features = nn.Sequential(*blocks)
        # the literature flattens a 4x4 map (32 px input); pooling to 4x4 keeps that and takes any size.
        # A global average pool instead loses the layout: 38% vs 70% on 500 Fashion-MNIST images.
        self.pool = nn.AdaptiveAvgPool2d(4)
        self.fc = nn.Linear(width * 16, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.pool(self.features(x)).flatten(1))


class InvertedResidual(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int, expand: int):
        super().__init__()
        mid = cin * expand
        self.use_res = stride == 1 and cin == cout
        self.body = nn.Sequential(
            nn.Conv2d(cin, mid, 1, bias=False), nn.BatchNorm2d(mid), nn.ReLU6(),
            nn.Conv2d(mid, mid, 3, stride, 1, groups=mid, bias=False), nn.BatchNorm2d(mid), nn.ReLU6(),
            nn.Conv2d(mid, cout, 1, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x) if self.use_res else self.body(x)


class MobileNet(nn.Module):
    """A small MobileNetV2-style net (inverted residuals, depthwise convs), about 0.45M parameters."""

    def __init__(self, classes: int, channels: int = 3):
        super().__init__()
        cfg = [(16, 1, 1), (24, 2, 6), (24, 1, 6), (32, 2, 6), (32, 1, 6), (64, 2, 6), (64, 1, 6), (96, 1, 6),
               (160, 2, 6)]
        layers: list[nn.Module] = [nn.Conv2d(channels, 32, 3, 2, 1, bias=False), nn.BatchNorm2d(32), nn.ReLU6()]
        cin = 32
        for cout, stride, expand in cfg:
            layers.append(InvertedResidual(cin, cout, stride, expand))
            cin = cout
        layers += [nn.Conv2d(cin, 640, 1, bias=False), nn.BatchNorm2d(640), nn.ReLU6()]
        self.features = nn.Sequential(*layers)
        self.fc = nn.Linear(640, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.features(x).mean((2, 3)))


STUDENTS: dict[str, Callable[[int, int], nn.Module]] = {
    "resnet18": lambda c, ch: ResNet18(c, ch, small=False),
    "resnet18-small": lambda c, ch: ResNet18(c, ch, small=True),
    "convnet": lambda c, ch: ConvNet(c, ch),
    "convnet-w64": lambda c, ch: ConvNet(c, ch, width=64),  # ~4x cheaper; what `slc demo` trains on 2 cores
    "mobilenet": lambda c, ch: MobileNet(c, ch),
}


def list_students() -> list[str]:
    return sorted(STUDENTS)


def build_student(name: str, classes: int, channels: int = 3) -> nn.Module:
    """A freshly initialised built-in student with ``classes`` outputs."""
    if name not in STUDENTS:
        raise SlcInputError(f"expected a student in {list_students()} (or a TorchScript file / module:factory), "
                            f"got {name!r}")
    if classes < 2 or channels not in (1, 3):
        raise SlcInputError(f"expected >= 2 classes and 1 or 3 channels, got {classes} classes, {channels} channels")
    return STUDENTS[name](classes, channels)

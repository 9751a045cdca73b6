#!/usr/bin/env python
"""Use an .slc in your own training loop: the crops the teacher saw, each with its soft label.

  python examples/train_loop.py labels.slc IMAGES [--teacher teacher.pt] [--epochs 2]

No monkey-patched DataLoader fetcher and no fixed relabel batch size: `SoftLabelDataset`
item i is label i of the file (its crop is recomputed from the seed in the file), and
`EpochSampler` walks one stored epoch in its (already shuffled) order, decoding each label
chunk once. With --teacher, the script first checks that the replayed crops give the
teacher's own labels.
"""
import argparse
import time

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader

from slc import EpochSampler, SoftLabelDataset


def student(classes: int, channels: int) -> torch.nn.Module:
    """A small ConvNet (the dataset-distillation literature's kind) with a global pool."""
    def block(i, o):
        return [torch.nn.Conv2d(i, o, 3, padding=1), torch.nn.GroupNorm(o, o), torch.nn.ReLU(), torch.nn.AvgPool2d(2)]

    return torch.nn.Sequential(*block(channels, 32), *block(32, 64), *block(64, 128),
                               torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(128, classes))


def check_replay(ds: SoftLabelDataset, teacher_path: str, n: int = 64) -> None:
    teacher = torch.jit.load(teacher_path).eval()
    x = torch.stack([ds[i][0] for i in range(n)])
    stored = torch.stack([ds[i][1] for i in range(n)])
    with torch.inference_mode():
        fresh = torch.softmax(teacher(x.contiguous(memory_format=torch.channels_last)) / ds.file_temperature, -1)
    kl = (fresh * (fresh.clamp_min(1e-30).log() - stored.clamp_min(1e-30).log())).sum(-1).mean()
    agree = (fresh.argmax(-1) == stored.argmax(-1)).float().mean()
    print(f"replay check on {n} crops: teacher(replayed crop) vs stored label: KL {kl:.2e}, "
          f"top-1 agreement {100 * agree:.1f}%, max |dp| {(fresh - stored).abs().max():.2e}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("labels")
    ap.add_argument("images")
    ap.add_argument("--teacher", help="TorchScript teacher: check the replayed crops against it first")
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--batch-size", type=int, default=50)
    a = ap.parse_args()
    torch.manual_seed(0)

    ds = SoftLabelDataset(a.labels, a.images)
    T = ds.file_temperature
    print(f"{a.labels}: {ds.epochs} stored epochs x {len(ds) // ds.epochs} crops, {ds.classes} classes, T={T:g}")
    if a.teacher:
        check_replay(ds, a.teacher)

    x0 = ds[0][0]
    model = student(ds.classes, x0.shape[0])
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.01)
    sampler = EpochSampler(ds)
    for epoch in range(a.epochs):
        sampler.set_epoch(epoch)  # beyond the stored epochs it cycles through them
        t0, total, seen = time.perf_counter(), 0.0, 0
        for x, y in DataLoader(ds, batch_size=a.batch_size, sampler=sampler):
            logp = F.log_softmax(model(x) / T, -1)
            loss = F.kl_div(logp, y, reduction="batchmean") * T * T  # KL(y || student), as in the paper
            opt.zero_grad()
            loss.backward()
            opt.step()
            total, seen = total + loss.item() * len(x), seen + len(x)
        print(f"epoch {epoch}: KL loss {total / seen:.4f}, {seen / (time.perf_counter() - t0):.0f} crops/s")


if __name__ == "__main__":
    main()

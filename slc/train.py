"""``train-student``: train a student from images plus a ``.slc``, replaying the teacher's crops.

Loss: KL(y || softmax(S(x) / T)) * T^2 with the file's temperature (or an override), AdamW with a
cosine schedule, as in the paper. Each training epoch replays stored epoch ``epoch % E`` in its
stored (shuffled) order, so labels decode chunk by chunk in bounded memory.
"""
from __future__ import annotations

import json
import math
import os
import time
from dataclasses import asdict, dataclass
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader

from .atomic import atomic_output, check_output
from .augment import Recipe, render
from .dataset import EpochSampler, SoftLabelDataset
from .errors import SlcInputError
from .images import ImageSet, open_images
from .students import build_student, list_students
from .teacher import load_teacher, resolve_device, teacher_forward


@dataclass
class TrainConfig:
    student: str = "convnet"
    epochs: int | None = None  # default: the number of stored epochs
    batch_size: int = 64
    lr: float = 1e-3
    weight_decay: float = 0.01
    temperature: float | None = None  # default: the file's
    workers: int = 0
    device: str = "auto"
    seed: int = 0
    hard: bool = False  # the floor: cross-entropy on the labels' argmax instead of KL to the soft labels


def full_view(images: ImageSet, recipe: Recipe, i: int) -> torch.Tensor:
    """Image ``i`` whole (no crop, no flip) at the recipe's size and normalisation: for evaluation."""
    h, w = (int(v) for v in images.sizes[i])
    box = np.zeros(1, [("y", "<u2"), ("x", "<u2"), ("h", "<u2"), ("w", "<u2"), ("flip", "u1"), ("pad", "u1")])[0]
    box["h"], box["w"] = h, w
    return render(images.load(i), box, recipe)


def _batches(images: ImageSet, recipe: Recipe, batch: int):
    for a in range(0, len(images), batch):
        idx = range(a, min(len(images), a + batch))
        yield list(idx), torch.stack([full_view(images, recipe, i) for i in idx])


@torch.inference_mode()
def evaluate(model: torch.nn.Module, images: ImageSet, recipe: Recipe, device: torch.device, temperature: float,
             targets: np.ndarray | None = None, teacher=None, batch: int = 128) -> dict:
    """Top-1/top-5 accuracy on ``targets``; top-1 agreement and KL(teacher || student) at T with ``teacher``."""
    model.eval()
    hits1 = hits5 = agree = 0
    kl = 0.0
    for idx, x in _batches(images, recipe, batch):
        x = x.to(device)
        s = model(x).float()
        if targets is not None:
            t = torch.as_tensor(targets[idx], device=device)
            top5 = s.topk(min(5, s.shape[1]), 1).indices
            hits1 += int((top5[:, 0] == t).sum())
            hits5 += int((top5 == t[:, None]).any(1).sum())
        if teacher is not None:
            z = teacher_forward(teacher, x)
            p = torch.log_softmax(z / temperature, 1)
            q = torch.log_softmax(s / temperature, 1)
            kl += float((p.exp() * (p - q)).sum())
            agree += int((z.argmax(1) == s.argmax(1)).sum())
    n = len(images)
    out: dict = {"images": n}
    if targets is not None:
        out.update(top1=hits1 / n, top5=hits5 / n)
    if teacher is not None:
        out.update(teacher_agreement=agree / n, kl_to_teacher=kl / n)
    return out


def val_targets(val: ImageSet, label_classes: list[str] | None, width: int) -> np.ndarray:
    """Map a validation ImageFolder's classes onto label indices by name; fail on classes the labels lack."""
    if val.targets is None or val.classes is None:
        raise SlcInputError(f"expected an ImageFolder tree (class subfolders) for --val, got {val.source}")
    if label_classes is None or len(label_classes) != width:
        raise SlcInputError("expected labels made on an ImageFolder whose classes are the label classes to use --val, "
                            f"got {width} label classes (use --teacher with held-out images instead)")
    missing = sorted(set(val.classes) - set(label_classes))
    if missing:
        raise SlcInputError(f"expected validation classes the labels cover, got {missing[:5]} not among "
                            f"{len(label_classes)} label classes")
    remap = np.array([label_classes.index(c) for c in val.classes], np.int64)
    return remap[val.targets]


def load_student(spec: str, classes: int, channels: int) -> torch.nn.Module:
    """A built-in name, a TorchScript file or ``package.module:factory``; its output width must match."""
    model = build_student(spec, classes, channels) if spec in list_students() else load_teacher(spec)
    if spec not in list_students():
        for p in model.parameters():
            p.requires_grad_(True)
        model.train()
    return model


def train_student(labels: str | os.PathLike, images: str | os.PathLike, out_dir: str | os.PathLike,
                  cfg: TrainConfig | None = None, *, val: str | None = None, teacher: str | None = None,
                  heldout: str | None = None, force: bool = False, log: Callable[[str], None] | None = None,
                  progress: Callable[[int, float, int], None] | None = None) -> dict:
    """Train, evaluate, and write ``student.pt`` (state_dict), ``student.ts`` (TorchScript) and ``log.jsonl``."""
    cfg = cfg or TrainConfig()
    log = log or (lambda line: None)
    out_dir = os.fspath(out_dir)
    os.makedirs(out_dir, exist_ok=True)
    paths = {k: os.path.join(out_dir, f) for k, f in
             (("ckpt", "student.pt"), ("ts", "student.ts"), ("log", "log.jsonl"), ("result", "result.json"))}
    for p in paths.values():
        check_output(p, force)
    torch.manual_seed(cfg.seed)
    ds = SoftLabelDataset(labels, images, temperature=cfg.temperature)
    T = cfg.temperature or ds.file_temperature
    recipe = ds.info.recipe
    device = resolve_device(cfg.device)
    model = load_student(cfg.student, ds.classes, recipe.channels).to(device)
    probe = model(ds[0][0][None].to(device))
    if probe.shape[-1] != ds.classes:
        raise SlcInputError(f"expected a student with {ds.classes} outputs (the label width), got {probe.shape[-1]}")
    # checks that would otherwise fail after an hour of training
    val_set = val_t = teach = held = None
    if val:
        val_set = open_images(val)
        val_t = val_targets(val_set, ds.info.classes, ds.classes)
    if teacher:
        teach = load_teacher(teacher).to(device)
        held = open_images(heldout) if heldout else None
        if held is None:
            raise SlcInputError("expected --heldout IMAGES with --teacher (images the student never saw)")
    epochs = cfg.epochs or ds.epochs
    steps = epochs * math.ceil((len(ds) // ds.epochs) / cfg.batch_size)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 0.5 * (1 + math.cos(math.pi * s / max(steps, 1))))
    sampler = EpochSampler(ds)
    rows = []
    t_start = time.perf_counter()
    for epoch in range(epochs):
        sampler.set_epoch(epoch)
        model.train()
        total, seen, t0 = 0.0, 0, time.perf_counter()
        for x, y in DataLoader(ds, batch_size=cfg.batch_size, sampler=sampler, num_workers=cfg.workers):
            x, y = x.to(device), y.to(device)
            if cfg.hard:
                loss = F.cross_entropy(model(x), y.argmax(-1))
            else:
                loss = F.kl_div(F.log_softmax(model(x) / T, -1), y, reduction="batchmean") * T * T
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            total, seen = total + float(loss.detach()) * len(x), seen + len(x)
            if progress:
                progress(len(x), float(loss.detach()), epochs * (len(ds) // ds.epochs))  # (images, loss, total)
        row = {"epoch": epoch, "loss": total / seen, "images_per_s": seen / (time.perf_counter() - t0),
               "lr": sched.get_last_lr()[0]}
        rows.append(row)
        log(json.dumps(row))
    result: dict = {"config": asdict(cfg), "temperature": T, "epochs": epochs, "labels": os.fspath(labels),
                    "train_seconds": time.perf_counter() - t_start, "final_loss": rows[-1]["loss"] if rows else None}
    if val_set is not None:
        result["val"] = evaluate(model, val_set, recipe, device, T, targets=val_t)
    if teach is not None and held is not None:
        result["heldout"] = evaluate(model, held, recipe, device, T, teacher=teach)
    model.eval().cpu()
    with atomic_output(paths["ckpt"], force) as f:
        torch.save(model.state_dict(), f)
    with atomic_output(paths["ts"], force) as f:
        import warnings

        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            torch.jit.save(torch.jit.script(model), f)
    with atomic_output(paths["log"], force) as f:
        f.write("".join(json.dumps(r) + "\n" for r in rows).encode())
    with atomic_output(paths["result"], force) as f:
        f.write(json.dumps(result, indent=2).encode())
    return result

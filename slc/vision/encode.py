"""``encode``: run a teacher over replayable augmented crops and stream its labels into a ``.slc``.

The teacher is just another label source (:class:`TeacherSource`) for :func:`slc.compression.compress`:
fitting, planning, chunking, resuming and atomic output are shared with ``slc compress``.
"""
from __future__ import annotations

import hashlib
import os
from contextlib import nullcontext
from dataclasses import fields
from typing import Callable, Iterator

import numpy as np
import torch
from torch.utils.data import DataLoader

from slc.distributed import local_device
from slc.format.parts import PartSpec
from slc.format.replay import Recipe
from slc.compression import CompressOptions, CompressResult, compress
from slc.extras import Extras
from slc.vision.dataset import CropDataset
from slc.errors import SlcInputError
from slc.vision.images import ImageSet, open_images
from slc.resume import preflight
from slc.format.sections import BOXES
from slc.format.replay import ReplayInfo
from slc.vision.replay import boxes_bytes, replay_sections, stored_boxes
from slc.sources import LabelSource
from slc.models import load_teacher, resolve_device, teacher_forward

FIT_ON = ("first", "random")
# The fit sample is held in memory while the teacher streams on, so it is capped lower than for
# compress (65,536): on real 1000-class labels (T=4, 40x) fitting on 16k labels instead of 24k
# raised KL by 2% (0.0508 vs 0.0497), and keeps 50 epochs within ~200 MB of 5 epochs.
ENCODE_FIT_LABELS = 16384


class TeacherSource(LabelSource):
    """Teacher outputs for every (epoch, position) of a :class:`CropDataset`, computed on demand.

    Batches never cross a chunk boundary, so a resumed run feeds the teacher exactly the
    batches an uninterrupted one did (batch composition can change a conv's last bits).
    """

    def __init__(self, model, crops: CropDataset, *, device: torch.device, batch_size: int = 64, workers: int = 0,
                 amp: bool = True, seekable: bool = False, on_crops: Callable[[int, int], None] | None = None):
        if batch_size < 1:
            raise SlcInputError(f"expected a batch size >= 1, got {batch_size}")
        if workers < 0:
            raise SlcInputError(f"expected workers >= 0, got {workers}")
        self.model, self.crops, self.device = model, crops, device
        self.batch_size, self.workers, self.seekable = batch_size, workers, seekable
        self.amp = amp and device.type == "cuda"
        self.on_crops = on_crops or (lambda n, total: None)
        self.name = "teacher"
        self.dtype = np.dtype(np.float32)
        probe = self._forward(torch.stack([crops[i] for i in range(min(2, len(crops)))]))
        self.classes = probe.shape[1]
        if self.classes < 2:
            raise SlcInputError(f"expected a teacher with at least 2 outputs, got {self.classes}")
        self.shape = (crops.epochs, crops.n, self.classes)

    def _forward(self, x: torch.Tensor) -> np.ndarray:
        x = x.to(self.device, non_blocking=True)
        if x.dim() == 4:
            x = x.contiguous(memory_format=torch.channels_last)
        amp = torch.autocast("cuda", dtype=torch.float16) if self.amp else nullcontext()
        with torch.inference_mode(), amp:
            y = teacher_forward(self.model, x)
        y = y.float().cpu().numpy()
        if getattr(self, "classes", y.shape[1]) != y.shape[1]:
            raise SlcInputError(f"expected the teacher's output width to stay {self.classes}, got {y.shape[1]}")
        return y

    def read(self, epoch: int, start: int, stop: int) -> np.ndarray:
        base = epoch * self.crops.n
        out = []
        for a in range(start, stop, self.batch_size):
            b = min(stop, a + self.batch_size)
            out.append(self._forward(torch.stack([self.crops[base + i] for i in range(a, b)])))
            self.on_crops(b - a, self.progress_total or len(self.crops))
        return np.concatenate(out)

    def blocks(self, rows: int, first: int = 0) -> Iterator[tuple[int, int, np.ndarray]]:
        e_count, n, c = self.shape
        per = -(-n // rows)
        batches = []
        for i in range(first, e_count * per):
            e, s = divmod(i, per)
            a, b = e * n + s * rows, e * n + min(n, (s + 1) * rows)
            batches += [list(range(j, min(b, j + self.batch_size))) for j in range(a, b, self.batch_size)]
        loader = DataLoader(self.crops, batch_sampler=batches, num_workers=self.workers,
                            pin_memory=self.device.type == "cuda", persistent_workers=False,
                            prefetch_factor=4 if self.workers else None)
        it = iter(loader)
        for i in range(first, e_count * per):
            e, s = divmod(i, per)
            count = min(n, (s + 1) * rows) - s * rows
            block = np.empty((count, c), np.float32)
            got = 0
            while got < count:
                y = self._forward(next(it))
                block[got:got + len(y)] = y
                got += len(y)
                self.on_crops(len(y), self.progress_total or len(self.crops))
            yield e, s * rows, block


def split_keywords(given: dict) -> tuple[dict, dict]:
    """``encode``'s extra keywords: :class:`~slc.compression.CompressOptions` fields, and :class:`Recipe`
    fields (``aspect`` for the recipe's ``ratio``, which here is the compression ratio; ``seed`` seeds the crops)."""
    opts = {f.name for f in fields(CompressOptions)} - {"seed"}
    crop = {f.name if f.name != "ratio" else "aspect" for f in fields(Recipe)}
    unknown = sorted(set(given) - opts - crop)
    if unknown:
        raise TypeError(f"encode() got unexpected keyword arguments {unknown} (compress options: {', '.join(sorted(opts))}; "
                        f"crop keywords: {', '.join(sorted(crop))})")
    return {k: v for k, v in given.items() if k in opts}, {k: v for k, v in given.items() if k in crop}


def crop_recipe(recipe: Recipe | None, crop: dict) -> Recipe:
    """``recipe``, or one made from :class:`Recipe` fields given as keywords (``aspect`` for its ``ratio``)."""
    if not crop:
        return recipe or Recipe()
    if recipe is not None:
        raise TypeError(f"encode() takes recipe= or crop keywords, not both (got recipe and {sorted(crop)})")
    if "aspect" in crop:
        crop["ratio"] = crop.pop("aspect")
    return Recipe(**{k: tuple(v) if isinstance(v, list) else v for k, v in crop.items()})


def model_fingerprint(model) -> str:
    """sha256 over the teacher's parameters and buffers: notices a different teacher on ``--resume``."""
    h = hashlib.sha256()
    try:
        state = model.state_dict()
    except (AttributeError, RuntimeError):
        return "unknown"
    for k in sorted(state):
        v = state[k]
        h.update(k.encode())
        if isinstance(v, torch.Tensor):
            h.update(str(v.dtype).encode())
            h.update(v.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def encode(teacher, images: str | os.PathLike | ImageSet, out: str | os.PathLike, opts: CompressOptions | None = None,
           *, recipe: Recipe | None = None, epochs: int = 300, batch_size: int = 64, device: str = "auto",
           workers: int = 0, amp: bool = True, fit_on: str = "first", skip_bad: bool = False,
           weights: str | None = None, trust_pickle: bool = False, factory_kwargs: dict | None = None,
           force: bool = False, resume: bool = False, log: Callable[[str], None] | None = None,
           fit_progress: Callable | None = None, progress: Callable | None = None,
           on_crops: Callable[[int, int], None] | None = None, part: PartSpec | None = None,
           codec_from: str | os.PathLike | None = None, **given) -> CompressResult:
    """Relabel ``images`` with ``teacher`` over ``epochs`` of replayable crops into ``out``.

    ``teacher``: a module (or any callable) mapping ``[B, C, H, W]`` to logits ``[B, classes]``, or
    a spec :func:`slc.models.load_teacher` loads (with ``weights``, ``trust_pickle``,
    ``factory_kwargs``) once the images are found readable. ``opts``, and/or its fields as keywords
    (``codec``, ``temperature``, ``ratio``, ...): how the labels are written (fit on 16,384 labels by
    default). ``recipe`` (an :class:`slc.Recipe`) fixes crops, order and mixing, or give its fields
    as keywords: ``size=32, invert=True, scale=(0.08, 1), aspect=(3/4, 4/3), flip=0.5, mean=...,
    std=..., seed=0, mix="cutmix", ...``. The student replays the crops from the file with
    :class:`slc.SoftLabelDataset`. ``fit_on``: fit the codec on the first ``fit_labels`` labels (no
    extra teacher work) or on a random subset (extra work). ``part``, ``codec_from``: write one part of the
    file, or with a codec fitted once (:func:`slc.compression.compress`); under ``torchrun`` each rank runs
    the teacher on its own device over its share of the crops, and one file comes out.
    """
    write, crop = split_keywords(given)
    opts = CompressOptions.of(opts or CompressOptions(fit_labels=ENCODE_FIT_LABELS), **write, source="logits")
    recipe = crop_recipe(recipe, crop)
    log = log or (lambda line: None)
    preflight(os.fspath(out), force, resume)  # before the images are scanned and the teacher runs
    if epochs < 1:
        raise SlcInputError(f"expected epochs >= 1, got {epochs}")
    if fit_on not in FIT_ON:
        raise SlcInputError(f"expected fit_on in {list(FIT_ON)}, got {fit_on!r}")
    imgs = images if isinstance(images, ImageSet) else open_images(images, skip_bad=skip_bad, log=log)
    try:
        if isinstance(teacher, (str, os.PathLike)):  # images first: a bad folder fails before a large teacher loads
            teacher = load_teacher(os.fspath(teacher), weights=weights, trust_pickle=trust_pickle,
                                   factory_kwargs=factory_kwargs, log=log)
        src, extras = teacher_labels(teacher, imgs, recipe, epochs, batch_size, device, workers, amp, fit_on,
                                     on_crops, log)
        return compress(src, out, opts, force=force, resume=resume, extras=extras, log=log,
                        fit_progress=fit_progress, progress=progress, part=part, codec_from=codec_from)
    finally:
        if imgs is not images:
            imgs.close()


def teacher_labels(teacher, imgs: ImageSet, recipe: Recipe, epochs: int, batch_size: int, device: str, workers: int,
                   amp: bool, fit_on: str, on_crops, log) -> tuple[TeacherSource, Extras]:
    """The teacher over the crops as a label source, and the replay sections the student needs."""
    if recipe.mix != "none" and recipe.mix_group > len(imgs):
        raise SlcInputError(f"expected a mix group of at most {len(imgs)} images, got {recipe.mix_group}")
    dev = local_device(resolve_device(device))
    if hasattr(teacher, "to"):
        teacher = teacher.to(dev)
    if dev.type == "cuda":
        torch.backends.cudnn.benchmark = True
    crops = CropDataset(imgs, recipe, epochs)
    src = TeacherSource(teacher, crops, device=dev, batch_size=batch_size, workers=workers, amp=amp,
                        seekable=fit_on == "random", on_crops=on_crops)
    e, n, c = src.shape
    log(f"teacher: {c} outputs on {dev}; images: {n} from {imgs.source} ({imgs.channels} channel(s)); "
        f"{e} epochs = {e * n:,} crops of {recipe.size}px")
    info = ReplayInfo(recipe, n, imgs.digest(), os.path.basename(os.path.normpath(imgs.source)), imgs.classes)
    extras = Extras(before=replay_sections(info, imgs.fingerprints))
    if recipe.boxes == "stored":
        extras.after[BOXES] = (boxes_bytes(e, n), lambda: stored_boxes(recipe, e, imgs.sizes))
    extras.request = {"teacher": model_fingerprint(teacher), "images": info.digest, "recipe": recipe.to_json(),
                      "epochs": epochs, "device": dev.type, "amp": src.amp, "fit_on": fit_on}
    return src, extras

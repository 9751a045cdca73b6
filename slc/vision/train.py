"""``train-student``: train a student from images plus a ``.slc``, replaying the teacher's crops.

Loss: KL(y || softmax(S(x) / T)) * T^2 with the file's temperature (or an override), AdamW with a
cosine schedule, as in the paper. Each training epoch replays stored epoch ``epoch % E`` in its
stored (shuffled) order, so labels decode chunk by chunk in bounded memory.

At the end of an epoch, at most every ``checkpoint_every`` seconds, ``OUT_DIR/checkpoint.pt`` holds
the model, optimizer, schedule and RNG states (loadable with ``weights_only=True``); ``resume=True``
continues from it, bit-identical on CPU to an uninterrupted run. It is deleted once the final
outputs are written.

Under ``torchrun`` (``WORLD_SIZE`` > 1) the same call trains with DistributedDataParallel, no flag
needed: ``batch_size`` stays the global batch, each rank trains on its slice of it and the result
equals one process's up to float rounding (:mod:`slc.vision.ddp`). Every rank reads the same
``.slc`` and images; rank 0 alone writes, logs and evaluates, and ``out_dir`` (with its checkpoint)
must be a folder every rank sees.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import time
from dataclasses import asdict, dataclass
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, default_collate

from slc.atomic import atomic_output, check_output, fsync_folder, signals_deferred
from slc.vision.augment import BOX_DTYPE, Recipe, render
from slc.vision.dataset import BatchPoolSampler, DistributedEpochSampler, SoftLabelDataset, resize_view
from slc.vision.ddp import Ranks, lost_peer, settle
from slc.errors import SlcError, SlcInputError
from slc.vision.images import ImageSet, open_images
from slc.vision.students import build_student, list_students
from slc.models import load_teacher, resolve_device, teacher_forward
from slc.distributed import Group, group as launcher_group, local_device


@dataclass
class TrainConfig:
    student: str = "convnet"
    epochs: int | None = None  # default: the number of stored epochs
    batch_size: int = 64
    lr: float = 1e-3
    weight_decay: float = 0.01
    temperature: float | None = None  # default: the file's
    workers: int = 0
    checkpoint_every: float = 60.0  # seconds between resume checkpoints (written at epoch ends)
    device: str = "auto"
    seed: int = 0
    hard: bool = False  # the floor: cross-entropy on the labels' argmax instead of KL to the soft labels
    size: int | None = None  # student input size: the teacher's crops resized to it (default: as encoded)
    sampling: str = "cycle"  # "cycle": stored epoch e % E in order; "lpld": random stored batches (BatchPoolSampler)


def full_view(images: ImageSet, recipe: Recipe, i: int) -> torch.Tensor:
    """Image ``i`` whole (no crop, no flip) at the recipe's size and normalisation: for evaluation."""
    h, w = (int(v) for v in images.sizes[i])
    box = np.zeros(1, BOX_DTYPE)[0]
    box["h"], box["w"] = h, w
    return render(images.load(i), box, recipe)


def _batches(images: ImageSet, recipe: Recipe, batch: int, size: int | None):
    """Index lists, the teacher's full views, and the student's (the same, resized to ``size``)."""
    for a in range(0, len(images), batch):
        idx = list(range(a, min(len(images), a + batch)))
        x = torch.stack([full_view(images, recipe, i) for i in idx])
        yield idx, x, resize_view(x, size)


@torch.inference_mode()
def evaluate(model: torch.nn.Module, images: ImageSet, recipe: Recipe, device: torch.device, temperature: float,
             targets: np.ndarray | None = None, teacher=None, size: int | None = None, batch: int = 128) -> dict:
    """Top-1/top-5 accuracy on ``targets``; with ``teacher``: top-1 agreement, the teacher's top-1 in
    the student's top-5, and KL(teacher || student) at T. Whole images at the recipe's view; the
    student gets them resized to ``size`` as in training."""
    model.eval()
    hits1 = hits5 = agree = agree5 = classes = 0
    kl = 0.0
    for idx, xt, xs in _batches(images, recipe, batch, size):
        s = model(xs.to(device)).float()
        classes = s.shape[1]
        top5 = s.topk(min(5, classes), 1).indices
        if targets is not None:
            t = torch.as_tensor(targets[idx], device=device)
            hits1 += int((top5[:, 0] == t).sum())
            hits5 += int((top5 == t[:, None]).any(1).sum())
        if teacher is not None:
            z = teacher_forward(teacher, xt.to(device))
            if z.shape[1] != classes:
                raise SlcInputError(f"expected the teacher's output width to stay {classes} (the label width), got "
                                    f"{z.shape[1]} on a batch of {len(z)}")
            p = torch.log_softmax(z / temperature, 1)
            q = torch.log_softmax(s / temperature, 1)
            kl += float((p.exp() * (p - q)).sum())
            agree += int((z.argmax(1) == s.argmax(1)).sum())
            agree5 += int((top5 == z.argmax(1, keepdim=True)).any(1).sum())
    n = len(images)
    out: dict = {"images": n}
    top5_means_something = classes > 5  # with 5 classes or fewer every class is in the top 5
    if targets is not None:
        out.update(top1=hits1 / n, **({"top5": hits5 / n} if top5_means_something else {}))
    if teacher is not None:
        out.update(teacher_agreement=agree / n, kl_to_teacher=kl / n,
                   **({"teacher_top5": agree5 / n} if top5_means_something else {}))
    return out


def val_targets(val: ImageSet, label_classes: list[str] | None, width: int) -> np.ndarray:
    """Map a validation ImageFolder's classes onto label indices by name; fail on classes the labels lack."""
    if val.targets is None or val.classes is None:
        raise SlcInputError(f"expected an ImageFolder tree (class subfolders) for `val`, got {val.source}")
    if label_classes is None or len(label_classes) != width:
        raise SlcInputError("expected labels made on an ImageFolder whose classes are the label classes to use `val`, "
                            f"got {width} label classes (use `teacher` with held-out images instead)")
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


CHECKPOINT = "checkpoint.pt"
CHECKPOINT_FORMAT = "slc-train-checkpoint"
CHECKPOINT_VERSION = 1
RESUME_FREE = ("workers", "device", "checkpoint_every")  # may change between an interrupted run and its resume


def labels_identity(path: str | os.PathLike) -> str:
    """sha256 of an ``.slc``'s section table as the reader validated it: every section's place and CRC."""
    from slc.reader import open_slc

    with open_slc(path) as f:
        table = [(x.name, x.offset, x.length, x.crc) for x in f.layout.sections.values()]
        return hashlib.sha256(json.dumps([f.layout.file_length, table]).encode()).hexdigest()


def run_identity(cfg: TrainConfig, epochs: int, temperature: float, labels: str | os.PathLike,
                 images_digest: str) -> dict:
    """Everything that changes the trained weights: a resume must match it exactly."""
    config = {k: v for k, v in asdict(cfg).items() if k not in RESUME_FREE}
    config.update(epochs=epochs, temperature=temperature)  # resolved: a default and its explicit value match
    return {**config, "labels": labels_identity(labels), "images": images_digest}


def check_identity(then: dict, now: dict) -> None:
    """Refuse to resume a different run, naming the first field that differs."""
    for k in sorted(set(then) | set(now), key=lambda k: (k in ("labels", "images"), k)):
        a, b = then.get(k), now.get(k)
        if a != b:
            if k in ("labels", "images"):  # content digests
                a, b = f"sha256 {str(a)[:12]}...", f"sha256 {str(b)[:12]}..."
            else:
                a, b = repr(a), repr(b)
            raise SlcInputError(f"expected the same {k} as the interrupted run ({a} then, {b} now); rerun with the "
                                "original ones, or without `resume=True` and with `force=True` to start over")


def load_checkpoint(path: str) -> dict:
    """Read ``checkpoint.pt`` weights-only; identity and rows come back decoded from their JSON strings."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
        if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
            raise ValueError("not a train-student checkpoint")
        if state.get("version") != CHECKPOINT_VERSION:
            raise ValueError(f"checkpoint version {state.get('version')!r}, this slc reads {CHECKPOINT_VERSION}")
        state["identity"] = json.loads(state["identity"])
        state["rows"] = json.loads(state["rows"])
        state["epoch"] = int(state["epoch"])
    except Exception as e:  # noqa: BLE001  (any unreadable checkpoint is one input error)
        raise SlcInputError(f"expected a readable training checkpoint to resume, got {path} ({e}); pass `force=True` "
                            "without `resume=True` to start over") from None
    return state


def save_checkpoint(path: str, *, identity: dict, epoch: int, rows: list, seconds: float, model: torch.nn.Module,
                    opt: torch.optim.Optimizer, sched, device: torch.device) -> None:
    state = {"format": CHECKPOINT_FORMAT, "version": CHECKPOINT_VERSION, "identity": json.dumps(identity),
             "epoch": epoch, "rows": json.dumps(rows), "seconds": float(seconds), "model": model.state_dict(),
             "optimizer": opt.state_dict(), "scheduler": sched.state_dict(), "rng": torch.get_rng_state()}
    if device.type == "cuda":
        state["cuda_rng"] = torch.cuda.get_rng_state_all()
    with atomic_output(path, force=True) as f:
        torch.save(state, f)


@dataclass
class _Run:
    """Everything checked and built before the first step; what the loop and the outputs need."""

    ds: SoftLabelDataset
    model: torch.nn.Module
    device: torch.device
    temperature: float
    epochs: int
    identity: dict
    item: tuple  # one crop's shape: what an empty share of a batch is made of
    val_set: ImageSet | None = None
    val_targets: np.ndarray | None = None
    teacher: torch.nn.Module | None = None
    heldout: ImageSet | None = None


def _prepare(labels, images, cfg: TrainConfig, val, teacher, heldout, log: Callable[[str], None],
             evaluates: bool = True) -> _Run:
    """Open and check every input now: whatever would fail after an hour of training fails here.

    ``evaluates``: also open what the evaluation needs (under ``torchrun``, rank 0 alone evaluates)."""
    torch.manual_seed(cfg.seed)
    ds = SoftLabelDataset(labels, images, temperature=cfg.temperature)
    for bad in ds.skipped:
        log(f"left out {bad.name} ({bad.reason}): the labels were made without it")
    T = cfg.temperature or ds.file_temperature
    epochs = cfg.epochs or ds.epochs
    identity = run_identity(cfg, epochs, T, labels, ds.crops.images.digest())
    recipe = ds.info.recipe
    if cfg.size is not None:
        if not 8 <= cfg.size <= 4096:
            raise SlcInputError(f"expected a student input size in [8, 4096], got {cfg.size}")
        ds.crops.size = cfg.size  # the teacher's crops, resized
    if cfg.sampling not in ("cycle", "lpld"):
        raise SlcInputError(f"expected sampling 'cycle' or 'lpld', got {cfg.sampling!r}")
    device = local_device(resolve_device(cfg.device))  # under torchrun, cuda is this rank's GPU
    model = load_student(cfg.student, ds.classes, recipe.channels).to(device)
    model.eval()  # a shape probe must not touch batch-norm statistics
    x = ds[0][0]
    with torch.no_grad():
        width = model(x[None].to(device)).shape[-1]
    if width != ds.classes:
        raise SlcInputError(f"expected a student with {ds.classes} outputs (the label width), got {width}")
    run = _Run(ds, model, device, T, epochs, identity, tuple(x.shape))
    if not evaluates:
        return run
    if val:
        run.val_set = open_images(val)
        run.val_targets = val_targets(run.val_set, ds.info.classes, ds.classes)
    if teacher:
        if not heldout:
            raise SlcInputError("expected `heldout` images with `teacher` (images the student never saw)")
        run.teacher = load_teacher(teacher).to(device)
        run.heldout = open_images(heldout)
        with torch.inference_mode():
            width = teacher_forward(run.teacher, full_view(run.heldout, recipe, 0)[None].to(device)).shape[-1]
        if width != ds.classes:
            raise SlcInputError(f"expected a teacher with {ds.classes} outputs (the label width) to score the student "
                                f"against, got {width} from {teacher}")
    return run


def train_student(labels: str | os.PathLike, images: str | os.PathLike, out_dir: str | os.PathLike,
                  cfg: TrainConfig | None = None, *, val: str | None = None, teacher: str | None = None,
                  heldout: str | None = None, force: bool = False, resume: bool = False,
                  log: Callable[[str], None] | None = None,
                  progress: Callable[[int, float, int], None] | None = None) -> dict:
    """Train, write ``student.pt`` (state_dict), ``student.ts`` (TorchScript) and ``log.jsonl``, then evaluate.

    ``resume``: continue from ``out_dir/checkpoint.pt`` (written after every epoch) if there is one;
    the run's parameters, labels and images must be those of the interrupted run. The student is
    written before it is evaluated, so a failing evaluation never loses it; a run that fails before
    writing anything leaves no ``out_dir`` behind.

    Under ``torchrun`` every rank calls this with the same arguments and gets rank 0's result; only
    rank 0 writes, and calls ``log`` and ``progress``. A rank's failure raises on every rank.
    """
    cfg = cfg or TrainConfig()
    out_dir = os.fspath(out_dir)
    group = launcher_group()
    main = group is None or group.main
    if not main:
        log = progress = None
    created = main and not os.path.isdir(out_dir)
    if main:
        os.makedirs(out_dir, exist_ok=True)
    try:
        try:
            return _train(labels, images, out_dir, cfg, val, teacher, heldout, force, resume,
                          log or (lambda line: None), progress, group)
        except RuntimeError as e:
            if group is None or not lost_peer(e):
                raise
            raise SlcError(f"expected the other {group.world - 1} rank(s) to keep training, got a lost connection "
                           f"or a timeout on rank {group.rank}: another rank stopped (its own error says why) or "
                           "hangs") from None
    except BaseException:
        if created:
            with contextlib.suppress(OSError):
                os.rmdir(out_dir)  # only if still empty: a checkpoint or a student stays
        raise
    finally:
        if group is not None:
            group.close()


def _train(labels, images, out_dir: str, cfg: TrainConfig, val, teacher, heldout, force: bool, resume: bool,
           log: Callable[[str], None], progress, group: Group | None) -> dict:
    paths = {k: os.path.join(out_dir, f) for k, f in
             (("ckpt", "student.pt"), ("ts", "student.ts"), ("log", "log.jsonl"), ("result", "result.json"))}
    state_path = os.path.join(out_dir, CHECKPOINT)
    main = group is None or group.main
    state = run = error = None
    try:
        if resume and os.path.exists(state_path):
            state = load_checkpoint(state_path)
        elif resume:
            log(f"resume: nothing to resume at {state_path}; starting a new run")
        if main:
            if not resume and not force and os.path.exists(state_path):
                raise SlcInputError(f"expected no interrupted run in {out_dir}, got {state_path}; pass `resume=True` "
                                    "to continue it or `force=True` to start over")
            # resuming, the outputs there are the interrupted run's: overwritten without --force
            force = force or state is not None
            for p in (*paths.values(), state_path):
                check_output(p, force)
        run = _prepare(labels, images, cfg, val, teacher, heldout, log, evaluates=main)
        if state is not None:
            check_identity(state["identity"], run.identity)
    except Exception as e:  # noqa: BLE001  (every rank learns of it; this rank raises it as it is)
        error = e
    seen = settle(group, error, "preparing to train",
                  (None if state is None else state["epoch"], None if run is None else run.device.type))
    if len(set(seen)) > 1:
        raise SlcInputError(f"expected every rank to see the same {state_path} and device type (a folder all ranks "
                            f"share), got (checkpoint epoch, device) {dict(enumerate(seen))} by rank")
    ranks = Ranks(group, run.device)
    rows, seconds = _fit(run, cfg, state, state_path, log, progress, ranks)
    result = error = None
    if ranks.main:
        try:
            result = _finish(run, cfg, labels, paths, state_path, force or state is not None, rows, seconds)
        except Exception as e:  # noqa: BLE001  (the other ranks wait for it)
            error = e
    return ranks.share(result, error, "writing the outputs")


def _finish(run: _Run, cfg: TrainConfig, labels, paths: dict, state_path: str, force: bool, rows: list,
            seconds: float) -> dict:
    """Write the student, its TorchScript and the log, drop the checkpoint, evaluate, write the result."""
    model = run.model.eval().cpu()
    with atomic_output(paths["ckpt"], force) as f:
        torch.save(model.state_dict(), f)
    with atomic_output(paths["ts"], force) as f:
        import warnings

        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            torch.jit.save(torch.jit.script(model), f)
    with atomic_output(paths["log"], force) as f:
        f.write("".join(json.dumps(r) + "\n" for r in rows).encode())
    with contextlib.suppress(FileNotFoundError):
        os.unlink(state_path)  # the student is in place: nothing left to resume
    fsync_folder(state_path)
    result: dict = {"config": asdict(cfg), "temperature": run.temperature, "epochs": run.epochs,
                    "labels": os.fspath(labels), "train_seconds": seconds,
                    "final_loss": rows[-1]["loss"] if rows else None}
    model.to(run.device)
    recipe = run.ds.info.recipe
    try:
        if run.val_set is not None:
            result["val"] = evaluate(model, run.val_set, recipe, run.device, run.temperature,
                                     targets=run.val_targets, size=cfg.size)
        if run.teacher is not None and run.heldout is not None:
            result["heldout"] = evaluate(model, run.heldout, recipe, run.device, run.temperature,
                                         teacher=run.teacher, size=cfg.size)
    except KeyboardInterrupt as e:
        e.slc_hint = f"the trained student is in {paths['ckpt']} and {paths['ts']}; only its evaluation was cut short"
        raise
    with atomic_output(paths["result"], force) as f:
        f.write(json.dumps(result, indent=2).encode())
    return result


def _collate(items: list):
    """``None`` for an empty share of a batch (a batch with fewer items than ranks), else the default."""
    return default_collate(items) if items else None


def _next_share(batches, empty: tuple) -> tuple:
    """``(x, y, error)``: this rank's next share, or an empty one and what went wrong reading it."""
    try:
        got = next(batches)
    except Exception as e:  # noqa: BLE001  (Ranks.agree stops every rank with it)
        return (*empty, e)
    return (*(empty if got is None else got), None)


def _restore(run: _Run, opt, sched, state: dict, state_path: str) -> tuple[list[dict], int, float]:
    """Model, optimizer, schedule and RNG from a checkpoint; the epochs' rows, the next epoch, the seconds spent."""
    try:
        run.model.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        sched.load_state_dict(state["scheduler"])
    except (RuntimeError, ValueError, KeyError) as e:
        raise SlcInputError(f"expected a checkpoint of this student to resume, got {state_path} ({e}); pass "
                            "`force=True` without `resume=True` to start over") from None
    torch.set_rng_state(state["rng"])
    if run.device.type == "cuda" and "cuda_rng" in state:
        torch.cuda.set_rng_state_all(state["cuda_rng"])
    return state["rows"], state["epoch"] + 1, float(state.get("seconds", 0.0))


def _fit(run: _Run, cfg: TrainConfig, state: dict | None, state_path: str, log: Callable[[str], None],
         progress, ranks: Ranks) -> tuple[list[dict], float]:
    """The training loop, checkpointing for ``--resume``; returns the per-epoch rows and the seconds spent."""
    ds, model, device, T, epochs = run.ds, run.model, run.device, run.temperature, run.epochs
    steps = epochs * math.ceil((len(ds) // ds.epochs) / cfg.batch_size)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 0.5 * (1 + math.cos(math.pi * s / max(steps, 1))))
    pool = BatchPoolSampler(ds, cfg.batch_size, cfg.seed) if cfg.sampling == "lpld" else None
    # one process takes whole batches; rank r of a torchrun its slice of each
    sampler = DistributedEpochSampler(ds, None if pool else cfg.batch_size, rank=ranks.rank, world=ranks.world,
                                      batches=pool)
    empty = (torch.empty(0, *run.item), torch.empty(0, ds.classes))
    rows: list[dict] = []
    first, before, per_epoch = 0, 0.0, len(ds) // ds.epochs
    if state is not None:
        rows, first, before = _restore(run, opt, sched, state, state_path)
        log(f"resume: continuing after epoch {first} of {epochs} from {state_path}")
        if progress and rows:
            progress(first * per_epoch, rows[-1]["loss"], epochs * per_epoch)
    elif ranks.main and os.path.exists(state_path):  # a fresh run (--force): the old checkpoint is not this run's
        os.unlink(state_path)
    saved = first  # epochs finished and kept in the checkpoint
    net = ranks.wrap(model, log)  # after loading: DDP starts every rank from rank 0's weights
    t_start = last_save = time.perf_counter()
    try:
        for epoch in range(first, epochs):
            sampler.set_epoch(epoch)
            net.train()
            total, seen, t0 = 0.0, 0, time.perf_counter()
            shares = iter(DataLoader(ds, batch_sampler=sampler, num_workers=cfg.workers, collate_fn=_collate))
            for _ in range(len(sampler)):
                x, y, error = _next_share(shares, empty)
                n = ranks.agree(error, len(x), f"reading its share of a batch in epoch {epoch + 1}")  # global batch
                x, y = x.to(device), y.to(device)
                # the global batch's mean loss: its sum over this share, over n; DDP averages over ranks
                if cfg.hard:
                    loss = F.cross_entropy(net(x), y.argmax(-1), reduction="sum") / n
                else:
                    loss = F.kl_div(F.log_softmax(net(x) / T, -1), y, reduction="sum") / n * T * T
                opt.zero_grad(set_to_none=True)
                (loss * ranks.world).backward()
                opt.step()
                sched.step()
                batch_loss = ranks.total(loss.detach())
                total, seen = total + batch_loss * n, seen + n
                if progress:
                    progress(n, batch_loss, epochs * per_epoch)  # (images, loss, total)
            row = {"epoch": epoch, "loss": total / seen, "images_per_s": seen / (time.perf_counter() - t0),
                   "lr": sched.get_last_lr()[0]}
            rows.append(row)
            # short epochs would spend their time writing checkpoints: at most one per checkpoint_every seconds
            if ranks.decide(epoch + 1 < epochs and time.perf_counter() - last_save >= cfg.checkpoint_every):
                error = None
                try:
                    with signals_deferred():  # a SIGTERM right after the rename must not report "no checkpoint"
                        if ranks.main:
                            save_checkpoint(state_path, identity=run.identity, epoch=epoch, rows=rows,
                                            seconds=before + time.perf_counter() - t_start, model=model, opt=opt,
                                            sched=sched, device=device)
                        saved, last_save = epoch + 1, time.perf_counter()
                except Exception as e:  # noqa: BLE001  (the other ranks stop too)
                    error = e
                settle(ranks.group, error, f"saving the checkpoint after epoch {epoch + 1}")
            log(f"epoch {epoch + 1}/{epochs}: loss {row['loss']:.4f}, {row['images_per_s']:.0f} images/s, "
                f"lr {row['lr']:.3g}")
    except KeyboardInterrupt as e:
        e.slc_hint = (f"{saved} of {epochs} epochs are done and kept in {state_path}; rerun the same command with "
                      "`resume=True` to continue" if saved else "no epoch finished, so no checkpoint was written")
        raise
    finally:
        ranks.unwrap(model)
    return rows, before + time.perf_counter() - t_start

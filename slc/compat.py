"""Labels back to SRe2L-style trainers: their batch-file layout, and their batches without patching torch.

SRe2L's ``train_FKD.py`` (and LPLD's, which reads ``sampler_indices_epoch.json``) consume, per
stored batch, ``[coords [B, 4] f32, flip [B] bool, mix_index [B] i64, lam, bbox, logits [B, C]]``:

- :func:`write_sre2l` writes ``DIR/epoch_{e}/batch_{b}.tar`` and ``sampler_indices_epoch.json``
  from an ``.slc`` (``slc decode --layout sre2l DIR``), so their trainer runs as it is;
- :class:`SRe2LBatches` gives their training loop the same batches from the ``.slc`` directly,
  ``((images, target, flip, coords), mix_index, lam, bbox, soft_label)`` per batch, with the
  images unmixed (their loop mixes them with ``mix_aug``), no patched ``fetch.py``.

Coordinates are ``(y/H, x/W, h/H, w/W)`` of the stored pixel box as float32, which their replay
(Pillow rounding of ``coords * size``) turns back into the same box. Labels are
``T log p`` shifted so each row's best class is 0: the teacher's logits up to a constant per row,
which their ``softmax(z / T)`` removes.
"""
from __future__ import annotations

import json
import os
import shutil
from typing import Callable

import numpy as np
import torch

from slc.errors import SlcInputError
from slc.vision.dataset import SoftLabelDataset


def batch_size_of(ds: SoftLabelDataset, batch_size: int | None) -> int:
    """The batch size to cut epochs into: the mix group when labels are mixed (partners must share a batch)."""
    r = ds.info.recipe
    if r.mix != "none":
        if batch_size not in (None, r.mix_group):
            raise SlcInputError(f"expected --batch-size {r.mix_group} (the mix group: each crop is mixed within its "
                                f"batch), got {batch_size}")
        return r.mix_group
    if batch_size is None:
        raise SlcInputError("expected --batch-size for labels without mixing (their trainer's batch size)")
    if batch_size < 1:
        raise SlcInputError(f"expected a batch size >= 1, got {batch_size}")
    return batch_size


def batch_items(ds: SoftLabelDataset, epoch: int, positions: range) -> list:
    """``[coords, flip, mix_index, lam, bbox, logits]`` of the stored batch at ``positions`` of ``epoch``."""
    crops = ds.crops
    order, boxes = crops.epoch_plan(epoch)
    b = boxes[positions.start:positions.stop]
    hw = crops.images.sizes[order[positions.start:positions.stop]].astype(np.float64)
    coords = torch.FloatTensor(np.stack([b["y"] / hw[:, 0], b["x"] / hw[:, 1], b["h"] / hw[:, 0], b["w"] / hw[:, 1]], 1))
    flip = torch.from_numpy(b["flip"].astype(bool))
    mixes = [crops.mix(epoch, p) for p in positions]
    index = lam = bbox = None
    if mixes and mixes[0] is not None:
        index = torch.tensor([m.partner - positions.start for m in mixes], dtype=torch.int64)
        if index.min() < 0 or index.max() >= len(positions):
            raise SlcInputError(f"expected every crop mixed within its batch of {len(positions)}, got a partner "
                                f"outside it in epoch {epoch}")
        lam = mixes[0].lam
        if ds.info.recipe.mix == "cutmix":
            y0, x0, y1, x1 = mixes[0].box  # their [bbx1, bby1, bbx2, bby2]: bbx is the row axis
            bbox = [np.int64(y0), np.int64(x0), np.int64(y1), np.int64(x1)]
    first = epoch * crops.n
    logits = torch.from_numpy(np.stack([ds.label(first + p) for p in positions]))
    logits -= logits.max(1, keepdim=True).values  # the best class at 0: fp16 keeps the most precision
    return [coords, flip, index, lam, bbox, logits]


def write_sre2l(slc_path: str, images, out_dir: str, *, batch_size: int | None = None, dtype: str = "float16",
                force: bool = False, log: Callable[[str], None] = lambda line: None,
                progress: Callable[[int, int], None] | None = None) -> int:
    """Write ``out_dir/epoch_{e}/batch_{b}.tar`` (+ ``sampler_indices_epoch.json``); return the batch count.

    The folder appears whole or not at all (written beside it, then renamed).
    """
    if os.path.exists(out_dir) and not force:
        raise SlcInputError(f"expected a new folder, got an existing {out_dir} (use --force to replace it)")
    parent = os.path.dirname(os.path.abspath(out_dir))
    if not os.path.isdir(parent):
        raise SlcInputError(f"expected an existing parent folder, got {parent} (no such directory)")
    ds = SoftLabelDataset(slc_path, images, out="logits")
    B = batch_size_of(ds, batch_size)
    e_count, n = ds.epochs, ds.crops.n
    tmp = f"{os.path.abspath(out_dir)}.partial-{os.getpid()}"
    count, index = 0, {}
    try:
        for e in range(e_count):
            os.makedirs(os.path.join(tmp, f"epoch_{e}"))
            for b, lo in enumerate(range(0, n, B)):
                items = batch_items(ds, e, range(lo, min(n, lo + B)))
                items[5] = items[5].to(getattr(torch, dtype))
                torch.save(items, os.path.join(tmp, f"epoch_{e}", f"batch_{b}.tar"))
                count += 1
                if progress:
                    progress(len(items[1]), e_count * n)
            index[str(e)] = ds.crops.epoch_plan(e)[0].tolist()
        with open(os.path.join(tmp, "sampler_indices_epoch.json"), "w") as f:
            json.dump(index, f)
        if os.path.exists(out_dir):
            shutil.rmtree(out_dir)
        os.rename(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if not _is_their_sampler(index, n):
        log("order: not SRe2L's seed-42 sampler: SRe2L's train_FKD.py would pair crops with the wrong images; "
            "LPLD's trainer (sampler_indices_epoch.json) or slc.compat.SRe2LBatches read it right")
    return count


def _is_their_sampler(index: dict, n: int) -> bool:
    from slc.interop.batches import SAMPLER_SEED, sampler_orders

    orders = sampler_orders(n, len(index), SAMPLER_SEED)
    return all(o.tolist() == index[str(e)] for e, o in enumerate(orders))


class SRe2LBatches:
    """Their training loop's batches from an ``.slc``, without patching torch.

        batches = SRe2LBatches("labels.slc", "train/", num_workers=8)
        for epoch in range(300):
            for (images, target, flip, coords), mix_index, lam, bbox, soft_label in batches.loader(epoch):
                images, _, _, _ = mix_aug(images.cuda(), args, mix_index, lam, bbox)  # their code, unchanged
                ...  # KL(softmax(soft_label / T) || log_softmax(student(images) / T))

    ``epoch`` cycles through the stored epochs; ``soft_label`` are logits at their scale (``T log p``).
    """

    def __init__(self, slc_path: str | os.PathLike, images, *, batch_size: int | None = None, num_workers: int = 0):
        self.ds = SoftLabelDataset(slc_path, images, out="logits", target=True)
        self.batch_size = batch_size_of(self.ds, batch_size)
        self.num_workers = num_workers

    def __len__(self) -> int:
        return -(-self.ds.crops.n // self.batch_size)

    def loader(self, epoch: int) -> torch.utils.data.DataLoader:
        e, n, B = epoch % self.ds.epochs, self.ds.crops.n, self.batch_size
        batches = [[(e, lo, min(n, lo + B))] for lo in range(0, n, B)]
        return torch.utils.data.DataLoader(_Batches(self.ds), batch_sampler=batches, collate_fn=_first,
                                           num_workers=self.num_workers)


class _Batches(torch.utils.data.Dataset):
    """Item ``(epoch, lo, hi)``: one whole stored batch, built in the worker."""

    def __init__(self, ds: SoftLabelDataset):
        self.ds = ds

    def __getitem__(self, key):
        e, lo, hi = key
        coords, flip, index, lam, bbox, logits = batch_items(self.ds, e, range(lo, hi))
        crops, order = self.ds.crops, self.ds.crops.epoch_plan(e)[0]
        images = torch.stack([crops.crop(e, p) for p in range(lo, hi)])
        t = crops.images.targets
        target = torch.as_tensor(t[order[lo:hi]] if t is not None else np.full(hi - lo, -1), dtype=torch.int64)
        return (images, target, flip, coords), index, lam, bbox, logits


def _first(items: list):
    return items[0]

"""Torch datasets over replayed crops: what the teacher saw, and (crop, soft label) pairs for a student.

Item ``i`` of either dataset is label ``i`` of the file: epoch ``i // N``, position ``i % N``.
Positions are already in the epoch's shuffled order (the ``Recipe``), so reading an epoch in
position order gives a shuffled pass over the images *and* decodes each label chunk once.
Use :class:`EpochSampler` for that; any batch size works, not just the relabel one. Under
``torchrun``, :class:`DistributedEpochSampler` gives each rank its slice of every such batch.
"""
from __future__ import annotations

import os
from typing import Iterator

import numpy as np
import torch
from torch.utils.data import BatchSampler, Dataset, Sampler

from slc.vision.augment import BOX_DTYPE, Mix, Recipe, apply_mix, crop_boxes, epoch_order, mix_for, render
from slc.errors import SlcFormatError, SlcInputError, expect
from slc.vision.images import ImageSet, open_images
from slc.format.sections import BOXES, FINGERPRINTS, MIX, MIX_DTYPE, ORDER, ORDER_DTYPE, REPLAY
from slc.format.replay import ReplayInfo


def resize_view(x: torch.Tensor, size: int | None) -> torch.Tensor:
    """Crops ``[C, H, W]`` or ``[B, C, H, W]`` resized to ``size`` (bilinear, antialiased when shrinking).

    How a student with a smaller input sees the teacher's view; ``None`` leaves ``x`` as it is.
    """
    if size is None or size == x.shape[-1]:
        return x
    y = torch.nn.functional.interpolate(x if x.dim() == 4 else x[None], size=(size, size), mode="bilinear",
                                        align_corners=False, antialias=size < x.shape[-1])
    return y if x.dim() == 4 else y[0]


class CropDataset(Dataset):
    """The crop behind label ``i``, as a normalised float32 ``[channels, size, size]`` tensor.

    ``boxes``: a callable ``(epoch, positions) -> BOX_DTYPE array`` for stored boxes;
    by default boxes are recomputed from the recipe's seed. ``epoch_ids``: the recipe epoch of
    each stored epoch (a pruned file keeps some; default: stored epoch ``e`` is recipe epoch ``e``).
    """

    def __init__(self, images: ImageSet, recipe: Recipe, epochs: int, boxes=None, size: int | None = None,
                 epoch_ids: np.ndarray | None = None, stored: "_StoredCrops | None" = None):
        big = images.sizes.max(initial=0)
        if big > 65535:
            raise SlcInputError(f"expected images at most 65535 pixels on a side, got {big}")
        self.images, self.recipe, self.epochs = images, recipe, epochs
        self.epoch_ids = np.arange(epochs) if epoch_ids is None else np.asarray(epoch_ids)
        self.size = size  # resize the teacher's (mixed) crop to this for a student; None: as the teacher saw it
        self._stored = stored  # imported crops: order, boxes and mixes read from the file (recipe order "stored")
        self.n = len(images) if stored is None else stored.n  # positions per epoch
        self._boxes = boxes
        self._epoch: tuple[int, np.ndarray, np.ndarray] | None = None  # per-process cache of one epoch

    def __len__(self) -> int:
        return self.epochs * self.n

    def locate(self, i: int) -> tuple[int, int]:
        if not 0 <= i < len(self):
            raise IndexError(f"expected a label index in [0, {len(self)}), got {i}")
        return divmod(int(i), self.n)

    def epoch_plan(self, epoch: int) -> tuple[np.ndarray, np.ndarray]:
        """``(image index, crop box)`` for every position of ``epoch``."""
        if self._epoch is None or self._epoch[0] != epoch:
            r = int(self.epoch_ids[epoch])
            order = self._stored.order(epoch) if self._stored is not None else epoch_order(self.recipe, r, self.n)
            if self._boxes is not None:
                boxes = self._boxes(epoch)
                expect(len(boxes) == self.n, f"{self.n} stored crop boxes for epoch {epoch}", len(boxes))
                self._check_boxes(boxes, order)
            else:
                boxes = crop_boxes(self.recipe, r, order, self.images.sizes[order])
            self._epoch = (epoch, order, boxes)
        return self._epoch[1], self._epoch[2]

    def _check_boxes(self, boxes: np.ndarray, order: np.ndarray) -> None:
        hw = self.images.sizes[order]
        ok = ((boxes["h"] > 0) & (boxes["w"] > 0) & (boxes["y"].astype(np.int64) + boxes["h"] <= hw[:, 0])
              & (boxes["x"].astype(np.int64) + boxes["w"] <= hw[:, 1]) & (boxes["flip"] <= 1) & (boxes["pad"] == 0))
        if not ok.all():
            p = int(np.argmin(ok))
            raise SlcFormatError(f"expected stored crop boxes inside their images, got {boxes[p]} for image "
                                 f"{self.images.names[order[p]]} of size {tuple(hw[p])}")

    def crop(self, epoch: int, position: int) -> torch.Tensor:
        order, boxes = self.epoch_plan(epoch)
        return render(self.images.load(int(order[position])), boxes[position], self.recipe)

    def __getitem__(self, i: int) -> torch.Tensor:
        epoch, position = self.locate(i)
        x = self.crop(epoch, position)
        mix = self.mix(epoch, position)
        if mix is not None:
            x = apply_mix(x, self.crop(epoch, mix.partner), mix, self.recipe.mix)
        return resize_view(x, self.size)

    def mix(self, epoch: int, position: int) -> Mix | None:
        """How the crop at ``position`` is mixed (stored, or from the recipe); ``None`` without mixing."""
        if self.recipe.mix == "none":
            return None
        if self._stored is not None:
            return self._stored.mix(epoch, position)
        return mix_for(self.recipe, int(self.epoch_ids[epoch]), position, self.n)

    def image_index(self, i: int) -> int:
        """Which image label ``i`` was made from (its own crop, before any mixing)."""
        epoch, position = self.locate(i)
        return int(self.epoch_plan(epoch)[0][position])


class SoftLabelDataset(Dataset):
    """``(crop, label)`` for every label of an ``.slc`` made by ``slc encode``: exactly the teacher's crops.

    ``labels`` are float32 ``[C]`` probabilities at the file's temperature (or ``temperature``),
    or logits with ``out="logits"``. ``target`` adds the image's ground-truth class (ImageFolder
    trees, npz ``labels``) as a third item, -1 when unknown. Images that were unreadable when the
    labels were made (``slc encode --skip-bad``) are left out again: :attr:`skipped` lists them
    (``skip_bad`` is accepted for compatibility and changes nothing).

        ds = SoftLabelDataset("labels.slc", "images/")
        for epoch in range(100):
            loader = DataLoader(ds, batch_size=64, sampler=EpochSampler(ds, epoch), num_workers=4)
    """

    def __init__(self, slc_path: str | os.PathLike, images: str | os.PathLike | ImageSet, *, out: str = "probs",
                 temperature: float | None = None, target: bool = False, skip_bad: bool = False):
        from slc.reader import open_slc

        self.path = os.fspath(slc_path)
        self.out, self.temperature, self.target = out, temperature, target
        with open_slc(self.path) as f:
            info = read_replay(f)
            self.shape = f.shape
            fps = f.section(FINGERPRINTS, info.images * 16)
            lengths = {name: sec.length for name, sec in f.layout.sections.items()}
            self.file_temperature = f.temperature
            epoch_ids = f.epoch_ids
        self.info = info
        # unreadable images are left out when the labels were made without them (`slc encode --skip-bad`):
        # the stored fingerprints say which images the file holds, so no flag has to be repeated here
        imgs = images if isinstance(images, ImageSet) else open_images(images, skip_bad=True)
        check_images(imgs, info, fps)
        self.skipped = list(imgs.skipped)
        e, n, c = self.shape
        imported = info.recipe.order == "stored"
        if not imported:
            expect(n == info.images, f"{info.images} labels per epoch (one per image)", n)
        boxes = None
        if info.recipe.boxes == "stored":
            boxes = _EpochRecords.of(self.path, lengths, BOXES, BOX_DTYPE, e, n, "boxes are")
        stored = _StoredCrops.of(self.path, info, self.shape, lengths) if imported else None
        self.crops = CropDataset(imgs, info.recipe, e, boxes, epoch_ids=epoch_ids, stored=stored)
        self._file = None  # opened lazily in each worker process
        self._pid = -1
        self._cache: dict[int, np.ndarray] = {}

    @property
    def epochs(self) -> int:
        return self.shape[0]

    @property
    def classes(self) -> int:
        return self.shape[2]

    def __len__(self) -> int:
        return len(self.crops)

    def _slc(self):
        if self._pid != os.getpid():
            from slc.reader import open_slc

            self._file, self._pid, self._cache = open_slc(self.path), os.getpid(), {}
        return self._file

    def label(self, i: int) -> np.ndarray:
        """The decoded label of item ``i``; decodes (and caches) its whole chunk."""
        epoch, position = self.crops.locate(i)
        f = self._slc()
        key, row, _, _ = next(f.tiling.locate(epoch, position, position + 1))
        if key not in self._cache:
            if len(self._cache) >= 2:
                self._cache.pop(next(iter(self._cache)))
            self._cache[key] = f.decode_chunk(f.index[key], self.out, self.temperature)
        return self._cache[key][row]

    def __getitem__(self, i: int):
        x = self.crops[i]
        y = torch.from_numpy(np.array(self.label(i), np.float32))
        if not self.target:
            return x, y
        t = self.crops.images.targets
        return x, y, int(t[self.crops.image_index(i)]) if t is not None else -1

    def __getstate__(self) -> dict:
        d = dict(self.__dict__)
        d["_file"], d["_pid"], d["_cache"] = None, -1, {}
        return d


class EpochSampler(Sampler[int]):
    """The item indices of stored epoch ``epoch % E``, in position order (already shuffled).

    Training for more epochs than were relabelled cycles through the stored ones.
    """

    def __init__(self, dataset: SoftLabelDataset | CropDataset, epoch: int = 0):
        self.epochs = dataset.epochs
        self.n = len(dataset) // self.epochs
        self.epoch = epoch

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self) -> Iterator[int]:
        e = self.epoch % self.epochs
        return iter(range(e * self.n, (e + 1) * self.n))

    def __len__(self) -> int:
        return self.n


class BatchPoolSampler(Sampler[list[int]]):
    """LPLD's sampling, as a ``batch_sampler``: each epoch draws stored batches at random from every stored epoch.

    The pool is every run of ``batch_size`` positions of every stored epoch; an epoch takes as
    many batches as one stored epoch has, without replacement, seeded by ``(seed, epoch)`` (so a
    resumed run draws the same). With a pruned file this mixes the kept epochs within each
    training epoch instead of replaying them in turn.
    """

    def __init__(self, dataset: SoftLabelDataset | CropDataset, batch_size: int, seed: int = 0, epoch: int = 0):
        self.epochs, self.batch_size, self.seed, self.epoch = dataset.epochs, batch_size, seed, epoch
        self.n = len(dataset) // self.epochs
        self.per = -(-self.n // batch_size)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self) -> Iterator[list[int]]:
        rng = np.random.default_rng([self.seed, self.epoch])
        for b in rng.permutation(self.epochs * self.per)[:self.per]:
            e, j = divmod(int(b), self.per)
            lo = e * self.n + j * self.batch_size
            yield list(range(lo, min(lo + self.batch_size, (e + 1) * self.n)))

    def __len__(self) -> int:
        return self.per


class DistributedEpochSampler(Sampler[list[int]]):
    """Under ``torchrun``: this rank's share of every global batch, in stored order, as a ``batch_sampler``.

    The global batches are those one process trains on: stored epoch ``epoch % E`` cut into runs
    of ``batch_size`` positions (as :class:`EpochSampler` with ``batch_size``), or those of
    ``batches`` (another batch sampler, e.g. :class:`BatchPoolSampler`; ``set_epoch`` reaches it).
    Rank ``r`` of ``world`` takes the contiguous slice ``[len*r//world, len*(r+1)//world)`` of each,
    so the ranks together see exactly the single-process batches, and each rank still reads every
    epoch front to back: a label chunk is decoded once per rank, never once per batch. Shares
    differ by at most one item; a batch with fewer items than ranks (an epoch's last) leaves some
    ranks an empty list, which the default ``collate_fn`` refuses: a DDP rank must still step with
    the others, so give the ``DataLoader`` a ``collate_fn`` that turns ``[]`` into empty tensors, or a
    ``batch_size`` whose remainder is 0 or at least ``world``. ``rank``/``world`` default to the
    launcher's ``RANK``/``WORLD_SIZE`` (0 and 1 without one). Each rank normalises its loss by the
    global batch's length (the sum of all shares), not its own.

        sampler = DistributedEpochSampler(ds, batch_size=256)  # 256 across all ranks
        for epoch in range(100):
            sampler.set_epoch(epoch)
            for x, y in DataLoader(ds, batch_sampler=sampler, num_workers=4): ...
    """

    def __init__(self, dataset: SoftLabelDataset | CropDataset, batch_size: int | None = None, *,
                 rank: int | None = None, world: int | None = None, epoch: int = 0,
                 batches: Sampler[list[int]] | None = None):
        from slc.distributed import env_world

        if (batch_size is None) == (batches is None):
            raise SlcInputError(f"expected one of batch_size and batches, got batch_size={batch_size!r} and "
                                f"{'batches' if batches is not None else 'no batches'}")
        if batch_size is not None and batch_size < 1:
            raise SlcInputError(f"expected a batch size of at least 1, got {batch_size}")
        here = env_world() or (0, 1, 0)
        self.rank = here[0] if rank is None else rank
        self.world = here[1] if world is None else world
        if not 0 <= self.rank < self.world:
            raise SlcInputError(f"expected 0 <= rank < world, got rank {self.rank} of {self.world}")
        if batches is None:  # one process's batches: EpochSampler's order, cut into runs of batch_size
            batches = BatchSampler(EpochSampler(dataset, epoch), batch_size, drop_last=False)
        self.batches = batches
        self.set_epoch(epoch)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch
        inner = getattr(self.batches, "sampler", self.batches)  # a BatchSampler's EpochSampler
        if hasattr(inner, "set_epoch"):
            inner.set_epoch(epoch)

    def __iter__(self) -> Iterator[list[int]]:
        from slc.distributed import split

        for batch in self.batches:
            lo, hi = split(len(batch), self.world, self.rank)
            yield list(batch[lo:hi])

    def __len__(self) -> int:
        return len(self.batches)


class _EpochRecords:
    """One epoch of a per-label section (``crops.boxes``, ``crops.order``, ``crops.mix``); picklable: reopens per
    process."""

    def __init__(self, path: str, n: int, name: str, dtype: np.dtype):
        self.path, self.n, self.name, self.dtype = path, n, name, dtype

    @classmethod
    def of(cls, path: str, lengths: dict[str, int], name: str, dtype: np.dtype, e: int, n: int,
           what: str) -> "_EpochRecords":
        """The section's reader, once its presence and length are checked (``what`` the recipe says is stored)."""
        expect(name in lengths, f"a {name!r} section (the recipe says {what} stored)", "none")
        expect(lengths[name] == e * n * dtype.itemsize, f"{e * n * dtype.itemsize} bytes of {name}", lengths[name])
        return cls(path, n, name, dtype)

    def __call__(self, epoch: int) -> np.ndarray:
        from slc.reader import open_slc

        size = self.dtype.itemsize
        with open_slc(self.path) as f:
            data = f.section_range(self.name, epoch * self.n * size, self.n * size)
        return np.frombuffer(data, self.dtype)


class _StoredCrops:
    """Imported crops (recipe order ``"stored"``): each label's image (``crops.order``) and mix (``crops.mix``)."""

    def __init__(self, n: int, images: int, size: int, order: _EpochRecords, mixes: _EpochRecords | None):
        self.n, self.images, self.size, self._order, self._mixes = n, images, size, order, mixes
        self._mix: tuple[int, np.ndarray] | None = None

    @classmethod
    def of(cls, path: str, info: ReplayInfo, shape: tuple[int, int, int], lengths: dict[str, int]) -> "_StoredCrops":
        e, n, _ = shape
        order = _EpochRecords.of(path, lengths, ORDER, ORDER_DTYPE, e, n, "crops are")
        mixes = (_EpochRecords.of(path, lengths, MIX, MIX_DTYPE, e, n, "crops are")
                 if info.recipe.mix != "none" else None)
        return cls(n, info.images, info.recipe.size, order, mixes)

    def order(self, epoch: int) -> np.ndarray:
        order = self._order(epoch).astype(np.int64)
        if len(order) and order.max() >= self.images:
            p = int(np.argmax(order))
            raise SlcFormatError(f"expected stored image indices below {self.images}, got {order[p]} at position {p} "
                                 f"of epoch {epoch}")
        return order

    def mix(self, epoch: int, position: int) -> Mix:
        if self._mix is None or self._mix[0] != epoch:
            self._mix = (epoch, self._mixes(epoch))
        r = self._mix[1][position]
        partner = int(r["partner"])
        inside = r["y0"] <= r["y1"] <= self.size and r["x0"] <= r["x1"] <= self.size
        if partner >= self.n or not inside or not np.isfinite(r["lam"]):
            raise SlcFormatError(f"expected a stored mix inside the epoch and the crop, got {r} at position {position} "
                                 f"of epoch {epoch}")
        return Mix(partner, float(r["lam"]), (int(r["y0"]), int(r["x0"]), int(r["y1"]), int(r["x1"])))

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_mix": None}


def read_replay(f) -> ReplayInfo:
    """The replay information of an open ``SlcFile``; a clear error if it has none."""
    data = f.section(REPLAY, 1 << 16)
    if data is None:
        raise SlcInputError(f"expected an .slc made by `slc encode` (with crop replay information), got {f.path} "
                            "(labels only, e.g. from `slc compress`)")
    return ReplayInfo.from_bytes(data)


def check_images(images: ImageSet, info: ReplayInfo, fingerprints: bytes | None) -> None:
    """Fail before training if ``images`` are not the ones the labels were made from.

    Images left out as unreadable are fine when the readable ones are exactly the file's; otherwise
    the first unreadable one is named (it is the likeliest cause).
    """
    try:
        _check_images(images, info, fingerprints)
    except SlcInputError:
        if images.skipped:
            bad = images.skipped[0]
            more = f"; {len(images.skipped) - 1} more unreadable" if len(images.skipped) > 1 else ""
            raise SlcInputError(f"expected a readable image (the labels were made with it), got {bad.name} "
                                f"({bad.reason}){more} in {images.source}") from None
        raise


def _check_images(images: ImageSet, info: ReplayInfo, fingerprints: bytes | None) -> None:
    if fingerprints is not None:
        import hashlib
        import struct

        expect(len(fingerprints) == 16 * info.images, f"{16 * info.images} bytes of image fingerprints",
               len(fingerprints))
        got = hashlib.sha256(struct.pack("<Q", info.images) + fingerprints).hexdigest()
        expect(got == info.digest, f"the replay digest {info.digest[:16]}... to match the fingerprints", got[:16])
    if len(images) != info.images:
        raise SlcInputError(f"expected {info.images} images (as encoded), got {len(images)} in {images.source}")
    if images.digest() == info.digest:
        return
    if fingerprints is not None and len(fingerprints) == 16 * info.images:
        stored = np.frombuffer(fingerprints, np.uint8).reshape(-1, 16)
        bad = np.flatnonzero((stored != images.fingerprints).any(1))
        if len(bad):
            raise SlcInputError(f"expected the images the labels were made from, got a different image "
                                f"{images.names[bad[0]]} (position {bad[0]} of {len(images)}; {len(bad)} differ)")
    raise SlcInputError(f"expected images with digest {info.digest[:16]}..., got {images.digest()[:16]}... "
                        f"in {images.source}")

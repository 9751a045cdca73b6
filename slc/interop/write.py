"""``slc import``: labels another tool wrote, and the crops behind them, into one ``.slc``.

The labels go through :func:`slc.compression.compress` like any other input (every codec,
``--ratio``, ``--resume``); the crops, when the images are given, become the replay sections
``replay``, ``images.fp``, ``crops.order``, ``crops.boxes`` and ``crops.mix`` (recipe order
``"stored"``), so :class:`slc.SoftLabelDataset` and ``slc train-student`` replay each label's crop
as the original trainer would. What was found is kept in the header (``user.import``), which
``slc inspect`` shows.
"""
from __future__ import annotations

import os
from typing import Callable

import numpy as np

from slc.compression import CompressOptions, CompressResult, compress
from slc.errors import SlcInputError
from slc.extras import Extras
from slc.format.replay import Recipe, ReplayInfo
from slc.format.sections import BOXES, BOX_DTYPE, MIX, MIX_DTYPE, ORDER, ORDER_DTYPE
from slc.interop.base import Imported
from slc.interop.crops import CropStream, epoch_records, order_records
from slc.vision.replay import replay_sections

FORMATS = ("sre2l", "cda", "lpld", "lpqld", "hald", "fkd", "vllm", "distillkit")


def open_import(fmt: str, src: str, *, log: Callable[[str], None] = lambda line: None, **options) -> Imported:
    """Open ``src`` as ``fmt`` (``"auto"``: by its layout). ``options``: the format's own (``seed``, ``classes``,
    ``temperature``, ``vocab``, ``k``...); an option a format does not take is an error."""
    from slc.interop import detect

    fmt = detect(src) if fmt == "auto" else fmt
    options = {k: v for k, v in options.items() if v is not None}
    if fmt != "fkd":
        options.pop("progress", None)  # only FKD makes a pass of its own before the labels stream
    if fmt in ("sre2l", "cda", "lpld", "lpqld", "hald"):
        from slc.interop.batches import open_batches

        return open_batches(src, fmt, log=log, **_only(options, fmt, "seed", "classes", "temperature", "per_epoch"))
    if fmt == "fkd":
        from slc.interop.fkd import open_fkd

        return open_fkd(src, log=log, **_only(options, fmt, "classes", "progress"))
    if fmt == "vllm":
        from slc.interop.vllm import open_vllm

        return open_vllm(src, log=log, **_only(options, fmt, "vocab", "k"))
    if fmt == "distillkit":
        from slc.interop.distillkit import open_distillkit

        return open_distillkit(src, log=log, **_only(options, fmt, "config"))
    raise SlcInputError(f"expected a format of {', '.join(FORMATS)}, got {fmt!r}")


def _only(options: dict, fmt: str, *names: str) -> dict:
    extra = sorted(set(options) - set(names))
    if extra:
        raise SlcInputError(f"expected options of {fmt} ({', '.join(names) or 'none'}), got {', '.join(extra)}")
    return options


def import_file(imported: Imported, out: str | os.PathLike, opts: CompressOptions | None = None, *,
                images=None, size: int = 224, mean: tuple[float, ...] | None = None,
                std: tuple[float, ...] | None = None, force: bool = False, resume: bool = False,
                log: Callable[[str], None] = lambda line: None, **run) -> CompressResult:
    """Write ``imported`` to ``out`` with ``opts``; ``images`` (a folder or :class:`~slc.vision.images.ImageSet`)
    adds crop replay. ``size``, ``mean``, ``std``: the crop side and normalisation their trainer uses."""
    opts = opts or CompressOptions()
    T = imported.temperature if opts.temperature is None else opts.temperature
    if opts.temperature is None:
        log(f"temperature: T={T:g}, what {imported.format}'s reference trainer uses (-T to change)")
    elif T != imported.temperature:
        log(f"temperature: re-tempering {imported.format}'s T={imported.temperature:g} labels to T={T:g}: the labels "
            "(and what a student learns from them) change")
    user = {**opts.user, "import": {k: v for k, v in imported.summary.items() if k != "names"}}
    opts = CompressOptions.of(opts, source=imported.source, temperature=T, user=user, **token_defaults(imported, opts, log))
    extras = Extras(request={"import": imported.identity})
    if imported.crops is not None and images is not None:
        extras = crop_extras(imported.crops, images, size, mean, std, log)
        extras.request["import"] = imported.identity
    elif imported.crops is not None:
        log("crops: not kept (give --images, the folder they were made from, to replay them in train-student)")
    return compress(imported.labels, out, opts, extras=extras, sequences=imported.sequences,
                    token_ids=imported.token_ids, force=force, resume=resume, log=log, **run)


def token_defaults(imported: Imported, opts: CompressOptions, log: Callable[[str], None]) -> dict:
    """Sparse token labels take ``topk-vq`` (``auto`` chooses among dense codecs), at most the k words stored."""
    from slc.sources import SparseSource

    if not isinstance(imported.labels, SparseSource):
        return {}
    out = {}
    if opts.codec == "auto":
        out["codec"] = "topk-vq"
        log("codec: topk-vq, the codec of sparse token labels")
    k = imported.labels.k
    if opts.ratio is None and opts.budget is None and "k" not in opts.options:
        out["options"] = {**opts.options, "k": min(64, k)}
        log(f"codec: k={min(64, k)} words per token (the file stores {k}; --ratio or --param k= to change)")
    return out


def crop_extras(stream: CropStream, images, size: int, mean, std, log: Callable[[str], None]) -> Extras:
    """The replay sections of imported crops over ``images``."""
    from slc.vision.images import ImageSet, open_images

    imgs = images if isinstance(images, ImageSet) else open_images(images, log=log)
    stream.check_images(imgs)
    recipe = Recipe.for_channels(3, mean, std, size=size, order="stored", boxes="stored", mix=stream.mix,
                                 mix_group=stream.batch if stream.mix != "none" else 0)
    info = ReplayInfo(recipe, len(imgs), imgs.digest(), os.path.basename(os.path.normpath(imgs.source)), imgs.classes)
    e, n = stream.epochs, stream.n
    spill = _MixSpill(stream, imgs.sizes, size)
    after = {ORDER: (e * n * ORDER_DTYPE.itemsize, lambda: (order_records(stream, i, len(imgs)) for i in range(e))),
             BOXES: (e * n * BOX_DTYPE.itemsize, spill.boxes)}
    if stream.mix != "none":
        after[MIX] = (e * n * MIX_DTYPE.itemsize, spill.mixes)
    log(f"crops: {e} epochs x {n} replayed from {imgs.source} ({len(imgs)} images, {size} px, mix {stream.mix})")
    return Extras(replay_sections(info, imgs.fingerprints), {}, after,
                  {"images": info.digest, "recipe": recipe.to_json()})


class _MixSpill:
    """One pass over the files for ``crops.boxes`` and ``crops.mix``: the mixes wait in a temporary file
    while the boxes are written (the sections follow each other), then are read back in order."""

    def __init__(self, stream: CropStream, sizes: np.ndarray, size: int):
        self.stream, self.sizes, self.size = stream, sizes, size
        self.file = None
        self.done = 0  # epochs whose mixes wait in the file

    def boxes(self):
        import tempfile

        self.file, self.done = tempfile.TemporaryFile(), 0
        for e in range(self.stream.epochs):
            boxes, mixes = epoch_records(self.stream, e, self.sizes, self.size)
            self.file.write(mixes)
            self.done = e + 1
            yield boxes

    def mixes(self):
        if self.file is None or self.done < self.stream.epochs:  # the boxes were not streamed whole: read again
            for e in range(self.stream.epochs):
                yield epoch_records(self.stream, e, self.sizes, self.size)[1]
            return
        self.file.seek(0)
        try:
            while True:
                data = self.file.read(1 << 24)
                if not data:
                    break
                yield data
        finally:
            self.file.close()
            self.file = None

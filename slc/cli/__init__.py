"""The ``slc`` command line: a thin click layer over the library. The only module importing click."""
from __future__ import annotations

import functools
import json
import os
import signal
import sys

import click

from slc import __version__
from slc.errors import SlcError
from slc.codecs.presets import PRESETS as CODEC_PRESETS


def handle_errors(fn):
    """Library errors and OS errors become one ``Error: ...`` line and a non-zero exit."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except (SlcError, IndexError, ValueError) as e:
            raise click.ClickException(one_line(str(e))) from None
        except OSError as e:
            if isinstance(e, BrokenPipeError):  # `slc decode ... | head` is fine
                os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
                sys.exit(0)
            where = f": {e.filename}" if e.filename else ""
            raise click.ClickException(one_line(f"{e.strerror or e}{where}")) from None
        except KeyboardInterrupt as e:
            hint = getattr(e, "slc_hint", "no output was written")
            click.echo(f"Error: interrupted; {hint}", err=True)
            sys.exit(130)

    return wrapper


def one_line(message: str) -> str:
    """Errors are one line (libraries such as HDF5 put newlines in theirs)."""
    return " ".join(message.split())


def progress_bar(total: int, desc: str, unit: str = "label"):
    from tqdm import tqdm

    # counts stay integers (unit_scale would print "85.0/500"); throughput and ETA come with the bar
    return tqdm(total=total, desc=desc, unit=unit, file=sys.stderr, dynamic_ncols=True, disable=None, smoothing=0.1)


def human_bytes(n: int) -> str:
    """``812 B``, ``35.7 KB``, ``1.6 MB``: sizes a small file and a large one both show."""
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("KB", 1e3)):
        if n >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{n} B"


def console(wide: bool = False):
    from rich.console import Console

    # rich falls back to 80 columns when piped, which wraps the wider tables cell by cell
    return Console(stderr=False, highlight=False, width=None if sys.stdout.isatty() else 160 if wide else 120)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="slc")
def cli():
    """slc: compress teacher soft labels for dataset distillation and offline KD."""


# --------------------------------------------------------------------------- compress / encode
def codec_options(fn):
    """The options that choose and size the codec, shared by ``compress`` and ``encode``."""
    opts = [
        click.option("--codec", default="auto", show_default=True, type=click.Choice(list(CODEC_PRESETS)),
                     help="auto: fit vqae and size top-k to the same bytes, keep the lower held-out KL. "
                          "vqae: log-domain VQAE fitted with KL. vqae-paper: the paper's recipe exactly. "
                          "Baselines: topk (FKD), topk-mr / topk-mrs (LPQLD), pca, quant, vq-noae; fp16, fp32. "
                          "Token-level LM labels: topk-vq (--param k=64 m=8 codes=256 values=vqae|bf16 "
                          "tail=capped|prior|uniform|mr|mrs prior_weight=0.99; capped is the default)."),
        click.option("-T", "--temperature", type=float,
                     help="Temperature the student will train at; stored in the file, fidelity is measured at it "
                          "[default: an input .slc's own, else 1]."),
        click.option("--ratio", type=float, help="Target compression ratio against dense fp16 labels [default: 40]."),
        click.option("--budget", help="Target file size, e.g. 120MB or 1.5GiB."),
        click.option("--k", "k", type=int, help="Codebook size (VQAE) or kept classes (top-k)."),
        click.option("--dc", type=int, help="Code dimension d_c (VQAE)."),
        click.option("--dh", type=int, help="Latent dimension d_h (VQAE); d_c must divide it."),
        click.option("--param", "params", multiple=True, metavar="KEY=VALUE",
                     help="Fix a baseline codec parameter, e.g. --param bits=3 (quant), --param components=32 "
                          "(pca), --param domain=prob. Repeatable."),
        click.option("--chunk-size", type=int, help="Labels per chunk (also the unit of --resume) [default: 4096, "
                     "fewer for vocabularies over 32k]."),
        click.option("--zstd/--no-zstd", default=None, help="zstd-code each chunk (kept only where it saves bytes) "
                     "[default: on for topk-vq, off otherwise]."),
        click.option("--tensor-dtype", type=click.Choice(["fp16", "fp32"]),
                     help="Codebook/decoder precision [default: fp16; fp32 for vqae-paper]."),
        click.option("--fit-labels", type=int, help="Labels sampled to fit the codec [default: 65,536 for compress; "
                     "16,384 for encode, which holds them in memory while the teacher streams on]."),
        click.option("--fit-steps", type=int, help="Optimizer steps when fitting a VQAE."),
        click.option("--seed", type=int, default=0, show_default=True,
                     help="Seeds the fit sample (and, for encode, every crop, order and mix)."),
        click.option("--force", is_flag=True, help="Overwrite an existing output (or discard an interrupted run)."),
        click.option("--resume", is_flag=True, help="Continue an interrupted run from its last finished chunk."),
        click.option("-q", "--quiet", is_flag=True, help="No plan, no progress bars."),
    ]
    for opt in reversed(opts):
        fn = opt(fn)
    return fn


def parse_params(params: tuple[str, ...]) -> dict:
    """``("bits=3", "domain=prob")`` -> ``{"bits": 3, "domain": "prob"}``."""
    from slc.errors import SlcInputError

    out: dict = {}
    for item in params:
        key, eq, value = item.partition("=")
        if not eq or not key:
            raise SlcInputError(f"expected --param KEY=VALUE, got {item!r}")
        try:
            out[key] = int(value)
        except ValueError:
            try:
                out[key] = float(value)
            except ValueError:
                out[key] = value
    return out


def codec_kwargs(codec, temperature, ratio, budget, k, dc, dh, params, chunk_size, zstd, tensor_dtype, fit_labels,
                 fit_steps, force, resume) -> dict:
    from slc.codecs.planner import parse_size
    from slc.codecs.vqae import FitConfig

    fit_config = None
    if fit_steps is not None:
        fit_config = FitConfig.paper(steps=fit_steps) if codec == "vqae-paper" else FitConfig(steps=fit_steps)
    kw = dict(codec=codec, temperature=temperature, ratio=ratio, budget=parse_size(budget) if budget else None,
              k=k, dc=dc, dh=dh, chunk_size=chunk_size, zstd=zstd,
              tensor_dtype={"fp16": "<f2", "fp32": "<f4", None: None}[tensor_dtype],
              fit_config=fit_config, force=force, resume=resume, options=parse_params(params))
    if fit_labels is not None:
        kw["fit_labels"] = fit_labels
    return kw


class Reporter:
    """Log lines and progress bars on stderr for a long write (silent with ``quiet``)."""

    def __init__(self, quiet: bool):
        self.quiet = quiet
        self.bars: dict = {}

    def log(self, line: str) -> None:
        """A line above the progress bars (tqdm redraws them below it), never through one."""
        if not self.quiet:
            from tqdm import tqdm

            tqdm.write(line, file=sys.stderr)

    def fit(self, step: int, total: int, loss: float) -> None:
        if self.quiet:
            return
        if "fit" not in self.bars:
            self.bars["fit"] = progress_bar(total, "fit", "step")
        self.bars["fit"].update(1)
        self.bars["fit"].set_postfix(loss=f"{loss:.4g}", refresh=False)
        if step == total:
            self.bars.pop("fit").close()

    def bar(self, name: str, total: int, unit: str):
        if name not in self.bars:
            self.bars[name] = progress_bar(total, name, unit)
        return self.bars[name]

    def written(self, total: int, desc: str, unit: str, advance: bool = True):
        """A ``progress(count, written, dense)`` callback: bytes written against dense fp16 so far.

        ``advance=False`` when something else (the teacher) advances the bar.
        """

        def progress(count: int, written: int, dense: int) -> None:
            if self.quiet:
                return
            b = self.bar(desc, total, unit)
            if advance:
                b.update(count)
            b.set_postfix_str(f"{human_bytes(written)} written, {dense / max(written, 1):.1f}x vs fp16 "
                              f"({human_bytes(dense)})", refresh=not count)  # count 0: the final size

        return progress

    def trained(self, desc: str, total: int | None = None):
        """A ``progress(images, loss, total)`` callback for student training: images/s, loss, ETA."""

        def progress(n: int, loss: float, total_: int) -> None:
            if not self.quiet:
                b = self.bar(desc, total or total_, "img")
                b.update(n)
                b.set_postfix(loss=f"{loss:.4f}", refresh=False)

        return progress

    def close(self) -> None:
        for b in self.bars.values():
            b.close()
        self.bars.clear()


@cli.command()
@click.argument("labels")
@click.option("-o", "--output", required=True, help="Output .slc path.")
@click.option("--logits", "source", flag_value="logits", help="LABELS are logits.")
@click.option("--probs", "source", flag_value="probs", help="LABELS are probabilities.")
@click.option("--prune", type=float, help="LPLD pruning: keep a random 1/PRUNE of the epochs (stacks with --codec; "
              "--ratio still counts against all epochs).")
@click.option("--indices", help="Already-sparse token labels: LABELS are (tokens, k) log-probabilities (or "
              "probabilities) over the whole vocabulary and this .npy / FILE.h5:/dataset holds their word indices.")
@click.option("--vocab", type=int, help="Vocabulary size of --indices input.")
@click.option("--seq", "seq", help="Token labels: sequence boundaries, an .npy of offsets [0, ..., tokens] or of "
              "lengths, so `slc.open_slc(f).sequence(i)` reads sequence i directly.")
@click.option("--token-ids", help="Token labels: an .npy of the input token at each position (stored as tokens.ids).")
@codec_options
@handle_errors
def compress(labels, output, source, prune, indices, vocab, seq, token_ids, seed, quiet, **codec):
    """Compress soft labels into an .slc file.

    LABELS is an .npy of shape (N, C) or (E, N, C), an HDF5 dataset FILE.h5:/path,
    or - for an npy stream on stdin. Token-level LM labels are (tokens, V) logits or
    log-probabilities (--codec topk-vq), or already sparse with --indices.

    \b
    Examples:
        slc compress teacher_logits.npy -o labels.slc --logits -T 4 --ratio 40
        slc compress lm_logits.npy -o tokens.slc --codec topk-vq --seq offsets.npy
        slc compress topk_logp.npy --indices topk_ids.npy --vocab 50257 -o tokens.slc --codec topk-vq
    """
    from slc.compression import compress as run
    from slc.errors import SlcInputError
    from slc.sources import SparseSource, open_labels

    kwargs = codec_kwargs(**codec)
    if (indices is None) != (vocab is None):
        raise SlcInputError("expected --indices and --vocab together (already-sparse input), got only one")
    src = open_labels(labels)
    if indices is not None:
        src = SparseSource(src, open_labels(indices, kinds="iu"), vocab)
    e, n, c = src.shape
    rep = Reporter(quiet)
    rep.log(f"labels: {e} epochs x {n} samples x {c} classes from {src.name}")
    try:
        result = run(src, output, source=source or "auto", seed=seed, prune=prune, log=rep.log, fit_progress=rep.fit,
                     sequences=load_int_array(seq, "--seq"), token_ids=load_int_array(token_ids, "--token-ids"),
                     progress=rep.written(e * n, "encode", "label"), **kwargs)
    finally:
        rep.close()
        src.close()
    click.echo(f"wrote {output}: {result.bytes:,} bytes, {result.ratio:.1f}x vs dense fp16 "
               f"({result.source}, T={result.temperature:g}, codec {result.codec})", err=True)


def load_int_array(path: str | None, what: str):
    """A small integer .npy (sequence offsets, token ids), read without unpickling."""
    if path is None:
        return None
    import numpy as np

    from slc.errors import SlcInputError

    try:
        a = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as e:
        raise SlcInputError(f"expected an .npy of integers for {what}, got {path} ({e})") from None
    if a.dtype.kind not in "iu":
        raise SlcInputError(f"expected integers in {what} {path}, got dtype {a.dtype}")
    return a


def floats(text: str | None, n: tuple[int, ...] | None, what: str) -> tuple[float, ...] | None:
    """Parse "a,b,c" into floats, checking the count is one of ``n`` (any count if None)."""
    if text is None:
        return None
    from slc.errors import SlcInputError

    try:
        v = tuple(float(x) for x in text.split(","))
    except ValueError:
        raise SlcInputError(f"expected comma-separated numbers for {what}, got {text!r}") from None
    if n is not None and len(v) not in n:
        raise SlcInputError(f"expected {' or '.join(map(str, n))} numbers for {what}, got {len(v)} ({text!r})")
    return v


@cli.command()
@click.argument("teacher")
@click.argument("images")
@click.option("-o", "--output", required=True, help="Output .slc path.")
@click.option("--weights", help="state_dict for a TEACHER given as package.module:factory (loaded weights-only).")
@click.option("--factory-kwargs", help='JSON keyword arguments for the factory, e.g. \'{"num_classes": 10}\'.')
@click.option("--trust-pickle", is_flag=True, help="Allow a pickled nn.Module teacher (runs arbitrary code!).")
@click.option("--epochs", type=int, default=300, show_default=True, help="Epochs of crops to relabel.")
@click.option("--size", type=int, default=224, show_default=True, help="Crop side the teacher sees, in pixels.")
@click.option("--scale", default="0.08,1", show_default=True, help="RandomResizedCrop area range.")
@click.option("--aspect", default="0.75,1.3333333333333333", show_default=True,
              help="RandomResizedCrop aspect-ratio range.")
@click.option("--flip", type=float, default=0.5, show_default=True, help="Horizontal flip probability.")
@click.option("--mean", help="Per-channel mean on pixels/255 [default: ImageNet's].")
@click.option("--std", help="Per-channel std on pixels/255 [default: ImageNet's].")
@click.option("--channels", type=click.IntRange(1, 3), default=3, show_default=True,
              help="Channels the teacher takes (greyscale is repeated).")
@click.option("--invert", is_flag=True, help="Use 255 - pixel (e.g. Fashion-MNIST for an ImageNet teacher).")
@click.option("--order", type=click.Choice(["shuffle", "sequential"]), default="shuffle", show_default=True,
              help="Image order within an epoch: a seeded permutation, or as listed.")
@click.option("--mix", type=click.Choice(["none", "mixup", "cutmix"]), default="none", show_default=True,
              help="Mix crops within groups of --mix-group positions, as SRe2L/RDED relabeling does.")
@click.option("--mix-group", type=int, help="Positions per mix group [default: --batch-size].")
@click.option("--store-boxes", is_flag=True, help="Also store every crop box (10 B/label), FKD style.")
@click.option("--batch-size", type=int, default=64, show_default=True, help="Teacher batch size.")
@click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda or cuda:N.")
@click.option("--workers", type=int, default=0, show_default=True, help="DataLoader workers making crops.")
@click.option("--no-amp", is_flag=True, help="No fp16 autocast on GPU.")
@click.option("--fit-on", type=click.Choice(["first", "random"]), default="first", show_default=True,
              help="Fit the codec on the first --fit-labels labels, or a random subset (extra teacher work).")
@click.option("--skip-bad", is_flag=True, help="Leave out unreadable images (named on stderr) instead of stopping.")
@codec_options
@handle_errors
def encode(teacher, images, output, weights, factory_kwargs, trust_pickle, epochs, size, scale, aspect, flip, mean,
           std, channels, invert, order, mix, mix_group, store_boxes, batch_size, device, workers, no_amp, fit_on,
           skip_bad, seed, quiet, **codec):
    """Relabel IMAGES with TEACHER over replayable augmented crops into an .slc file.

    TEACHER is a TorchScript file, a torch.export .pt2, or package.module:factory with
    --weights. IMAGES is an ImageFolder tree, a flat folder, an .npy/.npz array or FILE.h5:/path.
    Crops are recomputed from --seed by the student: they cost no bytes.

    \b
    Example:
        slc encode teacher.pt images/ -o labels.slc --epochs 300 -T 4 --ratio 40
    """
    from slc.vision.augment import IMAGENET_MEAN, IMAGENET_STD, Recipe
    from slc.vision.encode import encode as run
    from slc.vision.images import open_images
    from slc.models import load_teacher

    kwargs = codec_kwargs(**codec)
    rep = Reporter(quiet)
    try:
        kw = json.loads(factory_kwargs) if factory_kwargs else None
    except ValueError as e:
        raise click.ClickException(f"expected JSON for --factory-kwargs, got {factory_kwargs!r} ({e})") from None
    from slc.resume import preflight

    preflight(output, kwargs["force"], kwargs["resume"])  # an existing output fails now, not after the image scan
    # images first: a bad folder fails in a second, before a large teacher is loaded
    imgs = open_images(images, skip_bad=skip_bad, log=rep.log)
    model = load_teacher(teacher, weights=weights, trust_pickle=trust_pickle, factory_kwargs=kw, log=rep.log)
    default_mean, default_std = (IMAGENET_MEAN, IMAGENET_STD) if channels == 3 else ((0.5,), (0.5,))
    recipe = Recipe(seed=seed, size=size, scale=floats(scale, (2,), "--scale"),
                    ratio=floats(aspect, (2,), "--aspect"), flip=flip,
                    mean=floats(mean, (channels,), "--mean") or default_mean,
                    std=floats(std, (channels,), "--std") or default_std, channels=channels, invert=invert,
                    order=order, mix=mix, mix_group=0 if mix == "none" else (mix_group or batch_size),
                    boxes="stored" if store_boxes else "replay")
    total = epochs * len(imgs)
    try:
        result = run(model, imgs, output, recipe=recipe, epochs=epochs, batch_size=batch_size, device=device,
                     workers=workers, amp=not no_amp, fit_on=fit_on, log=rep.log, fit_progress=rep.fit,
                     on_crops=None if quiet else rep.bar("relabel", total, "crop").update,
                     progress=rep.written(total, "relabel", "crop", advance=False), **kwargs)
    finally:
        rep.close()
        imgs.close()
    click.echo(f"wrote {output}: {result.bytes:,} bytes, {result.ratio:.1f}x vs dense fp16 labels "
               f"({epochs} epochs x {len(imgs)} images, T={result.temperature:g}, codec {result.codec})", err=True)


@cli.command("encode-lm")
@click.argument("teacher")
@click.argument("text", type=click.Path(dir_okay=False))
@click.option("-o", "--output", required=True, help="Output .slc path.")
@click.option("--vocab-file", help="Word list (one per line, id = line number) to tokenize TEXT for a TorchScript "
              "teacher without a tokenizer.")
@click.option("--seq-len", type=int, help="Cut sequences into windows of at most this many tokens [default: the "
              "teacher's context].")
@click.option("-T", "--temperature", type=float, default=1.0, show_default=True)
@click.option("--param", "params", multiple=True, metavar="KEY=VALUE",
              help="topk-vq parameter: k (64), m (8), codes (256), values (vqae|bf16), "
                   "tail (capped|prior|uniform|mr|mrs; capped), prior_weight (0.99). Repeatable.")
@click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda or cuda:N.")
@click.option("--trust-pickle", is_flag=True, help="Allow a pickled checkpoint (runs arbitrary code!).")
@click.option("--chunk-size", type=int, help="Tokens per chunk (also the unit of --resume) [default: 4096, fewer "
              "for vocabularies over 32k].")
@click.option("--zstd/--no-zstd", default=None, help="zstd-code each chunk [default: on].")
@click.option("--fit-labels", type=int, default=16384, show_default=True,
              help="Tokens at the start of TEXT the codec is fitted on.")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--force", is_flag=True, help="Overwrite an existing output (or discard an interrupted run).")
@click.option("--resume", is_flag=True, help="Continue an interrupted run from its last finished chunk.")
@click.option("-q", "--quiet", is_flag=True, help="No log, no progress bar.")
@handle_errors
def encode_lm(teacher, text, output, vocab_file, seq_len, temperature, params, device, trust_pickle, chunk_size, zstd,
              fit_labels, seed, force, resume, quiet):
    """Label every token of TEXT with a causal LM TEACHER into a token-level .slc.

    TEACHER is a TorchScript file mapping token ids (B, L) to logits (B, L, V), or a local
    Hugging Face model directory (needs `pip install transformers`; nothing is downloaded).
    TEXT is plain text (one sequence per line) or JSONL ({"text": ...} or {"input_ids": [...]}).

    \b
    Example:
        slc encode-lm ./my-lm corpus.jsonl -o corpus.slc --param k=64
    """
    from slc.lm.encode import encode_lm as run

    rep = Reporter(quiet)
    try:
        result = run(teacher, text, output, vocab_file=vocab_file, seq_len=seq_len, temperature=temperature,
                     options=parse_params(params), chunk_size=chunk_size, zstd=zstd, fit_labels=fit_labels, seed=seed,
                     device=device, allow_pickle=trust_pickle, force=force, resume=resume, log=rep.log,
                     on_tokens=None if quiet else lambda n, total: rep.bar("teacher", total, "token").update(n))
    finally:
        rep.close()
    from slc.inspect import token_summary
    from slc.reader import open_slc

    with open_slc(output) as f:  # per-token figures computed as `slc inspect` computes them
        tk = token_summary(f)
    click.echo(f"wrote {output}: {result.bytes:,} bytes for {result.labels:,} tokens, "
               f"{tk['bytes_per_token']:.2f} B/token, {tk['ratio_vs_fp16']:.0f}x vs dense fp16 (T={temperature:g}, "
               f"codec {result.codec})", err=True)


# --------------------------------------------------------------------------- train-student
@cli.command("train-student")
@click.argument("images")
@click.argument("labels", type=click.Path(dir_okay=False))
@click.option("-o", "--out-dir", required=True, help="Folder for student.pt, student.ts, log.jsonl, result.json "
              "(and checkpoint.pt while training).")
@click.option("--student", default="convnet", show_default=True,
              help="resnet18, resnet18-small, convnet, convnet-w64, mobilenet, a TorchScript file or package.module:factory.")
@click.option("--epochs", type=int, help="Training epochs [default: the stored epochs; more cycle through them].")
@click.option("--batch-size", type=int, default=64, show_default=True)
@click.option("--lr", type=float, default=1e-3, show_default=True, help="AdamW learning rate (cosine schedule).")
@click.option("--weight-decay", type=float, default=0.01, show_default=True)
@click.option("-T", "--temperature", type=float, help="Distillation temperature [default: the file's].")
@click.option("--workers", type=int, default=0, show_default=True)
@click.option("--device", default="auto", show_default=True)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--hard", is_flag=True, help="Train on the labels' argmax with cross-entropy: the hard-label floor.")
@click.option("--size", type=int, help="Student input size: the teacher's crops resized to it [default: as encoded].")
@click.option("--sampling", type=click.Choice(["cycle", "lpld"]), default="cycle", show_default=True,
              help="cycle: stored epoch e % E in order. lpld: each epoch draws stored batches at random from all "
                   "stored epochs (LPLD's sampling; for pruned files).")
@click.option("--val", help="ImageFolder with ground-truth classes: top-1/top-5 accuracy.")
@click.option("--teacher", help="TorchScript teacher: agreement and KL to it on --heldout images.")
@click.option("--heldout", help="Held-out images for --teacher.")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
@click.option("--force", is_flag=True, help="Overwrite outputs in --out-dir.")
@click.option("--resume", is_flag=True,
              help="Continue an interrupted run from its last epoch checkpoint (--out-dir/checkpoint.pt).")
@click.option("--checkpoint-every", type=float, default=60.0, show_default=True,
              help="Seconds between resume checkpoints (each written at the end of an epoch).")
@click.option("-q", "--quiet", is_flag=True)
@handle_errors
def train_student(images, labels, out_dir, student, epochs, batch_size, lr, weight_decay, temperature, workers,
                  device, seed, hard, size, sampling, val, teacher, heldout, as_json, force, resume, checkpoint_every, quiet):
    """Train a student from IMAGES plus the soft labels in LABELS (an .slc made by `slc encode`).

    Every epoch replays the teacher's crops exactly and decodes labels on the fly. After each epoch
    --out-dir/checkpoint.pt is saved; --resume continues from it after Ctrl-C, SIGTERM or a crash.

    \b
    Example:
        slc train-student images/ labels.slc -o runs/40x --student resnet18-small --val val/
    """
    from slc.vision.train import TrainConfig, train_student as run

    rep = Reporter(quiet)
    cfg = TrainConfig(student=student, epochs=epochs, batch_size=batch_size, lr=lr, weight_decay=weight_decay,
                      temperature=temperature, workers=workers, checkpoint_every=checkpoint_every, device=device,
                      seed=seed, hard=hard, size=size, sampling=sampling)
    try:
        result = run(labels, images, out_dir, cfg, val=val, teacher=teacher, heldout=heldout, force=force,
                     resume=resume, log=rep.log, progress=rep.trained("train"))
    finally:
        rep.close()
    if as_json:
        click.echo(json.dumps(result, indent=2))
        return
    from rich.table import Table

    t = Table(title=f"student {student} on {labels} (T={result['temperature']:g}, {result['epochs']} epochs)")
    for col in ("final loss", "val top-1", "val top-5", "teacher agreement", "teacher top-1 in top-5",
                "KL to teacher"):
        t.add_column(col, justify="right")
    v, h = result.get("val", {}), result.get("heldout", {})
    pct = lambda d, k: f"{100 * d[k]:.2f}%" if k in d else "-"  # noqa: E731
    t.add_row(f"{result['final_loss']:.4f}", pct(v, "top1"), pct(v, "top5"), pct(h, "teacher_agreement"),
              pct(h, "teacher_top5"), f"{h['kl_to_teacher']:.4f}" if "kl_to_teacher" in h else "-")
    console().print(t)


# --------------------------------------------------------------------------- decode
@cli.command()
@click.argument("file", type=click.Path(dir_okay=False))
@click.option("-o", "--output", required=True, help="out.npy, out.h5 (dataset /labels) or - for an npy stream.")
@click.option("--epoch", "epochs", type=int, multiple=True, help="Epoch(s) to decode (default: all).")
@click.option("--start", type=int, default=0, show_default=True, help="First sample.")
@click.option("--stop", type=int, help="One past the last sample (default: all).")
@click.option("--logits", "out_kind", flag_value="logits", help="Write logits (softmax(x / T) is the label).")
@click.option("--probs", "out_kind", flag_value="probs", default=True, help="Write probabilities (default).")
@click.option("-T", "--temperature", type=float, help="Re-temper to this temperature (default: the stored one).")
@click.option("--dtype", type=click.Choice(["float32", "float16"]), default="float32", show_default=True)
@click.option("--sparse", is_flag=True, help="Token files: write the stored top-k words, log-probabilities and tail "
              "per token (npy records, or HDF5 datasets indices/logp/tail/offsets) instead of V floats per token.")
@click.option("--force", is_flag=True, help="Overwrite an existing output.")
@handle_errors
def decode(file, output, epochs, start, stop, out_kind, temperature, dtype, force, sparse):
    """Decode labels from an .slc file, streaming in bounded memory.

    The output has shape (N, C) for one epoch and (E, N, C) otherwise.

    \b
    Example:
        slc decode labels.slc --epoch 0 -o - | python consumer.py
    """
    from slc.decode import export

    if temperature is not None and not temperature > 0:
        raise click.BadParameter(f"expected a temperature > 0, got {temperature}", param_hint="--temperature")
    export(file, output, list(epochs) or None, start, stop, out_kind or "probs", temperature, dtype, force, sparse)


# --------------------------------------------------------------------------- inspect
@cli.command()
@click.argument("file", type=click.Path(dir_okay=False))
@click.option("--against", help="Original labels (.npy / FILE.h5:/path) to measure fidelity against.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of tables.")
@handle_errors
def inspect(file, against, as_json):
    """Show where the bytes of an .slc file go (and, with --against, how faithful it is).

    \b
    Example:
        slc inspect labels.slc --against teacher_logits.npy
    """
    from slc.inspect import breakdown
    from slc.fidelity import fidelity_against
    from slc.reader import open_slc

    with open_slc(file) as f:
        info = breakdown(f)
        if against:
            info["fidelity"] = fidelity_against(f, against)
    if as_json:
        click.echo(json.dumps(info, indent=2))
        return
    from rich.table import Table

    con = console()
    p = ", ".join(f"{k}={v}" for k, v in info["codec_params"].items())
    con.print(f"[bold]{file}[/bold]  .slc v{info['format_version']}  written by {info['writer']}")
    con.print(f"{info['epochs']} epochs x {info['samples']} samples x {info['classes']} classes "
              f"= {info['labels']:,} labels from {info['source']} at T={info['temperature']:g}; "
              f"codec {info['codec']} ({p}); {info['chunks']} chunks of {chunk_labels(*info['labels_per_chunk'])}, "
              f"entropy {info['entropy']}")
    if info["replay"]:
        rp, r = info["replay"], info["replay"]["recipe"]
        how = (f"stored boxes, {rp['box_bytes_per_label']:.0f} B/label" if r["boxes"] == "stored"
               else "recomputed from the seed, 0 B/label")
        mix = f", {r['mix']} in groups of {r['mix_group']}" if r["mix"] != "none" else ""
        con.print(f"crops: {rp['images']} images ({rp['source']}), RandomResizedCrop {r['size']}px scale "
                  f"{r['scale'][0]:g}-{r['scale'][1]:g}, flip {r['flip']:g}{mix}, {r['order']} order, seed "
                  f"{r['seed']}: {how}")
    t = Table(title="bytes by section")
    t.add_column("section")
    t.add_column("bytes", justify="right")
    t.add_column("share", justify="right")
    t.add_column("bits / label", justify="right")
    for r in info["sections"]:
        t.add_row(r["section"], f"{r['bytes']:,}", f"{100 * r['share']:.2f}%", f"{8 * r['bytes'] / info['labels']:.2f}")
    t.add_row("[bold]total[/bold]", f"[bold]{info['bytes']:,}[/bold]", "100%", f"{info['bits_per_label']:.2f}")
    con.print(t)
    s = Table(title="compared with")
    s.add_column("baseline")
    s.add_column("bytes", justify="right")
    s.add_column("ratio", justify="right")
    s.add_row("dense fp16 (eq. S11)", f"{info['dense_fp16_bytes']:,}", f"{info['ratio_vs_fp16']:.2f}x")
    s.add_row("dense fp32", f"{info['dense_fp32_bytes']:,}", f"{info['ratio_vs_fp32']:.2f}x")
    s.add_row("top-k in the same bytes (eq. S15)", f"k = {info['same_bytes_topk_k']}", "")
    s.add_row("PCA in the same bytes (eq. S16)", f"{info['same_bytes_pca_components']} components", "")
    if info["entropy"] == "zstd":
        s.add_row("zstd saving on the chunk payloads", f"{100 * info['zstd_saving']:.2f}%", "")
    con.print(s)
    if info["tokens"]:
        tk = info["tokens"]
        s = Table(title=f"token labels: {tk['tokens']:,} tokens in {tk['sequences']:,} sequences"
                        + (" (input token ids stored)" if tk["token_ids"] else ""))
        s.add_column("per token")
        s.add_column("bytes", justify="right")
        s.add_column("this file is", justify="right")
        s.add_row("this file (labels)", f"{tk['bytes_per_token']:.2f}", "")
        s.add_row("dense fp16", f"{2 * info['classes']:,}", f"{tk['ratio_vs_fp16']:.1f}x smaller")
        s.add_row(f"top-{tk['k']} bf16 + int32 indices", f"{tk['topk_bf16_int32_bytes_per_token']:,}",
                  f"{tk['ratio_vs_topk_bf16_int32']:.2f}x smaller")
        s.add_row("top-20 bf16 + int32 indices", "120", f"{tk['ratio_vs_top20_bf16_int32']:.2f}x smaller")
        s.add_row("bf16 + int32 top-k in the same bytes", f"k = {tk['same_bytes_bf16_int32_k']}", "")
        con.print(s)
    if "fidelity" in info:
        fid = info["fidelity"]
        t = Table(title=f"fidelity against {against} at T={info['temperature']:g}")
        for col in ("labels", "KL(orig || decoded)", "top-1 agreement", "top-5 overlap"):
            t.add_column(col, justify="right")
        t.add_row(f"{fid['labels']:,}", f"{fid['kl']:.5f}", f"{100 * fid['top1_agreement']:.2f}%",
                  f"{100 * fid['top5_overlap']:.2f}%")
        con.print(t)


def chunk_labels(lo: int, hi: int) -> str:
    return f"{lo:,} labels" if lo == hi else f"{lo:,}-{hi:,} labels"


# --------------------------------------------------------------------------- verify
@cli.command()
@click.argument("file", type=click.Path(dir_okay=False))
@handle_errors
def verify(file):
    """Check every checksum and structural rule of an .slc file; exit 0 if valid, 1 if not."""
    from slc.errors import SlcFormatError
    from slc.reader import open_slc

    try:
        with open_slc(file) as f:
            f.verify()
            n = len(f)
    except SlcFormatError as e:
        click.echo(f"INVALID {file}: {e}")
        sys.exit(1)
    click.echo(f"OK {file}: {n:,} labels, all checksums match")


def _return_big_buffers_to_the_os() -> None:
    """Serve allocations over 4 MB with mmap (glibc), so freed label blocks leave RSS.

    Without this glibc's adaptive threshold moves multi-MB blocks onto the heap, where
    fragmentation doubled peak RSS on some runs of a 1M-label compress (0.8 vs 1.65 GB).
    """
    try:
        import ctypes

        libc = ctypes.CDLL("libc.so.6")
        libc.mallopt(-3, 4 << 20)  # M_MMAP_THRESHOLD
    except (OSError, AttributeError):
        pass


def _interrupt(signum, frame):
    raise KeyboardInterrupt  # SIGTERM (a scheduler's preemption) ends a run like Ctrl-C: resumable


def main() -> None:
    _return_big_buffers_to_the_os()
    signal.signal(signal.SIGTERM, _interrupt)
    if hasattr(signal, "SIGPIPE"):
        signal.signal(signal.SIGPIPE, signal.SIG_DFL)  # behave like a Unix filter in pipelines
    cli(prog_name="slc")


# --------------------------------------------------------------------------- bench
@cli.command()
@click.argument("labels")
@click.option("--codecs", help="Comma-separated codecs; prune (LPLD, fp16) and pruneR+CODEC stack pruning "
              "[default: auto,vqae,vqae-paper,vq-noae,topk,topk-mr,topk-mrs,pca,quant,prune4+vqae].")
@click.option("--ratios", default="10,20,40,100,200", show_default=True, help="Target ratios against dense fp16.")
@click.option("-T", "--temperature", "temperatures", type=float, multiple=True,
              help="Temperature(s) to fit and score at, repeatable [default: the file's, or 1].")
@click.option("--holdout", type=float, default=0.2, show_default=True,
              help="Share of each epoch's positions (the last ones) held out of fitting and scored.")
@click.option("--logits", "source", flag_value="logits", help="LABELS are logits.")
@click.option("--probs", "source", flag_value="probs", help="LABELS are probabilities.")
@click.option("--fit-steps", type=int, help="Optimizer steps when fitting a VQAE.")
@click.option("--fit-labels", type=int, help="Labels sampled to fit each codec [default: 65,536].")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--plot", "plot_path", help="Write a rate-distortion PNG (KL against bytes, one line per codec).")
@click.option("--json", "json_path", help="Write every row as JSON here (- for stdout).")
@click.option("--markdown", "md_path", help="Write the table as markdown here.")
@click.option("--keep", "keep_dir", help="Keep every .slc written, in this folder.")
@click.option("--student", "student_images", help="Also train a student per row on these images (LABELS must be "
              "an .slc from `slc encode`), plus a hard-label floor and the input as ceiling.")
@click.option("--teacher", help="With --student: TorchScript teacher to score students against on --heldout.")
@click.option("--heldout", help="With --student: held-out images for --teacher.")
@click.option("--val", help="With --student: ImageFolder with ground-truth classes.")
@click.option("--arch", default="convnet-w64", show_default=True, help="With --student: the student network.")
@click.option("--epochs", type=int, help="With --student: training epochs [default: the stored epochs].")
@click.option("--batch-size", type=int, default=64, show_default=True)
@click.option("--lr", type=float, default=1e-3, show_default=True)
@click.option("--size", type=int, help="With --student: student input size.")
@click.option("--tokens", is_flag=True, help="LABELS are token-level LM labels (tokens, V): bench topk-vq at several "
              "budgets against top-k in bf16 with int32 indices at the same bytes.")
@click.option("--rows", help="With --tokens: ';'-separated topk-vq options per row [default: k=8;k=16;k=32;k=64;"
              "k=128;k=64,tail=prior;k=20,values=bf16;k=20,values=bf16,tail=prior;k=20,values=bf16,tail=uniform].")
@click.option("--force", is_flag=True, help="Overwrite --plot/--json/--markdown outputs and reuse --keep.")
@click.option("-q", "--quiet", is_flag=True)
@handle_errors
def bench(labels, codecs, ratios, temperatures, holdout, source, fit_steps, fit_labels, seed, plot_path, json_path,
          md_path, keep_dir, student_images, teacher, heldout, val, arch, epochs, batch_size, lr, size, tokens, rows,
          force, quiet):
    """Every codec at every ratio on your labels: bytes, held-out KL, agreement, speed.

    LABELS is an .npy, an HDF5 dataset FILE.h5:/path, or an .slc (e.g. dense fp16 from `slc encode`).
    A codec or ratio that cannot be used is reported in its row; the others go on.

    \b
    Examples:
        slc bench labels-fp16.slc --ratios 10,40,100 -T 1 -T 4 --plot rd.png
        slc bench lm_logp.npy --tokens --rows "k=16;k=64;k=20,values=bf16" --plot tokens.png
    """
    from slc.bench.codecs.codecs import (DEFAULT_CODECS, UNREACHABLE, BenchConfig, columns, header, markdown, plot, run_bench,
                        train_students)
    from slc.errors import SlcInputError
    from slc.resume import preflight

    for path in (plot_path, md_path, None if json_path == "-" else json_path):
        if path:
            preflight(path, force, False)
    if plot_path:
        from slc.bench.codecs.plots import require_matplotlib

        require_matplotlib("--plot")
    if tokens:
        if codecs or student_images or temperatures:
            raise SlcInputError("expected --rows (not --codecs, --student or -T) with --tokens")
        return bench_tokens(labels, rows, holdout, source, fit_steps, fit_labels, seed, keep_dir, plot_path, json_path,
                            md_path, force, quiet)
    if rows:
        raise SlcInputError("expected --rows only with --tokens")
    if student_images and not (teacher and heldout or val):
        raise SlcInputError("expected --teacher with --heldout, or --val, to score the students; got neither")
    cfg = BenchConfig(codecs=tuple(codecs.split(",")) if codecs else DEFAULT_CODECS,
                      ratios=floats(ratios, None, "--ratios"), temperatures=temperatures or None,
                      holdout=holdout, fit_steps=fit_steps, fit_labels=fit_labels, seed=seed, source=source or "auto")
    rep = Reporter(quiet)
    keep, scratch = keep_dir, None
    if student_images and not keep:  # students need the files for a while: a folder removed at the end
        import tempfile

        scratch = tempfile.TemporaryDirectory(prefix="slc-bench-")
        keep = scratch.name
    if keep:
        keep_folder(keep, force)
    try:
        result = run_bench(labels, cfg, workdir=keep, log=rep.log)
        students = bool(student_images)
        if students:
            from slc.vision.train import TrainConfig

            tc = TrainConfig(student=arch, epochs=epochs, batch_size=batch_size, lr=lr, seed=seed, size=size)
            result["reference_rows"] = train_students(result, student_images, keep, tc, teacher=teacher,
                                                      heldout=heldout, val=val, log=rep.log,
                                                      progress=lambda name, n: rep.trained(f"student: {name}", n))
    finally:
        rep.close()
        if scratch is not None:
            scratch.cleanup()
    from rich.table import Table

    e, n, c = result["shape"]
    t = Table(title=f"slc bench: {labels} ({e} x {n} x {c} {result['source']}); held-out positions "
                    f"{result['holdout_start']}..{n - 1} of each epoch")
    for i, col in enumerate(header(result, students)):
        t.add_column(col, justify="left" if i == 0 else "right", no_wrap=True)
    for r in result.get("reference_rows", []) + result["rows"]:
        t.add_row(*columns(r, result, students))
    con = console(wide=True)
    con.print(t)
    for line in result["verdicts"] + [f"note: {n}" for n in result["notes"]]:
        con.print(line)
    for r in result["rows"]:  # the table says "unreachable (max ...)"; other errors in full
        if "error" in r and not UNREACHABLE.search(r["error"]):
            con.print(f"{r['codec']} {r['target'] or 1:g}x: {r['error']}")
    for r in result["refused"]:
        con.print(f"refused: {r['error']}")
    write_results(result, plot_path and (lambda: plot(result, plot_path, force)), md_path,
                  md_path and markdown(result, students), json_path, force)


def write_results(result: dict, plot, md_path: str | None, md_text: str | None, json_path: str | None,
                  force: bool) -> None:
    """The PNG, markdown and JSON outputs of a bench (``-`` for JSON on stdout)."""
    from slc.atomic import atomic_output

    if md_path:
        with atomic_output(md_path, force) as f:
            f.write(md_text.encode())
    if json_path:
        text = json.dumps(result, indent=2, default=str)
        if json_path == "-":
            click.echo(text)
        else:
            with atomic_output(json_path, force) as f:
                f.write(text.encode())
    if plot:  # last: the tables are written even if drawing fails
        plot()


def keep_folder(path: str, force: bool) -> None:
    """A new or empty folder for ``--keep`` (a full one only with ``--force``)."""
    from slc.errors import SlcInputError

    if os.path.isdir(path) and os.listdir(path) and not force:
        raise SlcInputError(f"expected a new or empty folder for --keep, got {path} with files in it (pass --force)")
    os.makedirs(path, exist_ok=True)


def bench_tokens(labels, rows, holdout, source, fit_steps, fit_labels, seed, keep_dir, plot_path, json_path, md_path,
                 force, quiet) -> None:
    from rich.table import Table

    from slc.bench.codecs.tokens import DEFAULT_ROWS, HEADER, LEGEND, run_token_bench, token_columns, token_markdown, token_plot

    if keep_dir:
        keep_folder(keep_dir, force)
    rep = Reporter(quiet)
    try:
        result = run_token_bench(labels, tuple(filter(None, rows.split(";"))) if rows else DEFAULT_ROWS,
                                 holdout=holdout, source=source or "auto", seed=seed, fit_steps=fit_steps,
                                 fit_labels=fit_labels, workdir=keep_dir, log=rep.log)
    finally:
        rep.close()
    t = Table(title=f"slc bench --tokens: {labels} ({result['tokens']:,} tokens x {result['vocab']:,} words); "
                    f"held-out tokens {result['holdout_start']:,}..{result['tokens'] - 1:,}")
    for i, col in enumerate(HEADER):
        t.add_column(col, justify="left" if i == 0 else "right")
    for r in [result["reference"], *result["rows"]]:
        t.add_row(*token_columns(r))
    con = console(wide=True)
    con.print(t)
    con.print(LEGEND)
    write_results(result, plot_path and (lambda: token_plot(result, plot_path, force)), md_path,
                  md_path and token_markdown(result), json_path, force)


# --------------------------------------------------------------------------- demo
@cli.command()
@click.option("-o", "--out-dir", default="slc-demo", show_default=True, help="Folder for every file the demo makes.")
@click.option("--quick", is_flag=True, help="A smaller run (about 1 minute on 2 idle cores) that checks the "
              "pipeline end to end.")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
@click.option("--force", is_flag=True, help="Reuse a folder that is not empty, overwriting what the demo writes.")
@click.option("--resume", is_flag=True, help="Continue an interrupted demo in --out-dir: finished steps are kept.")
@click.option("-q", "--quiet", is_flag=True)
@handle_errors
def demo(out_dir, quick, as_json, force, resume, quiet):
    """The whole pipeline on real data: teacher, encode, compress, inspect, students, table, plot.

    A pretrained EfficientNet-Lite0 relabels real Fashion-MNIST images; the labels are stored dense
    (fp16) and re-coded 10x, 40x and 100x; the same student trains on each and on hard labels, and
    is scored against the teacher on held-out images. About 8 minutes on 2 idle CPU cores.
    """
    from slc.bench.codecs.demo import FULL, QUICK, HEADER, Hooks, columns, run_demo

    rep = Reporter(quiet)
    cfg = QUICK if quick else FULL

    class CliHooks(Hooks):
        def log(self, line):
            rep.log(line)

        def fit(self, step, total, loss):
            rep.fit(step, total, loss)

        def written(self, total, desc, unit, advance=True):
            rep.close()
            return rep.written(total, desc, unit, advance)

        def trained(self, name, total):
            rep.close()
            return rep.trained(f"student: {name}", total)

        def stage(self, name, info):
            rep.close()
            parts = ", ".join(f"{r['section']} {100 * r['share']:.0f}%" for r in info["sections"] if r["share"] >= 0.01)
            rep.log(f"inspect {os.path.basename(info['path'])}: {info['bytes']:,} B = {info['ratio_vs_fp16']:.1f}x vs "
                    f"fp16, codec {info['codec']}, {info['bits_per_label']:.1f} bits/label ({parts})")

    try:
        result = run_demo(out_dir, cfg, force=force, resume=resume, hooks=CliHooks())
    except KeyboardInterrupt as e:
        e.slc_hint = (f"what is finished is kept in {out_dir}/; rerun the same command with --resume to continue "
                      "(--force starts over)")
        raise
    finally:
        rep.close()
    if as_json:
        click.echo(json.dumps(result, indent=2))
        return
    from rich.table import Table

    c = result["config"]
    t = Table(title=f"{c['student']} students on {10 * c['per_class']} Fashion-MNIST images x {c['train_epochs']} "
                    f"epochs, EfficientNet-Lite0 labels at T={c['temperature']:g}; scored on {c['heldout']} held-out")
    for i, col in enumerate(HEADER):
        t.add_column(col, justify="left" if i < 2 else "right")
    for r in result["rows"]:
        t.add_row(*columns(r))
    con = console()
    con.print(t)
    con.print(f"{result['seconds']['total']:.0f} s in all ({', '.join(f'{k} {v:.0f} s' for k, v in result['seconds'].items() if k != 'total')}); "
              f"table: {out_dir}/demo.md, plot: {out_dir}/demo.png")

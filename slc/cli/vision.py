"""``slc encode`` and ``slc train-student``: a teacher relabels images into an .slc; a student trains on it."""
from __future__ import annotations

import json

import click

from slc.cli.common import (Reporter, codec_options, compress_options, console, floats, handle_errors, part_options,
                            part_spec, wrote)
from slc.errors import SlcInputError


@click.command()
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
@part_options
@handle_errors
def encode(teacher, images, output, weights, factory_kwargs, trust_pickle, epochs, size, scale, aspect, flip, mean,
           std, channels, invert, order, mix, mix_group, store_boxes, batch_size, device, workers, no_amp, fit_on,
           skip_bad, seed, force, resume, quiet, share, epoch_range, fit_only, codec_from, **codec):
    """Relabel IMAGES with TEACHER over replayable augmented crops into an .slc file.

    TEACHER is a TorchScript file, a torch.export .pt2, or package.module:factory with
    --weights. IMAGES is an ImageFolder tree, a flat folder, an .npy/.npz array or FILE.h5:/path.
    Crops are recomputed from --seed by the student: they cost no bytes.

    \b
    Example:
        slc encode teacher.pt images/ -o labels.slc --epochs 300 -T 4 --ratio 40
    """
    from slc.format.replay import Recipe
    from slc.vision.encode import ENCODE_FIT_LABELS, encode as run

    codec["fit_labels"] = codec["fit_labels"] or ENCODE_FIT_LABELS  # held in memory while the teacher streams on
    opts = compress_options(**codec)  # --seed seeds the crops; the fit sample is the first labels
    try:
        kw = json.loads(factory_kwargs) if factory_kwargs else None
    except ValueError as e:
        raise SlcInputError(f"expected JSON for --factory-kwargs, got {factory_kwargs!r} ({e})") from None
    recipe = Recipe.for_channels(channels, floats(mean, (channels,), "--mean"), floats(std, (channels,), "--std"),
                                 seed=seed, size=size, scale=floats(scale, (2,), "--scale"),
                                 ratio=floats(aspect, (2,), "--aspect"), flip=flip, invert=invert, order=order, mix=mix,
                                 mix_group=0 if mix == "none" else (mix_group or batch_size),
                                 boxes="stored" if store_boxes else "replay")
    rep = Reporter(quiet)
    try:
        result = run(teacher, images, output, opts, recipe=recipe, epochs=epochs, batch_size=batch_size,
                     device=device, workers=workers, amp=not no_amp, fit_on=fit_on, skip_bad=skip_bad, weights=weights,
                     trust_pickle=trust_pickle, factory_kwargs=kw, force=force, resume=resume, log=rep.log,
                     part=part_spec(share, epoch_range, fit_only), codec_from=codec_from,
                     fit_progress=rep.fit, on_crops=None if quiet else rep.counted("relabel", "crop"),
                     progress=rep.written(None, "relabel", "crop", advance=False))
    finally:
        rep.close()
    n = result.labels // epochs
    wrote(output, result, f"labels ({epochs} epochs x {n} images, T={result.temperature:g}, codec {result.codec})")


@click.command("train-student")
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
def train_student(images, labels, out_dir, val, teacher, heldout, as_json, force, resume, quiet, **config):
    """Train a student from IMAGES plus the soft labels in LABELS (an .slc made by `slc encode`).

    Every epoch replays the teacher's crops exactly and decodes labels on the fly. After each epoch
    --out-dir/checkpoint.pt is saved; --resume continues from it after Ctrl-C, SIGTERM or a crash.

    Under torchrun it trains with DistributedDataParallel: --batch-size stays the global batch, each
    rank trains on its slice of it, and only rank 0 writes and reports.

    \b
    Example:
        slc train-student images/ labels.slc -o runs/40x --student resnet18-small --val val/
        torchrun --standalone --nproc-per-node 4 -m slc train-student images/ labels.slc -o runs/40x
    """
    from slc.cli.common import main_rank
    from slc.vision.train import TrainConfig, train_student as run

    rep = Reporter(quiet)  # quiet on ranks > 0: under torchrun they only speak to fail
    try:
        result = run(labels, images, out_dir, TrainConfig(**config), val=val, teacher=teacher, heldout=heldout,
                     force=force, resume=resume, log=rep.log, progress=rep.trained("train"))
    finally:
        rep.close()
    if not main_rank():
        return
    if as_json:
        click.echo(json.dumps(result, indent=2))
        return
    from slc.cli.labels import table

    v, h = result.get("val", {}), result.get("heldout", {})
    pct = lambda d, k: f"{100 * d[k]:.2f}%" if k in d else "-"  # noqa: E731
    console().print(table(f"student {config['student']} on {labels} (T={result['temperature']:g}, "
                          f"{result['epochs']} epochs)",
                          ["final loss", "val top-1", "val top-5", "teacher agreement", "teacher top-1 in top-5",
                           "KL to teacher"],
                          [[f"{result['final_loss']:.4f}", pct(v, "top1"), pct(v, "top5"), pct(h, "teacher_agreement"),
                            pct(h, "teacher_top5"), f"{h['kl_to_teacher']:.4f}" if "kl_to_teacher" in h else "-"]],
                          right_from=0))

"""``slc import``: labels other tools wrote (SRe2L, LPLD, LPQLD, HALD, FKD, vLLM, DistillKit) into an ``.slc``."""
from __future__ import annotations

import click

from slc.cli.common import Reporter, codec_options, compress_options, floats, handle_errors, wrote

FORMATS = ["auto", "sre2l", "cda", "lpld", "lpqld", "hald", "fkd", "vllm", "distillkit"]


@click.command(name="import")
@click.argument("fmt", metavar="FORMAT", type=click.Choice(FORMATS))
@click.argument("src")
@click.option("-o", "--output", required=True, help="Output .slc path.")
@click.option("--images", help="The images the labels were made from (the ImageFolder their trainer reads): keeps "
              "every label's crop, flip and mix, so train-student replays them.")
@click.option("--size", type=int, default=224, show_default=True, help="Crop side their trainer resizes to.")
@click.option("--mean", help="Per-channel normalisation mean, e.g. 0.485,0.456,0.406 [default: ImageNet's].")
@click.option("--std", help="Per-channel normalisation std [default: ImageNet's].")
@click.option("--sampler-seed", type=int, help="SRe2L/CDA: the relabel sampler's seed (--fkd-seed) [default: 42].")
@click.option("--classes", type=int, help="Class count, for formats that store top-k indices only (LPQLD, FKD).")
@click.option("--vocab", type=int, help="vLLM: vocabulary size [default: the largest token id + 1].")
@click.option("--topk", type=int, help="vLLM: words kept per token [default: the fewest any position has].")
@click.option("--config", "dk_config", help="DistillKit: its compression config, YAML or JSON [default: "
              "compression_config.yaml beside the parquet files].")
@codec_options
@handle_errors
def import_(fmt, src, output, images, size, mean, std, sampler_seed, classes, vocab, topk, dk_config, force, resume,
            quiet, **codec):
    """Import soft labels another tool wrote, without running its code.

    FORMAT is one of sre2l (also cda), lpld, lpqld, hald (batch folders), fkd (one .tar per image),
    vllm (prompt_logprobs JSONL), distillkit (parquet), or auto. Files are read with
    torch.load(weights_only=True) only: a file holding anything but tensors, arrays, lists, dicts
    and numbers is refused. The temperature defaults to the one their reference trainer uses.

    \b
    Examples:
        slc import sre2l FKD_cutmix_fp16/ --images train/ -o labels.slc --ratio 40
        slc import fkd FKD_soft_label_500_crops/imagenet --images imagenet/train -o fkd.slc
        slc import vllm prompt_logprobs.jsonl -o tokens.slc
        slc import distillkit logits/ -o tokens.slc --ratio 40
    """
    from slc.interop.write import import_file, open_import

    rep = Reporter(quiet)
    opts = compress_options(**codec)
    imported = open_import(fmt, src, log=rep.log, seed=sampler_seed, classes=classes, vocab=vocab, k=topk,
                           config=dk_config, progress=rep.counted("read", "file"))
    try:
        s = imported.summary
        rep.log(f"found {s.get('format')}: " + ", ".join(f"{k} {v:,}" if isinstance(v, int) else f"{k} {v}"
                                                        for k, v in s.items() if k not in ("format", "names")))
        e, n, _ = imported.labels.shape
        result = import_file(imported, output, opts, images=images, size=size,
                             mean=floats(mean, (1, 3), "--mean"), std=floats(std, (1, 3), "--std"),
                             force=force, resume=resume, log=rep.log, fit_progress=rep.fit,
                             progress=rep.written(e * n, "import", "label"))
    finally:
        rep.close()
        imported.close()
    wrote(output, result, f"({result.source}, T={result.temperature:g}, codec {result.codec}; "
                          f"{s.get('bytes', 0):,} bytes before)")

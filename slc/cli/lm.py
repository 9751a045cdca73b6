"""``slc encode-lm``: a causal LM labels every token of a text into a token-level .slc."""
from __future__ import annotations

import click

from slc.cli.common import Reporter, done, handle_errors, parse_params, part_options, part_spec, wrote


@click.command("encode-lm")
@click.argument("teacher")
@click.argument("text", type=click.Path(dir_okay=False))
@click.option("-o", "--output", required=True, help="Output .slc path.")
@click.option("--vocab-file", help="Word list (one per line, id = line number) to tokenize TEXT for a TorchScript "
              "teacher without a tokenizer.")
@click.option("--seq-len", type=int, help="Cut sequences into windows of at most this many tokens [default: the "
              "teacher's context].")
@click.option("-T", "--temperature", type=float, default=1.0, show_default=True)
@click.option("--ratio", type=float, help="Target ratio against dense fp16 labels: k is chosen so the whole file, "
              "after zstd, lands in [R, 1.1 R] [default: k=64].")
@click.option("--budget", help="Target file size, e.g. 2GB (as --ratio).")
@click.option("--param", "params", multiple=True, metavar="KEY=VALUE",
              help="topk-vq parameter: k (64, or sized by --ratio/--budget), m (8), codes (256), values (vqae|bf16), "
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
@part_options
@handle_errors
def encode_lm(teacher, text, output, vocab_file, seq_len, params, device, trust_pickle, force, resume, quiet, budget,
              share, epoch_range, fit_only, codec_from, **fields):
    """Label every token of TEXT with a causal LM TEACHER into a token-level .slc.

    TEACHER is a TorchScript file mapping token ids (B, L) to logits (B, L, V), or a local
    Hugging Face model directory (needs `pip install transformers`; nothing is downloaded).
    TEXT is plain text (one sequence per line) or JSONL ({"text": ...} or {"input_ids": [...]}).

    \b
    Example:
        slc encode-lm ./my-lm corpus.jsonl -o corpus.slc --param k=64
    """
    from slc.codecs.planner import parse_size
    from slc.inspect import token_summary
    from slc.lm.encode import encode_lm as run
    from slc.reader import open_slc

    rep = Reporter(quiet)
    try:
        result = run(teacher, text, output, vocab_file=vocab_file, seq_len=seq_len, options=parse_params(params),
                     budget=parse_size(budget) if budget else None,
                     device=device, allow_pickle=trust_pickle, force=force, resume=resume, log=rep.log,
                     on_tokens=None if quiet else rep.counted("teacher", "token"),
                     part=part_spec(share, epoch_range, fit_only), codec_from=codec_from, **fields)
    finally:
        rep.close()
    if result.part:
        return wrote(output, result, "")
    with open_slc(output) as f:  # per-token figures computed as `slc inspect` computes them
        tk = token_summary(f)
    done(f"wrote {output}: {result.bytes:,} bytes for {result.labels:,} tokens, {result.ratio:.1f}x vs dense "
         f"fp16 ({tk['bytes_per_token']:.2f} B/token, {tk['ratio_vs_fp16']:.0f}x without the token ids; "
         f"T={result.temperature:g}, codec {result.codec})")

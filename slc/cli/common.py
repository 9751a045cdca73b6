"""What every command shares: one-line errors in CLI words, progress bars and log lines, the codec options."""
from __future__ import annotations

import functools
import os
import re
import sys

import click

from slc.codecs.presets import DEFAULT, MIN_AGREEMENT, PRESETS
from slc.errors import SlcError, SlcInputError

# Library messages name parameters in backticks (`resume=True`, `ratio`); the CLI says the flag.
FLAGS = {"options": "--param", "temperature": "-T", "allow_pickle": "--trust-pickle", "source": "--logits/--probs"}
VALUE_FLAGS = ("source", "out")  # source='logits' -> --logits, out='logits' -> --logits
PARAM = re.compile(r"`([a-z_]+)(?:=([^`]*))?`")


def cli_words(message: str) -> str:
    """``pass `resume=True``` -> ``pass --resume``; ```codec='fp16'``` -> ``--codec fp16``."""

    def flag(m: re.Match) -> str:
        name, value = m.group(1), m.group(2)
        if name in VALUE_FLAGS and value:
            return f"--{value.strip(chr(39))}"
        f = FLAGS.get(name, "--" + name.replace("_", "-"))
        return f if value in (None, "True") else f"{f} {value.strip(chr(39))}"

    return PARAM.sub(flag, message)


def one_line(message: str) -> str:
    """Errors are one line (libraries such as HDF5 put newlines in theirs)."""
    return " ".join(message.split())


def handle_errors(fn):
    """slc's own errors and OS errors become one ``Error: ...`` line and a non-zero exit; anything else is a
    bug and shows its traceback."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except SlcError as e:
            raise click.ClickException(one_line(cli_words(str(e)))) from None
        except OSError as e:
            if isinstance(e, BrokenPipeError):  # `slc decode ... | head` is fine
                os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
                sys.exit(0)
            where = f": {e.filename}" if e.filename else ""
            raise click.ClickException(one_line(cli_words(f"{e.strerror or e}{where}"))) from None
        except KeyboardInterrupt as e:
            hint = cli_words(getattr(e, "slc_hint", "no output was written"))
            click.echo(f"Error: interrupted; {hint}", err=True)
            sys.exit(130)

    return wrapper


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


def main_rank() -> bool:
    """Whether this process speaks for the run: always, unless it is a rank > 0 under torchrun."""
    from slc.distributed import env_world

    w = env_world()
    return w is None or w[0] == 0


def alone() -> bool:
    """Whether this process writes the whole file (not one rank of several under torchrun)."""
    from slc.distributed import env_world

    w = env_world()
    return w is None or w[1] == 1


def done(line: str) -> None:
    """A command's last line (on stderr), said once however many ranks ran it."""
    if main_rank():
        click.echo(line, err=True)


def wrote(output: str, result, detail: str) -> None:
    """The last line of a command that wrote an .slc: its size and ratio, or what part of one it is."""
    if result.part:
        done(f"wrote {output}: {result.bytes:,} bytes, a part file ({result.part}; `slc merge` joins the parts)")
    else:
        done(f"wrote {output}: {result.bytes:,} bytes, {result.ratio:.1f}x vs dense fp16 {detail}")


class Reporter:
    """Log lines and progress bars on stderr for a long write (silent with ``quiet``, and on ranks > 0)."""

    def __init__(self, quiet: bool):
        self.quiet = quiet or not main_rank()
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

    def bar(self, name: str, total: int | None, unit: str):
        """The bar ``name``, made on first use; a total learnt later (``None`` before) is set then."""
        if name not in self.bars:
            self.bars[name] = progress_bar(total, name, unit)
        b = self.bars[name]
        if total is not None and b.total != total:
            b.total = total
            b.refresh()
        return b

    def counted(self, name: str, unit: str):
        """An ``on_items(n, total)`` callback that advances bar ``name``."""
        return lambda n, total: self.bar(name, total, unit).update(n)

    def written(self, total: int | None, desc: str, unit: str, advance: bool = True):
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


# --------------------------------------------------------------------------- the codec options
def codec_options(fn):
    """The options that choose and size the codec, shared by ``compress`` and ``encode``."""
    opts = [
        click.option("--codec", default=DEFAULT, show_default=True, type=click.Choice(list(PRESETS)),
                     help="auto: fit the hybrids, top-k and PCA to the same bytes, keep the lowest held-out KL "
                          "among those that keep the teacher's top-1 (--min-agreement). hybrid: the top classes "
                          "exact (--param top=1), the rest by a VQAE of the label; hybrid-prior: the top classes "
                          "exact, their values by a VQAE, a prior for the rest (peaked labels); hybrid-pca: the "
                          "top classes exact, principal components for the rest (wide, flat labels). "
                          "vqae: log-domain VQAE fitted with KL. vqae-paper: the paper's recipe exactly. "
                          "Baselines: topk (FKD), topk-mr / topk-mrs (LPQLD), pca, quant, vq-noae; fp16, fp32. "
                          "Token-level LM labels: topk-vq (k sized by --ratio/--budget after zstd, else --param k=64; m=8 codes=256 values=vqae|bf16|f32 "
                          "tail=capped|prior|uniform|mr|mrs prior_weight=0.99; capped is the default)."),
        click.option("-T", "--temperature", type=float,
                     help="Temperature the student will train at; stored in the file, fidelity is measured at it "
                          "[default: an input .slc's own, else 1]."),
        click.option("--ratio", type=float, help="Target compression ratio against dense fp16 labels [default: 40; topk-vq: k=64]."),
        click.option("--budget", help="Target file size, e.g. 120MB or 1.5GiB."),
        click.option("--k", "k", type=int, help="Codebook size (VQAE) or kept classes (top-k)."),
        click.option("--dc", type=int, help="Code dimension d_c (VQAE)."),
        click.option("--dh", type=int, help="Latent dimension d_h (VQAE); d_c must divide it."),
        click.option("--param", "params", multiple=True, metavar="KEY=VALUE",
                     help="Fix a codec parameter, e.g. --param bits=3 (quant), --param components=32 "
                          "(pca), --param domain=prob. Repeatable; a key the codec does not take is refused."),
        click.option("--chunk-size", type=int, help="Labels per chunk (also the unit of --resume) [default: 4096, "
                     "fewer for vocabularies over 32k]."),
        click.option("--epochs-per-chunk", type=int, help="Whole epochs one chunk holds (format 1.5) [default: as "
                     "many as --chunk-size labels hold; 1 writes a file that slc < 0.7 reads]."),
        click.option("--zstd/--no-zstd", default=None, help="zstd-code each chunk (kept only where it saves bytes) "
                     "[default: on for topk-vq, off otherwise]."),
        click.option("--tensor-dtype", type=click.Choice(["fp16", "fp32"]),
                     help="Codebook/decoder precision [default: fp16; fp32 for vqae-paper]."),
        click.option("--fit-labels", type=int, help="Labels sampled to fit the codec [default: 65,536 for compress; "
                     "16,384 for encode, which holds them in memory while the teacher streams on]."),
        click.option("--fit-steps", type=int, help="Optimizer steps when fitting a VQAE."),
        click.option("--min-agreement", type=float, default=MIN_AGREEMENT, show_default=True,
                     help="auto keeps only codecs that keep the teacher's top-1 class on at least this share of "
                          "held-out labels; 0 lifts the constraint."),
        click.option("--seed", type=int, default=0, show_default=True,
                     help="Seeds the fit sample (and, for encode, every crop, order and mix)."),
        click.option("--force", is_flag=True, help="Overwrite an existing output (or discard an interrupted run)."),
        click.option("--resume", is_flag=True, help="Continue an interrupted run from its last finished chunk."),
        click.option("-q", "--quiet", is_flag=True, help="No plan, no progress bars."),
    ]
    for opt in reversed(opts):
        fn = opt(fn)
    return fn


def part_options(fn):
    """Writing one part of a file (for ``slc merge``), or with a codec fitted once: ``compress``, ``encode``,
    ``encode-lm``. Under torchrun none is needed: every rank writes its share and one file comes out."""
    opts = [
        click.option("--part", "share", metavar="I/N", help="Write part I of N (chunks split evenly) as a part file; "
                     "`slc merge` joins the N parts into the file one run writes."),
        click.option("--epoch-range", metavar="A:B", help="Write epochs A..B-1 as a part file (on chunk boundaries)."),
        click.option("--fit-only", is_flag=True, help="Fit the codec and write it alone (a codec file) for "
                     "--codec-from; no labels are written."),
        click.option("--codec-from", type=click.Path(dir_okay=False), help="Use the codec of this part or codec "
                     "file instead of fitting one (every job of a split run then shares it)."),
    ]
    for opt in reversed(opts):
        fn = opt(fn)
    return fn


def part_spec(share: str | None, epoch_range: str | None, fit_only: bool):
    """The :class:`~slc.format.parts.PartSpec` the part options ask for, or ``None`` (the whole file)."""
    from slc.format.parts import PartSpec

    given = [name for name, v in (("--part", share), ("--epoch-range", epoch_range), ("--fit-only", fit_only)) if v]
    if len(given) > 1:
        raise SlcInputError(f"expected one of --part, --epoch-range and --fit-only, got {' and '.join(given)}")
    if share:
        return PartSpec.share_of(share)
    if epoch_range:
        return PartSpec.epoch_range(epoch_range)
    return PartSpec(codec_only=True) if fit_only else None


def compress_options(codec, temperature, ratio, budget, k, dc, dh, params, chunk_size, zstd, tensor_dtype,
                     fit_labels, fit_steps, min_agreement=MIN_AGREEMENT, seed=0, epochs_per_chunk=None, **fixed):
    """The :class:`~slc.compression.CompressOptions` the codec options ask for (``fixed``: more fields)."""
    from slc.codecs.planner import parse_size
    from slc.compression import CompressOptions

    options = parse_params(params)
    fit_config = PRESETS[codec].fit_steps(fit_steps, options)
    given = dict(codec=codec, temperature=temperature, ratio=ratio, budget=parse_size(budget) if budget else None,
                 k=k, dc=dc, dh=dh, options=options, chunk_size=chunk_size, epochs_per_chunk=epochs_per_chunk,
                 zstd=zstd, seed=seed,
                 tensor_dtype={"fp16": "<f2", "fp32": "<f4", None: None}[tensor_dtype], fit_config=fit_config,
                 min_agreement=min_agreement)
    if fit_labels is not None:
        given["fit_labels"] = fit_labels
    return CompressOptions.of(**given, **fixed)


def parse_params(params: tuple[str, ...]) -> dict:
    """``("bits=3", "domain=prob")`` -> ``{"bits": 3, "domain": "prob"}``."""
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


def floats(text: str | None, n: tuple[int, ...] | None, what: str) -> tuple[float, ...] | None:
    """Parse "a,b,c" into floats, checking the count is one of ``n`` (any count if None)."""
    if text is None:
        return None
    try:
        v = tuple(float(x) for x in text.split(","))
    except ValueError:
        raise SlcInputError(f"expected comma-separated numbers for {what}, got {text!r}") from None
    if n is not None and len(v) not in n:
        raise SlcInputError(f"expected {' or '.join(map(str, n))} numbers for {what}, got {len(v)} ({text!r})")
    return v

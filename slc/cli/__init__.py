"""The ``slc`` command line: a thin click layer over the library, and the only package importing click.

Commands import the library (and torch) inside their bodies, so ``slc --help`` and ``slc --version``
cost no torch.
"""
from __future__ import annotations

import signal

import click

from slc import __version__
from slc.cli.bench import bench, demo
from slc.cli.interop import import_
from slc.cli.labels import compress, decode, inspect, merge, verify
from slc.cli.lm import encode_lm
from slc.cli.vision import encode, train_student


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="slc")
def cli():
    """slc: compress teacher soft labels for dataset distillation and offline KD."""


for command in (compress, import_, encode, encode_lm, merge, train_student, decode, inspect, verify, bench, demo):
    cli.add_command(command)


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

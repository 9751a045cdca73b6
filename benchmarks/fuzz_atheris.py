"""Coverage-guided fuzzing of the .slc reader with atheris (libFuzzer): any error but SlcFormatError is a crash.

Seeds are the golden files (every codec, formats 1.0-1.2); the reader's modules are instrumented so
libFuzzer steers mutations towards new branches. An input's first byte picks the mode: odd means
"recompute every CRC first", so the checks behind the checksums get fuzzed too; the rest is the
file, which is opened, verified and decoded.

    pip install -e .[fuzz]
    python benchmarks/fuzz_atheris.py -runs=200000          # libFuzzer flags pass through
    python benchmarks/fuzz_atheris.py -max_total_time=600

New interesting inputs go to a temporary corpus folder (or the first folder you name); a crashing
input is written to ``crash-*`` in the working directory, as libFuzzer does.
"""
from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

import atheris

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

with atheris.instrument_imports(include=["slc"]):
    from slc.errors import SlcFormatError
    from tests.test_malformed import fresh_crcs, read_everything

SCRATCH = os.path.join(tempfile.mkdtemp(prefix="slc-atheris-"), "input.slc")


def test_one_input(data: bytes) -> None:
    if not data:
        return
    body = data[1:]
    if data[0] & 1:
        try:
            body = fresh_crcs(body)
        except Exception:  # the test helper gave up on these bytes: fuzz them as they are
            pass
    with open(SCRATCH, "wb") as f:
        f.write(body)
    try:
        read_everything(SCRATCH)
    except SlcFormatError:
        pass


def main() -> None:
    args = list(sys.argv)
    if not any(not a.startswith("-") for a in args[1:]):  # no corpus named: seed a temporary one
        corpus = tempfile.mkdtemp(prefix="slc-corpus-")
        for p in (ROOT / "tests" / "golden").glob("*.slc"):
            for mode in (0, 1):
                Path(corpus, f"{mode}-{p.name}").write_bytes(bytes([mode]) + p.read_bytes())
        args.append(corpus)
    atheris.Setup(args, test_one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()

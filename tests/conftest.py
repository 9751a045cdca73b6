import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest


def synthetic_logits(epochs=2, samples=700, classes=40, rank=6, seed=0) -> np.ndarray:
    """Low-rank logits with a peaked class: structured like a teacher's, small enough for unit tests."""
    rng = np.random.default_rng(seed)
    basis = rng.normal(size=(rank, classes)) * 2.0
    z = rng.normal(size=(epochs, samples, rank)) @ basis
    z[..., 0] += 4.0 * (rng.random((epochs, samples)) > 0.5)
    return z.astype(np.float32)


@pytest.fixture
def logits_npy(tmp_path):
    path = tmp_path / "logits.npy"
    np.save(path, synthetic_logits())
    return path


def assert_probs_equal(got: np.ndarray, pinned: np.ndarray) -> None:
    """Probabilities decoded from a pinned file against the ones pinned with it.

    The file's bytes and every stored value are compared exactly elsewhere; probabilities come out of
    torch's vectorised ``exp`` (softmax at T, exp of log-probs), whose last bits differ between CPUs
    (its AVX2 and AVX-512 kernels round differently), so they are held to a few float32 ulps.
    """
    np.testing.assert_allclose(got, pinned, rtol=1e-6, atol=0)


def run_slc(*args, stdin=None, check=False) -> subprocess.CompletedProcess:
    """Run the real CLI in a subprocess, as a user would."""
    p = subprocess.run([sys.executable, "-m", "slc", *map(str, args)], input=stdin, capture_output=True)
    if check and p.returncode != 0:
        raise AssertionError(f"slc {' '.join(map(str, args))} failed:\n{p.stderr.decode()}")
    return p


def kill_until_done(args, out, whole: bytes, rng: np.random.Generator, duration: float,
                    max_chunks: int = 12, tries: int = 60, restarts: int = 5) -> list[int]:
    """Run ``slc *args -o out --resume`` and SIGKILL it at a random point, again and again, until a run finishes.

    Half of the kills come after a random delay in [0, ``duration``) (imports, setup, the codec fit,
    chunks), half after 1 to ``max_chunks`` more chunks reach the journal. After every kill nothing is at ``out``,
    and a left ``out.partial`` never validates unless it is already the whole file (a kill between
    the last write and the rename). The finished file must equal ``whole``. Returns, for each
    kill, the chunks journaled when it struck (-1: before the setup was durable).

    A run that finishes before any kill (a fast machine, or a draw past the end) proves nothing: the
    output is removed and the loop starts over, up to ``restarts`` times, with delays drawn within
    the time that run took, so at least one kill strikes.
    """
    from slc import SlcFormatError, open_slc

    out = Path(out)
    journal, partial = Path(f"{out}.journal"), Path(f"{out}.partial")
    cmd = [sys.executable, "-m", "slc", *map(str, args), "-o", str(out), "--resume"]
    kills: list[int] = []
    for _ in range(tries):
        start = max(journaled_chunks(journal), 0)
        by_time, chunks = rng.random() < 0.5, int(rng.integers(1, max_chunks + 1))
        delay = float(rng.uniform(0, duration))
        p = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        t0, at = time.monotonic(), -1
        while p.poll() is None and time.monotonic() - t0 < 600:  # long only on a loaded machine
            if time.monotonic() - t0 >= delay if by_time else journaled_chunks(journal) >= start + chunks:
                p.kill()
                at = journaled_chunks(journal)
                break
            time.sleep(0.005)
        err = p.communicate()[1].decode()
        assert p.returncode in (0, -signal.SIGKILL), err
        if p.returncode == -signal.SIGKILL:
            kills.append(at)
        if out.exists():  # finished, or killed after the rename (the journal may then be left behind)
            assert out.read_bytes() == whole
            assert p.returncode != 0 or not (partial.exists() or journal.exists())
            if kills or restarts == 0:
                return kills
            restarts -= 1
            duration = time.monotonic() - t0
            out.unlink()
            journal.unlink(missing_ok=True)
            continue
        if partial.exists() and partial.read_bytes() != whole:
            try:
                with open_slc(partial) as f:
                    f.verify()
            except SlcFormatError:
                pass
            else:
                raise AssertionError(f"an incomplete {partial} validates")
    raise AssertionError(f"slc {args[0]} never finished in {tries} runs")


def journaled_chunks(journal) -> int:
    """Chunks an interrupted run's journal records as written (-1: no journal head yet)."""
    try:
        data = Path(journal).read_bytes()
    except FileNotFoundError:
        return -1
    head = data.find(b"\n")
    return -1 if head < 0 else (len(data) - head - 1) // 48

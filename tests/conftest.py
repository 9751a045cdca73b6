import subprocess
import sys

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


def run_slc(*args, stdin=None, check=False) -> subprocess.CompletedProcess:
    """Run the real CLI in a subprocess, as a user would."""
    p = subprocess.run([sys.executable, "-m", "slc", *map(str, args)], input=stdin, capture_output=True)
    if check and p.returncode != 0:
        raise AssertionError(f"slc {' '.join(map(str, args))} failed:\n{p.stderr.decode()}")
    return p

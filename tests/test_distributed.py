"""Scale-out: ``torchrun`` encode / encode-lm / compress, part files and ``slc merge``, a rank killed mid-run.

Every run here is a real ``torchrun --standalone`` (gloo on CPU) or a real CLI subprocess, and every
claim is byte equality with the file one process writes.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import run_slc, synthetic_logits
from tests.test_encode import SMALL, SUBSET, teacher  # noqa: F401 (a fixture)
from tests.test_encode_lm import lm_setup  # noqa: F401 (a fixture)

pytestmark = pytest.mark.skipif(not hasattr(os, "fork"), reason="torchrun's workers need POSIX here")

VQAE = ["--codec", "vqae", "--fit-steps", "30", "--ratio", "3", "--store-boxes", "--chunk-size", "100"]
FP16 = ["--codec", "fp16", "--chunk-size", "1000"]  # 2 epochs of 500 images a chunk (format 1.5)


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """torchrun runs each rank with OMP_NUM_THREADS=1, and torch's CPU arithmetic (a fit's loss, a teacher's
    logits) can change in the last bits with the thread count: the single-process files use one thread too."""
    with pytest.MonkeyPatch.context() as m:
        m.setenv("OMP_NUM_THREADS", "1")
        yield


def torchrun(n: int, *args, check: bool = True, timeout: float = 600) -> subprocess.CompletedProcess:
    """``torchrun --standalone --nproc-per-node n -m slc ARGS`` as a user runs it."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(n), "-m", "slc",
           *map(str, args)]
    p = subprocess.run(cmd, capture_output=True, timeout=timeout, env={**os.environ, "OMP_NUM_THREADS": "1"})
    if check and p.returncode != 0:
        raise AssertionError(f"torchrun {' '.join(map(str, args))} failed:\n{p.stderr.decode()[-3000:]}")
    return p


@pytest.fixture(scope="module")
def whole(tmp_path_factory, teacher):
    """The single-process files the distributed runs must equal, byte for byte."""
    d = tmp_path_factory.mktemp("whole")
    out = {}
    for name, codec in (("vqae", VQAE), ("fp16", FP16)):
        run_slc("encode", teacher, SUBSET, "-o", d / f"{name}.slc", "--epochs", "6", *SMALL, *codec, "-q", check=True)
        out[name] = (d / f"{name}.slc").read_bytes()
    return out


def encode_args(teacher, out, codec):
    return ["encode", teacher, SUBSET, "-o", out, "--epochs", "6", *SMALL, *codec, "-q"]


@pytest.mark.parametrize("n", [1, 2, 3])
def test_torchrun_encode_is_byte_identical(tmp_path, teacher, whole, n):
    for name, codec in (("vqae", VQAE), ("fp16", FP16)):
        out = tmp_path / f"{name}.slc"
        p = torchrun(n, *encode_args(teacher, out, codec))
        assert out.read_bytes() == whole[name], name
        assert not Path(f"{out}.parts").exists()  # the parts and the shared codec are gone once joined
        assert p.stderr.decode().count("wrote ") == 1  # the last line is said once, by rank 0


@pytest.mark.parametrize("n", [1, 2, 3])
def test_torchrun_encode_lm_and_compress_are_byte_identical(tmp_path, lm_setup, n):  # noqa: F811
    d, _, _ = lm_setup
    lm = ["encode-lm", d / "lm.pt", d / "text.txt", "--vocab-file", d / "vocab.txt", "--param", "k=8",
          "--param", "m=4", "--param", "steps=30", "--chunk-size", "64", "-q"]
    run_slc(*lm, "-o", tmp_path / "lm1.slc", check=True)
    torchrun(n, *lm, "-o", tmp_path / "lmN.slc")
    assert (tmp_path / "lmN.slc").read_bytes() == (tmp_path / "lm1.slc").read_bytes()

    np.save(tmp_path / "z.npy", synthetic_logits(epochs=3, samples=700, classes=40))
    comp = ["compress", tmp_path / "z.npy", "--codec", "vqae", "--fit-steps", "30", "--ratio", "8", "--chunk-size",
            "300", "--epochs-per-chunk", "1", "-q"]
    run_slc(*comp, "-o", tmp_path / "c1.slc", check=True)
    torchrun(n, *comp, "-o", tmp_path / "cN.slc")
    assert (tmp_path / "cN.slc").read_bytes() == (tmp_path / "c1.slc").read_bytes()


def test_separate_jobs_merge_into_the_same_file(tmp_path, teacher, whole):
    """A SLURM array: one job fits the codec, three write epoch ranges with it, merge joins them in any order."""
    codec = tmp_path / "codec.slc"
    run_slc(*encode_args(teacher, codec, VQAE), "--fit-only", check=True)
    parts = []
    for a, b in ((4, 6), (0, 1), (1, 4)):
        parts.append(tmp_path / f"e{a}-{b}.slc")
        run_slc(*encode_args(teacher, parts[-1], VQAE), "--epoch-range", f"{a}:{b}", "--codec-from", codec, check=True)
    p = run_slc(*encode_args(teacher, tmp_path / "x.slc", VQAE), "--part", "0/2", "--codec-from", codec, "--seed", "1")
    assert p.returncode == 1 and "expected a codec file of this run, got a different crop replay field 'recipe.seed' " \
        "(0 vs 1)" in p.stderr.decode() and not (tmp_path / "x.slc").exists()
    p = run_slc(*encode_args(teacher, tmp_path / "x.slc", VQAE), "--part", "0/2", "--codec-from", tmp_path / "x.slc")
    assert p.returncode == 1 and "expected a readable .slc file" in p.stderr.decode()
    p = run_slc("verify", parts[0])
    assert p.returncode == 1 and "expected a whole .slc file, got a part" in p.stdout.decode()
    p = run_slc("verify", "--part", parts[0], check=True)
    assert "OK" in p.stdout.decode() and "part, chunks" in p.stdout.decode()
    run_slc("merge", *parts, "-o", tmp_path / "m.slc", check=True)
    assert (tmp_path / "m.slc").read_bytes() == whole["vqae"]
    run_slc("verify", tmp_path / "m.slc", check=True)
    # --part I/N without a shared codec: every job fits the same codec (CPU, same seed)
    shares = [tmp_path / f"s{i}.slc" for i in range(2)]
    for i, path in enumerate(shares):
        run_slc(*encode_args(teacher, path, FP16), "--part", f"{i}/2", check=True)
    run_slc("merge", *shares, "-o", tmp_path / "f.slc", check=True)
    assert (tmp_path / "f.slc").read_bytes() == whole["fp16"]


def test_merge_refuses_parts_that_do_not_make_one_file(tmp_path, teacher, whole):
    def part(name, *extra, codec=FP16):
        path = tmp_path / f"{name}.slc"
        run_slc(*encode_args(teacher, path, codec), *extra, check=True)
        return path

    a, b, c = (part(f"p{i}", "--part", f"{i}/3") for i in range(3))
    seed = part("seed", "--part", "1/3", "--seed", "1")
    other = part("fp32", "--part", "1/3", codec=["--codec", "fp32", "--chunk-size", "1000"])
    flipped = tmp_path / "flipped.npz"
    with np.load(SUBSET) as z:
        np.savez(flipped, **{k: (255 - z[k]) if z[k].dtype == np.uint8 else z[k] for k in z.files})
    images = tmp_path / "images.slc"
    run_slc("encode", teacher, flipped, "-o", images, "--epochs", "6", *SMALL, *FP16, "-q", "--part", "1/3", check=True)
    e01 = part("e01", "--epoch-range", "0:2")
    e04 = part("e04", "--epoch-range", "0:4")
    for parts, words in [([a, seed, c], "crop replay field 'recipe.seed' (0 vs 1)"),
                         ([a, other, c], "header field 'codec_params.dtype'"),
                         ([a, images, c], "crop replay field 'digest'"),
                         ([a, c], "expected parts that leave no gap, got chunks 1..1 of 3 in no part"),
                         ([e04, b, c], "expected parts that do not overlap, got chunks 1..1 in both"),
                         ([a, b, b, c], "expected each part once, got chunks 1..1 of 3 twice"),
                         ([a, b, c, tmp_path / "whole.slc"], "expected a part file, got a whole .slc"),
                         ([e01, b], "expected parts that leave no gap, got chunks 2..2 of 3 in no part")]:
        (tmp_path / "whole.slc").write_bytes(whole["fp16"])
        p = run_slc("merge", *parts, "-o", tmp_path / "m.slc")
        err = p.stderr.decode()
        assert p.returncode == 1 and words in err and err.count("\n") == 1, (words, err)
        assert not (tmp_path / "m.slc").exists()
    run_slc("merge", c, a, b, "-o", tmp_path / "m.slc", check=True)
    assert (tmp_path / "m.slc").read_bytes() == whole["fp16"]
    p = run_slc("merge", a, b, c, "-o", tmp_path / "m.slc")
    assert p.returncode == 1 and "output exists" in p.stderr.decode()


def rank_pids(parent: int) -> dict[int, int]:
    """``{rank: pid}`` of the workers torchrun started (children of ``parent``, by their RANK)."""
    out = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                ppid = int(f.read().rsplit(")", 1)[1].split()[1])
            if ppid != parent:
                continue
            with open(f"/proc/{entry}/environ", "rb") as f:
                env = dict(kv.split(b"=", 1) for kv in f.read().split(b"\0") if b"=" in kv)
        except (OSError, ValueError, IndexError):
            continue
        if b"RANK" in env:
            out[int(env[b"RANK"])] = int(entry)
    return out


@pytest.mark.skipif(not os.path.isdir("/proc"), reason="finds the ranks through /proc")
def test_a_rank_killed_stops_the_others_and_resume_is_byte_identical(tmp_path, teacher):
    args = encode_args(teacher, tmp_path / "k.slc", ["--codec", "fp16", "--chunk-size", "50", "--epochs-per-chunk",
                                                     "1", "--epochs", "40"])
    run_slc(*encode_args(teacher, tmp_path / "one.slc", ["--codec", "fp16", "--chunk-size", "50",
                                                         "--epochs-per-chunk", "1", "--epochs", "40"]), check=True)
    rng = np.random.default_rng(int(time.time()))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", "-m", "slc",
           *map(str, args)]
    p = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                         env={**os.environ, "OMP_NUM_THREADS": "1"})
    parts = Path(f"{tmp_path / 'k.slc'}.parts")
    journal = parts / "part-00001-of-00002.slc.journal"
    deadline, target = time.monotonic() + 300, int(rng.integers(1, 150))  # rank 1 writes 200 chunks of 50 labels
    pids: dict[int, int] = {}
    while time.monotonic() < deadline and p.poll() is None:
        if journal.exists() and (journal.stat().st_size - journal.read_bytes().index(b"\n") - 1) // 48 >= target:
            pids = rank_pids(p.pid)
            break
        time.sleep(0.01)
    assert 1 in pids, "rank 1 never reached its kill point"
    os.kill(pids[1], signal.SIGKILL)
    killed = time.monotonic()
    err = p.communicate(timeout=120)[1].decode()
    assert time.monotonic() - killed < 60 and p.returncode != 0
    ours = [line for line in err.splitlines() if line.startswith("Error:")]
    assert len(ours) == 1 and "interrupted" in ours[0] and "--resume" in ours[0], err[-2000:]  # rank 0's one line
    assert not (tmp_path / "k.slc").exists() and parts.exists()
    torchrun(2, *args, "--resume")
    assert (tmp_path / "k.slc").read_bytes() == (tmp_path / "one.slc").read_bytes()


def test_a_full_disk_mid_run_keeps_the_parts_and_resume_is_byte_identical(tmp_path, teacher):
    """Every rank's part grows past a file-size limit (a full disk): one line each, the parts stay, and
    `--resume` with room finishes the file one process writes."""
    import resource

    codec = ["--codec", "fp16", "--zstd", "--chunk-size", "50", "--epochs-per-chunk", "1", "--epochs", "12"]
    run_slc(*encode_args(teacher, tmp_path / "one.slc", codec), check=True)  # zstd: no size known ahead
    args = encode_args(teacher, tmp_path / "k.slc", codec)

    def limit():  # writes past 100 KB fail with EFBIG, as on a full disk (each part is ~170 KB)
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (100_000, 100_000))

    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", "-m", "slc",
           *map(str, args)]
    p = subprocess.run(cmd, capture_output=True, preexec_fn=limit, timeout=300)
    err = p.stderr.decode()
    ours = [line for line in err.splitlines() if line.startswith("Error:")]
    assert p.returncode != 0 and ours and all("File too large" in e or "interrupted" in e for e in ours), err[-3000:]
    left = sorted(os.listdir(f"{tmp_path / 'k.slc'}.parts"))
    assert "part-00000-of-00002.slc.partial" in left and not (tmp_path / "k.slc").exists()
    torchrun(2, *args, "--resume")
    assert (tmp_path / "k.slc").read_bytes() == (tmp_path / "one.slc").read_bytes()


def test_a_part_runs_the_teacher_on_its_own_chunks_only(tmp_path):
    """No chunk of teacher work past a part's last chunk, and none before its first for a codec without a fit."""
    import torch

    import slc
    from slc.format.parts import PartSpec

    seen: list[int] = []

    class Counting(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = torch.nn.Linear(3, 10)

        def forward(self, x):
            seen.append(x.shape[0])
            return self.fc(x.mean((2, 3)))

    for i in range(2):
        seen.clear()
        slc.encode(Counting(), SUBSET, tmp_path / f"p{i}.slc", epochs=4, batch_size=50, size=32, codec="fp16",
                   chunk_size=500, epochs_per_chunk=1, part=PartSpec.share_of(f"{i}/2"))
        assert sum(seen) - seen[0] == 1000  # the first call is the 2-crop probe of the output width

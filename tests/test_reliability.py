"""Reliability promises that cut across commands (README "Reliability"), each with real subprocesses.

Crash safety of ``slc compress`` under SIGKILL (``slc encode``'s is in test_encode.py), full disks
and read-only folders (a private tmpfs when this machine may mount one, else a file-size limit
and chmod), fsync before rename, byte-identical output across processes, and no code run when a
``.slc`` is read. Hostile bytes are test_malformed.py's.
"""
import functools
import json
import os
import pickle
import resource
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import torch

import slc
from slc.codecs.vqae import FitConfig
from tests.conftest import kill_until_done, run_slc, synthetic_logits
from tests.test_cli import one_line_error
from tests.test_encode import SMALL, SUBSET, Tiny, script
from tests.test_malformed import GOLDEN, build, take_apart


@pytest.fixture(scope="module")
def big_npy(tmp_path_factory) -> Path:
    """8 epochs x 2,000 x 100 classes (6.4 MB): a few hundred chunks and a VQAE fit of a few seconds."""
    path = tmp_path_factory.mktemp("in") / "logits.npy"
    np.save(path, synthetic_logits(epochs=8, samples=2000, classes=100))
    return path


# --------------------------------------------------------------------------- crash safety
@pytest.mark.parametrize("codec,trials", [(["--codec", "vqae", "--ratio", "8", "--fit-steps", "100"], 2),
                                          (["--codec", "fp16", "--zstd"], 1)], ids=["vqae", "fp16-zstd"])
def test_sigkill_compress_at_random_points_then_resume_is_byte_identical(tmp_path, big_npy, codec, trials):
    """Kill it again and again at random points (a VQAE keeps its encoder beside the partial file)."""
    args = ["compress", big_npy, *codec, "--chunk-size", "50", "-q"]
    whole = tmp_path / "whole.slc"
    t0 = time.monotonic()
    run_slc(*args, "-o", whole, check=True)
    duration = time.monotonic() - t0
    rng = np.random.default_rng(len(codec))
    kills = [kill_until_done(args, tmp_path / f"r{t}.slc", whole.read_bytes(), rng, duration) for t in range(trials)]
    assert sum(map(len, kills)) >= trials, kills
    assert sorted(p.name for p in tmp_path.iterdir()) == [*(f"r{t}.slc" for t in range(trials)), "whole.slc"]


# --------------------------------------------------------------------------- full disk, read-only folder
@functools.cache
def can_mount() -> bool:
    """May this process mount a tmpfs in a private mount namespace (root, or a permissive container)?"""
    if not shutil.which("unshare"):
        return False
    with_dir = "d=$(mktemp -d) && mount -t tmpfs -o size=4k tmpfs \"$d\" && umount \"$d\"; rc=$?; rmdir \"$d\"; exit $rc"
    return subprocess.run(["unshare", "-m", "sh", "-c", with_dir], capture_output=True).returncode == 0


def run_on_small_fs(folder: Path, mount_opts: str, args: list) -> tuple[subprocess.CompletedProcess, list[str]]:
    """``slc *args`` (or ``python -c CODE *ARGS`` for ``args = ["-c", ...]``) with a fresh tmpfs (``mount_opts``) at ``folder``; returns the run and what is left in it.

    Without a mount: a file-size limit of the tmpfs size stands in for a full disk, chmod 555 for
    a read-only one (not for root, which ignores permissions).
    """
    folder.mkdir(exist_ok=True)
    cmd = [sys.executable, *([] if args[0] == "-c" else ["-m", "slc"]), *map(str, args)]
    if can_mount():
        listing = folder.parent / f"{folder.name}.left"
        inner = ('mount -t tmpfs -o "$1" tmpfs "$2" || exit 97; d=$2; l=$3; shift 3; "$@"; rc=$?; '
                 'ls -A "$d" > "$l"; exit $rc')
        p = subprocess.run(["unshare", "-m", "sh", "-c", inner, "sh", mount_opts, str(folder), str(listing), *cmd],
                           capture_output=True)
        assert p.returncode != 97, p.stderr.decode()
        return p, listing.read_text().split()
    if "ro" in mount_opts.split(","):
        if os.geteuid() == 0:
            pytest.skip("root without mount rights: no way to make a read-only folder")
        folder.chmod(0o555)
        try:
            p = subprocess.run(cmd, capture_output=True)
        finally:
            folder.chmod(0o755)
        return p, os.listdir(folder)
    size = int(mount_opts.split("size=")[1].rstrip("k")) << 10

    def limit():  # writes past the limit fail with EFBIG, like a full disk
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (size, size))

    p = subprocess.run(cmd, capture_output=True, preexec_fn=limit)
    return p, os.listdir(folder)


@pytest.fixture(scope="module")
def tiny_teacher(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    return script(Tiny(), tmp_path_factory.mktemp("t") / "tiny.pt")


@pytest.fixture(scope="module")
def dense_slc(tmp_path_factory, big_npy) -> Path:
    out = tmp_path_factory.mktemp("dense") / "dense.slc"
    run_slc("compress", big_npy, "-o", out, "--codec", "fp16", "-q", check=True)
    return out


def _writers(big_npy, dense_slc, teacher, disk, encoded=None):
    """Every command that writes a file, pointed at ``disk``: (name, argv)."""
    return {
        "compress fp32": ["compress", big_npy, "-o", disk / "out.slc", "--codec", "fp32", "-q"],
        "compress fp16+zstd": ["compress", big_npy, "-o", disk / "out.slc", "--codec", "fp16", "--zstd", "-q"],
        "compress vqae": ["compress", big_npy, "-o", disk / "out.slc", "--codec", "vqae", "--ratio", "8",
                          "--fit-steps", "20", "-q"],
        "encode": ["encode", teacher, SUBSET, "-o", disk / "out.slc", "--epochs", "3", *SMALL, "--codec", "fp32", "-q"],
        "decode npy": ["decode", dense_slc, "-o", disk / "out.npy"],
        "decode h5": ["decode", dense_slc, "-o", disk / "out.h5"],
        "train-student": ["train-student", SUBSET, encoded, "-o", disk / "run", "--epochs", "1", "-q"],
    }


# fp16+zstd has no size known ahead, so it runs into the full disk mid-write; the others are refused before
# they write (compress and encode know the file size once planned, decode from the shape)
WRITERS = ["compress fp32", "compress fp16+zstd", "compress vqae", "encode", "decode npy", "decode h5"]


@pytest.mark.parametrize("name", WRITERS)
def test_full_disk_is_one_line_and_leaves_nothing(tmp_path, big_npy, dense_slc, tiny_teacher, name):
    """Nothing at the output; a run that filled the disk mid-write keeps its finished chunks for --resume."""
    disk = tmp_path / "disk"
    p, left = run_on_small_fs(disk, "size=64k", _writers(big_npy, dense_slc, tiny_teacher, disk)[name])
    one_line_error(p, "No space left on device" if can_mount() else "File too large")
    if name == "compress fp16+zstd" and can_mount():  # ENOSPC mid-write: resumable once space is freed
        assert sorted(left) == ["out.slc.journal", "out.slc.partial"] and "--resume" in p.stderr.decode()
    else:
        assert left == []


def test_full_disk_mid_write_leaves_nothing(tmp_path):
    """The write path under every command's output (decode's is refused earlier: it knows its size)."""
    disk = tmp_path / "disk"
    code = ("import sys; from slc.atomic import atomic_output\n"
            "with atomic_output(sys.argv[1]) as f:\n    for _ in range(64): f.write(bytes(16384))")
    p, left = run_on_small_fs(disk, "size=64k", ["-c", code, disk / "out.bin"])
    assert p.returncode != 0
    assert ("No space left on device" if can_mount() else "File too large") in p.stderr.decode()
    assert left == []


@pytest.mark.parametrize("name", [*WRITERS, "train-student"])
def test_read_only_output_folder_is_one_line_and_leaves_nothing(tmp_path, big_npy, dense_slc, tiny_teacher, name):
    disk = tmp_path / "ro"
    encoded = None
    if name == "train-student":
        encoded = tmp_path / "enc.slc"
        run_slc("encode", tiny_teacher, SUBSET, "-o", encoded, "--epochs", "1", *SMALL, "--codec", "fp16", "-q",
                check=True)
    p, left = run_on_small_fs(disk, "ro,size=64k", _writers(big_npy, dense_slc, tiny_teacher, disk, encoded)[name])
    one_line_error(p, "")
    assert ("read-only file system" if can_mount() else "permission denied") in p.stderr.decode().lower()
    assert left == []


# --------------------------------------------------------------------------- fsync, then rename
@pytest.fixture
def disk_calls(monkeypatch) -> list[tuple]:
    """Record fsync (path and size at that moment) and replace calls, in order."""
    calls: list[tuple] = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd):
        path = os.readlink(f"/proc/self/fd/{fd}")
        calls.append(("fsync", path, os.fstat(fd).st_size))
        return real_fsync(fd)

    def replace(src, dst, **kw):
        calls.append(("replace", os.path.abspath(src), os.path.abspath(dst)))
        return real_replace(src, dst, **kw)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", replace)
    return calls


def assert_fsynced_then_renamed(calls: list[tuple], out: Path) -> None:
    out = os.path.abspath(out)
    renames = [i for i, c in enumerate(calls) if c[0] == "replace" and c[2] == out]
    assert len(renames) == 1, calls
    i = renames[0]
    tmp = calls[i][1]
    assert os.path.dirname(tmp) == os.path.dirname(out) and tmp != out  # same folder: the rename is atomic
    assert ("fsync", tmp, os.path.getsize(out)) in calls[:i], calls  # the whole file reached the disk first
    assert ("fsync", os.path.dirname(out), ) == calls[i + 1][:2], calls  # then the rename itself


@pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="needs /proc/self/fd")
@pytest.mark.parametrize("codec", ["vqae", "fp16"])
def test_compress_fsyncs_then_renames(tmp_path, big_npy, disk_calls, codec):
    out = tmp_path / "out.slc"
    slc.compress(str(big_npy), out, codec=codec, chunk_size=500,
                 **({"ratio": 8, "fit_config": FitConfig(steps=20)} if codec == "vqae" else {}))
    assert_fsynced_then_renamed(disk_calls, out)


@pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="needs /proc/self/fd")
@pytest.mark.parametrize("suffix", [".npy", ".h5"])
def test_decode_fsyncs_then_renames(tmp_path, dense_slc, disk_calls, suffix):
    from slc.decode import export

    out = tmp_path / f"out{suffix}"
    export(str(dense_slc), str(out))
    assert_fsynced_then_renamed(disk_calls, out)


# --------------------------------------------------------------------------- determinism
def test_same_bytes_across_processes_hash_seeds_and_threads(tmp_path, big_npy):
    """Two processes that differ in PYTHONHASHSEED and thread count write the same file (auto fits two codecs)."""
    outs = []
    for i, threads in enumerate(("1", "2")):
        env = {**os.environ, "PYTHONHASHSEED": str(i + 1), "OMP_NUM_THREADS": threads, "MKL_NUM_THREADS": threads}
        out = tmp_path / f"{i}.slc"
        for codec in ("auto", "pca"):
            steps = ["--fit-steps", "50"] if codec == "auto" else []  # pca is not fitted by steps
            p = subprocess.run([sys.executable, "-m", "slc", "compress", str(big_npy), "-o", str(out), "--force",
                                "--codec", codec, "--ratio", "20", "-T", "4", *steps, "--seed", "5", "-q"],
                               env=env, capture_output=True, text=True)
            assert p.returncode == 0, p.stderr
            outs.append((codec, out.read_bytes()))
    assert outs[0] == outs[2] and outs[1] == outs[3]


# --------------------------------------------------------------------------- no code runs when reading
PICKLE_BOMB = pickle.dumps(type("Bomb", (), {"__reduce__": lambda self: (os.system, ("touch PWNED",))})())

DRIVER = textwrap.dedent("""
    import contextlib, io, json, os, pickle, sys
    import numpy as np, torch
    import slc, slc.cli, slc.decode, slc.reader

    def refuse(*a, **k):
        raise AssertionError("unpickling attempted")

    real_np_load = np.load
    def np_load(*a, allow_pickle=False, **k):
        assert not allow_pickle, "np.load(allow_pickle=True)"
        return real_np_load(*a, allow_pickle=False, **k)

    pickle.load = pickle.loads = pickle.Unpickler = torch.load = refuse
    np.load = np_load
    WATCH = ("pickle.", "exec", "compile", "os.system", "os.exec", "os.posix_spawn", "os.fork", "subprocess.",
             "marshal.load", "builtins.input", "ctypes.", "import")

    def run(files):
        for i, path in enumerate(files):
            for argv in (["inspect", path], ["verify", path], ["decode", path, "-o", f"o{i}.npy", "--force"],
                         ["decode", path, "-o", f"o{i}.h5", "--force"], ["decode", path, "-o", "-", "--logits"]):
                sink = io.TextIOWrapper(io.BytesIO())
                with contextlib.redirect_stdout(sink), contextlib.redirect_stderr(sink):
                    try:
                        slc.cli.cli.main(argv, prog_name="slc", standalone_mode=True)
                    except SystemExit:
                        pass
            try:
                with slc.open_slc(path) as f:
                    f.verify()
                    for _ in f.iter_chunks():
                        pass
            except slc.SlcFormatError:
                pass

    files = json.loads(sys.argv[1])
    run(files)  # warm up: every lazy import and first-use setup happens here
    seen = []
    sys.addaudithook(lambda event, args: seen.append(event) if event.startswith(WATCH) else None)
    run(files)
    print(json.dumps(sorted(set(seen))))
""")


def test_reading_never_unpickles_or_runs_code(tmp_path):
    """inspect, verify and decode every golden file and hostile ones holding a pickle that would run a command.

    Pickle and ``torch.load`` are replaced by functions that fail, ``np.load`` must not allow pickles, and
    an audit hook (after a warm-up pass that does every import) records any exec, compile, unpickling,
    import, subprocess or ctypes call. None may happen.
    """
    files = sorted(str(p) for p in GOLDEN.glob("*.slc"))
    parts = take_apart(GOLDEN / "v1.0-topk.slc")
    files.append(str(build(tmp_path / "optional.slc", parts, extra=[("model.pkl", PICKLE_BOMB, False)])))
    files.append(str(build(tmp_path / "required.slc", parts, extra=[("model.pkl", PICKLE_BOMB, True)])))
    pca = take_apart(GOLDEN / "v1.2-pca.slc")
    files.append(str(build(tmp_path / "tensor.slc", pca, tensors={**pca.tensors, next(iter(pca.tensors)): PICKLE_BOMB})))
    files.append(str(build(tmp_path / "header.slc", parts, header=PICKLE_BOMB)))
    p = subprocess.run([sys.executable, "-c", DRIVER, json.dumps(files)], cwd=tmp_path, capture_output=True, text=True,
                       timeout=600)
    assert p.returncode == 0, p.stderr
    assert json.loads(p.stdout.strip().splitlines()[-1]) == []
    assert not (tmp_path / "PWNED").exists()
    assert (tmp_path / "o0.npy").exists()  # the driver really decoded

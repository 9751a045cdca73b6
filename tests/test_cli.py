"""The CLI end to end, in real subprocesses: compress, decode, inspect, verify and bad input."""
import json
import os

import h5py
import numpy as np
import pytest

from slc.codecs.labels import to_logp
from tests.conftest import run_slc, synthetic_logits

FAST = ["--codec", "vqae", "--fit-steps", "60", "-q"]


def one_line_error(p, needle):
    err = p.stderr.decode()
    assert p.returncode != 0
    assert "Traceback" not in err
    lines = [line for line in err.strip().splitlines() if line]
    assert len(lines) == 1 and lines[0].startswith("Error: "), err
    assert needle in lines[0], lines[0]


def test_compress_inspect_decode_roundtrip(tmp_path, logits_npy):
    out = tmp_path / "l.slc"
    run_slc("compress", logits_npy, "-o", out, "--ratio", "8", "-T", "2", "--chunk-size", "256", *FAST, check=True)
    info = json.loads(run_slc("inspect", out, "--json", "--against", logits_npy, check=True).stdout)
    assert info["bytes"] == os.path.getsize(out)
    assert info["ratio_vs_fp16"] >= 8
    assert info["temperature"] == 2 and info["source"] == "logits"
    assert 0 <= info["fidelity"]["kl"] < 0.5 and info["fidelity"]["top1_agreement"] > 0.5
    run_slc("decode", out, "-o", tmp_path / "d.npy", check=True)
    dec = np.load(tmp_path / "d.npy")
    assert dec.shape == (2, 700, 40) and dec.dtype == np.float32
    np.testing.assert_allclose(dec.sum(-1), 1, atol=1e-5)
    assert run_slc("verify", out, check=True).stdout.decode().startswith("OK")


def test_decode_selection_and_stdout_stream(tmp_path, logits_npy):
    out = tmp_path / "l.slc"
    run_slc("compress", logits_npy, "-o", out, "--codec", "fp32", "--chunk-size", "100", "-q", check=True)
    p = run_slc("decode", out, "--epoch", "1", "--start", "150", "--stop", "420", "-o", "-", check=True)
    import io

    got = np.lib.format.read_array(io.BytesIO(p.stdout))
    want = np.exp(to_logp(synthetic_logits()[1, 150:420], "logits", 1.0))
    assert got.shape == (270, 40)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-7)
    # logits out, re-tempered: softmax(logits / 3) is the label at T=3
    p = run_slc("decode", out, "--epoch", "0", "--logits", "-T", "3", "-o", "-", check=True)
    lg = np.lib.format.read_array(io.BytesIO(p.stdout))
    np.testing.assert_allclose(np.exp(to_logp(lg, "logits", 3.0)),
                               np.exp(to_logp(synthetic_logits()[0], "logits", 3.0)), atol=1e-5)


def test_decode_to_hdf5_and_compress_from_hdf5_and_stdin(tmp_path, logits_npy):
    z = synthetic_logits()
    with h5py.File(tmp_path / "in.h5", "w") as f:
        f.create_dataset("teacher/logits", data=z)
    a, b = tmp_path / "a.slc", tmp_path / "b.slc"
    run_slc("compress", f"{tmp_path / 'in.h5'}:/teacher/logits", "-o", a, "--codec", "topk", "--k", "5", "-q",
            check=True)
    run_slc("compress", "-", "-o", b, "--codec", "topk", "--k", "5", "-q", stdin=logits_npy.read_bytes(), check=True)
    assert a.read_bytes() == b.read_bytes()  # same labels, same bytes, whatever the source
    run_slc("decode", a, "-o", tmp_path / "d.h5", check=True)
    with h5py.File(tmp_path / "d.h5") as f:
        assert f["labels"].shape == (2, 700, 40)


def test_stdin_stream_fits_vqae(tmp_path, logits_npy):
    out = tmp_path / "s.slc"
    run_slc("compress", "-", "-o", out, "--ratio", "6", *FAST, stdin=logits_npy.read_bytes(), check=True)
    assert run_slc("verify", out).returncode == 0


def test_probabilities_input_is_detected(tmp_path):
    p = np.exp(to_logp(synthetic_logits(), "logits", 1.0)).astype(np.float32)
    np.save(tmp_path / "p.npy", p)
    run_slc("compress", tmp_path / "p.npy", "-o", tmp_path / "p.slc", "--codec", "fp16", "-q", check=True)
    info = json.loads(run_slc("inspect", tmp_path / "p.slc", "--json").stdout)
    assert info["source"] == "probs"


BAD_ARRAYS = {
    "rank": (np.zeros((3, 4, 5, 6), np.float32), "shape"),
    "one-class": (np.zeros((10, 1), np.float32), "at least 2 classes"),
    "nan": (np.where(np.eye(8, 10) > 0, np.nan, 0).astype(np.float32), "NaN"),
    "inf": (np.where(np.eye(8, 10) > 0, np.inf, 0).astype(np.float32), "inf"),
    "ints": (np.ones((8, 10), np.int64), "floating-point"),
}


@pytest.mark.parametrize("case", sorted(BAD_ARRAYS))
def test_bad_label_arrays(tmp_path, case):
    arr, needle = BAD_ARRAYS[case]
    np.save(tmp_path / "bad.npy", arr)
    p = run_slc("compress", tmp_path / "bad.npy", "-o", tmp_path / "o.slc", "--codec", "fp16", "-q")
    one_line_error(p, needle)
    assert not (tmp_path / "o.slc").exists()
    assert not [f for f in os.listdir(tmp_path) if f.endswith(".part")]


@pytest.mark.parametrize("arr,needle", [
    (np.full((8, 10), 0.1, np.float32) * np.array([-1] + [1] * 9, np.float32), "non-negative"),
    (np.full((8, 10), 0.2, np.float32), "summing to 1"),
])
def test_bad_probabilities(tmp_path, arr, needle):
    np.save(tmp_path / "bad.npy", arr)
    one_line_error(run_slc("compress", tmp_path / "bad.npy", "-o", tmp_path / "o.slc", "--probs", "-q"), needle)


@pytest.mark.parametrize("args,needle", [
    (["--codec", "vqae", "--k", "1"], "k >= 2"),
    (["--codec", "vqae", "--dc", "7", "--dh", "64"], "divide"),
    (["--codec", "vqae", "--ratio", "100000"], "reachable"),
    (["--codec", "topk", "--ratio", "100000"], "reachable"),
    (["--k", "4"], "--codec auto"),
    (["--ratio", "0.5"], "ratio >= 1"),
    (["--budget", "lots"], "size like"),
    (["--codec", "fp16", "--ratio", "10"], "fixed"),
    (["-T", "0"], "temperature > 0"),
])
def test_bad_parameters(tmp_path, logits_npy, args, needle):
    one_line_error(run_slc("compress", logits_npy, "-o", tmp_path / "o.slc", *args, "-q"), needle)
    assert not (tmp_path / "o.slc").exists()


def test_existing_output_needs_force(tmp_path, logits_npy):
    out = tmp_path / "o.slc"
    out.write_bytes(b"precious")
    one_line_error(run_slc("compress", logits_npy, "-o", out, "--codec", "fp16", "-q"), "--force")
    assert out.read_bytes() == b"precious"
    run_slc("compress", logits_npy, "-o", out, "--codec", "fp16", "-q", "--force", check=True)
    run_slc("decode", out, "-o", tmp_path / "d.npy", check=True)
    one_line_error(run_slc("decode", out, "-o", tmp_path / "d.npy"), "--force")


def test_missing_input_and_non_slc_files(tmp_path):
    one_line_error(run_slc("compress", tmp_path / "nope.npy", "-o", tmp_path / "o.slc"), "no such file")
    (tmp_path / "x.slc").write_bytes(b"PK\x03\x04 definitely a zip file" * 4)
    one_line_error(run_slc("inspect", tmp_path / "x.slc"), "got a zip archive (.npz, or a torch.save")
    (tmp_path / "y.slc").write_bytes(b"\x00 neither an slc nor anything we know" * 4)
    one_line_error(run_slc("decode", tmp_path / "y.slc", "-o", tmp_path / "d.npy"), "expected magic")
    p = run_slc("verify", tmp_path / "x.slc")
    assert p.returncode == 1 and p.stdout.decode().startswith("INVALID")
    # labels passed where an .slc belongs: say what the file is and what makes an .slc of it
    np.save(tmp_path / "labels.npy", np.zeros((4, 3), np.float32))
    one_line_error(run_slc("inspect", tmp_path / "labels.npy"), "got an .npy array (labels: `slc compress` makes an .slc")


def test_truncated_and_corrupted_files(tmp_path, logits_npy):
    out = tmp_path / "o.slc"
    run_slc("compress", logits_npy, "-o", out, "--codec", "topk", "--k", "4", "-q", check=True)
    data = out.read_bytes()
    (tmp_path / "t.slc").write_bytes(data[: len(data) // 2])
    one_line_error(run_slc("inspect", tmp_path / "t.slc"), "expected")
    flipped = bytearray(data)
    flipped[len(data) // 3] ^= 0x10  # inside the chunks
    (tmp_path / "c.slc").write_bytes(bytes(flipped))
    p = run_slc("verify", tmp_path / "c.slc")
    assert p.returncode == 1 and "CRC" in p.stdout.decode()
    one_line_error(run_slc("decode", tmp_path / "c.slc", "-o", tmp_path / "d.npy"), "CRC")
    assert not (tmp_path / "d.npy").exists()


def test_newer_major_version_is_refused(tmp_path, logits_npy):
    import struct

    from slc.format.container import crc32

    out = tmp_path / "o.slc"
    run_slc("compress", logits_npy, "-o", out, "--codec", "fp16", "-q", check=True)
    data = bytearray(out.read_bytes())
    data[8:10] = struct.pack("<H", 2)
    data[60:64] = struct.pack("<I", crc32(bytes(data[:60])))
    out.write_bytes(bytes(data))
    one_line_error(run_slc("inspect", out), "major version 1")


def test_every_command_has_help():
    for cmd in ("compress", "decode", "inspect", "verify"):
        p = run_slc(cmd, "--help", check=True)
        assert len(p.stdout.decode().strip().splitlines()) > 3

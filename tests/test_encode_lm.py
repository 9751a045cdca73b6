"""slc encode-lm: a real TorchScript LM over a real text file, through the CLI, into a token-level .slc."""
from __future__ import annotations

import numpy as np
import pytest
import torch

import slc
from slc.lm.encode import encode_lm
from slc.codecs.sparse import select_topk
from tests.conftest import kill_until_done, run_slc
from tests.test_lm_teacher import V, WORDS, TinyLM

TEXT = ["the cat sat on the mat", "a dog sat", "the dog sat on a cat on the mat", "cat", "a cat and a dog"]


@pytest.fixture(scope="module")
def lm_setup(tmp_path_factory):
    d = tmp_path_factory.mktemp("encode_lm")
    torch.manual_seed(0)
    lm = TinyLM().eval()
    torch.jit.save(torch.jit.script(lm), str(d / "lm.pt"))
    words = WORDS + [f"w{i}" for i in range(V - len(WORDS))]
    (d / "vocab.txt").write_text("\n".join(words) + "\n")
    rng = np.random.default_rng(0)
    lines = TEXT + [" ".join(rng.choice(words[1:], int(rng.integers(3, 40)))) for _ in range(40)]
    (d / "text.txt").write_text("\n".join(lines) + "\n")
    index = {w: i for i, w in enumerate(words)}
    seqs = [np.array([index.get(w, 0) for w in line.lower().split()]) for line in lines]
    return d, lm, seqs


def test_encode_lm_labels_every_token_with_its_sequence(lm_setup):
    d, lm, seqs = lm_setup
    out = d / "t.slc"
    p = run_slc("encode-lm", d / "lm.pt", d / "text.txt", "--vocab-file", d / "vocab.txt", "-o", out,
                "--param", "k=16", "--param", "m=4", "--param", "steps=50", "--chunk-size", "64", check=True)
    err = p.stderr.decode()
    assert "teacher: 500 words on cpu" in err and "B/token" in err
    with torch.no_grad():
        ref = np.concatenate([torch.log_softmax(lm(torch.from_numpy(s)[None])[0], -1).numpy() for s in seqs])
    with slc.open_slc(out) as f:
        assert f.header.classes == V and f.header.samples == sum(map(len, seqs)) == len(ref)
        assert f.sequences == len(seqs)
        np.testing.assert_array_equal(np.diff(f.offsets), [len(s) for s in seqs])
        np.testing.assert_array_equal(f.token_ids(), np.concatenate(seqs))
        np.testing.assert_array_equal(f.sparse().indices, select_topk(ref, 16).indices)
        a, b = f.sequence_range(2)
        np.testing.assert_array_equal(f.token_ids(a, b), seqs[2])
    assert run_slc("encode-lm", d / "lm.pt", d / "text.txt", "--vocab-file", d / "vocab.txt", "-o", out).returncode == 1


def test_encode_lm_resumes_byte_identically_after_sigkill(lm_setup, tmp_path):
    d, _, _ = lm_setup
    args = ["encode-lm", d / "lm.pt", d / "text.txt", "--vocab-file", d / "vocab.txt", "--param", "k=8",
            "--param", "values=bf16", "--chunk-size", "8", "-q"]
    run_slc(*args, "-o", tmp_path / "whole.slc", check=True)
    whole = (tmp_path / "whole.slc").read_bytes()
    kills = kill_until_done(args, tmp_path / "k.slc", whole, np.random.default_rng(3), duration=1.5, max_chunks=30)
    assert kills  # at least one run was interrupted


def test_encode_lm_bad_input_is_one_line(lm_setup, tmp_path):
    d, _, _ = lm_setup
    (tmp_path / "bad.txt").write_text("the cat zebra\n")
    p = run_slc("encode-lm", d / "lm.pt", tmp_path / "bad.txt", "--vocab-file", d / "vocab.txt", "-o",
                tmp_path / "x.slc")
    assert p.returncode == 0  # <unk> is in the vocabulary: unknown words map to it
    (tmp_path / "v.txt").write_text("the\ncat\n")
    p = run_slc("encode-lm", d / "lm.pt", tmp_path / "bad.txt", "--vocab-file", tmp_path / "v.txt", "-o",
                tmp_path / "y.slc")
    lines = p.stderr.decode().strip().splitlines()
    assert p.returncode == 1 and lines[-1].startswith("Error: ") and "zebra" in lines[-1]
    p = run_slc("encode-lm", d / "lm.pt", d / "text.txt", "--vocab-file", d / "vocab.txt", "--param", "k=600",
                "-o", tmp_path / "z.slc")
    assert p.returncode == 1 and "k < V (500)" in p.stderr.decode().strip().splitlines()[-1]
    assert not (tmp_path / "y.slc").exists() and not (tmp_path / "z.slc").exists()


def test_encode_lm_resumes_when_every_chunk_was_already_written(lm_setup, tmp_path):
    """A kill after the last chunk reached the journal, before the rename: the resume only finishes the file."""
    d, _, seqs = lm_setup
    kw = dict(vocab_file=str(d / "vocab.txt"), options={"k": 8, "values": "bf16"}, chunk_size=8)
    whole = encode_lm(d / "lm.pt", d / "text.txt", tmp_path / "whole.slc", **kw)
    total = sum(map(len, seqs))
    assert total % 8 and whole.labels == total  # the last chunk is short: first * rows overshoots the text

    seen = []

    def stop_at_the_end(count, *_):  # called after each chunk is written and journaled
        seen.append(count)
        if sum(seen) == total:
            raise KeyboardInterrupt

    out = tmp_path / "k.slc"
    with pytest.raises(KeyboardInterrupt):
        encode_lm(d / "lm.pt", d / "text.txt", out, progress=stop_at_the_end, **kw)
    assert not out.exists() and (tmp_path / "k.slc.journal").exists()
    encode_lm(d / "lm.pt", d / "text.txt", out, resume=True, **kw)
    assert out.read_bytes() == (tmp_path / "whole.slc").read_bytes()


def test_encode_lm_ratio_is_met_after_zstd(lm_setup, tmp_path):
    """A stream's plan measures its first chunks (the teacher runs once): the whole file lands in [R, 1.1 R]."""
    d, _, seqs = lm_setup
    out = tmp_path / "r.slc"
    p = run_slc("encode-lm", d / "lm.pt", d / "text.txt", "--vocab-file", d / "vocab.txt", "-o", out, "--ratio", 12,
                "--param", "steps=50", "--chunk-size", "256", check=True)
    dense = sum(map(len, seqs)) * V * 2
    assert 12 <= dense / out.stat().st_size <= 1.1 * 12, p.stderr.decode()
    assert "value codes keep" in p.stderr.decode()


@pytest.mark.parametrize("values", ["vqae", "f32"])
def test_selection_on_the_teachers_device_writes_the_host_paths_bytes(lm_setup, tmp_path, values):
    """On a CPU teacher the device path (blocks left as tensors, selected there) is the host path, byte for byte."""
    d, _, _ = lm_setup
    opts = dict(codec="topk-vq", options={"k": 8, "m": 4, "steps": 30, "values": values}, chunk_size=48)
    for name, on_device in (("device", True), ("host", False)):
        encode_lm(d / "lm.pt", d / "text.txt", tmp_path / f"{name}.slc", vocab_file=str(d / "vocab.txt"),
                  device_select=on_device, **opts)
    assert (tmp_path / "device.slc").read_bytes() == (tmp_path / "host.slc").read_bytes()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_selection_on_cuda_matches_the_cpu_teacher(lm_setup, tmp_path):
    """A CUDA teacher selects on the GPU: the same words and values (float32 rounding apart) as the CPU run."""
    d, _, _ = lm_setup
    opts = dict(codec="topk-vq", options={"k": 8, "values": "f32"}, chunk_size=48,
                vocab_file=str(d / "vocab.txt"))
    for dev in ("cpu", "cuda"):
        encode_lm(d / "lm.pt", d / "text.txt", tmp_path / f"{dev}.slc", device=dev, **opts)
    with slc.open_slc(tmp_path / "cpu.slc") as a, slc.open_slc(tmp_path / "cuda.slc") as b:
        sa, sb = a.sparse(), b.sparse()
    same = (sa.indices == sb.indices).all(1)
    assert same.mean() > 0.99  # rows differ only where two words tie within float32 rounding
    np.testing.assert_allclose(sb.logp[same], sa.logp[same], atol=2e-5)
    np.testing.assert_allclose(sb.tail[same], sa.tail[same], atol=2e-5)

"""Token-level labels (codec topk-vq, format 1.3): exact indices, value and tail treatments, sequences, bad input."""
from __future__ import annotations

import json
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

import slc
from slc.codecs.topkvq import index_bytes, plane_ranks, rank_planes
from slc.errors import SlcFormatError, SlcInputError
from slc.lm.distill import kd_loss
from slc.codecs.sparse import kl_rows, logsumexp_rows, select_topk, top_k
from tests.conftest import assert_probs_equal, run_slc

GOLDEN = Path(__file__).parent / "golden"
FAST = {"steps": 60}  # VQAE fit steps: enough to decode sensibly, quick in CI


def lm_logits(tokens: int = 600, vocab: int = 3000, seed: int = 0, offset: int = 0) -> np.ndarray:
    """Zipf-shaped next-word logits with per-token noise: skewed like an LM's, small enough for unit tests."""
    rng = np.random.default_rng(seed)
    base = -1.1 * np.log(np.arange(1, vocab + 1))
    base = np.roll(base, offset)  # offset > 0 puts the likely words at high ids
    return (base + rng.normal(size=(tokens, vocab)) * 1.5).astype(np.float32)


def last_line(p) -> str:
    return p.stderr.decode().strip().splitlines()[-1]


def logp_of(logits: np.ndarray) -> np.ndarray:
    return torch.log_softmax(torch.from_numpy(logits), 1).numpy()


@pytest.fixture(scope="module")
def token_file(tmp_path_factory):
    d = tmp_path_factory.mktemp("tokens")
    logits = lm_logits()
    np.save(d / "logits.npy", logits)
    seq = np.array([0, 100, 350, 600])
    ids = np.arange(600) * 13 % 3000
    out = d / "t.slc"
    slc.compress(str(d / "logits.npy"), out, codec="topk-vq", options={"k": 16, "m": 4, **FAST}, sequences=seq,
                 token_ids=ids, chunk_size=128)
    return out, logits, seq, ids


def test_indices_are_exact_and_sequences_read_directly(token_file):
    out, logits, seq, ids = token_file
    exact = select_topk(logp_of(logits), 16)
    with slc.open_slc(out) as f:
        assert (f.layout.major, f.layout.minor) == (1, 3) and f.header.entropy == "zstd"
        s = f.sparse()
        np.testing.assert_array_equal(s.indices, exact.indices)  # the stored words are the teacher's, in order
        assert f.sequences == 3 and f.sequence_range(1) == (100, 350)
        one = f.sequence(1)
        np.testing.assert_array_equal(one.indices, s.indices[100:350])
        np.testing.assert_array_equal(one.logp, s.logp[100:350])
        np.testing.assert_array_equal(f.token_ids(), ids)
        # the value codec is lossy but close: collapsed KL per token well under a nat
        total = np.logaddexp.reduce(np.concatenate([s.logp, s.tail[:, None]], 1), axis=1)
        np.testing.assert_allclose(total, 0, atol=1e-5)  # stored mass + tail = 1
        dense = f.sequence(2, sparse=False)
        assert dense.shape == (250, 3000)
        np.testing.assert_allclose(np.exp(dense).sum(1), 1, atol=1e-4)
        assert f.sequence(0, length=10).indices.shape == (10, 16)
        with pytest.raises(SlcInputError, match="expected at most 100 tokens for sequence 0"):
            f.sequence(0, length=101)
        with pytest.raises(IndexError):
            f.sequence(3)


def bf16_file_with_tail(tmp_path, lp: np.ndarray, tail: str):
    """A k=16 bf16 file of ``lp`` with ``tail``: its mean KL to ``lp``, sparse labels, dense decode and prior."""
    out = tmp_path / f"{tail}.slc"
    slc.compress(lp, out, codec="topk-vq", source="logits", options={"k": 16, "values": "bf16", "tail": tail})
    with slc.open_slc(out) as f:
        s, q, prior = f.sparse(), f.decode(0, out="logits"), f.sparse_codec.prior_logp
    p = torch.from_numpy(lp)
    return float((p.exp() * (p - torch.log_softmax(torch.from_numpy(q), 1))).sum(1).mean()), s, q, prior


def test_prior_tail_beats_the_uniform_tail_at_equal_bytes(tmp_path, token_file):
    """With Zipf-shaped teachers the tail is mostly common words: the stored prior puts it there."""
    lp = logp_of(token_file[1])
    kl = {tail: bf16_file_with_tail(tmp_path, lp, tail)[0] for tail in ("prior", "uniform")}
    assert kl["prior"] < 0.8 * kl["uniform"], kl


def test_capped_tail_is_the_prior_water_filled_under_the_smallest_stored_word(tmp_path, token_file):
    """Through a real file: the dense label sums to 1, no unstored word is above a stored one, the shares
    match a bisection for the water level, and the KL is lower than the plain prior's."""
    lp = logp_of(token_file[1])
    kl_prior = bf16_file_with_tail(tmp_path, lp, "prior")[0]
    kl, s, q, prior = bf16_file_with_tail(tmp_path, lp, "capped")
    dense = np.exp(q.astype(np.float64))
    np.testing.assert_allclose(dense.sum(1), 1, atol=1e-4)
    others = np.ones_like(dense, bool)
    np.put_along_axis(others, s.indices, False, 1)
    cap = np.exp(s.logp.astype(np.float64)).min(1)
    assert (np.where(others, dense, 0).max(1) <= cap * (1 + 1e-5)).all()
    pi = np.exp(prior.astype(np.float64) - np.logaddexp.reduce(prior.astype(np.float64)))
    for r in range(0, len(dense), 97):
        t, w = np.exp(np.float64(s.tail[r])), pi[others[r]]
        lo, hi = 0.0, 1e12
        for _ in range(200):  # the water level by bisection
            lam = (lo + hi) / 2
            lo, hi = (lo, lam) if np.minimum(cap[r], lam * w).sum() > t else (lam, hi)
        np.testing.assert_allclose(dense[r][others[r]], np.minimum(cap[r], lo * w), rtol=1e-4, atol=1e-12)
    assert kl < kl_prior, (kl, kl_prior)


def test_bf16_values_and_the_mr_mrs_tails(tmp_path):
    lp = logp_of(lm_logits(200, 500))
    exact = select_topk(lp, 8)
    p16 = torch.from_numpy(np.exp(exact.logp)).to(torch.bfloat16).float().numpy()
    for tail in ("uniform", "mr", "mrs"):
        out = tmp_path / f"{tail}.slc"
        slc.compress(lp, out, codec="topk-vq", source="logits", options={"k": 8, "values": "bf16", "tail": tail})
        with slc.open_slc(out) as f:
            s, dense = f.sparse(), np.exp(f.decode(0, out="logits"))
        np.testing.assert_array_equal(s.indices, exact.indices)
        others = np.ones_like(dense, bool)
        np.put_along_axis(others, s.indices, False, 1)
        rest = dense[others].reshape(200, 492)
        if tail == "uniform":
            np.testing.assert_allclose(s.logp, np.log(p16), rtol=1e-6)
            np.testing.assert_allclose(rest, rest[:, :1].repeat(492, 1), rtol=1e-5)
        elif tail == "mr":
            assert np.isneginf(s.tail).all() and rest.max() == 0
            np.testing.assert_allclose(np.exp(s.logp).sum(1), 1, rtol=1e-5)
        else:  # every unstored word gets the smallest stored probability
            np.testing.assert_allclose(rest, np.exp(s.logp).min(1, keepdims=True).repeat(492, 1), rtol=1e-4)


@pytest.mark.parametrize("vocab,nbytes", [(200, 1), (3000, 2), (150_001, 3)])
def test_index_width_follows_the_vocabulary(tmp_path, vocab, nbytes):
    logits = lm_logits(48, vocab, offset=vocab - 100)  # the likely words have the highest ids
    out = tmp_path / "v.slc"
    slc.compress(logits, out, codec="topk-vq", source="logits", options={"k": 12, "m": 2, **FAST})
    with slc.open_slc(out) as f:
        assert f.codec.params()["index_bytes"] == nbytes
        np.testing.assert_array_equal(f.sparse().indices, select_topk(logp_of(logits), 12).indices)
    assert index_bytes(2 ** 24 + 3) == 4
    ranks = np.array([0, 1, 2 ** 24 + 2, 70_000], np.int64)
    np.testing.assert_array_equal(plane_ranks(rank_planes(ranks, 4), 4, 4), ranks)


def test_suppressed_logits_and_bad_rows(tmp_path):
    logits = lm_logits(64, 400)
    logits[5, 7:] = -np.inf  # only 7 words possible: fewer than k
    logits[9, :] = np.where(np.arange(400) < 200, logits[9], -1e30)  # very negative, not -inf
    out = tmp_path / "s.slc"
    slc.compress(logits, out, codec="topk-vq", source="logits", options={"k": 10, "values": "bf16"})
    with slc.open_slc(out) as f:
        s = f.sparse()
        assert set(s.indices[5, :7]) == set(range(7)) and np.isneginf(s.logp[5, 7:]).all()
        assert s.indices[9].max() < 200
        assert np.isfinite(f.decode(0)).all()
    bad = logits.copy()
    bad[11] = -np.inf
    np.save(tmp_path / "bad.npy", bad)
    p = run_slc("compress", tmp_path / "bad.npy", "-o", tmp_path / "b.slc", "--codec", "topk-vq", "--logits")
    assert p.returncode == 1 and last_line(p) == \
        "Error: expected at least one finite logit per label, got an all -inf row 11"
    bad[11] = np.nan
    np.save(tmp_path / "bad.npy", bad)
    p = run_slc("compress", tmp_path / "bad.npy", "-o", tmp_path / "b.slc", "--codec", "topk-vq", "--logits")
    assert p.returncode == 1 and "got NaN or inf in row 11" in p.stderr.decode()
    assert not (tmp_path / "b.slc").exists()


@pytest.mark.parametrize("v,k", [(50257, 64), (72547, 20), (4096, 32), (1000, 8), (33, 33)])
def test_block_top_k_and_the_normaliser_match_plain_torch(v, k):
    """The fast paths (block maxima, exp2 in cache) against torch.topk and a float64 logsumexp, with
    suppressed words, a row of ties, an all -inf row and a short last block."""
    x = torch.randn(40, v, generator=torch.Generator().manual_seed(v)) * 4
    x[0] = float("-inf")
    x[0, v - 1] = 3.0  # one finite logit, in the last (short) block
    x[1, v // 3:] = 2.0
    x[2] = float("-inf")
    vals, idx, top = top_k(x, k)
    ref = torch.topk(x, k, 1)
    assert torch.equal(vals, ref.values) and torch.equal(x.gather(1, idx), vals)
    assert all(len(set(row.tolist())) == k for row in idx)
    np.testing.assert_array_equal(top, x.amax(1))
    lse, exact = logsumexp_rows(x, top), x.double().logsumexp(1)
    assert lse[2] == float("-inf")
    np.testing.assert_allclose(lse[3:], exact[3:], rtol=0, atol=2e-6)
    s = select_topk(x[3:], k, normalised=False)
    np.testing.assert_allclose(s.logp, (ref.values[3:].double() - exact[3:, None]).float(), rtol=0, atol=2e-6)


def test_k_larger_than_the_vocabulary_is_one_line(tmp_path):
    np.save(tmp_path / "l.npy", lm_logits(20, 50))
    p = run_slc("compress", tmp_path / "l.npy", "-o", tmp_path / "x.slc", "--codec", "topk-vq", "--param", "k=64")
    assert p.returncode == 1
    assert last_line(p) == ("Error: expected parameters topk-vq can use, got 1 <= k < V (50) and "
                                         "k <= 4096, got k=64")
    with pytest.raises(ValueError, match="expected 1 <= k <= V"):
        select_topk(np.zeros((2, 5), np.float32), 6)


def test_sparse_input_from_files(tmp_path):
    """(indices, values) pairs as a user's pipeline would give them: unsorted, more than k per token."""
    lp = logp_of(lm_logits(300, 2000))
    top = select_topk(lp, 24)
    rng = np.random.default_rng(1)
    perm = np.argsort(rng.random((300, 24)), 1)  # shuffled within each token
    np.save(tmp_path / "vals.npy", np.take_along_axis(top.logp, perm, 1))
    np.save(tmp_path / "idx.npy", np.take_along_axis(top.indices, perm, 1).astype(np.int32))
    np.save(tmp_path / "seq.npy", np.array([120, 180]))  # lengths
    p = run_slc("compress", tmp_path / "vals.npy", "--indices", tmp_path / "idx.npy", "--vocab", 2000, "--seq",
                tmp_path / "seq.npy", "-o", tmp_path / "s.slc", "--codec", "topk-vq", "--param", "k=16",
                "--param", "values=bf16")
    assert p.returncode == 0, p.stderr.decode()
    with slc.open_slc(tmp_path / "s.slc") as f:
        s = f.sparse()
        np.testing.assert_array_equal(s.indices, top.indices[:, :16])
        assert f.sequence_range(1) == (120, 300)
        # the tail holds the mass of words 17..24 too
        want = np.logaddexp(top.tail, np.logaddexp.reduce(top.logp[:, 16:], axis=1))
        np.testing.assert_allclose(s.tail, want, atol=2e-2)

    def err(*extra, vocab=2000):
        q = run_slc("compress", tmp_path / "vals.npy", "--indices", tmp_path / "idx.npy", "--vocab", vocab, "-o",
                    tmp_path / "e.slc", "--codec", "topk-vq", *extra)
        assert q.returncode == 1 and not (tmp_path / "e.slc").exists()
        return last_line(q)

    assert err(vocab=1000).startswith("Error: expected word indices in [0, 1000), got")
    assert err("--param", "k=30") == "Error: expected at least k=30 words per token, got 24 (use --param k=24)"
    q = run_slc("compress", tmp_path / "vals.npy", "--indices", tmp_path / "idx.npy", "--vocab", 2000, "-o",
                tmp_path / "r.slc", "--codec", "topk-vq", "--ratio", 2, "--param", "steps=30")
    assert q.returncode == 0 and "the largest topk-vq step is smaller than the target" in q.stderr.decode()
    with slc.open_slc(tmp_path / "r.slc") as f:  # a ratio sizes k up to the words the input holds
        assert 20 <= f.codec.k <= 24
    np.save(tmp_path / "vals.npy", np.take_along_axis(top.logp, perm, 1) + 1.0)  # logits, not log-probabilities
    assert "expected log-probabilities normalised over the whole vocabulary" in err()
    q = run_slc("compress", tmp_path / "vals.npy", "--indices", tmp_path / "idx.npy", "-o", tmp_path / "e.slc",
                "--codec", "topk-vq")
    assert last_line(q) == "Error: expected --indices and --vocab together (already-sparse input), got only one"
    q = run_slc("compress", tmp_path / "vals.npy", "--indices", tmp_path / "idx.npy", "--vocab", 2000, "-o",
                tmp_path / "e.slc", "--codec", "topk")
    assert last_line(q) == "Error: expected --codec topk-vq for sparse (indices, values) input, got 'topk'"


def test_dense_input_from_npy_hdf5_and_a_stream_give_the_same_file(tmp_path):
    logits = lm_logits(300, 1000)
    np.save(tmp_path / "l.npy", logits)
    with h5py.File(tmp_path / "l.h5", "w") as h:
        h["logits"] = logits
    args = ["--codec", "topk-vq", "--param", "k=8", "--param", "m=2", "--param", "steps=60", "--logits"]
    run_slc("compress", tmp_path / "l.npy", "-o", tmp_path / "a.slc", *args, check=True)
    run_slc("compress", f"{tmp_path / 'l.h5'}:/logits", "-o", tmp_path / "b.slc", *args, check=True)
    run_slc("compress", "-", "-o", tmp_path / "c.slc", *args, stdin=(tmp_path / "l.npy").read_bytes(), check=True)
    a = (tmp_path / "a.slc").read_bytes()
    assert a == (tmp_path / "b.slc").read_bytes() == (tmp_path / "c.slc").read_bytes()


def test_inspect_reports_bytes_per_token(token_file):
    out, _, _, _ = token_file
    p = run_slc("inspect", out, "--json", check=True)
    info = json.loads(p.stdout)
    tk = info["tokens"]
    assert tk["tokens"] == 600 and tk["sequences"] == 3 and tk["token_ids"] and tk["k"] == 16
    ids = 4 * 600
    assert tk["bytes_per_token"] == pytest.approx((info["bytes"] - ids) / 600)
    assert tk["ratio_vs_fp16"] == pytest.approx(6000 / tk["bytes_per_token"])
    assert tk["ratio_vs_topk_bf16_int32"] == pytest.approx(96 / tk["bytes_per_token"])
    text = run_slc("inspect", out, check=True).stdout.decode()
    assert "token labels: 600 tokens in 3 sequences" in text and "top-16 bf16 + int32 indices" in text


def test_sparse_api_refuses_a_vision_file(tmp_path, logits_npy):
    slc.compress(str(logits_npy), tmp_path / "v.slc", codec="topk", k=3)
    with slc.open_slc(tmp_path / "v.slc") as f:
        with pytest.raises(SlcInputError, match="expected a token-level file"):
            f.sparse(0, 4)
        assert f.sequences == 1 and f.token_ids() is None


def test_golden_v1_3_token_files_keep_reading_the_same():
    """Pinned bytes of format 1.3 (tests/golden/make_golden.py v1.3)."""
    golden = GOLDEN
    expected = {**np.load(golden / "v1.3-expected.npz"), **np.load(golden / "v1.3-capped-expected.npz")}
    for name in ("topk-vq", "topk-vq-bf16", "topk-vq-capped"):
        with slc.open_slc(golden / f"v1.3-{name}.slc") as f:
            f.verify()
            assert (f.layout.major, f.layout.minor) == (1, 3) and f.sequence_range(1) == (7, 30)
            s = f.sparse()
            assert_probs_equal(f.decode(0), expected[name])
            np.testing.assert_array_equal(s.indices, expected[name + ".indices"])
            np.testing.assert_array_equal(s.logp, expected[name + ".logp"])
            np.testing.assert_array_equal(s.tail, expected[name + ".tail"])
            np.testing.assert_array_equal(f.token_ids(), np.arange(40) * 7 % 300)


def test_corrupt_token_sections_are_format_errors(tmp_path):
    from slc.format.sections import parse_ids, parse_seq

    with pytest.raises(SlcFormatError, match="offsets from 0 to 10"):
        parse_seq(np.array([0, 4, 9], "<u8").tobytes(), 10)
    with pytest.raises(SlcFormatError, match="strictly increasing"):
        parse_seq(np.array([0, 4, 4, 10], "<u8").tobytes(), 10)
    with pytest.raises(SlcFormatError, match="2..11 u64 offsets"):
        parse_seq(np.zeros(12, "<u8").tobytes(), 10)
    with pytest.raises(SlcFormatError, match="token ids < 300"):
        parse_ids(np.array([1, 300], "<u4").tobytes(), 2, 300)


def test_decode_sparse_to_npy_stdout_and_hdf5(tmp_path, token_file):
    import io

    out, _, _, _ = token_file
    with slc.open_slc(out) as f:
        s = f.sparse(90, 400)
    p = run_slc("decode", out, "--sparse", "--start", 90, "--stop", 400, "-o", "-", check=True)
    rec = np.load(io.BytesIO(p.stdout))
    assert rec.shape == (310,)
    np.testing.assert_array_equal(rec["indices"], s.indices)
    np.testing.assert_array_equal(rec["logp"], s.logp)
    np.testing.assert_array_equal(rec["tail"], s.tail)
    run_slc("decode", out, "--sparse", "--start", 90, "--stop", 400, "-o", tmp_path / "s.h5", check=True)
    with h5py.File(tmp_path / "s.h5") as h:
        np.testing.assert_array_equal(h["indices"][:], s.indices)
        np.testing.assert_array_equal(h["offsets"][:], [0, 10, 260, 310])  # sequences cut to the range
        assert h.attrs["vocab"] == 3000
    q = run_slc("decode", out, "--sparse", "-T", "2", "-o", tmp_path / "t.npy")
    assert q.returncode == 1 and last_line(q).startswith("Error: expected no -T, --logits or --dtype with --sparse")
    q = run_slc("decode", GOLDEN / "v1.0-topk.slc", "--sparse", "-o", tmp_path / "t.npy")
    assert q.returncode == 1 and last_line(q) == ("Error: expected a token-level file (codec topk-vq) for sparse "
                                                  "labels, got codec 'topk'")
    assert not (tmp_path / "t.npy").exists()


def test_bench_tokens_rows_and_outputs(tmp_path):
    np.save(tmp_path / "l.npy", lm_logits(500, 1000))
    p = run_slc("bench", tmp_path / "l.npy", "--tokens", "--rows", "k=8,m=2,steps=40;k=8,values=bf16;k=5000",
                "--json", tmp_path / "b.json", "--markdown", tmp_path / "b.md", "--plot", tmp_path / "b.png", check=True)
    result = json.loads((tmp_path / "b.json").read_text())
    assert result["tokens"] == 500 and result["holdout_start"] == 400
    ref, vq, bf, bad = result["reference"], *result["rows"]
    assert ref["bytes_per_token"] == 120 and ref["recall"] == 1.0
    for r in (vq, bf):
        assert r["bytes_per_token"] == pytest.approx(r["bytes"] / 500)
        assert r["same_bytes_k"] == int(r["bytes_per_token"] // 6)
        assert r["ratio_vs_topk_bf16_int32"] == pytest.approx(48 / r["bytes_per_token"])
        assert 0 < r["kl"] < 5 and r["recall"] == pytest.approx(8 / 20)  # exact indices: all 8 of the top 20
    assert vq["bytes"] < bf["bytes"]  # 2 one-byte codes per token instead of 8 bf16 values
    assert "k <= 4096" in bad["error"]
    assert "| top-20 bf16 + int32 indices" in (tmp_path / "b.md").read_text()
    assert (tmp_path / "b.png").read_bytes()[:4] == b"\x89PNG"
    assert "KL(teacher || decoded) over the whole" in " ".join(p.stdout.decode().split())


def test_token_dataset_pads_sequences_and_refuses_another_vocabulary(token_file):
    from torch.utils.data import DataLoader

    from slc.lm.dataset import TokenLabelDataset, collate_tokens

    out, _, seq, ids = token_file
    ds = TokenLabelDataset(out, vocab=3000, max_len=200)
    assert len(ds) == 3 and ds.tail == ds.tail_mode == "capped" and ds.prior_logp.shape == (3000,)
    with slc.open_slc(out) as f:
        s = f.sparse(100, 300)
    item = ds[1]
    np.testing.assert_array_equal(item["indices"].numpy(), s.indices)
    np.testing.assert_array_equal(item["ids"].numpy(), ids[100:300])
    batch = next(iter(DataLoader(ds, batch_size=3, collate_fn=collate_tokens, num_workers=1)))
    assert batch["mask"].sum(1).tolist() == [100, 200, 200] and batch["ids"].shape == (3, 200)
    assert torch.isneginf(batch["logp"][0, 100:]).all() and (batch["tail"][0, 100:] == 0).all()
    # the docstring's loop: dense-mode kd_loss with the file's tail is the KL to the file's own dense decode
    student = torch.randn(100, 3000, generator=torch.Generator().manual_seed(0))
    got = kd_loss(student, batch["indices"][0, :100], batch["logp"][0, :100], batch["tail"][0, :100], mode="dense",
                  prior_logp=ds.prior_logp, tail_mode=ds.tail_mode, reduction="none")
    with slc.open_slc(out) as f:
        teacher = torch.log_softmax(torch.from_numpy(f.decode(0, 0, 100, out="logits")), 1).numpy()
    np.testing.assert_allclose(got.numpy(), kl_rows(teacher, torch.log_softmax(student, 1).numpy()), rtol=1e-4,
                               atol=1e-5)
    with pytest.raises(SlcInputError, match="vocabulary mismatch: expected a student over the file's 3,000 words, "
                                            "got 50,257"):
        TokenLabelDataset(out, vocab=50257)


def test_a_ratio_sizes_k_in_real_bytes_after_zstd(tmp_path):
    """--ratio picks k on chunk bytes measured after zstd (ranks before fitting, value codes after): the
    file lands in [R, 1.1 R]. Without zstd the raw plan is the file's size (the word order at its longest)."""
    logits = lm_logits(4096, 3000)
    np.save(tmp_path / "l.npy", logits)
    dense = 4096 * 3000 * 2
    for ratio in (20, 80):
        out = tmp_path / f"r{ratio}.slc"
        p = run_slc("compress", tmp_path / "l.npy", "-o", out, "--codec", "topk-vq", "--ratio", ratio,
                    "--chunk-size", 1024, "--param", "steps=60", check=True)
        log = p.stderr.decode()
        assert "(chunks after zstd, as measured on the data)" in log and "value codes keep" in log
        assert ratio <= dense / out.stat().st_size <= 1.1 * ratio, log
        with slc.open_slc(out) as f:
            assert f.header.entropy == "zstd" and f.codec.k > 1
    r = slc.compress(tmp_path / "l.npy", tmp_path / "raw.slc", codec="topk-vq", ratio=30, zstd=False, chunk_size=1024,
                     options={"steps": 60})
    assert r.bytes <= r.plan.bytes <= r.bytes + 4 * 3000 and 30 <= r.ratio <= 33
    assert slc.compress(tmp_path / "l.npy", tmp_path / "k.slc", codec="topk-vq", options=FAST).plan.params["k"] == 64


def test_f32_values_keep_the_top_k_log_probabilities_exactly_and_refuse_nan(tmp_path, token_file):
    """values=f32 (format 1.7): already-sparse labels (another tool's top-k) come back bit for bit; a NaN in a
    chunk is a format error, not a label."""
    lp = logp_of(token_file[1])[:512]
    top = torch.topk(torch.from_numpy(lp), 16, dim=1)
    values, indices = top.values.numpy(), top.indices.numpy()
    out = tmp_path / "f32.slc"
    src = slc.open_labels(values, indices=indices, vocab=lp.shape[1])
    slc.compress(src, out, codec="topk-vq", source="logits", options={"k": 16, "values": "f32"}, zstd=False)
    with slc.open_slc(out) as f:
        assert f.layout.minor == 7
        s = f.sparse()
        np.testing.assert_array_equal(s.indices, indices)
        np.testing.assert_array_equal(s.logp, values)
        codec, payload = f.sparse_codec, bytearray(f.chunk_payload(f.index[0]))
    ranks = f.index[0].count * 16 * codec.nbytes
    payload[ranks:ranks + 4] = np.float32(np.nan).tobytes()  # past the checksum: the codec's own check
    with pytest.raises(slc.SlcFormatError, match="log-probabilities at most 0"):
        codec.decode_sparse(bytes(payload), f.index[0].count)


@pytest.mark.parametrize("value", [np.inf, np.nan, -np.inf])
def test_bad_logits_found_by_the_selection_name_their_row(tmp_path, value):
    """Token logits are checked from their selected top k (no separate pass): a +inf, a NaN or an all -inf row
    in a later chunk is still one line naming the row, and nothing is written."""
    logits = lm_logits(64, 400)
    if value == -np.inf:
        logits[40] = value
    else:
        logits[40, 123] = value
    with pytest.raises(slc.SlcInputError, match="row 40$"):
        slc.compress(logits, tmp_path / "b.slc", codec="topk-vq", source="logits", chunk_size=16,
                     options={"k": 10, "values": "bf16"})
    assert not (tmp_path / "b.slc").exists()


@pytest.mark.parametrize("tail", ["capped", "prior", "uniform"])
def test_a_few_tokens_decode_from_their_own_rows_as_the_whole_chunk_gives_them(tmp_path, tail):
    """Reading tokens [a, b) of a long chunk expands only their sparse rows: the same bits as slicing the chunk."""
    out = tmp_path / f"{tail}.slc"
    slc.compress(lm_logits(300, 500), out, codec="topk-vq", source="logits", chunk_size=256,
                 options={"k": 8, "m": 4, "tail": tail, **FAST})
    with slc.open_slc(out) as f:
        for kind in ("logits", "probs"):
            whole = f.decode(0, out=kind)
            for a, b in ((0, 1), (3, 40), (200, 256), (250, 300), (256, 299)):
                np.testing.assert_array_equal(f.decode(0, a, b, out=kind), whole[a:b])

"""``slc import vllm`` / ``slc import distillkit``: LLM teacher labels other tools wrote.

The files are written by ``tests/import_fixtures/vllm.py`` (vLLM v0.12.0's prompt-logprobs structures and
serialisations) and ``tests/import_fixtures/distillkit.py`` (DistillKit a61c2e7's encoder and parquet
writer, checked byte for byte against vectors its own code made).
"""
import json
import os
import sys

import numpy as np
import pytest
import torch

import slc

from import_fixtures.vllm import STYLES, random_seqs, write_vllm_jsonl
from slc.errors import SlcInputError
from slc.interop.vllm import open_vllm

VOCAB, K = 500, 8


def arrays(im):
    """The imported values, word ids and input tokens as plain arrays."""
    return np.asarray(im.labels.values.array[0]), np.asarray(im.labels.indices.array[0]), np.asarray(im.token_ids)


# ---------------------------------------------------------------- vLLM
@pytest.mark.parametrize("style", STYLES)
def test_vllm_reads_back_exactly(tmp_path, style):
    seqs = random_seqs(9, VOCAB, seed=1) + [[7]]  # a one-token prompt has no label: skipped
    truth = write_vllm_jsonl(tmp_path / "p.jsonl", seqs, VOCAB, K, seed=3, style=style)
    lines = []
    im = open_vllm(tmp_path / "p.jsonl", log=lines.append)
    try:
        values, words, tokens = arrays(im)
        np.testing.assert_array_equal(words, truth["indices"])
        np.testing.assert_array_equal(values, truth["logprobs"])  # float32 of the JSON double, exactly
        np.testing.assert_array_equal(tokens, truth["token_ids"])
        np.testing.assert_array_equal(im.sequences, truth["offsets"])
        assert (im.format, im.source, im.temperature) == ("vllm", "logits", 1.0)
        assert im.summary["topk"] == K and im.summary["sequences"] == 9 and im.summary["tokens"] == len(words)
        assert any("largest token id + 1 = 500" in line for line in lines)
        assert any("one-token" in line for line in lines)
        s = im.labels.read(0, 0, len(words))  # slc's own validation of sparse labels passes
        assert (s.tail <= 0).all() and s.indices.shape == (len(words), K)
        tmp = im.labels.tmp.name
    finally:
        im.close()
    assert not os.path.exists(tmp)


def test_vllm_gzip(tmp_path):
    import gzip

    truth = write_vllm_jsonl(tmp_path / "p.jsonl", random_seqs(3, VOCAB), VOCAB, K)
    (tmp_path / "p.jsonl.gz").write_bytes(gzip.compress((tmp_path / "p.jsonl").read_bytes()))
    im = open_vllm(tmp_path / "p.jsonl.gz")
    np.testing.assert_array_equal(arrays(im)[0], truth["logprobs"])
    im.close()
    (tmp_path / "p.jsonl.gz").write_bytes(gzip.compress((tmp_path / "p.jsonl").read_bytes())[:-30])
    with pytest.raises(SlcInputError, match="expected a readable JSONL file"):
        open_vllm(tmp_path / "p.jsonl.gz")


def test_vllm_k_from_ranks_when_no_prompt_token_is_in_the_top_k(tmp_path):
    """Every position holds k + 1 entries (the prompt token, suppressed, rank = vocab): the ranks say k."""
    seqs = random_seqs(4, VOCAB, seed=2)
    truth = write_vllm_jsonl(tmp_path / "p.jsonl", seqs, VOCAB, K, seed=4, style="offline", suppress=1.0)
    with open(tmp_path / "p.jsonl") as f:
        first = json.loads(f.readline())["prompt_logprobs"][1]
    assert len(first) == K + 1 and list(first.values())[0]["rank"] == VOCAB
    im = open_vllm(tmp_path / "p.jsonl", vocab=VOCAB)
    values, words, _ = arrays(im)
    np.testing.assert_array_equal(words, truth["indices"])
    np.testing.assert_array_equal(values, truth["logprobs"])
    im.close()
    # without ranks the fewest entries is k + 1: give k
    write_vllm_jsonl(tmp_path / "f.jsonl", seqs, VOCAB, K, seed=4, style="float", suppress=1.0)
    im = open_vllm(tmp_path / "f.jsonl", vocab=VOCAB, k=K)
    np.testing.assert_array_equal(arrays(im)[1], truth["indices"])
    im.close()


def test_vllm_smaller_k_keeps_the_most_probable(tmp_path):
    truth = write_vllm_jsonl(tmp_path / "p.jsonl", random_seqs(3, VOCAB), VOCAB, K, style="server")
    im = open_vllm(tmp_path / "p.jsonl", vocab=VOCAB, k=3)
    values, words, _ = arrays(im)
    np.testing.assert_array_equal(words, truth["indices"][:, :3])
    np.testing.assert_array_equal(values, truth["logprobs"][:, :3])
    im.close()
    with pytest.raises(SlcInputError, match=r"expected 1 <= k <= 8 .*got 9"):
        open_vllm(tmp_path / "p.jsonl", k=9)


def one_line(e) -> str:
    msg = str(e.value)
    assert "\n" not in msg and msg.startswith("expected")
    return msg


def test_vllm_hostile_files(tmp_path):
    path = tmp_path / "p.jsonl"
    write_vllm_jsonl(path, random_seqs(3, VOCAB), VOCAB, K)
    good = path.read_text().splitlines()
    path.write_text("\n".join([good[0], good[1][:-40], good[2]]) + "\n")
    with pytest.raises(SlcInputError) as e:
        open_vllm(path)
    assert f"{path}:2" in one_line(e) and "unparsable JSON" in str(e.value)
    path.write_text("\n".join(good) + "\n")
    with pytest.raises(SlcInputError, match=r"token ids < the vocabulary \(100\), got \d+ at .*p.jsonl:1"):
        open_vllm(path, vocab=100)
    rec = json.loads(good[0])
    bad = {"prompt_token_ids": rec["prompt_token_ids"], "prompt_logprobs": rec["prompt_logprobs"][:-1]}
    path.write_text(json.dumps(bad) + "\n")
    with pytest.raises(SlcInputError, match="one prompt_logprobs entry per prompt token"):
        open_vllm(path)
    path.write_text(json.dumps({"text": "hello", "logprobs": []}) + "\n")
    with pytest.raises(SlcInputError) as e:
        open_vllm(path)
    assert "prompt_token_ids and prompt_logprobs" in one_line(e) and f"{path}:1" in str(e.value)
    rec["prompt_logprobs"][1] = {"Ġthe": -0.5, "Ġa": -1.0}  # decoded tokens, not ids
    path.write_text(json.dumps(rec) + "\n")
    with pytest.raises(SlcInputError, match="integer token ids"):
        open_vllm(path)


# ---------------------------------------------------------------- DistillKit
CONFIGS = {
    # the README's recommended shape, scaled down: bf16 exact, polynomial tail, two residual bins
    "poly_bf16": dict(d=1000, k=16, exact_k=4, exact_dtype="bfloat16", polynomial_terms=[0, 1, 2, "sqrt"],
                      residual_bins=[{"scale_dtype": "float16", "element_bits": 8, "num_elements": 6},
                                     {"scale_dtype": "float32", "element_bits": 2, "num_elements": 4}],
                      delta_encoding=False),
    "delta_diffused": dict(d=1000, k=12, exact_k=2, delta_encoding=True, error_diffusion=True,
                           residual_bins=[{"scale_dtype": "bfloat16", "element_bits": 6, "num_elements": 10}]),
    "fp16_terms_1bit": dict(d=1000, k=10, exact_k=1, exact_dtype="float16", polynomial_terms=[0, 1, "exp"],
                            term_dtype="float16", normalize_t=True, delta_encoding=True,
                            residual_bins=[{"scale_dtype": "float16", "element_bits": 1, "num_elements": 5}]),
    "exact_fp16": dict(d=70000, k=6, exact_k=6, exact_dtype="float16", residual_bins=[], delta_encoding=False),
}


@pytest.fixture(scope="module")
def dk():
    pytest.importorskip("pyarrow")
    pytest.importorskip("yaml")
    from import_fixtures import distillkit

    return distillkit


def test_fixture_encoder_and_slc_decoder_match_distillkits_own_vectors(dk):
    from slc.interop.distillkit import decode_rows, parse_config

    for v in dk.REAL_VECTORS:
        ids, lp = torch.tensor([v["input_token_ids"]]), torch.tensor([v["input_logprobs"]], dtype=torch.float32)
        lpb, ixb = dk.compress_from_sparse(ids, lp, v["config"])
        np.testing.assert_array_equal(lpb[0].numpy(), v["compressed_logprobs"], err_msg=v["name"])
        np.testing.assert_array_equal(ixb[0].numpy(), v["bytepacked_indices"], err_msg=v["name"])
        words, values = decode_rows(np.array(v["compressed_logprobs"], np.uint8),
                                    np.array(v["bytepacked_indices"], np.uint8), parse_config(v["config"], "t"))
        np.testing.assert_array_equal(words, v["decoded_token_ids"])
        np.testing.assert_array_equal(values, np.array(v["decoded_logprobs"], np.float32))


@pytest.mark.parametrize("name", list(CONFIGS))
def test_distillkit_reads_back_as_distillkit_decodes(tmp_path, dk, name):
    from slc.interop.distillkit import _Fixes, clean_rows, decode_rows, open_distillkit, parse_config

    cfg = CONFIGS[name]
    seqs = random_seqs(13, cfg["d"], seed=5, lengths=(2, 50))  # StreamingParquetWriter: files of 6, 6, 1 rows
    truth = dk.write_distillkit_parquet(tmp_path / "out", seqs, cfg, seed=1, file_max_rows=4, write_batch_size=3)
    assert len(list((tmp_path / "out").glob("data_*.parquet"))) == 3
    # the batched decoder is DistillKit's, bit for bit, against the per-sample restatement
    words, values = decode_rows(truth["lp_bytes"], truth["idx_bytes"], parse_config(dk.full_config(**cfg), "t"))
    np.testing.assert_array_equal(words, truth["ref_indices"])
    np.testing.assert_array_equal(values, truth["ref_logprobs"])
    np.testing.assert_array_equal(words, truth["indices"])  # indices are lossless
    im = open_distillkit(tmp_path / "out")
    try:
        got_v, got_w, tokens = arrays(im)
        want_w, want_v = clean_rows(truth["ref_indices"].copy(), truth["ref_logprobs"].copy(), _Fixes(), "t")
        np.testing.assert_array_equal(got_w, want_w)
        np.testing.assert_array_equal(got_v, want_v)
        np.testing.assert_array_equal(tokens, truth["token_ids"])
        np.testing.assert_array_equal(im.sequences, truth["offsets"])
        assert im.summary["files"] == 3 and im.summary["topk"] == cfg["k"] and im.summary["vocab"] == cfg["d"]
        assert (np.diff(got_v, axis=1) <= 0).all()
        im.labels.read(0, 0, len(tokens))  # slc's own validation passes
    finally:
        im.close()
    if cfg["exact_k"] and not cfg["delta_encoding"]:  # the exact part: within its dtype's rounding
        ek, rel = cfg["exact_k"], 2.0 ** -8 if cfg["exact_dtype"] == "bfloat16" else 2.0 ** -11
        err = np.abs(truth["ref_logprobs"][:, :ek] - truth["logprobs"][:, :ek])
        assert (err <= rel * np.abs(truth["logprobs"][:, :ek]) + 1e-6).all()


def test_distillkit_config_sources_and_hostile_files(tmp_path, dk):
    import pyarrow as pa
    import pyarrow.parquet as pq
    from slc.interop.distillkit import open_distillkit

    cfg = CONFIGS["delta_diffused"]
    truth = dk.write_distillkit_parquet(tmp_path / "out", random_seqs(3, 1000), cfg)
    one = tmp_path / "out" / "data_0.parquet"
    (tmp_path / "out" / "compression_config.yaml").rename(tmp_path / "cfg.yaml")
    with pytest.raises(SlcInputError, match="compression_config.yaml"):
        open_distillkit(one)
    trainer = {"teacher": {"kind": "dataset", "logprob_compressor": cfg}}
    (tmp_path / "cfg.json").write_text(json.dumps(trainer))
    for given in (cfg, trainer, str(tmp_path / "cfg.yaml"), str(tmp_path / "cfg.json")):
        im = open_distillkit(one, config=given)
        np.testing.assert_array_equal(arrays(im)[2], truth["token_ids"])
        im.close()
    with pytest.raises(SlcInputError, match="legacy"):
        open_distillkit(one, config={"teacher": {"legacy_logit_compression": {"k": 4}}})
    small = {**cfg, "d": 600}  # the same 10-bit indices, but ids that do not fit
    with pytest.raises(SlcInputError, match=r"expected input ids < d = 600 .* in .*data_0.parquet rows"):
        open_distillkit(one, config=small)
    other = tmp_path / "other.parquet"
    pq.write_table(pa.table({"input_ids": [[1, 2]], "labels": [[2, 3]], "logits": [[0.5, 0.1]]}), other)
    with pytest.raises(SlcInputError) as e:
        open_distillkit(other, config=cfg)
    msg = one_line(e)
    assert str(other) in msg and "'compressed_logprobs'" in msg and "'labels'" in msg
    legacy = tmp_path / "legacy.parquet"
    pq.write_table(pa.table({"input_ids": [[1, 2]], "packed_indices": [[[1]]], "exact_values": [[[0.5]]],
                             "coeffs": [[[0.1]]]}), legacy)
    with pytest.raises(SlcInputError, match="legacy rows hold centred logits"):
        open_distillkit(legacy, config=cfg)
    wide = {**cfg, "exact_dtype": "float16"}  # a config that is not the one the bytes were written with
    with pytest.raises(SlcInputError, match="bytes of compressed_logprobs per token"):
        open_distillkit(one, config=wide)


def test_distillkit_without_pyarrow_names_the_extra(tmp_path, monkeypatch):
    from slc.interop.distillkit import open_distillkit

    (tmp_path / "data_0.parquet").write_bytes(b"PAR1")
    monkeypatch.setitem(sys.modules, "pyarrow", None)
    monkeypatch.setitem(sys.modules, "pyarrow.parquet", None)
    with pytest.raises(SlcInputError, match=r"pip install 'slc\[parquet\]'"):
        open_distillkit(tmp_path)


def test_clean_rows_sorts_and_caps_the_mass():
    from slc.interop.distillkit import _Fixes, clean_rows

    lp = np.log(np.array([[0.5, 0.51, 0.01], [0.2, 0.1, 0.05]], np.float32))
    fixes = _Fixes()
    words, values = clean_rows(np.array([[1, 2, 3], [4, 5, 6]]), lp.copy(), fixes, "t")
    np.testing.assert_array_equal(words, [[2, 1, 3], [4, 5, 6]])
    assert abs(np.exp(values[0].astype(np.float64)).sum() - 1) < 1e-6 and (values[1] == lp[1]).all()
    assert (fixes.sorted, fixes.scaled) == (1, 1)


# ---------------------------------------------------------------- end to end: slc import -> .slc -> dataset
def read_tokens(path):
    from slc.lm.dataset import TokenLabelDataset

    ds = TokenLabelDataset(path)
    items = [ds[i] for i in range(len(ds))]
    return ds, {key: torch.cat([it[key] for it in items]).numpy() for key in ("ids", "indices", "logp")}


def test_vllm_cli_end_to_end(tmp_path):
    from conftest import run_slc

    truth = write_vllm_jsonl(tmp_path / "p.jsonl", random_seqs(6, VOCAB, seed=7), VOCAB, K, style="server")
    out = tmp_path / "out.slc"
    p = run_slc("import", "vllm", tmp_path / "p.jsonl", "-o", out, "--vocab", VOCAB, "--param", "values=bf16")
    assert p.returncode == 0, p.stderr.decode()
    assert f"k={K} words per token" in p.stderr.decode()  # topk-vq and the stored k, without being told
    ds, got = read_tokens(out)
    assert (ds.vocab, ds.k, len(ds)) == (VOCAB, K, 6)
    np.testing.assert_array_equal(got["ids"], truth["token_ids"])
    np.testing.assert_array_equal(got["indices"], truth["indices"])
    err = np.abs(np.exp(got["logp"]) - np.exp(truth["logprobs"]))  # bf16 probabilities: 8 bits of mantissa
    assert err.max() <= 2.0 ** -8 * np.exp(truth["logprobs"]).max()
    exact = tmp_path / "exact.slc"  # values=f32 (format 1.7): the log-probabilities bit for bit
    run_slc("import", "vllm", tmp_path / "p.jsonl", "-o", exact, "--vocab", VOCAB, "--param", "values=f32", check=True)
    _, got = read_tokens(exact)
    np.testing.assert_array_equal(got["ids"], truth["token_ids"])
    np.testing.assert_array_equal(got["indices"], truth["indices"])
    np.testing.assert_array_equal(got["logp"], truth["logprobs"].astype(np.float32))
    with slc.open_slc(exact) as f:
        assert f.layout.minor == 7 and f.codec.params()["values"] == "f32"
    run_slc("verify", exact, check=True)


def test_distillkit_import_file_end_to_end(tmp_path, dk):
    from slc.compression import CompressOptions
    from slc.interop.write import import_file, open_import

    cfg = CONFIGS["poly_bf16"]
    truth = dk.write_distillkit_parquet(tmp_path / "dk", random_seqs(8, 1000, seed=9), cfg, seed=2)
    im = open_import("auto", str(tmp_path / "dk"))
    try:
        want_v, want_w = (a.copy() for a in arrays(im)[:2])
        import_file(im, tmp_path / "out.slc", CompressOptions(options={"values": "bf16"}))  # auto -> topk-vq, k=16
        import_file(im, tmp_path / "exact.slc", CompressOptions(options={"values": "f32"}))
    finally:
        im.close()
    ds, got = read_tokens(tmp_path / "out.slc")
    np.testing.assert_array_equal(got["ids"], truth["token_ids"])
    np.testing.assert_array_equal(got["indices"], want_w)
    assert np.abs(np.exp(got["logp"]) - np.exp(want_v)).max() <= 2.0 ** -8
    _, got = read_tokens(tmp_path / "exact.slc")  # what DistillKit's decoder gives, bit for bit
    np.testing.assert_array_equal(got["indices"], want_w)
    np.testing.assert_array_equal(got["logp"], want_v)

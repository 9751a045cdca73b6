"""slc.lm_teacher: loading LM teachers, reading token sequences, streaming next-token log-probabilities."""

import json
import socket
import sys

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from slc.errors import SlcInputError
from slc.lm.teacher import LMTeacher, WordVocab, iter_logp, load_lm_teacher, read_sequences, offsets_of

V, MAX_LEN = 500, 64
WORDS = ["<unk>", "the", "cat", "sat", "on", "mat", "a", "dog"]


class TinyLM(nn.Module):
    """One causal transformer block: enough to make every position depend on all before it."""

    def __init__(self, vocab: int = V, dim: int = 32, heads: int = 2, max_len: int = MAX_LEN):
        super().__init__()
        self.max_len, self.heads = max_len, heads
        self.tok, self.pos = nn.Embedding(vocab, dim), nn.Embedding(max_len, dim)
        self.ln1, self.qkv, self.proj = nn.LayerNorm(dim), nn.Linear(dim, 3 * dim), nn.Linear(dim, dim)
        self.ln2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, 4 * dim), nn.GELU(), nn.Linear(4 * dim, dim))
        self.lnf, self.head = nn.LayerNorm(dim), nn.Linear(dim, vocab)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        b, n = ids.shape
        x = self.tok(ids) + self.pos(torch.arange(n, device=ids.device))
        q, k, v = self.qkv(self.ln1(x)).view(b, n, 3, self.heads, -1).permute(2, 0, 3, 1, 4).unbind(0)
        a = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        x = x + self.proj(a.transpose(1, 2).reshape(b, n, -1))
        x = x + self.mlp(self.ln2(x))
        return self.head(self.lnf(x)) * 4.0  # peakier than random init, like a trained LM


class TupleOut(nn.Module):
    def __init__(self):
        super().__init__()
        self.lm = TinyLM()

    def forward(self, ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        y = self.lm(ids)
        return y, y.sum()


class DictOut(TupleOut):
    def forward(self, ids: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"logits": self.lm(ids)}


class FlatOut(TupleOut):
    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.lm(ids)[:, -1]  # a classifier's (B, V), not per-position logits


class BadRows(nn.Module):
    """Logits NaN after token 7 and all -inf after token 8."""

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        x = torch.zeros(ids.shape[0], ids.shape[1], 10)
        x = torch.where((ids == 7).unsqueeze(-1), torch.full_like(x, float("nan")), x)
        return torch.where((ids == 8).unsqueeze(-1), torch.full_like(x, float("-inf")), x)


@pytest.fixture(scope="module")
def lm():
    torch.manual_seed(0)
    return TinyLM().eval()


@pytest.fixture(scope="module")
def lm_file(lm, tmp_path_factory):
    path = tmp_path_factory.mktemp("lm") / "tiny.pt"
    torch.jit.save(torch.jit.script(lm), str(path))
    return path


@pytest.fixture(scope="module")
def teacher(lm_file):
    return load_lm_teacher(str(lm_file))


def make_sequences(lengths, seed=0):
    rng = np.random.default_rng(seed)
    return [rng.integers(0, V, n).astype(np.int64) for n in lengths]


def reference(lm, seqs, temperature=1.0) -> np.ndarray:
    """Each sequence through the plain (unscripted) module, one at a time."""
    with torch.no_grad():
        return np.concatenate([torch.log_softmax(lm(torch.from_numpy(s)[None])[0] / temperature, -1).numpy()
                               for s in seqs])


def collect(teacher, seqs, **kw):
    blocks, sizes = [], []
    for first, block in iter_logp(teacher, seqs, progress=sizes.append, **kw):
        blocks.append((first, block))
    return blocks, sizes


def rows(blocks) -> np.ndarray:
    return np.concatenate([b for _, b in blocks]) if blocks else np.empty((0, V), np.float32)


# --- loading -----------------------------------------------------------------------


def test_load_torchscript(teacher, lm):
    assert teacher.vocab == V and teacher.max_len == MAX_LEN and teacher.tokenizer is None
    assert teacher.kind == "torchscript" and teacher.device == torch.device("cpu")
    fp = teacher.fingerprint()
    assert len(fp) == 64 and int(fp, 16) >= 0 and fp == teacher.fingerprint()
    other = TinyLM().eval()
    assert LMTeacher(torch.jit.script(other)).fingerprint() != fp
    assert LMTeacher(torch.jit.script(lm)).fingerprint() == fp


@pytest.mark.parametrize("wrapper", [TupleOut, DictOut])
def test_tuple_and_dict_outputs(wrapper, lm, tmp_path):
    m = wrapper().eval()
    m.lm.load_state_dict(lm.state_dict())
    path = tmp_path / "m.pt"
    torch.jit.save(torch.jit.script(m), str(path))
    t = load_lm_teacher(str(path))
    assert t.vocab == V and t.max_len is None  # the attribute sits on the inner module
    seqs = make_sequences([5, 9])
    assert np.array_equal(rows(collect(t, seqs)[0]), reference(lm, seqs))


def test_torch_export_program(lm, tmp_path):
    dim = torch.export.Dim("n", min=1, max=MAX_LEN)
    ep = torch.export.export(lm, (torch.zeros(1, 8, dtype=torch.long),), dynamic_shapes=({1: dim},))
    path = tmp_path / "tiny.pt2"
    torch.export.save(ep, str(path))
    t = load_lm_teacher(str(path))
    assert t.kind == "export" and t.vocab == V
    seqs = make_sequences([3, 11])
    np.testing.assert_allclose(rows(collect(t, seqs)[0]), reference(lm, seqs), atol=1e-5)


def test_pickled_checkpoints_need_allow_pickle(lm, tmp_path):
    path = tmp_path / "whole.pt"
    torch.save(lm, str(path))
    with pytest.raises(SlcInputError, match="got a pickled checkpoint .*pass `allow_pickle=True`"):
        load_lm_teacher(str(path))
    with pytest.warns(UserWarning, match="arbitrary code"):
        t = load_lm_teacher(str(path), allow_pickle=True)
    assert t.kind == "pickle" and t.vocab == V and t.max_len == MAX_LEN

    sd = tmp_path / "sd.pt"
    torch.save(lm.state_dict(), str(sd))
    with pytest.raises(SlcInputError, match="got a pickled checkpoint"):
        load_lm_teacher(str(sd))
    with pytest.warns(UserWarning), pytest.raises(SlcInputError, match="a state_dict"):
        load_lm_teacher(str(sd), allow_pickle=True)

    hf = tmp_path / "hf"
    hf.mkdir()
    (hf / "config.json").write_text("{}")
    torch.save(lm.state_dict(), str(hf / "pytorch_model.bin"))
    with pytest.raises(SlcInputError, match="got a pickled checkpoint .*pass `allow_pickle=True`"):
        load_lm_teacher(str(hf))


def test_load_errors(tmp_path, monkeypatch):
    with pytest.raises(SlcInputError, match="no such file"):
        load_lm_teacher(str(tmp_path / "missing.pt"))
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a model at all")
    with pytest.raises(SlcInputError, match="expected a TorchScript file or a Hugging Face model directory"):
        load_lm_teacher(str(junk))
    with pytest.raises(SlcInputError, match="without config.json"):
        load_lm_teacher(str(tmp_path))
    d = tmp_path / "empty"
    d.mkdir()
    (d / "config.json").write_text("{}")
    with pytest.raises(SlcInputError, match="safetensors.*got none"):
        load_lm_teacher(str(d))
    (d / "model.safetensors").write_bytes(b"")
    monkeypatch.setitem(sys.modules, "transformers", None)  # import transformers -> ImportError
    with pytest.raises(SlcInputError, match="pip install transformers"):
        load_lm_teacher(str(d))

    flat = tmp_path / "flat.pt"
    torch.jit.save(torch.jit.script(FlatOut().eval()), str(flat))
    with pytest.raises(SlcInputError, match=r"expected teacher logits of shape \[1, 1, V\].*got \[1, 500\]"):
        load_lm_teacher(str(flat))


# --- running -----------------------------------------------------------------------


def test_rows_match_a_direct_forward(teacher, lm):
    seqs = make_sequences([1, 17, 64, 5])
    blocks, sizes = collect(teacher, seqs)
    got = rows(blocks)
    assert got.dtype == np.float32 and got.shape == (87, V)
    assert np.array_equal(got, reference(lm, seqs))
    np.testing.assert_allclose(np.exp(got.astype(np.float64)).sum(1), 1.0, atol=1e-5)
    assert sum(sizes) == 87 and [f for f, _ in blocks] == [0]
    hot = rows(collect(teacher, seqs, temperature=2.5)[0])
    np.testing.assert_allclose(hot, reference(lm, seqs, 2.5), atol=1e-6)
    assert not np.array_equal(hot, got)
    assert list(offsets_of(seqs)) == [0, 1, 18, 82, 87]


@pytest.mark.parametrize("group", [False, True])
def test_same_bits_for_any_batch_tokens_and_start(teacher, lm, group):
    seqs = make_sequences([7, 40, 3, 3, 3, 3, 12, 1, 64, 9, 9, 9])
    offsets = offsets_of(seqs)
    total = int(offsets[-1])
    want = rows(collect(teacher, seqs)[0])
    for bt in (1, 7, 64, 4096):
        base = None
        for start in (0, 6, 30, int(offsets[3]), int(offsets[4]) + 1, total - 1, total):
            blocks, sizes = collect(teacher, seqs, batch_tokens=bt, start_token=start, group=group)
            got = rows(blocks)
            assert got.shape == (total - start, V)
            assert max((len(b) for _, b in blocks), default=0) <= bt  # the memory bound
            firsts = [f for f, _ in blocks]
            assert firsts == list(start + np.cumsum([0] + sizes[:-1]))[:len(firsts)]
            assert sizes == [len(b) for _, b in blocks]
            if not group:
                assert np.array_equal(got, want[start:]), (bt, start)
            else:  # batched forwards differ in the last bits, but a resumed run matches its whole run
                np.testing.assert_allclose(got, want[start:], atol=1e-5)
                base = got if base is None else base
                assert np.array_equal(got, base[len(base) - len(got):]), (bt, start)


def test_long_sequences_are_windowed(teacher, lm, tmp_path):
    long = np.arange(150) % V
    path = tmp_path / "ids.jsonl"
    path.write_text(json.dumps({"input_ids": long.tolist()}) + "\n" + json.dumps({"tokens": [1, 2]}) + "\n")
    seqs = teacher.read(str(path))
    assert [len(s) for s in seqs] == [64, 64, 22, 2]
    assert np.array_equal(np.concatenate(seqs[:3]), long)
    assert [len(s) for s in teacher.read(str(path), seq_len=50)] == [50, 50, 50, 2]
    with pytest.raises(SlcInputError, match="at most 64"):
        teacher.read(str(path), seq_len=65)
    with pytest.raises(SlcInputError, match="at most 64 tokens .* got 150 in sequence 1"):
        list(iter_logp(teacher, [np.array([1, 2]), long]))
    got = rows(collect(teacher, seqs, batch_tokens=10)[0])
    assert np.array_equal(got, reference(lm, seqs))


def test_iter_logp_errors(teacher):
    seqs = make_sequences([4, 4])
    for kw, msg in [({"temperature": 0.0}, "temperature > 0"), ({"temperature": float("nan")}, "temperature > 0"),
                    ({"batch_tokens": 0}, "batch_tokens >= 1"), ({"start_token": 9}, r"start token in \[0, 8\]"),
                    ({"start_token": -1}, r"start token in \[0, 8\]")]:
        with pytest.raises(SlcInputError, match=msg):
            list(iter_logp(teacher, seqs, **kw))
    with pytest.raises(SlcInputError, match=r"token ids in \[0, 500\), got 500 at token 6"):
        list(iter_logp(teacher, [np.array([1, 2, 3]), np.array([4, 5, 6, 500])]))
    with pytest.raises(SlcInputError, match="non-empty 1-D integer .* sequence 1"):
        list(iter_logp(teacher, [np.array([1]), np.array([], np.int64)]))
    with pytest.raises(SlcInputError, match="at least one sequence"):
        list(iter_logp(teacher, []))

    bad = LMTeacher(torch.jit.script(BadRows()))
    assert bad.vocab == 10
    with pytest.raises(SlcInputError, match="NaN, \\+inf or all -inf logits at token 4"):
        list(iter_logp(bad, [np.array([1, 2]), np.array([3, 4, 7])]))
    with pytest.raises(SlcInputError, match="at token 2"):
        list(iter_logp(bad, [np.array([1, 2, 8])]))
    it = iter_logp(bad, [np.array([1, 2]), np.array([3, 4, 7])], batch_tokens=2)
    first, block = next(it)  # the rows before the bad one still come out
    assert not torch.is_inference_mode_enabled() and torch.is_grad_enabled()  # not leaked into the caller
    assert first == 0 and block.shape == (2, 10) and next(it)[0] == 2
    with pytest.raises(SlcInputError, match="at token 4"):
        next(it)


# --- input files -------------------------------------------------------------------


@pytest.fixture
def vocab_file(tmp_path):
    path = tmp_path / "vocab.txt"
    path.write_text("\n".join(WORDS) + "\n")
    return path


def test_text_with_a_word_vocabulary(teacher, vocab_file, tmp_path):
    text = tmp_path / "text.txt"
    text.write_text("\ufeffThe cat sat\n\n  on the   MAT  \r\nthe zebra\n")
    seqs = teacher.read(str(text), vocab_file=str(vocab_file))
    assert [s.tolist() for s in seqs] == [[1, 2, 3], [4, 1, 5], [1, 0]]
    assert all(s.dtype == np.int64 for s in seqs)
    data = tmp_path / "mixed.jsonl"
    data.write_text('{"text": "a dog"}\n\n{"input_ids": [7, 499]}\n')
    assert [s.tolist() for s in read_sequences(str(data), vocab_file=str(vocab_file), vocab=V)] == [[6, 7], [7, 499]]
    assert WordVocab(str(vocab_file)).size == len(WORDS)


def input_errors(tmp_path):
    """(file name, contents, read_sequences kwargs, message fragment) for every bad input."""
    no_unk = tmp_path / "no_unk.txt"
    no_unk.write_text("the\ncat\n")
    dup = tmp_path / "dup.txt"
    dup.write_text("the\ncat\nthe\n")
    return [
        ("empty.txt", "", {}, "at least one sequence .* got none"),
        ("blank.jsonl", "\n  \n", {}, "at least one sequence"),
        ("bad.jsonl", '{"input_ids": [1]}\n{"input_ids": [1,\n', {}, "invalid JSON in .*bad.jsonl line 2"),
        ("list.jsonl", "[1, 2]\n", {}, "JSON object per line, got a list in .* line 1"),
        ("keys.jsonl", '{"ids": [1]}\n', {}, "'input_ids', 'tokens' or 'text' .* got keys \\['ids'\\] in .* line 1"),
        ("float.jsonl", '{"input_ids": [1, 2.0]}\n', {}, "'input_ids' to be a list of integers"),
        ("bool.jsonl", '{"tokens": [true]}\n', {}, "'tokens' to be a list of integers"),
        ("text.jsonl", '{"text": 3}\n', {}, "'text' to be a string"),
        ("big.jsonl", '{"tokens": [1]}\n{"tokens": [3, 500]}\n', {"vocab": V}, r"\[0, 500\), got 500 in .* line 2"),
        ("neg.jsonl", '{"tokens": [-1]}\n', {"vocab": V}, r"\[0, 500\), got -1 in .* line 1"),
        ("neg2.jsonl", '{"tokens": [-1]}\n', {}, "ids >= 0, got -1"),
        ("huge.jsonl", '{"tokens": [99999999999999999999]}\n', {}, "fit in 64 bits"),
        ("none.jsonl", '{"tokens": []}\n', {}, "at least one token per sequence, got none in .* line 1"),
        ("plain.txt", "hello world\n", {}, "no tokenizer in .*plain.txt line 1"),
        ("jtext.jsonl", '{"text": "hi"}\n', {}, "no tokenizer in .* line 1"),
        ("unk.txt", "the cat\nthe dog\n", {"vocab_file": str(no_unk)}, "no <unk> entry\\), got 'dog' in .*unk.txt line 2"),
        ("dup_in.txt", "the\n", {"vocab_file": str(dup)}, "got 'the' on lines 1 and 3"),
        ("both.txt", "the\n", {"vocab_file": str(dup), "tokenizer": WordVocab(str(no_unk))}, "got both"),
        ("latin1.txt", b"caf\xe9\n", {}, "UTF-8 .* line 1"),
        ("seq.txt", "the\n", {"vocab_file": str(no_unk), "seq_len": 0}, "sequence length >= 1"),
        ("vocab_missing.txt", "the\n", {"vocab_file": str(tmp_path / "nope.txt")}, "vocabulary file, got .*no such file"),
    ]


def test_bad_inputs(tmp_path):
    for name, content, kw, msg in input_errors(tmp_path):
        path = tmp_path / name
        path.write_bytes(content if isinstance(content, bytes) else content.encode())
        with pytest.raises(SlcInputError, match=msg):
            read_sequences(str(path), **kw)
    with pytest.raises(SlcInputError, match="no such file"):
        read_sequences(str(tmp_path / "missing.txt"))


# --- Hugging Face ------------------------------------------------------------------


@pytest.fixture(scope="module")
def gpt2_dir(tmp_path_factory):
    transformers = pytest.importorskip("transformers")
    tokenizers = pytest.importorskip("tokenizers")
    torch.manual_seed(1)
    config = transformers.GPT2Config(n_layer=1, n_head=2, n_embd=32, vocab_size=300, n_positions=48,
                                     bos_token_id=0, eos_token_id=0)
    model = transformers.GPT2LMHeadModel(config).eval()
    path = tmp_path_factory.mktemp("gpt2")
    model.save_pretrained(str(path), safe_serialization=True)
    tok = tokenizers.Tokenizer(tokenizers.models.WordLevel({w: i for i, w in enumerate(WORDS)}, unk_token="<unk>"))
    tok.pre_tokenizer = tokenizers.pre_tokenizers.Whitespace()
    transformers.PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>").save_pretrained(str(path))
    return path, model


def test_hugging_face_model_directory(gpt2_dir, tmp_path, monkeypatch):
    path, model = gpt2_dir

    def no_network(*args, **kwargs):
        raise AssertionError("tried to reach the network")

    monkeypatch.setattr(socket.socket, "connect", no_network)
    assert not list(path.glob("*.bin"))
    t = load_lm_teacher(str(path))
    assert (t.kind, t.vocab, t.max_len) == ("transformers", 300, 48) and t.tokenizer is not None
    assert len(t.fingerprint()) == 64
    text = tmp_path / "text.txt"
    text.write_text("the cat sat on the mat\na dog zebra\n" + "the " * 60 + "\n")
    seqs = t.read(str(text))
    assert [s.tolist() for s in seqs[:2]] == [[1, 2, 3, 4, 1, 5], [6, 7, 0]]
    assert [len(s) for s in seqs[2:]] == [48, 12]
    got = rows(collect(t, seqs, batch_tokens=16)[0])
    with torch.no_grad():
        want = np.concatenate([torch.log_softmax(model(torch.from_numpy(s)[None]).logits[0], -1).numpy() for s in seqs])
    assert np.array_equal(got, want)
    with pytest.raises(SlcInputError, match="got both"):
        t.read(str(text), vocab_file=str(text))


def test_hugging_face_pickled_weights(gpt2_dir, tmp_path):
    src, model = gpt2_dir
    path = tmp_path / "bin"
    path.mkdir()
    (path / "config.json").write_bytes((src / "config.json").read_bytes())
    torch.save(model.state_dict(), str(path / "pytorch_model.bin"))
    with pytest.raises(SlcInputError, match="pickled checkpoint .*`allow_pickle=True`"):
        load_lm_teacher(str(path))
    with pytest.warns(UserWarning, match="arbitrary code"):
        t = load_lm_teacher(str(path), allow_pickle=True)
    assert t.vocab == 300 and t.tokenizer is None
    with pytest.raises(SlcInputError, match="no tokenizer files"):
        t.read(str(src / "config.json"))
    ids = np.array([1, 2, 3])
    with torch.no_grad():
        want = torch.log_softmax(model(torch.from_numpy(ids)[None]).logits[0], -1).numpy()
    assert np.array_equal(rows(collect(t, [ids])[0]), want)

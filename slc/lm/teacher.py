"""Token-level teacher for language models: load it, read its input sequences, stream its next-token log-probabilities.

A teacher is a TorchScript file (token ids ``(B, L)`` -> logits ``(B, L, V)``), a ``torch.export``
program of the same, or a local Hugging Face ``transformers`` model directory (safetensors weights;
``transformers`` is imported only then). Pickled checkpoints load only with ``allow_pickle``.

Label ``t`` of the concatenation of all sequences is the teacher's distribution of the token
*after* token ``t`` (the model output at position ``t``), every position included.
"""
from __future__ import annotations

import json
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch

from slc.errors import SlcInputError
from slc.distributed import local_device
from slc.models import _describe, _find_state_dict, _freeze, _one_line, _sniff, resolve_device

__all__ = ["LMTeacher", "WordVocab", "load_lm_teacher", "read_sequences", "iter_logp", "offsets_of"]

# Module attributes (TorchScript keeps int attributes) and config fields that give the context length.
_MAX_LEN_ATTRS = ("max_len", "max_length", "block_size", "context_length", "n_positions", "max_position_embeddings")
_MAX_LEN_CONFIG = ("max_position_embeddings", "n_positions", "n_ctx", "seq_length", "max_sequence_length")
_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "vocab.json", "spiece.model",
                    "vocab.txt")
UNK = "<unk>"


class Tokenizer(Protocol):
    def encode(self, text: str) -> list[int]: ...


class LMTeacher:
    """A causal LM on ``device``, frozen, with its vocabulary size and optional tokenizer and context length.

    ``kind`` is ``'torchscript'``, ``'export'``, ``'transformers'`` or ``'pickle'`` (anything
    else is called as ``model(ids)``). ``vocab`` is probed with a one-token forward when not given.
    ``tokenizer_error`` says why a model directory's tokenizer could not be loaded, if so.
    """

    def __init__(self, model: Callable[..., Any], *, device: str | torch.device = "cpu", kind: str = "module",
                 tokenizer: Tokenizer | None = None, max_len: int | None = None, vocab: int | None = None,
                 tokenizer_error: str | None = None):
        self.device = resolve_device(device) if isinstance(device, str) else torch.device(device)
        if isinstance(model, torch.nn.Module):
            model = _freeze(model)  # dropout left on would make every row random
        self.model, self.kind, self.tokenizer, self.tokenizer_error = model, kind, tokenizer, tokenizer_error
        if max_len is not None and max_len < 1:
            raise SlcInputError(f"expected a context length >= 1, got {max_len}")
        self.max_len = max_len
        self.vocab = -1  # logits() checks the width against this once it is known
        if vocab is None:
            with torch.inference_mode():
                vocab = int(self.logits(torch.zeros((1, 1), dtype=torch.int64, device=self.device)).shape[-1])
        if vocab < 2:
            raise SlcInputError(f"expected a teacher with a vocabulary of at least 2 tokens, got {vocab}")
        self.vocab = vocab
        self._fingerprint: str | None = None

    def logits(self, ids: torch.Tensor) -> torch.Tensor:
        """Raw logits ``(B, L, V)`` (the model's dtype) for int64 token ids ``(B, L)`` on :attr:`device`."""
        try:
            if self.kind == "transformers":
                out = self.model(input_ids=ids, use_cache=False)
            else:
                out = self.model(ids)
        except torch.cuda.OutOfMemoryError:  # a resource problem, not bad input
            raise
        except Exception as e:
            raise SlcInputError(f"expected the teacher to run on token ids of shape {list(ids.shape)}, "
                                f"got an error ({_one_line(e)})") from e
        if isinstance(out, Mapping) and isinstance(out.get("logits"), torch.Tensor):
            out = out["logits"]
        elif isinstance(out, (tuple, list)) and out and isinstance(out[0], torch.Tensor):
            out = out[0]
        if not isinstance(out, torch.Tensor):
            raise SlcInputError("expected the teacher to return logits as a tensor, a tuple/list starting with one "
                                f"or a dict with 'logits', got {_describe(out)}")
        b, n = ids.shape
        if out.ndim != 3 or out.shape[:2] != (b, n) or (self.vocab > 0 and out.shape[2] != self.vocab):
            want = f"[{b}, {n}, {self.vocab if self.vocab > 0 else 'V'}]"
            raise SlcInputError(f"expected teacher logits of shape {want} for token ids [{b}, {n}], got {list(out.shape)}")
        if not out.is_floating_point():
            raise SlcInputError(f"expected floating-point teacher logits, got dtype {out.dtype}")
        return out

    def fingerprint(self) -> str:
        """sha256 hex over the weights (as :func:`slc.encode.model_fingerprint`): notices another teacher on resume."""
        if self._fingerprint is None:
            from slc.vision.encode import model_fingerprint  # encode pulls in the image pipeline; only needed here

            self._fingerprint = model_fingerprint(self.model)
        return self._fingerprint

    def read(self, path: str, *, vocab_file: str | None = None, seq_len: int | None = None) -> list[np.ndarray]:
        """:func:`read_sequences` with this teacher's tokenizer, vocabulary size and context length."""
        if seq_len is not None and self.max_len is not None and seq_len > self.max_len:
            raise SlcInputError(f"expected a sequence length of at most {self.max_len} (the teacher's context), got {seq_len}")
        tokenizer = self.tokenizer
        if tokenizer is None and vocab_file is None and self.tokenizer_error:
            tokenizer = _NoTokenizer(self.tokenizer_error)
        return read_sequences(path, tokenizer, vocab_file=vocab_file, seq_len=seq_len or self.max_len, vocab=self.vocab)


def load_lm_teacher(path: str, *, allow_pickle: bool = False, device: str | torch.device = "cpu",
                    log: Callable[[str], None] | None = None) -> LMTeacher:
    """Load a TorchScript / ``torch.export`` file or a local Hugging Face model directory onto ``device``.

    Nothing is downloaded. Pickled checkpoints (a ``torch.save``'d model, or a model directory
    with only ``pytorch_model.bin``) need ``allow_pickle=True``: unpickling runs code from the file.
    """
    p = Path(path)
    dev = local_device(resolve_device(device) if isinstance(device, str) else torch.device(device))
    if p.is_dir():
        return _load_hf(p, allow_pickle=allow_pickle, device=dev, log=log)
    if not p.is_file():
        raise SlcInputError(f"expected an existing TorchScript file or model directory, got {path!r} (no such file)")
    kind = _sniff(p)
    if kind == "torchscript":
        try:
            model = torch.jit.load(str(p), map_location=dev)
        except Exception as e:
            raise SlcInputError(f"expected a loadable TorchScript archive, got {path!r} ({_one_line(e)})") from e
    elif kind == "export":
        try:
            model = torch.export.load(str(p)).module().to(dev)
        except Exception as e:
            raise SlcInputError(f"expected a loadable torch.export program, got {path!r} ({_one_line(e)})") from e
    elif kind == "torch.save":
        if not allow_pickle:
            raise _pickle_refused(path)
        _warn_unpickling(path, log)
        try:
            model = torch.load(str(p), map_location=dev, weights_only=False)
        except Exception as e:
            raise SlcInputError(f"expected a loadable pickled model, got {path!r} ({_one_line(e)}; the model's "
                                "class must be importable)") from e
        if not isinstance(model, torch.nn.Module):
            what = "a state_dict (weights without an architecture)" if _find_state_dict(model) is not None else _describe(model)
            raise SlcInputError(f"expected a whole pickled model, got {path!r} holding {what}: save it with "
                                "torch.jit.save, or as a Hugging Face directory with save_pretrained")
        kind = "pickle"
    else:
        raise SlcInputError(f"expected a TorchScript file or a Hugging Face model directory, got {path!r} ({kind})")
    max_len = next((v for v in (getattr(model, a, None) for a in _MAX_LEN_ATTRS) if _is_len(v)), None)
    return LMTeacher(model, device=dev, kind=kind, max_len=max_len)


def _load_hf(path: Path, *, allow_pickle: bool, device: torch.device, log: Callable[[str], None] | None) -> LMTeacher:
    name = str(path)
    if not (path / "config.json").is_file():
        raise SlcInputError(f"expected a TorchScript file or a Hugging Face model directory with config.json, "
                            f"got the directory {name!r} without config.json")
    files = [f.name for f in path.iterdir()]
    safetensors = any(f.endswith((".safetensors", ".safetensors.index.json")) for f in files)
    if not safetensors:
        if not any(f.endswith((".bin", ".bin.index.json")) for f in files):
            raise SlcInputError(f"expected model weights (*.safetensors) in the model directory {name!r}, got none")
        if not allow_pickle:
            raise _pickle_refused(name)
        _warn_unpickling(name, log)
    try:
        import transformers
    except ImportError as e:
        raise SlcInputError(f"expected the transformers package to load the model directory {name!r}, got none "
                            "installed: pip install transformers") from e
    try:
        # use_safetensors=True never falls back to a pickled .bin sitting next to the safetensors.
        model = transformers.AutoModelForCausalLM.from_pretrained(name, local_files_only=True, use_safetensors=safetensors)
    except Exception as e:
        raise SlcInputError(f"expected a loadable Hugging Face causal language model, got {name!r} ({_one_line(e)})") from e
    model = model.to(device)
    config = getattr(model, "config", None)
    max_len = next((v for v in (getattr(config, a, None) for a in _MAX_LEN_CONFIG) if _is_len(v)), None)
    tokenizer, why = None, f"no tokenizer files in {name!r}"
    if any((path / f).is_file() for f in _TOKENIZER_FILES):
        try:
            tokenizer, why = transformers.AutoTokenizer.from_pretrained(name, local_files_only=True), None
        except Exception as e:
            why = f"its tokenizer does not load ({_one_line(e)})"
    return LMTeacher(model, device=device, kind="transformers", tokenizer=tokenizer, max_len=max_len, tokenizer_error=why)


def _pickle_refused(name: str) -> SlcInputError:
    return SlcInputError(f"expected a TorchScript file or a safetensors model directory, got a pickled checkpoint "
                         f"{name!r}; pass `allow_pickle=True` if you trust it (unpickling runs arbitrary code from the file), "
                         "or save it with torch.jit.save or save_pretrained(safe_serialization=True)")


def _warn_unpickling(name: str, log: Callable[[str], None] | None) -> None:
    msg = (f"warning: unpickling {name!r} (`allow_pickle=True`): unpickling runs arbitrary code from the file; "
           "only do this for files you trust")
    if log is not None:
        log(msg)
    warnings.warn(msg, stacklevel=3)


def _is_len(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v > 0


# --- input -------------------------------------------------------------------------


class WordVocab:
    """Word-level tokenizer from a file of one word per line; a word's id is its line number (from 0).

    Text is lower-cased and split on whitespace; entries are matched as written. Unknown words map
    to the ``<unk>`` entry, or raise :class:`SlcInputError` when the vocabulary has none.
    """

    def __init__(self, path: str):
        self.path = str(path)
        try:
            text = Path(path).read_text(encoding="utf-8")
        except FileNotFoundError:
            raise SlcInputError(f"expected an existing vocabulary file, got {self.path!r} (no such file)") from None
        except (OSError, UnicodeDecodeError) as e:
            raise SlcInputError(f"expected a UTF-8 vocabulary file, got {self.path!r} ({_one_line(e)})") from None
        lines = text.split("\n")
        if lines and lines[-1] == "":
            lines.pop()
        self.ids: dict[str, int] = {}
        for i, line in enumerate(lines):
            word = line.strip()
            if not word:
                continue  # keeps its id, matches nothing
            if word in self.ids:
                raise SlcInputError(f"expected one line per word in the vocabulary {self.path!r}, got {word!r} on "
                                    f"lines {self.ids[word] + 1} and {i + 1}")
            self.ids[word] = i
        if not self.ids:
            raise SlcInputError(f"expected at least one word in the vocabulary {self.path!r}, got none")
        self.size = len(lines)
        self.unk = self.ids.get(UNK)

    def encode(self, text: str) -> list[int]:
        out = []
        for word in text.lower().split():
            i = self.ids.get(word, self.unk)
            if i is None:
                raise SlcInputError(f"expected words from the vocabulary {self.path!r} (it has no {UNK} entry), got {word!r}")
            out.append(i)
        return out


class _NoTokenizer:
    """Stands in for a tokenizer that failed to load, so text input says why."""

    def __init__(self, why: str):
        self.why = why

    def encode(self, text: str) -> list[int]:
        raise SlcInputError(f"expected a tokenizer for text input, got none: {self.why}; give token ids or a vocabulary file")


def read_sequences(path: str, tokenizer: Tokenizer | None = None, *, vocab_file: str | None = None,
                   seq_len: int | None = None, vocab: int | None = None) -> list[np.ndarray]:
    """Token-id sequences (int64, 1-D, non-empty) from a ``.jsonl`` or plain-text file.

    ``.jsonl``: one object per line with ``"input_ids"`` or ``"tokens"`` (ints) or ``"text"``.
    Otherwise each non-empty line is a text sequence. Text needs ``tokenizer`` or ``vocab_file``
    (a :class:`WordVocab`). Ids must be in ``[0, vocab)`` when ``vocab`` is given. Sequences
    longer than ``seq_len`` are cut into windows of ``seq_len`` tokens (each run without the
    previous window's context). :meth:`LMTeacher.read` fills these in from a teacher.
    """
    if vocab_file is not None:
        if tokenizer is not None:
            raise SlcInputError(f"expected either the model's tokenizer or a vocabulary file, got both ({vocab_file!r})")
        tokenizer = WordVocab(vocab_file)
    if seq_len is not None and seq_len < 1:
        raise SlcInputError(f"expected a sequence length >= 1, got {seq_len}")
    p, name = Path(path), str(path)
    if not p.is_file():
        raise SlcInputError(f"expected an existing input file, got {name!r} (no such file)")
    jsonl = p.suffix.lower() == ".jsonl"
    seqs: list[np.ndarray] = []
    with p.open("rb") as f:
        for n, raw in enumerate(f, 1):
            where = f"{name} line {n}"
            try:
                line = raw.decode("utf-8").rstrip("\r\n")
                if n == 1:
                    line = line.removeprefix("\ufeff")  # a byte-order mark, not text
            except UnicodeDecodeError:
                raise SlcInputError(f"expected UTF-8 text, got undecodable bytes in {where}") from None
            if not line.strip():
                continue
            ids = _json_ids(line, tokenizer, where) if jsonl else _encode(tokenizer, line, where)
            if ids.size == 0:
                raise SlcInputError(f"expected at least one token per sequence, got none in {where}")
            if vocab is not None and (ids.min() < 0 or ids.max() >= vocab):
                bad = int(ids[(ids < 0) | (ids >= vocab)][0])
                raise SlcInputError(f"expected token ids in [0, {vocab}), got {bad} in {where}")
            if ids.min() < 0:
                raise SlcInputError(f"expected token ids >= 0, got {int(ids.min())} in {where}")
            w = seq_len or len(ids)
            seqs.extend(ids[i:i + w] for i in range(0, len(ids), w))
    if not seqs:
        raise SlcInputError(f"expected at least one sequence in {name}, got none (the file is empty or blank)")
    return seqs


def _json_ids(line: str, tokenizer: Tokenizer | None, where: str) -> np.ndarray:
    try:
        obj = json.loads(line)
    except json.JSONDecodeError as e:
        raise SlcInputError(f"expected a JSON object per line, got invalid JSON in {where} ({e.msg})") from None
    if not isinstance(obj, dict):
        raise SlcInputError(f"expected a JSON object per line, got {_describe(obj)} in {where}")
    for key in ("input_ids", "tokens"):
        if key in obj:
            ids = obj[key]
            if not isinstance(ids, list) or not all(isinstance(x, int) and not isinstance(x, bool) for x in ids):
                raise SlcInputError(f"expected {key!r} to be a list of integers, got {_describe(ids)} in {where}")
            if ids and not (-2**63 <= min(ids) and max(ids) < 2**63):
                raise SlcInputError(f"expected token ids that fit in 64 bits, got {max(ids, key=abs)} in {where}")
            return np.asarray(ids, dtype=np.int64)
    if "text" in obj:
        if not isinstance(obj["text"], str):
            raise SlcInputError(f"expected 'text' to be a string, got {_describe(obj['text'])} in {where}")
        return _encode(tokenizer, obj["text"], where)
    raise SlcInputError(f"expected 'input_ids', 'tokens' or 'text' in each JSON object, got keys {list(obj)[:5]} in {where}")


def _encode(tokenizer: Tokenizer | None, text: str, where: str) -> np.ndarray:
    if tokenizer is None:
        raise SlcInputError(f"expected token ids or a tokenizer for text, got text and no tokenizer in {where} "
                            "(the teacher has none: give a vocabulary file)")
    try:
        ids = tokenizer.encode(text)
    except SlcInputError as e:
        raise SlcInputError(f"{e} in {where}") from None
    a = np.asarray(ids)
    if a.ndim != 1 or (a.size and a.dtype.kind not in "iu"):
        raise SlcInputError(f"expected the tokenizer to return a list of ints, got {_describe(ids)} in {where}")
    return a.astype(np.int64)


# --- running -----------------------------------------------------------------------


def offsets_of(sequences: Sequence[np.ndarray]) -> np.ndarray:
    """int64 ``[0, len0, len0 + len1, ..., total]``; every sequence must be a non-empty 1-D integer array."""
    lengths = np.empty(len(sequences), np.int64)
    for i, s in enumerate(sequences):
        a = np.asarray(s)
        if a.ndim != 1 or a.size == 0 or a.dtype.kind not in "iu":
            raise SlcInputError(f"expected non-empty 1-D integer token-id arrays, got {a.dtype} {a.shape} for sequence {i}")
        lengths[i] = a.size
    if not len(lengths):
        raise SlcInputError("expected at least one sequence, got none")
    return np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)


def iter_logp(teacher: LMTeacher, sequences: Sequence[np.ndarray], *, temperature: float = 1.0,
              batch_tokens: int = 8192, start_token: int = 0, group: bool = False, on_device: bool = False,
              progress: Callable[[int], None] | None = None) -> Iterator[tuple[int, np.ndarray | torch.Tensor]]:
    """Teacher-forced ``log_softmax(logits / temperature)`` rows for every token of every sequence.

    Yields ``(first_token, block)``: float32 ``(n, V)`` blocks of at most ``batch_tokens``
    consecutive tokens of the concatenation, from ``start_token`` on, in order. Row ``t`` is
    the model output at token ``t`` (the distribution of the token after it).

    Each sequence runs on its own, so rows are the same bits whatever ``batch_tokens`` and
    ``start_token`` (batching equal-length sequences changes the last bits of a CPU matmul).
    ``group=True`` batches consecutive equal-length sequences up to ``batch_tokens`` tokens
    (faster on a GPU): rows then depend on ``batch_tokens`` in their last bits, not on
    ``start_token``. ``progress(n)`` gets each block's row count as it is yielded. ``on_device``: blocks
    are float32 tensors left on the teacher's device (for a selection there), not host arrays.

    Memory: one output block plus one forward's logits, ``batch_tokens x V`` at most, except
    for a sequence longer than ``batch_tokens``: it runs whole (``L x V`` logits).
    """
    if not (np.isfinite(temperature) and temperature > 0):
        raise SlcInputError(f"expected a temperature > 0, got {temperature}")
    if batch_tokens < 1:
        raise SlcInputError(f"expected batch_tokens >= 1, got {batch_tokens}")
    offsets = offsets_of(sequences)
    total, vocab = int(offsets[-1]), teacher.vocab
    if not 0 <= start_token <= total:
        raise SlcInputError(f"expected a start token in [0, {total}], got {start_token}")
    lengths = np.diff(offsets)
    if teacher.max_len is not None and lengths.max() > teacher.max_len:
        s = int(np.argmax(lengths > teacher.max_len))
        raise SlcInputError(f"expected sequences of at most {teacher.max_len} tokens (the teacher's context), got "
                            f"{int(lengths[s])} in sequence {s}: cut them into windows with seq_len")
    pos, buf, filled = start_token, None, 0
    first = int(np.searchsorted(offsets, start_token, "right")) - 1
    for i, j in _plan(lengths, batch_tokens if group else 0, first):
        a, b = int(offsets[i]), int(offsets[j])
        ids = np.stack([np.asarray(sequences[k], dtype=np.int64) for k in range(i, j)])
        bad = (ids < 0) | (ids >= vocab)
        if bad.any():
            k = int(np.argmax(bad.reshape(-1)))
            raise SlcInputError(f"expected token ids in [0, {vocab}), got {int(ids.reshape(-1)[k])} at token {a + k}")
        # inference_mode only around the work: held across a yield, it would leak into the caller's code.
        with torch.inference_mode():
            flat = teacher.logits(torch.from_numpy(ids).to(teacher.device)).reshape(b - a, vocab)
        lo = max(start_token, a) - a
        while lo < b - a:
            if buf is None:
                rows = min(batch_tokens, total - pos)
                buf, filled = torch.empty((rows, vocab), device=teacher.device if on_device else "cpu"), 0
            n = min(b - a - lo, len(buf) - filled)
            with torch.inference_mode():
                buf[filled:filled + n].copy_(_logp(flat[lo:lo + n], temperature, a + lo))
            filled, lo = filled + n, lo + n
            if filled == len(buf):
                if progress is not None:
                    progress(filled)
                yield pos, buf if on_device else buf.numpy()
                pos, buf = pos + filled, None


def _plan(lengths: np.ndarray, batch_tokens: int, first: int) -> Iterator[tuple[int, int]]:
    """Runs of sequences ``[i, j)`` per forward, from the one holding the start token on.

    With grouping the runs are laid out from sequence 0, so a resumed run batches as a whole one did.
    """
    if batch_tokens == 0:
        for i in range(first, len(lengths)):
            yield i, i + 1
        return
    i = 0
    while i < len(lengths):
        j = i + 1
        while j < len(lengths) and lengths[j] == lengths[i] and (j - i + 1) * lengths[i] <= batch_tokens:
            j += 1
        if j > first:
            yield i, j
        i = j


def _logp(logits: torch.Tensor, temperature: float, first: int) -> torch.Tensor:
    """float32 log-softmax rows; a row with a NaN or without a finite entry raises, naming its token."""
    out = torch.log_softmax(logits.float() / temperature, dim=-1)
    bad = torch.isnan(out).any(-1) | ~torch.isfinite(out).any(-1)
    if bad.any():
        k = int(torch.nonzero(bad)[0, 0])
        raise SlcInputError(f"expected finite teacher logits, got NaN, +inf or all -inf logits at token {first + k}")
    return out

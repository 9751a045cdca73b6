"""Import vLLM ``prompt_logprobs`` saved as JSONL: the teacher's top-k log-probabilities at every prompt token.

What vLLM computes (``vllm/logprobs.py`` and ``gpu_model_runner._get_prompt_logprobs_dict`` at
vllm-project/vllm ``578b601`` = v0.12.0): ``prompt_logprobs`` has one entry per prompt token. Entry 0
is ``null`` (``{}`` from ``FlatLogprobs``); entry ``j >= 1`` is ``log_softmax(logits)`` in float32, at
temperature 1, of the model after tokens ``0..j-1``: ``{token_id: Logprob(logprob, rank, decoded_token)}``
over the top k words and the prompt token ``j``, which comes first with its true rank (k entries when it
is in the top k, k + 1 otherwise; older V1 engines gave it rank k + 1 and put it last).

Lines read (one JSON object each; ``-Infinity`` and the server's ``-9999.0`` mean -inf):

- ``{"prompt_token_ids": [...], "prompt_logprobs": [null, {...}, ...]}`` (an offline dump; ``input_ids``
  is accepted for ``prompt_token_ids``);
- the same, gzip-compressed (``.gz``);
- an OpenAI-server response, ``{"choices": [{"prompt_token_ids", "prompt_logprobs", ...}, ...]}`` (one
  prompt per choice), or a ``run_batch`` output line ``{"response": {"body": ...}}``.

A position is a dict ``"token_id" -> logprob`` or ``-> {"logprob", "rank", "decoded_token"}`` (keys may
read ``"token_id:N"``), a list of ``{"token"|"token_id", "logprob"}`` objects (axolotl), or a whole
``prompt_logprobs`` may be a dumped ``FlatLogprobs`` (``start_indices``, ``end_indices``, ``token_ids``,
``logprobs``, ``ranks``).

Mapping, as ``slc encode-lm`` (:func:`slc.lm.teacher.iter_logp`: row t is the model output at token t,
``token_ids[t]`` is token t): a prompt of L tokens gives L - 1 labels; label t is ``prompt_logprobs[t + 1]``
(the distribution of token t + 1 given tokens ``0..t``) and ``token_ids[t] = prompt_token_ids[t]``, for
t = 0..L-2. The last prompt token gets no label (vLLM computes none); a one-token prompt is skipped.
Each label keeps the k most probable words (k: the fewest entries of any position, not counting an
entry whose rank is above the position's entry count, unless given), most probable first.
"""
from __future__ import annotations

import gzip
import json
import os
from dataclasses import dataclass
from typing import Callable, Iterator

import numpy as np

from slc.errors import SlcInputError
from slc.interop.base import Imported, TempSparse, input_identity, temp_arrays

Log = Callable[[str], None]
SENTINEL = -9999.0  # vLLM's server writes -inf as -9999.0 (serving_engine.clamp_prompt_logprobs)
NO_RANK = np.iinfo(np.int64).max


# ---------------------------------------------------------------- reading records
def _records(path: str) -> Iterator[tuple[str, dict]]:
    """``(where, object)`` for every non-blank line of ``path`` (gzip-compressed if it ends in ``.gz``)."""
    try:
        with (gzip.open if path.endswith(".gz") else open)(path, "rb") as f:
            for no, line in enumerate(f, 1):
                if line.strip():
                    yield f"{path}:{no}", _parse_line(line, f"{path}:{no}")
    except (OSError, EOFError) as e:  # a broken gzip stream
        raise SlcInputError(f"expected a readable JSONL file, got {path} ({str(e)[:80]})") from None


def _parse_line(line: bytes, where: str) -> dict:
    try:
        obj = json.loads(line)
    except ValueError as e:  # json.JSONDecodeError and UnicodeDecodeError
        raise SlcInputError(f"expected one JSON object per line, got unparsable JSON at {where} "
                            f"({str(e).splitlines()[0][:80]})") from None
    if not isinstance(obj, dict):
        raise SlcInputError(f"expected a JSON object per line, got a {type(obj).__name__} at {where}")
    return obj


def _prompts(rec: dict, where: str) -> list[tuple[object, object]]:
    """The ``(prompt_token_ids, prompt_logprobs)`` pairs of one record."""
    if "prompt_logprobs" in rec:
        return [(rec.get("prompt_token_ids", rec.get("input_ids")), rec["prompt_logprobs"])]
    body = rec.get("response", {}).get("body") if isinstance(rec.get("response"), dict) else None
    if isinstance(body, dict):
        return _prompts(body, where)
    choices = rec.get("choices")
    if isinstance(choices, list):
        found = [(c.get("prompt_token_ids", rec.get("prompt_token_ids")), c["prompt_logprobs"])
                 for c in choices if isinstance(c, dict) and c.get("prompt_logprobs") is not None]
        if found:
            return found
    raise SlcInputError(f"expected a vLLM record with prompt_token_ids and prompt_logprobs (or choices of them), "
                        f"got keys {sorted(rec)[:8]} at {where}")


def _token(key: object, where: str) -> int:
    if isinstance(key, int) and not isinstance(key, bool):
        return key
    if isinstance(key, str):
        s = key[9:] if key.startswith("token_id:") else key
        if s.isdigit():
            return int(s)
    raise SlcInputError(f"expected integer token ids, got {str(key)[:40]!r} at {where} (a decoded token cannot be "
                        "mapped back to its id: ask vLLM for token ids)")


def _entry(value: object, where: str) -> tuple[float, int | None]:
    """``(logprob, rank)`` of a dict value: a number or a ``Logprob`` as a dict."""
    if isinstance(value, dict):
        lp, rank = value.get("logprob"), value.get("rank")
    else:
        lp, rank = value, None
    if not isinstance(lp, (int, float)) or isinstance(lp, bool) or not (rank is None or type(rank) is int):
        raise SlcInputError(f"expected a logprob number (and an integer rank) per word, got {str(value)[:60]} at "
                            f"{where}")
    return float(lp), rank


def _fast(ent: dict) -> tuple[list[int], list, list] | None:
    """The usual position quickly (integer keys; values all floats or all ``Logprob`` dicts), else None."""
    try:
        words = [int(key) for key in ent]
    except ValueError:
        return None
    vals = list(ent.values())
    if all(type(v) is float for v in vals):
        return words, vals, [None] * len(vals)
    if all(type(v) is dict for v in vals):
        lps, ranks = [v.get("logprob") for v in vals], [v.get("rank") for v in vals]
        if all(type(x) is float for x in lps) and all(r is None or type(r) is int for r in ranks):
            return words, lps, ranks
    return None


def _position(ent: object, where: str) -> tuple[list[int], list[float], list[int | None]]:
    """Word ids, logprobs and ranks of one position."""
    fast = _fast(ent) if isinstance(ent, dict) and ent else None
    if fast is not None:
        return fast
    if isinstance(ent, dict):
        words = [_token(key, where) for key in ent]
        pairs = [_entry(v, where) for v in ent.values()]
    elif isinstance(ent, list) and all(isinstance(e, dict) for e in ent):
        words = [_token(e.get("token_id", e.get("token")), where) for e in ent]
        pairs = [_entry(e, where) for e in ent]
    else:
        raise SlcInputError(f"expected a dict of word -> logprob, got {str(ent)[:60]} at {where}")
    if not words:
        raise SlcInputError(f"expected at least one word, got an empty entry at {where}")
    return words, [p[0] for p in pairs], [p[1] for p in pairs]


def _unflatten(flat: dict, where: str) -> list:
    """A dumped ``FlatLogprobs`` as a list of positions (lists of ``{"token_id", "logprob", "rank"}``)."""
    try:
        tok, lp, rank = flat["token_ids"], flat["logprobs"], flat.get("ranks") or [None] * len(flat["logprobs"])
        return [[{"token_id": tok[i], "logprob": lp[i], "rank": rank[i]} for i in range(a, b)]
                for a, b in zip(flat["start_indices"], flat["end_indices"])]
    except (KeyError, IndexError, TypeError):
        raise SlcInputError(f"expected a FlatLogprobs dump (start_indices, end_indices, token_ids, logprobs), got "
                            f"keys {sorted(flat)[:8]} at {where}") from None


@dataclass
class Prompt:
    """One prompt's tokens and its entries, sorted by position, then most probable first (repeats dropped)."""

    tokens: np.ndarray  # (L,) int64
    pos: np.ndarray  # (m,) label position 0..L-2 of each entry
    word: np.ndarray  # (m,) int64
    lp: np.ndarray  # (m,) float64
    rank: np.ndarray  # (m,) int64, NO_RANK when not given

    def counts(self) -> np.ndarray:
        """Per label: entries, not counting one whose rank is above the position's entry count (not in the top)."""
        n = np.bincount(self.pos, minlength=len(self.tokens) - 1)
        top = (self.rank == NO_RANK) | (self.rank <= n[self.pos])
        return np.bincount(self.pos, weights=top, minlength=len(self.tokens) - 1).astype(np.int64)


def parse_prompt(ids: object, plp: object, where: str) -> Prompt:
    """Check and flatten one prompt (see the module docstring for what is accepted)."""
    if not isinstance(ids, list) or not all(type(t) is int and t >= 0 for t in ids):
        raise SlcInputError(f"expected prompt_token_ids as a list of non-negative integers, got {str(ids)[:60]} at "
                            f"{where}")
    if isinstance(plp, dict) and "start_indices" in plp:
        plp = _unflatten(plp, where)
    if not isinstance(plp, list) or len(plp) != len(ids):
        got = f"{len(plp)} entries" if isinstance(plp, list) else type(plp).__name__
        raise SlcInputError(f"expected one prompt_logprobs entry per prompt token ({len(ids)}), got {got} at {where}")
    pos: list[int] = []
    words: list[int] = []
    lps: list[float] = []
    ranks: list[int | None] = []
    for j in range(1, len(ids)):
        w, v, r = _position(plp[j], f"{where} (position {j})")
        pos += [j - 1] * len(w)
        words += w
        lps += v
        ranks += r
    lp = np.array(lps, np.float64)
    if np.isnan(lp).any() or np.isposinf(lp).any():
        raise SlcInputError(f"expected logprobs <= 0 or -inf, got NaN or +inf at {where}")
    lp[lp <= SENTINEL] = -np.inf
    rank = np.array([NO_RANK if r is None else r for r in ranks], np.int64)
    p, w = np.array(pos, np.int64), np.array(words, np.int64)
    if w.size and w.min() < 0:
        raise SlcInputError(f"expected non-negative token ids, got {int(w.min())} at {where}")
    order = np.lexsort((rank, -lp, p))
    p, w, lp, rank = p[order], w[order], lp[order], rank[order]
    _, first = np.unique(p * (int(w.max(initial=0)) + 1) + w, return_index=True)  # FlatLogprobs repeats words
    keep = np.zeros(len(p), bool)
    keep[first] = True
    return Prompt(np.array(ids, np.int64), p[keep], w[keep], lp[keep], rank[keep])


def top_rows(pr: Prompt, k: int) -> tuple[np.ndarray, np.ndarray]:
    """``(words (L-1, k), logprobs (L-1, k) float32)``: each label's k most probable entries, largest first."""
    n = len(pr.tokens) - 1
    starts = np.searchsorted(pr.pos, np.arange(n))
    keep = np.arange(len(pr.pos)) - starts[pr.pos] < k
    return pr.word[keep].reshape(n, k), pr.lp[keep].astype(np.float32).reshape(n, k)


def _prompts_of(path: str) -> Iterator[tuple[str, Prompt]]:
    for where, rec in _records(path):
        for ids, plp in _prompts(rec, where):
            yield where, parse_prompt(ids, plp, where)


# ---------------------------------------------------------------- the importer
@dataclass
class _Scan:
    prompts: int = 0
    skipped: int = 0
    labels: int = 0
    k: int | None = None
    k_where: str = ""
    top: int = -1  # largest token id seen


def _scan(path: str, vocab: int | None) -> _Scan:
    """Pass 1: count labels, the fewest entries of a position, the largest id."""
    s = _Scan()
    for where, pr in _prompts_of(path):
        if len(pr.tokens) < 2:
            s.skipped += 1
            continue
        top = max(int(pr.tokens.max()), int(pr.word.max()))
        if vocab is not None and top >= vocab:
            raise SlcInputError(f"expected token ids < the vocabulary ({vocab:,}), got {top:,} at {where}")
        least = int(pr.counts().min())
        if s.k is None or least < s.k:
            s.k, s.k_where = least, where
        s.prompts += 1
        s.labels += len(pr.tokens) - 1
        s.top = max(s.top, top)
    return s


def open_vllm(path: str | os.PathLike, *, vocab: int | None = None, k: int | None = None,
              log: Log = lambda line: None) -> Imported:
    """Open a JSONL of vLLM ``prompt_logprobs`` for import (two passes; labels go to a temporary folder).

    ``vocab``: the teacher's vocabulary size (else the largest token id + 1, logged). ``k``: words kept per
    token (else the fewest any position holds). The temporary folder goes with :meth:`Imported.close`.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise SlcInputError(f"expected a vLLM prompt_logprobs JSONL file, got {path!r} (no such file)")
    s = _scan(path, vocab)
    if not s.labels:
        raise SlcInputError(f"expected prompts of at least 2 tokens, got {s.prompts + s.skipped} shorter in {path}")
    if k is not None and (k < 1 or k > s.k):
        raise SlcInputError(f"expected 1 <= k <= {s.k} (the fewest words a position holds, at {s.k_where}), got {k}")
    k = s.k if k is None else k
    if vocab is None:
        vocab = s.top + 1
        log(f"vllm: no vocabulary size given: using the largest token id + 1 = {vocab:,} (pass the teacher's "
            "if larger)")
    if s.skipped:
        log(f"vllm: skipped {s.skipped:,} one-token prompts (no label)")
    tmp, values, words, tokens = temp_arrays(s.labels, k, vocab)
    try:
        offsets, at = [0], 0
        for _, pr in _prompts_of(path):
            if len(pr.tokens) < 2:
                continue
            n = len(pr.tokens) - 1
            words[at:at + n], values[at:at + n] = top_rows(pr, k)
            tokens[at:at + n] = pr.tokens[:-1]
            at += n
            offsets.append(at)
        if at != s.labels:
            raise SlcInputError(f"expected {path} to stay the same while it is read, got {at:,} labels then "
                                f"{s.labels:,}")
        values.flush()
        words.flush()
        tokens.flush()
        labels = TempSparse(tmp, values, words, vocab, path)
    except BaseException:
        tmp.cleanup()
        raise
    log(f"vllm: {s.prompts:,} prompts, {s.labels:,} labelled tokens, top-{k} of {vocab:,} words from {path}")
    identity = input_identity([path], path)
    summary = {"format": "vllm", "files": 1, "sequences": s.prompts, "tokens": s.labels, "topk": k, "vocab": vocab,
               "dtype": "float32", "bytes": identity["bytes"]}
    return Imported("vllm", labels, "logits", 1.0, sequences=np.array(offsets, np.int64), token_ids=tokens,
                    summary=summary, identity={**identity, "vocab": vocab, "k": k})

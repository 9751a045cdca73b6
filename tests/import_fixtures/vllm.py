"""Write what a vLLM prompt-logprobs capture writes as JSONL, from a random "teacher".

Matched: vLLM v0.12.0 (vllm-project/vllm ``578b601cd1f41074873532e99af8369bf75cb5a9``, the same code as
the 0.12.0 wheel, ``__commit_id__ g4fd9d6a85``):

- values: ``gpu_model_runner._get_prompt_logprobs_dict``, ``logits.log_softmax(dim=-1, dtype=float32)`` of
  the raw logits; row ``i`` is the distribution of prompt token ``i + 1``;
- the prompt token's rank: ``vllm/v1/sample/ops/logprobs.py``, ``(x >= x[token]).sum()`` (1-based, ties count
  as better);
- a position: ``vllm/logprobs.py`` ``append_logprobs_for_next_position``: a dict built from
  ``[prompt token] + top-k`` ids with ranks ``chain((rank,), range(1, k + 1))``, so the prompt token comes
  first (and once: a repeat keeps its first place and takes the top-k rank); ``create_prompt_logprobs``
  puts ``None`` first. ``FlatLogprobs`` keeps the raw, repeated ``k + 1`` entries per position;
- serialised as a capture script does: ``json.dumps`` of ``dataclasses.asdict`` (int keys become strings,
  -inf becomes ``-Infinity``); the OpenAI server's ``CompletionResponse`` (``entrypoints/openai/protocol.py``:
  ``choices[i].prompt_logprobs`` / ``prompt_token_ids``, -inf clamped to -9999.0 by
  ``serving_engine.clamp_prompt_logprobs``); a ``run_batch`` output line (``BatchRequestOutput`` with a
  chat ``body`` carrying ``prompt_logprobs`` / ``prompt_token_ids``); a bare ``{"id": logprob}`` dump.
"""
from __future__ import annotations

import dataclasses
import itertools
import json
import math

import numpy as np
import torch

STYLES = ("offline", "server", "batch", "float", "flat")


@dataclasses.dataclass
class Logprob:
    """``vllm.logprobs.Logprob``'s fields."""

    logprob: float
    rank: int | None = None
    decoded_token: str | None = None


def teacher_rows(seq: list[int], vocab: int, gen: torch.Generator, suppress: float = 0.1) -> torch.Tensor:
    """float32 ``(L - 1, vocab)`` log-softmax rows. Like a trained LM, the teacher often expects the next token
    (its logit raised); a few next tokens get a -inf logit (a suppressed word: vLLM's rank is then ``vocab``)."""
    logits = torch.randn(len(seq) - 1, vocab, generator=gen) * 3
    for j in range(len(seq) - 1):
        u = torch.rand(1, generator=gen).item()
        if u < suppress:
            logits[j, seq[j + 1]] = -math.inf
        elif u < 0.6:
            logits[j, seq[j + 1]] += 8.0
    return logits.log_softmax(dim=-1, dtype=torch.float32)


def positions(seq: list[int], rows: torch.Tensor, k: int) -> tuple[list, dict]:
    """vLLM's ``prompt_logprobs`` as a list (None, then dicts of Logprob) and as a FlatLogprobs dump."""
    plp: list = [None]
    flat = {"start_indices": [0], "end_indices": [0], "token_ids": [], "logprobs": [], "ranks": [],
            "decoded_tokens": []}
    for j in range(1, len(seq)):
        row, tok = rows[j - 1], seq[j]
        vals, idx = torch.topk(row, k)
        rank = int((row >= row[tok]).sum())
        ids, lps = [tok] + idx.tolist(), [row[tok].item()] + vals.tolist()
        ranks = list(itertools.chain((rank,), range(1, k + 1)))
        plp.append({t: Logprob(lp, r, None) for t, lp, r in zip(ids, lps, ranks)})
        flat["start_indices"].append(len(flat["token_ids"]))
        flat["token_ids"] += ids
        flat["logprobs"] += lps
        flat["ranks"] += ranks
        flat["decoded_tokens"] += [None] * len(ids)
        flat["end_indices"].append(len(flat["token_ids"]))
    return plp, flat


def _asdict(plp: list, clamp: bool = False) -> list:
    def lp(v: Logprob) -> dict:
        d = dataclasses.asdict(v)
        d["logprob"] = max(d["logprob"], -9999.0) if clamp else d["logprob"]
        return d
    return [None if p is None else {t: lp(v) for t, v in p.items()} for p in plp]


def _choice(i: int, seq: list[int], plp: list) -> dict:
    return {"index": i, "text": "x", "logprobs": None, "finish_reason": "length", "stop_reason": None,
            "token_ids": None, "prompt_logprobs": _asdict(plp, clamp=True), "prompt_token_ids": seq}


def lines(seqs: list[list[int]], plps: list[list], flats: list[dict], style: str) -> list[str]:
    """The JSONL lines of ``style`` (server: two prompts per response)."""
    if style == "offline":
        return [json.dumps({"request_id": str(i), "prompt": None, "prompt_token_ids": s, "prompt_logprobs": _asdict(p)})
                for i, (s, p) in enumerate(zip(seqs, plps))]
    if style == "float":
        return [json.dumps({"prompt_token_ids": s, "prompt_logprobs": [None if d is None else
                                                                       {str(t): v.logprob for t, v in d.items()}
                                                                       for d in p]})
                for s, p in zip(seqs, plps)]
    if style == "flat":
        return [json.dumps({"prompt_token_ids": s, "prompt_logprobs": f}) for s, f in zip(seqs, flats)]
    if style == "server":
        out = []
        for a in range(0, len(seqs), 2):
            choices = [_choice(i, seqs[a + i], plps[a + i]) for i in range(min(2, len(seqs) - a))]
            out.append(json.dumps({"id": f"cmpl-{a}", "object": "text_completion", "created": 0, "model": "teacher",
                                   "choices": choices, "usage": {"prompt_tokens": 0, "total_tokens": 0}}))
        return out
    if style == "batch":
        return [json.dumps({"id": f"vllm-{i}", "custom_id": f"request-{i}", "response": {
            "status_code": 200, "request_id": f"vllm-batch-{i}", "body": {
                "id": f"chatcmpl-{i}", "object": "chat.completion", "created": 0, "model": "teacher",
                "choices": [{"index": 0, "message": {"role": "assistant", "content": "x"}, "finish_reason": "length"}],
                "prompt_logprobs": _asdict(p, clamp=True), "prompt_token_ids": s}}, "error": None})
                for i, (s, p) in enumerate(zip(seqs, plps))]
    raise ValueError(f"style: one of {STYLES}")


def write_vllm_jsonl(path, seqs: list[list[int]], vocab: int, k: int, seed: int = 0, style: str = "offline",
                     suppress: float = 0.1) -> dict[str, np.ndarray]:
    """Write ``seqs``' prompt logprobs (top ``k`` of ``vocab``) to ``path``; return the truth slc should read:
    ``offsets`` (one-token prompts have no label), ``token_ids`` (the input token at each label), ``indices``
    and ``logprobs`` ((N, k), largest first).
    """
    gen = torch.Generator().manual_seed(seed)
    plps, flats, idx, vals, toks, offsets = [], [], [], [], [], [0]
    for s in seqs:
        rows = teacher_rows(s, vocab, gen, suppress)
        plp, flat = positions(s, rows, k)
        plps.append(plp)
        flats.append(flat)
        v, i = torch.topk(rows, k, dim=-1)
        vals.append(v.numpy())
        idx.append(i.numpy())
        toks.append(np.asarray(s[:-1], np.int64))
        if len(s) > 1:  # a one-token prompt has no label
            offsets.append(offsets[-1] + len(s) - 1)
    with open(path, "w") as f:
        for line in lines(seqs, plps, flats, style):
            f.write(line + "\n")
    return {"offsets": np.array(offsets, np.int64), "token_ids": np.concatenate(toks),
            "indices": np.concatenate(idx).astype(np.int64), "logprobs": np.concatenate(vals).astype(np.float32)}


def random_seqs(n: int, vocab: int, seed: int = 0, lengths=(2, 40)) -> list[list[int]]:
    rng = np.random.default_rng(seed)
    return [rng.integers(0, vocab, rng.integers(*lengths, endpoint=True)).tolist() for _ in range(n)]

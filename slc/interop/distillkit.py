"""Import DistillKit's offline teacher logits: parquet rows of ``input_ids``, ``compressed_logprobs`` and
``bytepacked_indices``.

Matched: arcee-ai/DistillKit ``a61c2e7`` (``distillkit/compression/{config,bitpack,monotonic_logprobs,
compressor}.py``, ``sample_common.py``, ``sample_logits_vllm.py``). ``sample_logits_vllm`` writes a folder of
``data_{i}.parquet`` and its ``compression_config.yaml`` (a ``DistributionQuantizationConfig``; the trainer
takes the same one as ``teacher.logprob_compressor``). A row is one sequence: ``input_ids`` (N tokens)
and, per label, ``compressed_logprobs`` and ``bytepacked_indices`` (``list<list<uint8>>``). Label j is
vLLM's prompt logprobs row ``j + 1``: the top-k log-softmax (T = 1) after tokens ``0..j``, so, as ``slc
encode-lm``, ``token_ids[j] = input_ids[j]`` for the first ``len(bytepacked_indices)`` tokens (usually N - 1).

Decoding follows ``decompress_monotonic_logprobs`` step by step, in torch, so the values are DistillKit's
bits: exact values, polynomial coefficients and residual bins (MSB-first bit streams), the residual cast
to the exact dtype before the fit is added, the delta cumsum in float32. Indices are a ``ceil(log2 d)``-bit
MSB-first stream. slc then wants each label most probable first with mass at most 1: rows that
quantisation left out of order are sorted, rows whose mass exceeds 1 are scaled to 1 (both logged).
DistillKit's legacy rows (``packed_indices``, ``exact_values``, ``coeffs``) hold mean-centred logits, not
log-probabilities, and are refused.
"""
from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch

from slc.errors import SlcInputError
from slc.interop.base import Imported, TempSparse, input_identity, temp_arrays

Log = Callable[[str], None]
COLUMNS = ("input_ids", "compressed_logprobs", "bytepacked_indices")
LEGACY = ("packed_indices", "exact_values", "coeffs")
CONFIG_FILES = ("compression_config.yaml", "compression_config.yml", "compression_config.json")
DTYPES = {"float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32, "float64": torch.float64}
SPECIAL = ("sqrt", "exp")
ROWS_PER_BATCH = 16  # parquet rows read at once
LABELS_PER_DECODE = 8192  # labels decoded at once (bounds the bit-unpacking buffers)
INSTALL = "pip install 'slc[parquet]'"


@dataclass(frozen=True)
class Bin:
    scale_dtype: str
    element_bits: int
    num_elements: int


@dataclass(frozen=True)
class Config:
    """DistillKit's ``DistributionQuantizationConfig`` (same fields, same defaults)."""

    d: int
    k: int
    exact_k: int
    exact_dtype: str = "float32"
    polynomial_terms: tuple = ()
    term_dtype: str = "float32"
    residual_bins: tuple[Bin, ...] = ()
    delta_encoding: bool = True
    error_diffusion: bool = False
    normalize_t: bool = False

    @property
    def index_bits(self) -> int:
        """``ceil(log2 d)`` computed in float32, as DistillKit does."""
        return int(torch.log2(torch.tensor(self.d, dtype=torch.float32)).ceil().item())

    @property
    def index_bytes(self) -> int:
        return (self.k * self.index_bits + 7) // 8

    @property
    def logprob_bytes(self) -> int:
        size = {name: torch.finfo(t).bits // 8 for name, t in DTYPES.items()}
        n = self.exact_k * size[self.exact_dtype] + len(self.polynomial_terms) * size[self.term_dtype]
        return n + sum(size[b.scale_dtype] + (b.num_elements * b.element_bits + 7) // 8 for b in self.residual_bins)

    def as_dict(self) -> dict:
        return {"d": self.d, "k": self.k, "exact_k": self.exact_k, "exact_dtype": self.exact_dtype,
                "polynomial_terms": list(self.polynomial_terms) or None, "term_dtype": self.term_dtype,
                "residual_bins": [vars(b) for b in self.residual_bins], "delta_encoding": self.delta_encoding,
                "error_diffusion": self.error_diffusion, "normalize_t": self.normalize_t}


# ---------------------------------------------------------------- the config
def _int(raw: dict, key: str, where: str, least: int) -> int:
    v = raw.get(key)
    if type(v) is not int or v < least:
        raise SlcInputError(f"expected an integer {key} >= {least} in the DistillKit config {where}, got {v!r}")
    return v


def _dtype(raw: dict, key: str, where: str) -> str:
    v = raw.get(key, "float32")
    if v not in DTYPES:
        raise SlcInputError(f"expected {key} in {sorted(DTYPES)} in the DistillKit config {where}, got {v!r}")
    return v


def parse_config(raw: object, where: str) -> Config:
    """A DistillKit config from its dict (its YAML, or a trainer config's ``teacher.logprob_compressor``)."""
    if isinstance(raw, dict) and isinstance(raw.get("teacher"), dict):
        raw = raw["teacher"]
    if isinstance(raw, dict) and "legacy_logit_compression" in raw and not raw.get("logprob_compressor"):
        raise SlcInputError(f"expected a logprob_compressor config in {where}, got legacy_logit_compression "
                            "(legacy rows hold centred logits, not log-probabilities: not importable)")
    if isinstance(raw, dict) and isinstance(raw.get("logprob_compressor"), dict):
        raw = raw["logprob_compressor"]
    if not isinstance(raw, dict):
        raise SlcInputError(f"expected a DistillKit compression config (a mapping), got {type(raw).__name__} in "
                            f"{where}")
    terms = raw.get("polynomial_terms") or []
    if not isinstance(terms, list) or not all((type(t) is int and t >= 0) or t in SPECIAL for t in terms):
        raise SlcInputError(f"expected polynomial_terms of powers >= 0, 'sqrt' or 'exp' in {where}, got {terms!r}")
    bins = []
    for b in raw.get("residual_bins") or []:
        if not isinstance(b, dict):
            raise SlcInputError(f"expected residual_bins of mappings in {where}, got {b!r}")
        bits = _int(b, "element_bits", where, 1)
        if bits > 64:
            raise SlcInputError(f"expected element_bits <= 64 in {where}, got {bits}")
        bins.append(Bin(_dtype(b, "scale_dtype", where), bits, _int(b, "num_elements", where, 1)))
    cfg = Config(_int(raw, "d", where, 2), _int(raw, "k", where, 1), _int(raw, "exact_k", where, 0),
                 _dtype(raw, "exact_dtype", where), tuple(terms), _dtype(raw, "term_dtype", where), tuple(bins),
                 *(bool(raw.get(f, d)) for f, d in (("delta_encoding", True), ("error_diffusion", False),
                                                     ("normalize_t", False))))
    if cfg.exact_k > cfg.k or sum(b.num_elements for b in bins) > cfg.k - cfg.exact_k:
        raise SlcInputError(f"expected exact_k <= k and bins of at most k - exact_k elements in {where}, got "
                            f"k={cfg.k}, exact_k={cfg.exact_k}, {sum(b.num_elements for b in bins)} bin elements")
    return cfg


def load_config(config: dict | str | os.PathLike | None, root: str) -> tuple[Config, str]:
    """The config given, or the ``compression_config.yaml`` next to the parquet files; and where it came from."""
    if isinstance(config, dict):
        return parse_config(config, "given"), "given"
    if config is None:
        folder = root if os.path.isdir(root) else os.path.dirname(os.path.abspath(root))
        found = [os.path.join(folder, n) for n in CONFIG_FILES if os.path.isfile(os.path.join(folder, n))]
        if not found:
            raise SlcInputError(f"expected DistillKit's compression_config.yaml in {folder} (or a config passed), "
                                "got none")
        config = found[0]
    path = os.fspath(config)
    yaml = None
    if not path.lower().endswith(".json"):
        try:
            import yaml
        except ImportError:
            raise SlcInputError(f"expected PyYAML to read {path}, got none installed: {INSTALL}") from None
    try:
        with open(path, encoding="utf-8") as f:
            raw = yaml.safe_load(f) if yaml else json.load(f)
    except OSError as e:
        raise SlcInputError(f"expected a readable DistillKit config, got {path} ({e.strerror})") from None
    except Exception as e:  # json.JSONDecodeError, yaml.YAMLError
        raise SlcInputError(f"expected a valid DistillKit config, got unparsable {path} "
                            f"({str(e).splitlines()[0][:80]})") from None
    return parse_config(raw, path), path


# ---------------------------------------------------------------- decoding (DistillKit's decompress_to_sparse)
def unpack_bits(raw: np.ndarray, bits: int, count: int) -> np.ndarray:
    """``count`` unsigned ``bits``-bit integers per row of an MSB-first bit stream ``raw`` (n, bytes) -> int64."""
    n = len(raw)
    stream = np.unpackbits(np.ascontiguousarray(raw, np.uint8), axis=1)[:, :bits * count].reshape(n, count, bits)
    width = 32 if bits <= 32 else 64
    padded = np.zeros((n, count, width), np.uint8)
    padded[..., width - bits:] = stream
    words = np.packbits(padded, axis=-1).view(">u4" if width == 32 else ">u8").reshape(n, count)
    return words.astype(np.int64) if width == 32 else words.view(np.int64).copy()


def _floats(raw: np.ndarray, name: str, count: int) -> torch.Tensor:
    return torch.from_numpy(np.array(raw, np.uint8)).view(DTYPES[name]).reshape(len(raw), count)  # fresh strides


def _residual(raw: np.ndarray, at: int, cfg: Config, out: torch.dtype) -> torch.Tensor:
    """The residual bins from byte ``at`` on, dequantised and zero-padded to ``k - exact_k`` (n, k - exact_k)."""
    n, m = len(raw), cfg.k - cfg.exact_k
    parts = []
    for b in cfg.residual_bins:
        size = torch.finfo(DTYPES[b.scale_dtype]).bits // 8
        scale = _floats(raw[:, at:at + size], b.scale_dtype, 1)
        at += size
        nbytes = (b.num_elements * b.element_bits + 7) // 8
        q = torch.from_numpy(unpack_bits(raw[:, at:at + nbytes], b.element_bits, b.num_elements))
        at += nbytes
        if b.element_bits == 1:
            parts.append((q.to(torch.float32) * 2.0 - 1.0) * scale)
        else:
            parts.append((q + -(2 ** (b.element_bits - 1))).to(torch.float32) * scale)
    if not parts:
        return torch.zeros((n, m), dtype=out)
    r = torch.cat(parts, dim=-1)
    return torch.nn.functional.pad(r, (0, m - r.shape[1])) if r.shape[1] < m else r


def term_matrix(cfg: Config) -> torch.Tensor:
    """The ``(k - exact_k, terms)`` design matrix, in the term dtype."""
    m, dt = cfg.k - cfg.exact_k, DTYPES[cfg.term_dtype]
    t = torch.linspace(0, 1, steps=m, dtype=dt) if cfg.normalize_t else torch.arange(m, dtype=dt)
    return torch.stack([t ** i if isinstance(i, int) else getattr(torch, i)(t) for i in cfg.polynomial_terms], dim=-1)


def decode_logprobs(raw: np.ndarray, cfg: Config) -> torch.Tensor:
    """DistillKit's ``decompress_monotonic_logprobs`` of ``raw`` (n, logprob bytes) -> (n, k), its dtype."""
    out = DTYPES[cfg.exact_dtype]
    esize = torch.finfo(out).bits // 8
    exact = _floats(raw[:, :cfg.exact_k * esize], cfg.exact_dtype, cfg.exact_k)
    at = cfg.exact_k * esize
    coeffs = None
    if cfg.polynomial_terms:
        tsize = torch.finfo(DTYPES[cfg.term_dtype]).bits // 8
        coeffs = _floats(raw[:, at:at + len(cfg.polynomial_terms) * tsize], cfg.term_dtype, len(cfg.polynomial_terms))
        at += len(cfg.polynomial_terms) * tsize
    residual = _residual(raw, at, cfg, out)
    if coeffs is not None:
        fit = torch.sum(term_matrix(cfg).to(coeffs.dtype) * coeffs.unsqueeze(-2), dim=-1)
        approx = fit + residual.to(out)
    else:
        approx = residual.to(out)
    lp = torch.cat([exact.to(out), approx], dim=-1)
    if cfg.delta_encoding:
        lp = torch.cumsum(lp.float(), dim=-1).to(out)
    return lp


def decode_rows(lp_bytes: np.ndarray, idx_bytes: np.ndarray, cfg: Config) -> tuple[np.ndarray, np.ndarray]:
    """``(indices int64 (n, k), logprobs float32 (n, k))`` exactly as DistillKit decodes them (no sorting)."""
    lp = decode_logprobs(lp_bytes, cfg).to(torch.float32).numpy()
    return unpack_bits(idx_bytes, cfg.index_bits, cfg.k), lp


# ---------------------------------------------------------------- reading parquet
def _pq():
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise SlcInputError(f"expected pyarrow to read DistillKit parquet files, got none installed: "
                            f"{INSTALL}") from None
    return pq


def find_files(root: str) -> list[str]:
    """``root`` itself, or the ``*.parquet`` files of a folder in natural order (``data_2`` before ``data_10``)."""
    if os.path.isfile(root):
        return [root]
    if not os.path.isdir(root):
        raise SlcInputError(f"expected a DistillKit parquet file or folder, got {root!r} (no such file)")
    names = [n for n in os.listdir(root) if n.lower().endswith(".parquet")]
    if not names:
        raise SlcInputError(f"expected DistillKit parquet files (data_0.parquet, ...) in {root}, got none")
    key = lambda n: [int(p) if p.isdigit() else p for p in re.split(r"(\d+)", n)]  # noqa: E731
    return [os.path.join(root, n) for n in sorted(names, key=key)]


def _open(pq, path: str):
    try:
        f = pq.ParquetFile(path)
    except Exception as e:  # pyarrow.lib.ArrowInvalid, OSError
        raise SlcInputError(f"expected a parquet file, got an unreadable {path} "
                            f"({str(e).splitlines()[0][:80]})") from None
    names = f.schema_arrow.names
    if not set(COLUMNS) <= set(names):
        legacy = (" (DistillKit's legacy rows hold centred logits, not log-probabilities)"
                  if set(LEGACY) <= set(names) else "")
        raise SlcInputError(f"expected DistillKit columns {list(COLUMNS)} in {path}, got {names[:8]}{legacy}")
    return f


def _bytes_rows(col, width: int, what: str, where: str) -> np.ndarray:
    """A ``list<list<int>>`` column of a batch -> (labels, width) uint8, every inner list ``width`` long."""
    inner = col.flatten()
    if col.null_count or inner.null_count:
        raise SlcInputError(f"expected no null {what} in {where}, got some")
    lens = inner.value_lengths().to_numpy(zero_copy_only=False)
    if lens.size and (lens != width).any():
        bad = int(lens[np.argmax(lens != width)])
        raise SlcInputError(f"expected {width} bytes of {what} per token (the config's), got {bad} in {where}")
    data = inner.flatten().to_numpy(zero_copy_only=False)
    if data.dtype != np.uint8 and data.size and (data.min() < 0 or data.max() > 255):
        raise SlcInputError(f"expected bytes (0..255) in {what}, got {int(data.max())} in {where}")
    return np.array(data, np.uint8).reshape(len(lens), width)  # a writable copy (torch views it)


def _batches(pq, paths: list[str], columns: list[str]):
    """``(path, first row, record batch)`` over every file."""
    for path in paths:
        row = 0
        for batch in _open(pq, path).iter_batches(batch_size=ROWS_PER_BATCH, columns=columns):
            yield path, row, batch
            row += batch.num_rows


def _lengths(batch, path: str, row: int) -> tuple[np.ndarray, np.ndarray]:
    """Tokens and labels of each row of a batch (labels <= tokens)."""
    ids, idx = batch.column("input_ids"), batch.column("bytepacked_indices")
    if ids.null_count or idx.null_count:
        raise SlcInputError(f"expected no null rows in {path}, got some in rows {row}..{row + batch.num_rows - 1}")
    tokens = ids.value_lengths().to_numpy(zero_copy_only=False).astype(np.int64)
    labels = idx.value_lengths().to_numpy(zero_copy_only=False).astype(np.int64)
    if (labels > tokens).any():
        r = int(np.argmax(labels > tokens))
        raise SlcInputError(f"expected at most one label per input token, got {labels[r]} labels for {tokens[r]} "
                            f"tokens in {path} row {row + r}")
    return tokens, labels


@dataclass
class _Fixes:
    """Labels that DistillKit's quantisation left out of order, or with a top-k mass above 1."""

    sorted: int = 0
    scaled: int = 0
    most: float = 1.0


def clean_rows(idx: np.ndarray, lp: np.ndarray, fixes: _Fixes, where: str) -> tuple[np.ndarray, np.ndarray]:
    """Most probable first, and a top-k mass of at most 1 (scaled down to 1 where quantisation pushed it over)."""
    if np.isnan(lp).any() or np.isposinf(lp).any():
        raise SlcInputError(f"expected finite decoded log-probabilities, got NaN or +inf in {where} (a -inf stored "
                            "with delta encoding?)")
    bad = (np.diff(lp, axis=1) > 0).any(1)
    if bad.any():
        order = np.argsort(-lp[bad], axis=1, kind="stable")
        lp[bad] = np.take_along_axis(lp[bad], order, 1)
        idx[bad] = np.take_along_axis(idx[bad], order, 1)
        fixes.sorted += int(bad.sum())
    with np.errstate(divide="ignore"):
        total = np.exp(lp.astype(np.float64)).sum(1)
        over = total > 1
        if over.any():
            lp[over] = (lp[over] - np.log(total[over])[:, None]).astype(np.float32)
            fixes.scaled += int(over.sum())
            fixes.most = max(fixes.most, float(total.max()))
    return idx, lp


def _input_tokens(batch, tokens: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """The first ``labels[r]`` input ids of every row ``r`` of a batch, concatenated."""
    ids = batch.column("input_ids").flatten().to_numpy(zero_copy_only=False)
    row_start = np.repeat(np.cumsum(tokens) - tokens, labels)
    label_start = np.repeat(np.cumsum(labels) - labels, labels)
    return ids[row_start + np.arange(int(labels.sum())) - label_start]


def _fill(pq, paths: list[str], cfg: Config, arrays: tuple, fixes: _Fixes) -> np.ndarray:
    """Pass 2: decode every label into ``arrays`` (values, word ids, input tokens); the sequence offsets."""
    values, words, tokens = arrays
    offsets, at = [np.zeros(1, np.int64)], 0
    for path, row, batch in _batches(pq, paths, list(COLUMNS)):
        where = f"{path} rows {row}..{row + batch.num_rows - 1}"
        ntok, nlab = _lengths(batch, path, row)
        per_row = batch.column("compressed_logprobs").value_lengths().to_numpy(zero_copy_only=False)
        if (per_row != nlab).any():
            r = int(np.argmax(per_row != nlab))
            raise SlcInputError(f"expected as many compressed_logprobs as bytepacked_indices, got {per_row[r]} and "
                                f"{nlab[r]} in {path} row {row + r}")
        lpb = _bytes_rows(batch.column("compressed_logprobs"), cfg.logprob_bytes, "compressed_logprobs", where)
        ixb = _bytes_rows(batch.column("bytepacked_indices"), cfg.index_bytes, "bytepacked_indices", where)
        inputs = _input_tokens(batch, ntok, nlab)
        if inputs.size and int(inputs.max()) >= cfg.d:
            raise SlcInputError(f"expected input ids < d = {cfg.d:,} (the config's vocabulary), got "
                                f"{int(inputs.max()):,} in {where}")
        n = len(lpb)
        if at + n > len(values):
            raise SlcInputError(f"expected the parquet files to stay the same while they are read, got more labels "
                                f"in {where}")
        for a in range(0, n, LABELS_PER_DECODE):
            b = min(n, a + LABELS_PER_DECODE)
            idx, lp = decode_rows(lpb[a:b], ixb[a:b], cfg)
            if idx.size and int(idx.max()) >= cfg.d:
                raise SlcInputError(f"expected word indices < d = {cfg.d:,} (the config's vocabulary), got "
                                    f"{int(idx.max()):,} in {where}")
            words[at + a:at + b], values[at + a:at + b] = clean_rows(idx, lp, fixes, where)
        tokens[at:at + n] = inputs
        offsets.append(at + np.cumsum(nlab[nlab > 0]))
        at += n
    if at != len(values):
        raise SlcInputError(f"expected the parquet files to stay the same while they are read, got {at:,} labels "
                            f"then {len(values):,}")
    return np.concatenate(offsets).astype(np.int64)


def _scan(pq, paths: list[str]) -> tuple[int, int, int]:
    """Pass 1: rows, rows without a label, labels."""
    rows = skipped = labels = 0
    for path, row, batch in _batches(pq, paths, ["input_ids", "bytepacked_indices"]):
        _, n = _lengths(batch, path, row)
        rows, skipped, labels = rows + len(n), skipped + int((n == 0).sum()), labels + int(n.sum())
    return rows, skipped, labels


def open_distillkit(path: str | os.PathLike, *, config: dict | str | os.PathLike | None = None,
                    log: Log = lambda line: None) -> Imported:
    """Open DistillKit parquet (a file, or a folder of ``data_{i}.parquet``) for import.

    ``config``: DistillKit's compression config as a dict (its YAML's content, or a trainer config with
    ``teacher.logprob_compressor``) or a YAML/JSON file; by default the ``compression_config.yaml`` beside
    the parquet. Labels are decoded into a temporary folder that goes with :meth:`Imported.close`.
    """
    root = os.fspath(path)
    paths = find_files(root)
    pq = _pq()
    cfg, cfg_from = load_config(config, root)
    for p in paths:
        _open(pq, p)  # every file's columns, before any work
    rows, skipped, labels = _scan(pq, paths)
    if not labels:
        raise SlcInputError(f"expected labelled tokens, got {rows} rows without any in {root}")
    if cfg.k < 2 or cfg.k >= cfg.d:
        raise SlcInputError(f"expected 2 <= k < d for import, got k={cfg.k}, d={cfg.d} in {cfg_from}")
    tmp, values, words, tokens = temp_arrays(labels, cfg.k, cfg.d)
    fixes = _Fixes()
    try:
        offsets = _fill(pq, paths, cfg, (values, words, tokens), fixes)
        for a in (values, words, tokens):
            a.flush()
        src = TempSparse(tmp, values, words, cfg.d, root)
    except BaseException:
        tmp.cleanup()
        raise
    if skipped:
        log(f"distillkit: skipped {skipped:,} rows without labels")
    if fixes.sorted:
        log(f"distillkit: {fixes.sorted:,} labels decoded out of order (quantisation): sorted")
    if fixes.scaled:
        log(f"distillkit: {fixes.scaled:,} labels with a top-{cfg.k} mass above 1 after quantisation (at most "
            f"{fixes.most:.4f}): scaled to 1")
    log(f"distillkit: {rows - skipped:,} sequences, {labels:,} labelled tokens, top-{cfg.k} of {cfg.d:,} words from "
        f"{len(paths)} file(s) in {root} (config: {cfg_from})")
    identity = input_identity(paths, root)
    summary = {"format": "distillkit", "files": len(paths), "sequences": rows - skipped, "tokens": labels,
               "topk": cfg.k, "vocab": cfg.d, "dtype": cfg.exact_dtype, "bytes": identity["bytes"]}
    return Imported("distillkit", src, "logits", 1.0, sequences=offsets, token_ids=tokens, summary=summary,
                    identity={**identity, "config": cfg.as_dict()})

"""Write DistillKit offline-logit parquet exactly as ``distillkit.sample_logits_vllm`` does, from a random "teacher".

Matched: arcee-ai/DistillKit ``a61c2e7d25c2e990d45832e12bd8542bdee9c810`` (2026-03-14):

- ``compression/monotonic_logprobs.py`` ``compress_monotonic_logprobs``: optional delta encoding (float64 and
  error-diffused with ``error_diffusion``), the first ``exact_k`` values in ``exact_dtype``, a least-squares
  polynomial fit of the rest (SVD pseudo-inverse, tolerance 1e-5) stored as ``term_dtype`` coefficients, the
  residual quantised in bins (``quantize_naive`` or ``error_diffuse_and_quantize``: a ``scale_dtype`` scale
  ``max|r| / 2**(bits-1)``, round-half-even, clamp, offset to unsigned);
- ``compression/bitpack.py`` ``pack_to_bytes``: an MSB-first bit stream, zero-padded to a byte;
- ``compression/compressor.py`` ``compress_from_sparse``: sort by value (descending), indices in
  ``ceil(log2 d)`` bits; called per sample with a ``(1, S, k)`` batch, as ``sample_logits_vllm`` does;
- ``sample_common.py``: ``compressed_logit_schema`` (``input_ids`` list<uint64>, the two byte columns
  list<list<uint8>>), ``StreamingParquetWriter`` (``data_{i}.parquet``, batches of ``write_batch_size`` rows,
  a new file once one holds ``file_max_rows``), and ``compression_config.yaml`` (``yaml.safe_dump`` of the
  config with its defaults).

:func:`reference_decode` restates ``decompress_monotonic_logprobs`` / ``unpack_from_bytes`` per sample, as
DistillKit's trainer runs them, for comparison with slc's batched reader. :data:`REAL_VECTORS`: three
test vectors made by DistillKit's own code at that commit (torch 2.13.0+cpu).
"""
from __future__ import annotations

import json
import math
import os

import numpy as np
import torch

DTYPES = {"float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32, "float64": torch.float64}
DEFAULTS = {"exact_dtype": "float32", "polynomial_terms": None, "term_dtype": "float32", "residual_bins": [],
            "delta_encoding": True, "error_diffusion": False, "normalize_t": False}


def full_config(**cfg) -> dict:
    """A ``DistributionQuantizationConfig`` dict with its defaults, as ``model_dump(mode="json")`` writes it."""
    return {**DEFAULTS, **cfg}


def index_bits(d: int) -> int:
    return int(torch.log2(torch.tensor(d, dtype=torch.float32)).ceil().item())


# ---------------------------------------------------------------- bit packing (bitpack.py)
def pack_to_bytes(x: torch.Tensor, bits: int) -> torch.Tensor:
    x = x & ((1 << bits) - 1)
    stream = ((x.unsqueeze(-1) >> torch.arange(bits - 1, -1, -1)) & 1).to(torch.uint8).reshape(*x.shape[:-1], -1)
    pad = (8 - stream.shape[-1] % 8) % 8
    stream = torch.nn.functional.pad(stream, (0, pad)).reshape(*x.shape[:-1], -1, 8)
    return (stream * torch.tensor([128, 64, 32, 16, 8, 4, 2, 1], dtype=torch.uint8)).sum(-1).to(torch.uint8)


def unpack_from_bytes(b: torch.Tensor, bits: int, count: int) -> torch.Tensor:
    stream = ((b.unsqueeze(-1) >> torch.arange(7, -1, -1)) & 1).to(torch.uint8).reshape(*b.shape[:-1], -1)
    stream = stream[..., :count * bits].reshape(*b.shape[:-1], count, bits)
    return (stream * 2 ** torch.arange(bits - 1, -1, -1)).sum(-1).long()


# ---------------------------------------------------------------- the encoder (monotonic_logprobs.py)
def _work(*xs) -> torch.dtype:
    return torch.float64 if any(x is not None and x.dtype == torch.float64 for x in xs) else torch.float32


def terms_matrix(terms: list, m: int, dtype: torch.dtype, normalize_t: bool) -> torch.Tensor:
    t = torch.linspace(0, 1, steps=m, dtype=dtype) if normalize_t else torch.arange(m, dtype=dtype)
    return torch.stack([t ** i if isinstance(i, int) else getattr(torch, i)(t) for i in terms], dim=-1)


def fit_polynomial(values: torch.Tensor, terms: list, dtype: torch.dtype, normalize_t: bool):
    work = _work(values)
    X = terms_matrix(terms, values.shape[-1], work, normalize_t)
    while X.dim() < values.dim():
        X = X.unsqueeze(0)
    U, S, Vh = torch.linalg.svd(X.to(work), full_matrices=False)
    inv = torch.zeros_like(S)
    inv[S > 1e-5] = 1 / S[S > 1e-5]
    coeffs = (Vh.transpose(-1, -2) @ (inv.unsqueeze(-1) * (U.transpose(-1, -2) @ values.unsqueeze(-1).to(work))))
    coeffs = coeffs.squeeze(-1).to(dtype)
    approx = torch.sum(X.to(dtype) * coeffs.unsqueeze(-2), dim=-1).to(work)
    return coeffs, values - approx.squeeze(-1)


def _scale(values: torch.Tensor, bits: int, scale_dtype: torch.dtype) -> torch.Tensor:
    top = torch.amax(torch.abs(values), dim=-1, keepdim=True)
    s = torch.where(top == 0, torch.ones_like(top), top / (1.0 if bits == 1 else 2 ** (bits - 1)))
    return s.to(scale_dtype).to(values.dtype)


def _qrange(bits: int) -> tuple[float, float]:
    return (0, 1) if bits == 1 else (-(2 ** (bits - 1)), 2 ** (bits - 1) - 1.0)


def quantize_naive(values, bits, scale_dtype, error):
    values = values.to(_work(values, error))
    scale = _scale(values, bits, scale_dtype)
    lo, hi = _qrange(bits)
    q = (torch.round(values / scale).clamp(lo, hi) - lo).to(torch.long)
    return scale, q, torch.zeros_like(values[..., 0])


def quantize_diffused(values, bits, scale_dtype, error):
    scale = _scale(values, bits, scale_dtype)
    scaled = values / scale
    error = torch.zeros_like(scaled[..., 0]) if error is None else error
    q = torch.zeros_like(scaled, dtype=torch.long)
    lo, hi = _qrange(bits)
    for i in range(scaled.shape[-1]):
        current = scaled[..., i] + error
        qi = torch.clamp(torch.round(current), lo, hi)
        error = current - qi
        q[..., i] = (qi - lo).to(torch.long)
    return scale.to(scale_dtype), q, error


def diffuse_float(values: torch.Tensor, out: torch.dtype) -> torch.Tensor:
    values = values.to(_work(values))
    error = torch.zeros_like(values[..., 0])
    res = torch.zeros_like(values, dtype=out)
    for i in range(values.shape[-1]):
        current = values[..., i] + error
        res[..., i] = current.to(out)
        error = current - res[..., i].to(values.dtype)
    return res


def compress_logprobs(lp: torch.Tensor, cfg: dict) -> torch.Tensor:
    """``compress_monotonic_logprobs``: ``lp`` (..., k) float32, descending -> (..., bytes) uint8."""
    cfg = full_config(**cfg)
    if cfg["delta_encoding"]:
        work = torch.float64 if cfg["error_diffusion"] else _work(lp)
        w = lp.to(work)
        deltas = torch.cat([lp[..., :1], w[..., 1:] - w[..., :-1]], dim=-1)
        lp = diffuse_float(deltas, lp.dtype) if cfg["error_diffusion"] else deltas.to(lp.dtype)
    ek, k, lead = cfg["exact_k"], cfg["k"], lp.shape[:-1]
    chunks = []
    if ek > 0:
        chunks.append(lp[..., :ek].to(DTYPES[cfg["exact_dtype"]]).view(torch.uint8).reshape(*lead, -1))
    if cfg["polynomial_terms"]:
        coeffs, residual = fit_polynomial(lp[..., ek:k], cfg["polynomial_terms"], DTYPES[cfg["term_dtype"]],
                                          cfg["normalize_t"])
        chunks.append(coeffs.view(torch.uint8).reshape(*lead, -1))
    else:
        residual = lp[..., ek:k]
    at, error = 0, None
    quantize = quantize_diffused if cfg["error_diffusion"] else quantize_naive
    for b in cfg["residual_bins"]:
        sdt = DTYPES[b["scale_dtype"]]
        scale, q, error = quantize(residual[..., at:at + b["num_elements"]], b["element_bits"], sdt, error)
        chunks.append(scale.to(sdt).view(torch.uint8).reshape(*lead, -1))
        chunks.append(pack_to_bytes(q, b["element_bits"]).reshape(*lead, -1))
        at += b["num_elements"]
    return torch.cat(chunks, dim=-1)


def compress_from_sparse(indices: torch.Tensor, logprobs: torch.Tensor, cfg: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """``LogprobCompressor.compress_from_sparse``: ``(compressed_logprobs, bytepacked_indices)``."""
    _, order = torch.sort(logprobs, descending=True, dim=-1)
    values, idx = logprobs.gather(-1, order), indices.gather(-1, order)
    return compress_logprobs(values, cfg), pack_to_bytes(idx, index_bits(cfg["d"]))


# ---------------------------------------------------------------- the decoder, restated (per sample)
def _dense(x: torch.Tensor) -> torch.Tensor:
    """A copy with fresh strides. DistillKit calls ``.contiguous()``, which leaves a ``(B, 1, n)`` slice's stride
    of the full row, and ``.view(dtype)`` then refuses it: its decoder fails on one-label samples."""
    return torch.empty(x.shape, dtype=x.dtype).copy_(x)


def reference_decode(lp_bytes: torch.Tensor, idx_bytes: torch.Tensor, cfg: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """``decompress_to_sparse`` of one sample: bytes (1, S, B) -> (indices (1, S, k), logprobs (1, S, k))."""
    cfg = full_config(**cfg)
    out = DTYPES[cfg["exact_dtype"]]
    size = lambda name: torch.finfo(DTYPES[name]).bits // 8  # noqa: E731
    lead, ek, m = lp_bytes.shape[:-1], cfg["exact_k"], cfg["k"] - cfg["exact_k"]
    exact = _dense(lp_bytes[..., :ek * size(cfg["exact_dtype"])]).view(out).reshape(*lead, ek)
    rest = lp_bytes[..., ek * size(cfg["exact_dtype"]):]
    coeffs, terms = None, cfg["polynomial_terms"] or []
    if terms:
        n = len(terms) * size(cfg["term_dtype"])
        coeffs = _dense(rest[..., :n]).view(DTYPES[cfg["term_dtype"]]).reshape(*lead, len(terms))
        rest = rest[..., n:]
    parts = []
    for b in cfg["residual_bins"]:
        s = size(b["scale_dtype"])
        scale = _dense(rest[..., :s]).view(DTYPES[b["scale_dtype"]]).reshape(*lead, 1)
        nb = (b["num_elements"] * b["element_bits"] + 7) // 8
        q = unpack_from_bytes(rest[..., s:s + nb].contiguous(), b["element_bits"], b["num_elements"])
        rest = rest[..., s + nb:]
        if b["element_bits"] == 1:
            parts.append((q.to(torch.float32) * 2.0 - 1.0) * scale)
        else:
            parts.append((q + _qrange(b["element_bits"])[0]).to(torch.float32) * scale)
    if parts:
        residual = torch.cat(parts, dim=-1)
        residual = torch.nn.functional.pad(residual, (0, m - residual.shape[-1]))
    else:
        residual = torch.zeros((*lead, m), dtype=out)
    if coeffs is not None:
        X = terms_matrix(terms, m, DTYPES[cfg["term_dtype"]], cfg["normalize_t"])
        approx = torch.sum(X.to(coeffs.dtype) * coeffs.unsqueeze(-2), dim=-1) + residual.to(out)
    else:
        approx = residual.to(out)
    lp = torch.cat([exact.to(out), approx], dim=-1)
    if cfg["delta_encoding"]:
        lp = torch.cumsum(lp.float(), dim=-1).to(out)
    return unpack_from_bytes(idx_bytes, index_bits(cfg["d"]), cfg["k"]), lp


# ---------------------------------------------------------------- the files (sample_common.py)
def schema():
    import pyarrow as pa

    return pa.schema([pa.field("input_ids", pa.list_(pa.uint64())),
                      pa.field("compressed_logprobs", pa.list_(pa.list_(pa.uint8()))),
                      pa.field("bytepacked_indices", pa.list_(pa.list_(pa.uint8())))])


def write_rows(folder, rows: list[dict], file_max_rows: int = 256, write_batch_size: int = 1000, sch=None) -> list[str]:
    """``StreamingParquetWriter``: batches of ``write_batch_size`` rows; a new file once one holds ``file_max_rows``."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    sch = sch or schema()
    os.makedirs(folder, exist_ok=True)
    files, writer, in_file = [], None, 0
    for a in range(0, len(rows), write_batch_size):
        batch = rows[a:a + write_batch_size]
        if writer is None:
            files.append(os.path.join(folder, f"data_{len(files)}.parquet"))
            writer, in_file = pq.ParquetWriter(files[-1], schema=sch), 0
        writer.write_table(pa.Table.from_arrays([pa.array([r[n] for r in batch], type=sch.field(n).type)
                                                 for n in sch.names], schema=sch))
        in_file += len(batch)
        if in_file >= file_max_rows:
            writer.close()
            writer = None
    if writer is not None:
        writer.close()
    return files


def write_distillkit_parquet(folder, seqs: list[list[int]], config: dict, seed: int = 0, file_max_rows: int = 256,
                             write_batch_size: int = 1000, peak: float = 6.0) -> dict[str, np.ndarray]:
    """Label ``seqs`` (each one's last token unlabelled, as vLLM's prompt logprobs) with a random teacher over
    ``config["d"]`` words, compress as DistillKit, write ``data_{i}.parquet`` + ``compression_config.yaml``.

    Returns the truth: ``offsets``, ``token_ids``, ``indices`` / ``logprobs`` (N, k) the teacher's top k
    (largest first), ``lp_bytes`` / ``idx_bytes`` the stored bytes, ``ref_indices`` / ``ref_logprobs`` what
    :func:`reference_decode` makes of them (float32).
    """
    import yaml

    cfg = full_config(**config)
    gen = torch.Generator().manual_seed(seed)
    rows, out = [], {n: [] for n in ("token_ids", "indices", "logprobs", "lp_bytes", "idx_bytes", "ref_indices",
                                     "ref_logprobs")}
    for s in seqs:
        logits = torch.randn(len(s) - 1, cfg["d"], generator=gen) * 2
        logits[torch.arange(len(s) - 1), torch.tensor(s[1:])] += peak
        vals, idx = torch.topk(logits.log_softmax(dim=-1, dtype=torch.float32), cfg["k"], dim=-1)
        lpb, ixb = compress_from_sparse(idx.unsqueeze(0), vals.unsqueeze(0), cfg)
        ri, rl = reference_decode(lpb, ixb, cfg)
        rows.append({"input_ids": s, "compressed_logprobs": lpb[0].tolist(), "bytepacked_indices": ixb[0].tolist()})
        for name, v in zip(out, (np.asarray(s[:-1]), idx, vals, lpb[0], ixb[0], ri[0], rl[0].float())):
            out[name].append(np.asarray(v))
    write_rows(folder, rows, file_max_rows, write_batch_size)
    with open(os.path.join(folder, "compression_config.yaml"), "w", encoding="utf-8") as f:
        yaml.safe_dump(cfg, f)
    res = {n: np.concatenate(v) for n, v in out.items()}
    res["offsets"] = np.concatenate([[0], np.cumsum([len(s) - 1 for s in seqs])]).astype(np.int64)
    return res


def max_error(truth: np.ndarray, decoded: np.ndarray) -> float:
    return float(np.abs(truth.astype(np.float64) - decoded).max()) if truth.size else math.nan


# ---------------------------------------------------------------- DistillKit's own output
_VECTORS = (
    '[{"name":"poly_resid_bf16","config":{"d":1000,"k":8,"exact_k":2,"exact_dtype":"bfloat16","polynomial_terms":'
    '[0,1,"sqrt"],"term_dtype":"float32","residual_bins":[{"scale_dtype":"float16","element_bits":4,"num_elements'
    '":4}],"delta_encoding":false,"error_diffusion":false,"normalize_t":false},"input_token_ids":[[227,786,436,37'
    '2,114,93,769,567],[491,736,497,852,546,111,112,842],[518,483,948,654,495,797,952,705]],"input_logprobs":[[-1'
    '.2782175540924072,-1.7334911823272705,-2.256160020828247,-2.338817834854126,-2.7482101917266846,-3.155206918'
    '7164307,-3.5814383029937744,-3.70512318611145],[-0.4645254611968994,-2.319598436355591,-2.7563459873199463,-'
    '2.9781906604766846,-3.563926935195923,-3.749041795730591,-4.0453691482543945,-4.617160797119141],[-1.2186062'
    '335968018,-1.2586653232574463,-2.459089517593384,-3.5179531574249268,-3.604384660720825,-3.6807548999786377,'
    '-3.856829881668091,-3.8616440296173096]],"compressed_logprobs":[[164,191,222,191,203,245,14,192,223,212,214,'
    '190,104,129,105,62,137,33,111,131],[238,190,20,192,213,29,48,192,66,24,209,190,160,106,226,61,219,36,140,10]'
    ',[156,191,161,191,33,142,30,192,96,205,139,62,1,240,155,191,26,34,160,207]],"bytepacked_indices":[[56,241,38'
    ',209,116,28,133,220,6,55],[122,238,7,199,84,136,134,241,195,74],[129,158,62,210,142,123,241,222,226,193]],"d'
    'ecoded_token_ids":[[227,786,436,372,114,93,769,567],[491,736,497,852,546,111,112,842],[518,483,948,654,495,7'
    '97,952,705]],"decoded_logprobs":[[-1.28125,-1.734375,-2.2553584575653076,-2.349628448486328,-2.7504508495330'
    '81,-3.1515212059020996,-3.4560577869415283,-3.821819305419922],[-0.46484375,-2.3125,-2.7518208026885986,-2.9'
    '73970413208008,-3.5636162757873535,-3.74765682220459,-4.164263725280762,-4.546553611755371],[-1.21875,-1.257'
    '8125,-2.4536211490631104,-3.517850399017334,-3.606597423553467,-3.684866428375244,-3.8217434883117676,-3.836'
    '284875869751]],"decoded_dtype":"torch.float32"},{"name":"resid_only_delta","config":{"d":50000,"k":12,"exact'
    '_k":3,"exact_dtype":"float32","polynomial_terms":null,"term_dtype":"float32","residual_bins":[{"scale_dtype"'
    ':"bfloat16","element_bits":8,"num_elements":5},{"scale_dtype":"float16","element_bits":3,"num_elements":4}],'
    '"delta_encoding":true,"error_diffusion":false,"normalize_t":false},"input_token_ids":[[134,9102,42147,30015,'
    '11328,33780,16548,191,6692,2145,39150,21884],[16620,33665,13794,42802,13390,12986,3447,18498,13708,21650,214'
    '91,7386],[15509,46912,16112,26259,40868,18074,32957,46461,32131,16230,25659,988]],"input_logprobs":[[-2.0299'
    '768447875977,-2.255568504333496,-3.167814254760742,-3.556422233581543,-3.618175506591797,-3.739190101623535,'
    '-3.8914718627929688,-3.996377944946289,-4.066065788269043,-4.1483659744262695,-4.168133735656738,-4.25366401'
    '6723633],[-1.9771294593811035,-3.095673084259033,-3.298677921295166,-3.686830997467041,-3.7303452491760254,-'
    '3.8214964866638184,-3.881865978240967,-3.952444553375244,-3.985161304473877,-4.128502368927002,-4.1513504981'
    '99463,-4.162338733673096],[-2.2704787254333496,-2.9303030967712402,-3.202643871307373,-3.2151522636413574,-3'
    '.2844557762145996,-3.3757071495056152,-3.56449556350708,-3.6205153465270996,-3.635847568511963,-3.9127287864'
    '68506,-3.975471019744873,-4.087625026702881]],"compressed_logprobs":[[36,235,1,192,128,1,103,190,240,136,105'
    ',191,71,59,0,108,88,78,93,121,37,33,128],[148,18,253,191,112,44,143,191,128,224,79,190,71,59,0,114,98,108,10'
    '5,150,40,97,192],[134,79,17,192,64,234,40,191,64,112,139,190,193,58,120,81,66,0,90,110,44,129,160]],"bytepac'
    'ked_indices":[[0,134,35,142,164,163,117,63,44,64,131,244,64,164,0,191,26,36,8,97,152,238,85,124],[64,236,131'
    ',129,53,226,167,50,52,78,50,186,13,119,72,66,53,140,84,146,83,243,28,218],[60,149,183,64,62,240,102,147,159,'
    '164,70,154,128,189,181,125,125,131,63,102,100,59,3,220]],"decoded_token_ids":[[134,9102,42147,30015,11328,33'
    '780,16548,191,6692,2145,39150,21884],[16620,33665,13794,42802,13390,12986,3447,18498,13708,21650,21491,7386]'
    ',[15509,46912,16112,26259,40868,18074,32957,46461,32131,16230,25659,988]],"decoded_logprobs":[[-2.0299768447'
    '875977,-2.255568504333496,-3.167814254760742,-3.556486129760742,-3.617216110229492,-3.738676071166992,-3.890'
    '501022338867,-3.9967784881591797,-4.060911178588867,-4.146421432495117,-4.16779899597168,-4.25330924987793],'
    '[-1.9771294593811035,-3.095673084259033,-3.298677921295166,-3.687349796295166,-3.729860782623291,-3.82095575'
    '3326416,-3.881685733795166,-3.9515252113342285,-3.9873528480529785,-4.1306633949279785,-4.1664910316467285,-'
    '4.1664910316467285],[-2.2704787254333496,-2.9303030967712402,-3.202643871307373,-3.214423656463623,-3.283629'
    '894256592,-3.3749232292175293,-3.5633997917175293,-3.619353771209717,-3.619353771209717,-3.896209239959717,-'
    '3.965423107147217,-4.103850841522217]],"decoded_dtype":"torch.float32"},{"name":"exact_only_fp16","config":{'
    '"d":32000,"k":4,"exact_k":4,"exact_dtype":"float16","polynomial_terms":null,"term_dtype":"float32","residual'
    '_bins":[],"delta_encoding":false,"error_diffusion":false,"normalize_t":false},"input_token_ids":[[67,16445,1'
    '2362,25698],[23049,9319,5293,19683],[8642,2056,7919,22395]],"input_logprobs":[[-1.0536292791366577,-2.453828'
    '3348083496,-2.5143141746520996,-2.882725238800049],[-1.6481636762619019,-2.4330739974975586,-2.6945772171020'
    '51,-3.1272964477539062],[-1.937368631362915,-2.5914175510406494,-2.737266778945923,-3.0293848514556885]],"co'
    'mpressed_logprobs":[[55,188,232,192,7,193,196,193],[152,190,222,192,100,193,65,194],[192,191,47,193,121,193,'
    '15,194]],"bytepacked_indices":[[0,135,0,245,130,86,70,32],[180,18,145,156,165,108,206,48],[67,132,32,32,247,'
    '125,119,176]],"decoded_token_ids":[[67,16445,12362,25698],[23049,9319,5293,19683],[8642,2056,7919,22395]],"d'
    'ecoded_logprobs":[[-1.0537109375,-2.453125,-2.513671875,-2.8828125],[-1.6484375,-2.43359375,-2.6953125,-3.12'
    '6953125],[-1.9375,-2.591796875,-2.736328125,-3.029296875]],"decoded_dtype":"torch.float16"}]'
)
REAL_VECTORS: list[dict] = json.loads("".join(_VECTORS))

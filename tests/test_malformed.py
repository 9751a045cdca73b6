"""Malformed ``.slc`` files must all fail cleanly with ``SlcFormatError``; valid ones decode exactly.

Damage comes in two kinds. Byte damage (bad magic, truncation, bit flips, trailing bytes) is
caught by the layout rules and the CRCs. Semantic lies (a header claiming 10**12 classes, an
index out of order) are written with ``ContainerWriter`` or with re-computed CRCs, so that
only the meaning is wrong and the checks behind the CRCs are what gets exercised.
"""
import dataclasses
import json
import random
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import zstandard
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import slc
from slc import SlcFormatError, open_slc
from slc.format.bitpack import pack_bits
from slc.format.container import (CHUNK, ENTRY, MAGIC, PREAMBLE, ContainerWriter, crc32, header_bytes, parse_index,
                           read_layout, read_section)
from slc.sources import open_labels

GOLDEN = Path(__file__).parent / "golden"


# --------------------------------------------------------------------------- helpers
def load(path) -> bytes:
    return Path(path).read_bytes()


def save(tmp_path, data: bytes, name: str = "bad.slc") -> Path:
    p = tmp_path / name
    p.write_bytes(data)
    return p


def open_and_verify(path) -> None:
    with open_slc(path) as f:
        f.verify()


def assert_invalid(path, match: str | None = None) -> None:
    with pytest.raises(SlcFormatError, match=match):
        open_and_verify(path)


def preamble(data: bytes) -> dict:
    names = ("magic", "major", "minor", "count", "table_off", "length", "table_crc", "reserved", "crc")
    return dict(zip(names, PREAMBLE.unpack_from(data)))


def with_preamble(data: bytes, **fields) -> bytes:
    """``data`` with preamble fields replaced and the preamble CRC recomputed."""
    p = {**preamble(data), **fields}
    head = PREAMBLE.pack(*list(p.values())[:-1], 0)
    return head[:60] + struct.pack("<I", crc32(head[:60])) + data[PREAMBLE.size:]


def table(data: bytes) -> list[list]:
    p = preamble(data)
    return [list(ENTRY.unpack_from(data, p["table_off"] + i * ENTRY.size)) for i in range(p["count"])]


def with_table(data: bytes, entries: list[list]) -> bytes:
    """``data`` with a new section table (CRCs of table and preamble fixed up, sections untouched)."""
    p = preamble(data)
    raw = b"".join(ENTRY.pack(*e) for e in entries)
    body = data[:p["table_off"]] + raw
    return with_preamble(body, count=len(entries), length=len(body), table_crc=crc32(raw))


@dataclasses.dataclass
class Parts:
    """A valid file taken apart: header dict, tensor sections, chunks as ``add_chunk`` arguments."""

    header: dict
    tensors: dict[str, bytes]
    chunks: list[tuple]


def take_apart(path) -> Parts:
    with open(path, "rb") as f:
        layout = read_layout(f)
        header = json.loads(read_section(f, layout.sections["header"]))
        tensors = {n: read_section(f, s) for n, s in layout.sections.items() if n not in ("header", "index", "chunks")}
        index = parse_index(read_section(f, layout.sections["index"]), layout.sections["chunks"])
        body = read_section(f, layout.sections["chunks"])
    chunks = [(c.epoch, c.start, c.count, body[c.offset:c.offset + c.stored_length], c.raw_length, c.encoding)
              for c in index]
    return Parts(header, tensors, chunks)


def build(path, parts: Parts, *, header: dict | bytes | None = None, chunks: list[tuple] | None = None,
          tensors: dict[str, bytes] | None = None, extra=(), edit_index=None, header_required: bool = True) -> Path:
    """Write a file whose CRCs are all valid, so only its meaning can be wrong."""
    header = parts.header if header is None else header
    with open(path, "wb") as f:
        w = ContainerWriter(f)
        w.add_section("header", header if isinstance(header, bytes) else header_bytes(header), header_required)
        for name, data in (parts.tensors if tensors is None else tensors).items():
            w.add_section(name, data)
        w.begin_chunks()
        for c in parts.chunks if chunks is None else chunks:
            w.add_chunk(*c)
        if edit_index:
            w.index = edit_index(w.index)
        w.end_chunks()
        for name, data, required in extra:
            w.add_section(name, data, required)
        w.finish()
    return Path(path)


def fresh_crcs(data: bytes) -> bytes:
    """Best effort: recompute every CRC (chunks, sections, table, preamble) of a possibly damaged file."""
    d = bytearray(data)
    if len(d) < PREAMBLE.size:
        return bytes(d)
    p = preamble(d)
    entries = []
    if p["table_off"] + p["count"] * ENTRY.size <= len(d) and p["count"] <= 4096:
        entries = table(bytes(d))
    spans = {e[0].rstrip(b"\0"): (e[1], e[2]) for e in entries if e[1] + e[2] <= len(d)}
    if b"index" in spans and b"chunks" in spans:
        (io, il), (co, cl) = spans[b"index"], spans[b"chunks"]
        for i in range(il // CHUNK.size):
            fields = list(CHUNK.unpack_from(d, io + i * CHUNK.size))
            off, stored = fields[3], fields[4]
            if off + stored <= cl:
                fields[6] = crc32(bytes(d[co + off:co + off + stored]))
                d[io + i * CHUNK.size:io + (i + 1) * CHUNK.size] = CHUNK.pack(*fields)
    for e in entries:
        if e[1] + e[2] <= len(d):
            e[3] = crc32(bytes(d[e[1]:e[1] + e[2]]))
    if entries:
        return with_table(bytes(d), entries)
    return with_preamble(bytes(d))


def topk_payload(values: np.ndarray, indices: np.ndarray, bits: int) -> bytes:
    return np.asarray(values, "<f2").tobytes() + pack_bits(np.asarray(indices), bits)


# --------------------------------------------------------------------------- fixtures
ADDRESS_SPACE_CAP = 256 << 20


def cap_address_space(extra: int) -> tuple[int, int] | None:
    """Allow ``extra`` bytes of address space beyond what is mapped now; return the old limits (None: not Linux)."""
    try:
        import resource

        vm = int(Path("/proc/self/status").read_text().split("VmSize:")[1].split()[0]) << 10
    except (ImportError, OSError, IndexError, ValueError):
        return None
    soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    resource.setrlimit(resource.RLIMIT_AS, (vm + extra if hard == resource.RLIM_INFINITY else min(vm + extra, hard), hard))
    return soft, hard


@pytest.fixture(autouse=True)
def memory_cap():
    """Every test here runs with at most 256 MiB of address space more than is mapped when it starts.

    The files are a few KB, so a lying header that made the reader allocate by its word (a
    10**12-class label, a 2**40-sample index) fails the test with MemoryError instead of passing
    on an overcommitting OS. Children (CLI subprocesses) inherit a cap far above what they need.
    """
    old = cap_address_space(ADDRESS_SPACE_CAP)
    try:
        yield
    finally:
        if old is not None:
            import resource

            resource.setrlimit(resource.RLIMIT_AS, old)


@pytest.fixture(scope="module")
def valid(tmp_path_factory) -> Path:
    """A small valid top-k file: 2 epochs x 50 samples x 10 classes, chunks of 16 (so 16, 16, 16, 2)."""
    d = tmp_path_factory.mktemp("valid")
    rng = np.random.default_rng(0)
    np.save(d / "logits.npy", (rng.normal(size=(2, 50, 10)) * 2).astype(np.float32))
    src = open_labels(str(d / "logits.npy"))
    try:
        slc.compress(src, str(d / "valid.slc"), codec="topk", k=3, source="logits", temperature=2.0, chunk_size=16)
    finally:
        src.close()
    return d / "valid.slc"


@pytest.fixture(scope="module")
def raw(valid) -> bytes:
    return load(valid)


@pytest.fixture(scope="module")
def parts(valid) -> Parts:
    return take_apart(valid)


@pytest.fixture(scope="module")
def sections(valid) -> dict:
    with open(valid, "rb") as f:
        return read_layout(f).sections


VQ = {"k": 4, "dc": 2, "dh": 4, "bits": 2, "domain": "logit", "eps": 1e-8, "bias": False, "dtype": "<f4", "fit": {}}


@pytest.fixture(scope="module")
def vq_parts() -> Parts:
    """A tiny hand-made VQAE file (no fitting): 10 classes, k=4, d_c=2, d_h=4, 1 epoch x 12 samples."""
    rng = np.random.default_rng(1)
    codebook = rng.normal(size=(4, 2)).astype("<f4")
    decoder = rng.normal(size=(4, 10)).astype("<f4")
    header = {"classes": 10, "epochs": 1, "samples": 12, "temperature": 1.0, "source": "logits", "codec": "vqae",
              "codec_params": VQ, "tensors": {"vqae.codebook": {"dtype": "<f4", "shape": [4, 2]},
                                              "vqae.decoder": {"dtype": "<f4", "shape": [4, 10]}},
              "chunk_size": 8, "entropy": "none", "writer": "test", "user": {}}
    chunks = []
    for start in (0, 8):
        n = min(8, 12 - start)
        payload = pack_bits(rng.integers(0, 4, size=(n, 2)), 2)
        chunks.append((0, start, n, payload, len(payload), 0))
    return Parts(header, {"vqae.codebook": codebook.tobytes(), "vqae.decoder": decoder.tobytes()}, chunks)


# --------------------------------------------------------------------------- the valid file
def test_valid_file_opens_verifies_and_decodes(valid):
    with open_slc(valid) as f:
        f.verify()
        y = f.decode(1)
    assert y.shape == (50, 10) and y.dtype == np.float32
    np.testing.assert_allclose(y.sum(1), 1, atol=1e-6)


def test_rebuilt_file_is_valid(tmp_path, parts, vq_parts):
    open_and_verify(build(tmp_path / "t.slc", parts))
    open_and_verify(build(tmp_path / "v.slc", vq_parts))


# --------------------------------------------------------------------------- preamble
BAD_MAGICS = [
    b"\x00" * 8,
    b"\x89SLC\n\x1a\n\x00",  # CRLF -> LF translation
    b"\x09SLC\r\n\x1a\n",  # high bit stripped by a 7-bit channel
    b"\x89slc\r\n\x1a\n",
    b"\x89SLC\r\n\x1a\x00",
    b"\x89PNG\r\n\x1a\n",
    b"\x93NUMPY\x01\x00",
    b"\x89HDF\r\n\x1a\n",
    b"PK\x03\x04\x14\x00\x00\x00",
    b"SLC\x00\x00\x00\x00\x00",
]


@pytest.mark.parametrize("magic", BAD_MAGICS, ids=[m.hex() for m in BAD_MAGICS])
def test_bad_magic(tmp_path, raw, magic):
    assert_invalid(save(tmp_path, with_preamble(raw, magic=magic)), "magic")
    assert_invalid(save(tmp_path, magic + raw[8:]), "magic")  # CRC left stale too


@pytest.mark.parametrize("major", [0, 2, 255, 0xFFFF])
def test_unknown_major_version(tmp_path, raw, major):
    assert_invalid(save(tmp_path, with_preamble(raw, major=major)), "major version")


@pytest.mark.parametrize("minor", [1, 0xFFFF])
def test_newer_minor_version_is_read(tmp_path, raw, minor):
    with open_slc(save(tmp_path, with_preamble(raw, minor=minor))) as f:
        f.verify()
        assert (f.layout.major, f.layout.minor) == (1, minor)


@pytest.mark.parametrize("fields,match", [
    ({"reserved": b"\x01" + bytes(23)}, "reserved"),
    ({"count": 0}, "sections"),
    ({"count": 4097}, "sections"),
    ({"table_off": 0}, "table offset"),
    ({"table_off": 1}, "table offset"),
    ({"table_off": 2**63}, "end the file"),
    ({"length": 2**64 - 1}, "file length"),
    ({"table_crc": 0}, "table CRC"),
])
def test_preamble_lies(tmp_path, raw, fields, match):
    assert_invalid(save(tmp_path, with_preamble(raw, **fields)), match)


def test_stale_preamble_crc(tmp_path, raw):
    d = bytearray(raw)
    d[10] ^= 1  # minor version, CRC not fixed
    assert_invalid(save(tmp_path, bytes(d)), "preamble CRC")


# --------------------------------------------------------------------------- truncation and trailing bytes
def test_truncation_at_every_boundary_and_random_offsets(tmp_path, raw, sections):
    table_off = preamble(raw)["table_off"]
    cuts = {0, 1, 8, 59, 60, 63, 64, table_off, table_off + 1, table_off + ENTRY.size, len(raw) - 1}
    for s in sections.values():
        cuts |= {s.offset, s.offset + 1, s.offset + s.length - 1, s.offset + s.length}
    rng = random.Random(0)
    cuts |= {rng.randrange(len(raw)) for _ in range(8)}
    for n in sorted(c for c in cuts if 0 <= c < len(raw)):
        p = save(tmp_path, raw[:n], f"cut{n}.slc")
        with pytest.raises(SlcFormatError):
            open_and_verify(p)
        # the preamble still says the old length; a truncated file with a patched length fails too
        if n >= PREAMBLE.size:
            with pytest.raises(SlcFormatError):
                open_and_verify(save(tmp_path, with_preamble(raw[:n], length=n), f"cutfix{n}.slc"))


@pytest.mark.parametrize("extra", [b"\x00", bytes(64), b"garbage\n", b"\x89SLC\r\n\x1a\n"])
def test_trailing_garbage(tmp_path, raw, extra):
    assert_invalid(save(tmp_path, raw + extra), "file length")
    # even with the recorded length patched, the table must end the file
    assert_invalid(save(tmp_path, with_preamble(raw + extra, length=len(raw) + len(extra))), "end the file")


def test_leading_garbage(tmp_path, raw):
    assert_invalid(save(tmp_path, bytes(64) + raw), "magic")


# --------------------------------------------------------------------------- bit flips
def _regions(raw: bytes, sections) -> dict[str, int]:
    """One byte in the middle of each region."""
    t = preamble(raw)["table_off"]
    out = {"preamble": 30, "preamble-crc": 61, "table": t + (len(raw) - t) // 2}
    for s in sections.values():
        out[s.name] = s.offset + s.length // 2
    return out


@pytest.mark.parametrize("region", ["preamble", "preamble-crc", "table", "header", "index"])
def test_bit_flip_caught_on_open(tmp_path, raw, sections, region):
    pos = _regions(raw, sections)[region]
    for bit in (0, 3, 7):
        d = bytearray(raw)
        d[pos] ^= 1 << bit
        with pytest.raises(SlcFormatError):
            open_slc(save(tmp_path, bytes(d))).close()


def test_bit_flip_in_chunk_bodies_caught_by_verify(tmp_path, raw, sections):
    s = sections["chunks"]
    for pos in (s.offset, s.offset + s.length // 2, s.offset + s.length - 1):
        d = bytearray(raw)
        d[pos] ^= 0x10
        p = save(tmp_path, bytes(d))
        with open_slc(p) as f:  # chunk bodies are not read on open...
            with pytest.raises(SlcFormatError, match="CRC"):
                f.verify()  # ...but every read and verify checks them
            with pytest.raises(SlcFormatError, match="CRC"):
                for _ in f.iter_chunks():
                    pass


def test_nonzero_alignment_padding(tmp_path, raw, sections):
    h = sections["header"]
    pad = h.offset + h.length  # header is followed by padding up to the next 64-byte boundary
    assert pad % 64 != 0
    d = bytearray(raw)
    d[pad] = 0xAA
    assert_invalid(save(tmp_path, bytes(d)), "padding")


def test_nonzero_padding_before_table(tmp_path, parts):
    d = bytearray(load(build(tmp_path / "o.slc", parts, extra=[("zz.future", b"\x01\x02", False)])))
    table_off = preamble(d)["table_off"]
    assert d[table_off - 1] == 0 and d[table_off - 63] == 2  # the 2-byte section ends 62 bytes before the table
    d[table_off - 1] = 1
    assert_invalid(save(tmp_path, bytes(d)), "padding")


# --------------------------------------------------------------------------- section table lies
def _rename(name: str) -> bytes:
    return name.encode().ljust(24, b"\0")


def _table_edit(fn):
    def edit(entries):
        entries = [list(e) for e in entries]
        fn(entries)
        return entries
    return edit


TABLE_LIES = {
    "duplicate name": (_table_edit(lambda es: es[2].__setitem__(0, es[0][0])), "unique"),
    "overlap": (_table_edit(lambda es: es[1].__setitem__(1, es[1][1] - 64)), "offset"),
    "misaligned": (_table_edit(lambda es: es[1].__setitem__(1, es[1][1] + 1)), "offset"),
    "hole": (_table_edit(lambda es: es[1].__setitem__(1, es[1][1] + 64)), "offset"),
    "length overlaps next": (_table_edit(lambda es: es[0].__setitem__(2, es[0][2] + 100)), "offset"),
    "length past table": (_table_edit(lambda es: es[2].__setitem__(2, es[2][2] + 64)), "before the table"),
    "length 2**64-1": (_table_edit(lambda es: es[2].__setitem__(2, 2**64 - 1)), "before the table"),
    "reordered": (_table_edit(lambda es: es.reverse()), "offset"),
    "missing index": (_table_edit(lambda es: es.pop()), "right after"),
    "renamed index": (_table_edit(lambda es: es[2].__setitem__(0, _rename("zzz"))), "'index' section"),
    "unknown flag": (_table_edit(lambda es: es[0].__setitem__(4, 3)), "flags"),
    "reserved": (_table_edit(lambda es: es[0].__setitem__(5, b"\x01" + bytes(15))), "reserved"),
    "empty name": (_table_edit(lambda es: es[0].__setitem__(0, bytes(24))), "name"),
    "space in name": (_table_edit(lambda es: es[0].__setitem__(0, _rename("hea der"))), "name"),
    "non-ascii name": (_table_edit(lambda es: es[0].__setitem__(0, "h\u00e9ader".encode().ljust(24, b"\0"))), "name"),
    "NUL inside name": (_table_edit(lambda es: es[0].__setitem__(0, b"head\0er".ljust(24, b"\0"))), "name"),
}


@pytest.mark.parametrize("lie", list(TABLE_LIES))
def test_section_table_lies(tmp_path, raw, lie):
    edit, match = TABLE_LIES[lie]
    assert_invalid(save(tmp_path, with_table(raw, edit(table(raw)))), match)


# --------------------------------------------------------------------------- header lies
def _without(key):
    return lambda h: {k: v for k, v in h.items() if k != key}


def _set(**kw):
    return lambda h: {**h, **kw}


HEADER_LIES = {
    "classes huge": _set(classes=10**12),
    "classes 2**21+1": _set(classes=2**21 + 1),
    "classes 1": _set(classes=1),
    "classes bool": _set(classes=True),
    "classes float": _set(classes=10.0),
    "classes string": _set(classes="10"),
    "classes needing 5-bit indices": _set(classes=17),  # index_bits 4 no longer matches
    "epochs*samples overflow": _set(epochs=2**40, samples=2**40),
    "epochs*samples past 2**48": _set(epochs=2**24, samples=2**24 + 1),
    "epochs 0": _set(epochs=0),
    "samples negative": _set(samples=-50),
    "samples mismatch": _set(samples=51),
    "epochs mismatch": _set(epochs=3),
    "temperature 0": _set(temperature=0.0),
    "temperature negative": _set(temperature=-1.0),
    "temperature 1e5": _set(temperature=1e5),
    "temperature string": _set(temperature="2"),
    "source unknown": _set(source="teacher"),
    "entropy unknown": _set(entropy="lz4"),
    "chunk_size 0": _set(chunk_size=0),
    "chunk_size x classes too big": _set(chunk_size=2**28),
    "chunk_size mismatch": _set(chunk_size=17),
    "unknown codec": _set(codec="pq"),
    "codec not a string": _set(codec=["topk"]),
    "codec_params not an object": _set(codec_params=[3, 4]),
    "topk k 0": _set(codec_params={"k": 0, "index_bits": 4}),
    "topk k = classes": _set(codec_params={"k": 10, "index_bits": 4}),
    "topk k bool": _set(codec_params={"k": True, "index_bits": 4}),
    "topk k mismatch": _set(codec_params={"k": 4, "index_bits": 4}),
    "topk index_bits wrong": _set(codec_params={"k": 3, "index_bits": 5}),
    "topk k missing": _set(codec_params={"index_bits": 4}),
    "tensor declared for topk": _set(tensors={"topk.values": {"dtype": "<f4", "shape": [3]}}),
    "tensor spec malformed": _set(tensors={"topk.values": {"dtype": "<f4", "shape": [-1]}}),
    "tensors not an object": _set(tensors=[]),
    "epochs 2**32 (u32 in the index)": _set(epochs=2**32, samples=1),
    "writer not a string": _set(writer=1),
    "user not an object": _set(user=[1]),
    "epochs_per_chunk 0": _set(epochs_per_chunk=0),
    "epochs_per_chunk bool": _set(epochs_per_chunk=True),
    "epochs_per_chunk a float": _set(epochs_per_chunk=2.0),
    "epochs_per_chunk over the epochs": _set(epochs_per_chunk=3, chunk_size=64),
    "epochs_per_chunk x samples over chunk_size": _set(epochs_per_chunk=2),
    "epochs_per_chunk 2 but one chunk per epoch in the index": _set(epochs_per_chunk=2, chunk_size=42),
    **{f"missing {k}": _without(k) for k in ("classes", "epochs", "samples", "temperature", "source", "codec",
                                               "codec_params", "tensors", "chunk_size", "entropy")},
}


@pytest.mark.parametrize("lie", list(HEADER_LIES))
def test_header_lies(tmp_path, parts, lie):
    assert_invalid(build(tmp_path / "h.slc", parts, header=HEADER_LIES[lie](parts.header)))


@pytest.mark.parametrize("raw_header,match", [
    (b"", "JSON"),
    (b"\xff\xfe{}", "UTF-8"),
    (b'{"classes": 10', "JSON"),
    (b"[]", "object"),
    (b'"header"', "object"),
    (b"{}", "classes"),
    (b'{"classes": NaN}', "NaN"),
    (b'{"classes": -Infinity}', "Infinity"),
])
def test_header_not_a_json_object(tmp_path, parts, raw_header, match):
    assert_invalid(build(tmp_path / "h.slc", parts, header=raw_header), match)


def test_header_too_large(tmp_path, parts):
    big = {**parts.header, "user": {"pad": "x" * (1 << 20)}}
    assert_invalid(build(tmp_path / "h.slc", parts, header=big), "header of at most")


def test_unknown_required_section_fails_unknown_optional_is_ignored(tmp_path, parts):
    assert_invalid(build(tmp_path / "r.slc", parts, extra=[("zz.future", b"\x01\x02", True)]), "required section")
    open_and_verify(build(tmp_path / "o.slc", parts, extra=[("zz.future", b"\x01\x02", False)]))


def test_unknown_header_fields_are_ignored(tmp_path, parts):
    open_and_verify(build(tmp_path / "u.slc", parts, header={**parts.header, "future_field": {"a": 1}}))


def test_temperature_huge_integer(tmp_path, parts):
    assert_invalid(build(tmp_path / "h.slc", parts, header={**parts.header, "temperature": 10**400}))


def test_header_integer_with_5000_digits(tmp_path, parts):
    text = header_bytes(parts.header).replace(b'"classes":10', b'"classes":' + b"9" * 5000)
    assert_invalid(build(tmp_path / "h.slc", parts, header=text))  # json raises a plain ValueError


def test_header_deeply_nested(tmp_path, parts):
    text = header_bytes(parts.header).replace(b'"user":{}', b'"user":' + b"[" * 100_000 + b"]" * 100_000)
    assert_invalid(build(tmp_path / "h.slc", parts, header=text))


def test_header_duplicate_keys(tmp_path, parts):
    text = header_bytes(parts.header)[:-1] + b',"temperature":4.0}'
    assert_invalid(build(tmp_path / "h.slc", parts, header=text), "'temperature' twice")
    text = header_bytes(parts.header).replace(b'"user":{}', b'"user":{"a":1,"a":2}')
    assert_invalid(build(tmp_path / "h.slc", parts, header=text), "'a' twice")


# --------------------------------------------------------------------------- VQAE tensors
def _vq(**params):
    return {**VQ, **params}


VQ_LIES = {
    "decoder shape declared wrong": lambda h, t: ({**h, "tensors": {**h["tensors"], "vqae.decoder":
                                                  {"dtype": "<f4", "shape": [5, 10]}}}, t),
    "codebook dtype declared wrong": lambda h, t: ({**h, "tensors": {**h["tensors"], "vqae.codebook":
                                                   {"dtype": "<f2", "shape": [4, 2]}}}, t),
    "section shorter than declared": lambda h, t: (h, {**t, "vqae.decoder": t["vqae.decoder"][:-4]}),
    "section longer than declared": lambda h, t: (h, {**t, "vqae.decoder": t["vqae.decoder"] + bytes(4)}),
    "tensor section missing": lambda h, t: (h, {"vqae.codebook": t["vqae.codebook"]}),
    "tensor not declared": lambda h, t: ({**h, "tensors": {"vqae.codebook": h["tensors"]["vqae.codebook"]}}, t),
    "bias declared but absent": lambda h, t: ({**h, "codec_params": _vq(bias=True)}, t),
    "NaN in codebook": lambda h, t: (h, {**t, "vqae.codebook": np.full(8, np.nan, "<f4").tobytes()}),
    "inf in decoder": lambda h, t: (h, {**t, "vqae.decoder": np.full(40, np.inf, "<f4").tobytes()}),
    "bits wrong": lambda h, t: ({**h, "codec_params": _vq(bits=3)}, t),
    "d_c does not divide d_h": lambda h, t: ({**h, "codec_params": _vq(dc=3)}, t),
    "k 1": lambda h, t: ({**h, "codec_params": _vq(k=1, bits=1)}, t),
    "k 2**16+1": lambda h, t: ({**h, "codec_params": _vq(k=2**16 + 1, bits=17)}, t),
    "domain unknown": lambda h, t: ({**h, "codec_params": _vq(domain="log")}, t),
    "eps 0 in prob domain": lambda h, t: ({**h, "codec_params": _vq(domain="prob", eps=0.0)}, t),
    "dtype unknown": lambda h, t: ({**h, "codec_params": _vq(dtype="<f8")}, t),
    "bias not bool": lambda h, t: ({**h, "codec_params": _vq(bias=0)}, t),
}


@pytest.mark.parametrize("lie", list(VQ_LIES))
def test_vqae_tensor_and_param_lies(tmp_path, vq_parts, lie):
    header, tensors = VQ_LIES[lie](vq_parts.header, vq_parts.tensors)
    assert_invalid(build(tmp_path / "v.slc", vq_parts, header=header, tensors=tensors))


def test_vqae_code_out_of_range(tmp_path, vq_parts):
    h = {**vq_parts.header, "codec_params": _vq(k=3)}  # 2-bit codes, but code 3 >= k
    t = {**vq_parts.tensors, "vqae.codebook": vq_parts.tensors["vqae.codebook"][:24]}
    h["tensors"] = {**h["tensors"], "vqae.codebook": {"dtype": "<f4", "shape": [3, 2]}}
    payload = pack_bits(np.full((8, 2), 3), 2)
    chunks = [(0, 0, 8, payload, len(payload), 0), *vq_parts.chunks[1:]]
    assert_invalid(build(tmp_path / "v.slc", vq_parts, header=h, tensors=t, chunks=chunks), "< k=3")


def test_vqae_chunk_work_is_bounded(tmp_path):
    classes, dh, dc, chunk = 2, 2**16, 64, 2**27  # chunk x classes = 2**28 passes the header's bound
    params = {**VQ, "k": 2, "bits": 1, "dc": dc, "dh": dh, "dtype": "<f2"}
    header = {"classes": classes, "epochs": 1, "samples": chunk, "temperature": 1.0, "source": "logits",
              "codec": "vqae", "codec_params": params, "chunk_size": chunk, "entropy": "zstd", "writer": "", "user": {},
              "tensors": {"vqae.codebook": {"dtype": "<f2", "shape": [2, dc]},
                          "vqae.decoder": {"dtype": "<f2", "shape": [dh, classes]}}}
    tensors = {"vqae.codebook": bytes(2 * dc * 2), "vqae.decoder": bytes(dh * classes * 2)}
    raw_length = chunk * (dh // dc) // 8  # 16 GiB of codes, announced by a 13-byte zstd frame
    frame = zstandard.ZstdCompressor().compress(b"\0")
    p = build(tmp_path / "v.slc", Parts(header, tensors, []), chunks=[(0, 0, chunk, frame, raw_length, 1)])
    with pytest.raises(SlcFormatError):
        open_slc(p).close()  # open only: never decode this file


# --------------------------------------------------------------------------- index and chunk lies
def _replace(i, **kw):
    return lambda index: [dataclasses.replace(c, **kw) if j == i else c for j, c in enumerate(index)]


def test_chunk_lies(tmp_path, parts):
    c = parts.chunks
    zf = zstandard.ZstdCompressor()
    cases = {
        "wrong epoch": dict(chunks=[(1, *c[0][1:]), *c[1:]]),
        "wrong start": dict(chunks=[(0, 1, *c[0][2:]), *c[1:]]),
        "chunks swapped": dict(chunks=[c[1], c[0], *c[2:]]),
        "chunk missing": dict(chunks=c[:-1]),
        "extra chunk": dict(chunks=[*c, c[-1]]),
        "count too big": dict(edit_index=_replace(3, count=3)),
        "offset gap": dict(edit_index=_replace(1, offset=len(c[0][3]) + 1)),
        "raw_length lie": dict(edit_index=_replace(0, raw_length=c[0][4] + 1, stored_length=c[0][4] + 1)),
        "stored != raw for a raw chunk": dict(edit_index=_replace(0, raw_length=c[0][4] - 1)),
        "unknown encoding": dict(edit_index=_replace(0, encoding=2)),
        "zstd chunk, entropy none": dict(chunks=[(*c[0][:3], zf.compress(c[0][3]), c[0][4], 1), *c[1:]]),
    }
    for name, kw in cases.items():
        p = build(tmp_path / "c.slc", parts, **kw)
        with pytest.raises(SlcFormatError):
            open_and_verify(p)


def test_index_reserved_field(tmp_path, raw, sections):
    d = bytearray(raw)
    d[sections["index"].offset + CHUNK.size - 2] = 1  # entry 0's reserved u16
    assert_invalid(save(tmp_path, fresh_crcs(bytes(d))), "reserved")


def test_zstd_chunk_lies(tmp_path, parts):
    c = parts.chunks
    zf = zstandard.ZstdCompressor()
    h = {**parts.header, "entropy": "zstd"}
    open_and_verify(build(tmp_path / "ok.slc", parts, header=h,
                          chunks=[(*c[0][:3], zf.compress(c[0][3]), c[0][4], 1), *c[1:]]))
    for name, frame in {"garbage": b"not a zstd frame",
                        "one byte long": zf.compress(c[0][3] + b"x"),
                        "one byte short": zf.compress(c[0][3][:-1]),
                        "no content size, too long": zstandard.ZstdCompressor(write_content_size=False).compress(
                            c[0][3] * 2),
                        "no content size, right length": zstandard.ZstdCompressor(write_content_size=False).compress(
                            c[0][3]),
                        "truncated frame": zf.compress(c[0][3])[:-2],
                        "declares raw_length, holds less": _zstd_frame_claiming(c[0][4], c[0][3][:-1]),
                        "declares raw_length, holds more": _zstd_frame_claiming(c[0][4], c[0][3] + b"x")}.items():
        p = build(tmp_path / "z.slc", parts, header=h, chunks=[(*c[0][:3], frame, c[0][4], 1), *c[1:]])
        with pytest.raises(SlcFormatError):
            open_and_verify(p)


def _zstd_frame_claiming(content_size: int, data: bytes) -> bytes:
    """A zstd frame whose header declares ``content_size`` bytes, holding one raw block of ``data``."""
    return (struct.pack("<IBB", 0xFD2FB528, 0xC0, 0x00) + struct.pack("<Q", content_size)
            + struct.pack("<I", len(data) << 3 | 1)[:3] + data)


def test_zstd_frame_declaring_huge_content_size(tmp_path, parts):
    c = parts.chunks
    frame = _zstd_frame_claiming(1 << 62, c[0][3])
    p = build(tmp_path / "z.slc", parts, header={**parts.header, "entropy": "zstd"},
              chunks=[(*c[0][:3], frame, c[0][4], 1), *c[1:]])
    assert_invalid(p)


def test_zstd_chunk_with_trailing_frame(tmp_path, parts):
    c = parts.chunks
    frame = zstandard.ZstdCompressor().compress(c[0][3])
    p = build(tmp_path / "z.slc", parts, header={**parts.header, "entropy": "zstd"},
              chunks=[(*c[0][:3], frame + frame, c[0][4], 1), *c[1:]])
    assert_invalid(p)


def test_topk_index_out_of_range(tmp_path, parts):
    c = parts.chunks
    n = c[0][2]
    payload = topk_payload(np.full((n, 3), 0.2), np.tile([0, 1, 15], (n, 1)), 4)  # 15 >= 10 classes
    assert_invalid(build(tmp_path / "k.slc", parts, chunks=[(*c[0][:3], payload, len(payload), 0), *c[1:]]),
                   "indices")


def test_topk_nonzero_padding_bits(tmp_path, parts):
    h = {**parts.header, "samples": 5, "epochs": 1}  # one chunk of 5 labels: 60 bits of indices, 4 padding
    payload = bytearray(topk_payload(np.full((5, 3), 0.2), np.tile([0, 1, 2], (5, 1)), 4))
    payload[-1] |= 0x80
    p = build(tmp_path / "k.slc", parts, header=h, chunks=[(0, 0, 5, bytes(payload), len(payload), 0)])
    assert_invalid(p, "padding")


@pytest.mark.parametrize("value,indices,match", [
    (np.nan, [0, 1, 2], r"\[0, 1\]"),
    (np.inf, [0, 1, 2], r"\[0, 1\]"),
    (1.01, [0, 1, 2], r"\[0, 1\]"),
    (-0.1, [0, 1, 2], r"\[0, 1\]"),
    (0.2, [0, 1, 0], "distinct"),
])
def test_topk_bad_values_and_repeated_indices(tmp_path, parts, value, indices, match):
    c = parts.chunks
    n = c[0][2]
    payload = topk_payload(np.full((n, 3), value), np.tile(indices, (n, 1)), 4)
    assert_invalid(build(tmp_path / "k.slc", parts, chunks=[(*c[0][:3], payload, len(payload), 0), *c[1:]]), match)


@pytest.mark.parametrize("bad", [None, np.nan, np.inf, -1e-3])
def test_dense_values(tmp_path, parts, bad):
    h = {**parts.header, "codec": "dense", "codec_params": {"dtype": "<f4"}}
    chunks = []
    for e, start, n, *_ in parts.chunks:
        y = np.full((n, 10), 0.1, "<f4")
        if bad is not None and not chunks:
            y[n - 1, 3] = bad
        chunks.append((e, start, n, y.tobytes(), y.nbytes, 0))
    p = build(tmp_path / "d.slc", parts, header=h, chunks=chunks)
    if bad is None:
        open_and_verify(p)
    else:
        assert_invalid(p, "non-negative")


# --------------------------------------------------------------------------- CLI
def _cli(*args):
    return subprocess.run([sys.executable, "-m", "slc", *map(str, args)], capture_output=True, text=True,
                          timeout=120)


@pytest.mark.parametrize("command,where", [("verify", "header"), ("verify", "chunks"), ("inspect", "header")])
def test_cli_one_line_error(tmp_path, raw, sections, command, where):
    s = sections[where]
    d = bytearray(raw)
    d[s.offset + s.length // 2] ^= 0x04
    p = _cli(command, save(tmp_path, bytes(d)))
    out = (p.stdout + p.stderr).strip().splitlines()
    assert p.returncode == 1  # verify: 0 valid, 1 invalid; other commands: click's error exit
    assert "Traceback" not in p.stdout + p.stderr
    assert len(out) == 1 and out[0].startswith(("Error:", "INVALID")), out
    assert "CRC" in out[0]


# --------------------------------------------------------------------------- fuzzing
FUZZ = settings(max_examples=200, deadline=None, derandomize=True, database=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
mutations = st.lists(st.tuples(st.integers(0, 1 << 30), st.integers(0, 255)), min_size=1, max_size=6)


def _mutate(data: bytes, muts, cut) -> bytes:
    d = bytearray(data)
    for pos, byte in muts:
        d[pos % len(d)] = byte
    return bytes(d[:cut % (len(d) + 1)]) if cut is not None else bytes(d)


def read_everything(path) -> None:
    """Open, verify and decode every chunk: what a hostile file must survive (or fail with SlcFormatError)."""
    with open_slc(path) as f:
        f.verify()
        for _ in f.iter_chunks():
            pass
        if hasattr(f.codec, "decode_sparse"):  # token files: the sparse path, sequences and token ids too
            f.sparse()
            for i in range(f.sequences):
                f.sequence_range(i)
            f.token_ids()


def _open_verify_decode(path) -> None:
    try:
        read_everything(path)
    except SlcFormatError:
        pass


@FUZZ
@given(muts=mutations, cut=st.none() | st.integers(0, 1 << 30))
def test_fuzz_random_bytes(tmp_path, raw, muts, cut):
    _open_verify_decode(save(tmp_path, _mutate(raw, muts, cut), "fuzz.slc"))


@FUZZ
@given(muts=mutations)
def test_fuzz_random_bytes_behind_fresh_crcs(tmp_path, raw, muts):
    """Mutations with every CRC recomputed, so the checks behind the CRCs are what must catch them."""
    _open_verify_decode(save(tmp_path, fresh_crcs(_mutate(raw, muts, None)), "fuzz.slc"))


def test_fresh_crcs_is_the_identity_on_a_valid_file(raw):
    assert fresh_crcs(raw) == raw


# --------------------------------------------------------------------------- golden file and determinism
def test_golden_v1_0_topk_decodes_exactly():
    expected = np.load(GOLDEN / "v1.0-topk.expected.npy")
    assert expected.dtype == np.float32 and expected.shape == (2, 21, 10)
    with open_slc(GOLDEN / "v1.0-topk.slc") as f:
        f.verify()
        assert (f.layout.major, f.layout.minor) == (1, 0)
        assert f.shape == (2, 21, 10) and f.temperature == 2.0 and f.header.codec == "topk"
        assert [(c.epoch, c.start, c.count) for c in f.index] == [(e, s, n) for e in (0, 1)
                                                                  for s, n in ((0, 8), (8, 8), (16, 5))]
        got = np.stack([f.decode(e) for e in range(2)])
    np.testing.assert_array_equal(got, expected)


def test_golden_bytes_are_what_this_writer_writes(tmp_path):
    """Re-encoding the golden input gives the same bytes, except the ``writer`` string in the header."""
    src = open_labels(str(GOLDEN / "v1.0-topk.input.npy"))
    try:
        slc.compress(src, str(tmp_path / "g.slc"), codec="topk", k=3, source="logits", temperature=2.0, chunk_size=8)
    finally:
        src.close()
    golden, fresh = take_apart(GOLDEN / "v1.0-topk.slc"), take_apart(tmp_path / "g.slc")
    assert {**golden.header, "writer": ""} == {**fresh.header, "writer": ""}
    assert golden.chunks == fresh.chunks and golden.tensors == fresh.tensors
    if golden.header["writer"] == fresh.header["writer"]:
        assert load(GOLDEN / "v1.0-topk.slc") == load(tmp_path / "g.slc")


def test_golden_preamble_bytes():
    data = load(GOLDEN / "v1.0-topk.slc")
    assert data[:8] == MAGIC == bytes.fromhex("89534c430d0a1a0a")
    assert data[8:12] == b"\x01\x00\x00\x00"  # major 1, minor 0, little-endian u16s
    p = preamble(data)
    assert p["length"] == len(data) and p["table_off"] % 64 == 0 and p["reserved"] == bytes(24)
    assert p["crc"] == crc32(data[:60]) and p["table_crc"] == crc32(data[p["table_off"]:])


@pytest.mark.parametrize("codec,kw", [("topk", {"k": 3}), ("fp16", {}), ("fp32", {"zstd": True})])
def test_same_input_gives_identical_bytes(tmp_path, valid, codec, kw):
    npy = valid.parent / "logits.npy"
    for name in ("a.slc", "b.slc"):
        src = open_labels(str(npy))
        try:
            slc.compress(src, str(tmp_path / name), codec=codec, temperature=2.0, chunk_size=16, seed=3, **kw)
        finally:
            src.close()
    assert load(tmp_path / "a.slc") == load(tmp_path / "b.slc")
    open_and_verify(tmp_path / "a.slc")


def test_file_size_matches_sizing(valid, parts):
    from slc.format.bitpack import packed_size
    from slc.codecs.planner import container_bytes

    h = parts.header
    size = container_bytes(h["epochs"], h["samples"], h["chunk_size"], lambda n: n * 3 * 2 + packed_size(n * 3, 4), [],
                           header_bytes=len(header_bytes(h)))
    assert len(load(valid)) == size


V1_2_FILES = ("topk-mr", "topk-mrs", "pca", "quant", "vq-noae", "pruned")
V1_3_FILES = ("topk-vq", "topk-vq-bf16", "topk-vq-capped")


@FUZZ
@given(name=st.sampled_from(V1_2_FILES), muts=mutations, crcs=st.booleans())
def test_fuzz_the_1_2_codecs_and_pruned_files(tmp_path, name, muts, crcs):
    """The 1.2 codecs' params, tensors and payloads and epochs.map: a clean error or a valid read, nothing else."""
    data = _mutate((GOLDEN / f"v1.2-{name}.slc").read_bytes(), muts, None)
    _open_verify_decode(save(tmp_path, fresh_crcs(data) if crcs else data, "fuzz.slc"))


@FUZZ
@given(name=st.sampled_from(V1_3_FILES), muts=mutations, crcs=st.booleans())
def test_fuzz_the_1_3_token_files(tmp_path, name, muts, crcs):
    """topk-vq params, rank order, prior, VQAE tensors, rank planes, tokens.seq and tokens.ids."""
    data = _mutate((GOLDEN / f"v1.3-{name}.slc").read_bytes(), muts, None)
    _open_verify_decode(save(tmp_path, fresh_crcs(data) if crcs else data, "fuzz.slc"))

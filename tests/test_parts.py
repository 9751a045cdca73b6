"""Part files in-process: the ``part`` section's rules, how a reader treats a part, and joining parts."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

import slc
from slc.errors import SlcFormatError, SlcInputError
from slc.format.container import ENTRY, PREAMBLE, crc32, read_layout
from slc.format.parts import PartInfo, PartSpec, byte_slice, label_range
from slc.format.tiling import Tiling
from slc.reader import SlcFile
from tests.conftest import synthetic_logits


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("parts")
    z = synthetic_logits(epochs=4, samples=300, classes=12)
    kw = dict(codec="topk", ratio=4, chunk_size=100)
    slc.compress(z, d / "whole.slc", **kw)
    parts = [d / f"p{i}.slc" for i in range(3)]
    for i, p in enumerate(parts):
        slc.compress(z, p, part=PartSpec.share_of(f"{i}/3"), **kw)
    return z, d, parts


def test_shares_and_epoch_ranges_follow_the_chunk_grid():
    t = Tiling(epochs=6, samples=500, chunk_size=1000, epochs_per_chunk=2)  # 3 chunks of 2 epochs
    assert [PartSpec.share_of(f"{i}/2").chunks(t) for i in range(2)] == [(0, 1), (1, 3)]
    assert PartSpec.epoch_range("2:6").chunks(t) == (1, 3)
    assert label_range(t, 1, 3) == (1000, 3000)
    with pytest.raises(SlcInputError, match="on chunk boundaries .* multiples of 2"):
        PartSpec.epoch_range("1:4").chunks(t)
    with pytest.raises(SlcInputError, match="within the 6 epochs"):
        PartSpec.epoch_range("0:7").chunks(t)
    t1 = Tiling(epochs=3, samples=500, chunk_size=200)  # 3 chunks an epoch
    assert PartSpec.epoch_range("1:2").chunks(t1) == (3, 6)
    for bad in ("3/3", "1/0", "a/b", "1"):
        with pytest.raises(SlcInputError, match="I/N"):
            PartSpec.share_of(bad)
    for bad in ("2:2", "x:1", "-1:2"):
        with pytest.raises(SlcInputError, match="A:B"):
            PartSpec.epoch_range(bad)


def test_byte_slice_cuts_a_stream():
    pieces = [b"abc", b"", b"defgh", b"ij"]
    for a in range(11):
        for b in range(a, 11):
            assert b"".join(byte_slice(iter(pieces), a, b)) == b"abcdefghij"[a:b]


def test_a_part_reads_only_as_a_part(files):
    z, d, parts = files
    with pytest.raises(SlcFormatError, match=r"expected a whole .slc file, got a part of one \(chunks 4..7 of 12\)"):
        SlcFile(parts[1])
    with SlcFile(parts[1], part=True) as f:
        assert f.part.describe() == "chunks 4..7 of 12" and f.shape == (4, 300, 12)
        f.verify()
        assert [(c.epoch, c.start) for c in f.index] == [(1, 100), (1, 200), (2, 0), (2, 100)]
        with SlcFile(d / "whole.slc") as w:
            np.testing.assert_array_equal(f.decode_chunk(f.index[0]), w.decode_chunk(w.index[4]))
    with open(parts[1], "rb") as fh:
        assert read_layout(fh).minor == 6


def test_merge_gives_the_whole_file(files, tmp_path):
    _, d, parts = files
    size = slc.merge([parts[2], parts[0], parts[1]], tmp_path / "m.slc")
    assert (tmp_path / "m.slc").read_bytes() == (d / "whole.slc").read_bytes() and size == (d / "whole.slc").stat().st_size
    with pytest.raises(SlcInputError, match="output exists"):
        slc.merge(parts, tmp_path / "m.slc")
    with pytest.raises(SlcInputError, match="expected at least one part file"):
        slc.merge([], tmp_path / "n.slc")


def rewrite_part(src, dst, body: dict) -> None:
    """``src`` with its ``part`` section replaced by ``body`` (same length, padded with spaces), CRCs fixed."""
    data = bytearray(src.read_bytes())
    with open(src, "rb") as fh:
        s = read_layout(fh).sections["part"]
    new = json.dumps(body, separators=(",", ":")).encode()
    assert len(new) <= s.length
    new = new + b" " * (s.length - len(new))
    data[s.offset:s.offset + s.length] = new
    count, table_off = PREAMBLE.unpack_from(data, 0)[3:5]
    for i in range(count):
        at = table_off + i * ENTRY.size
        if bytes(data[at:at + 24]).rstrip(b"\0") == b"part":
            name, off, n, _, flags, res = ENTRY.unpack_from(data, at)
            data[at:at + ENTRY.size] = ENTRY.pack(name, off, n, crc32(new), flags, res)
    table = bytes(data[table_off:table_off + count * ENTRY.size])
    head = PREAMBLE.unpack_from(data, 0)
    pre = PREAMBLE.pack(*head[:6], crc32(table), head[7], 0)
    data[:64] = pre[:60] + crc32(pre[:60]).to_bytes(4, "little")
    dst.write_bytes(bytes(data))


@pytest.mark.parametrize("body, words", [
    ({"chunks": [9, 8], "of": 12, "minor": 0, "state": {}}, "a chunk range inside 0..12"),
    ({"chunks": [4, 8], "of": 11, "minor": 0, "state": {}}, "a part of the header's 12 chunks"),
    ({"chunks": [4, 8], "of": 12, "minor": 0}, "a 'part' section {chunks: [first, stop], of, minor, state}"),
    ({"chunks": [4, 7], "of": 12, "minor": 0, "state": {}}, "an index of 3 chunks"),
    ({"chunks": [3, 7], "of": 12, "minor": 0, "state": {}}, "chunk 3 to hold epoch 1 samples 0..100"),
])
def test_a_lying_part_section_is_a_format_error(files, tmp_path, body, words):
    _, _, parts = files
    rewrite_part(parts[1], tmp_path / "bad.slc", body)
    with pytest.raises(SlcFormatError) as e:
        SlcFile(tmp_path / "bad.slc", part=True)
    assert words in str(e.value)


def test_part_info_round_trips():
    t = Tiling(epochs=2, samples=10, chunk_size=4)
    info = PartInfo(1, 5, len(t), 3, {"encoder.weight": {"dtype": "<f4", "shape": [2, 3]}})
    assert PartInfo.parse(info.to_bytes(), t) == info
    assert PartInfo(0, 0, len(t), 0).describe() == "a codec file (no chunks)"
    bad = PartInfo(1, 5, len(t), 3, {"w": {"dtype": "|O", "shape": [2]}}).to_bytes()
    with pytest.raises(SlcFormatError, match="state 'w' described as"):
        PartInfo.parse(bad, t)
    with pytest.raises(SlcFormatError, match="a 'part' section of at most"):
        PartInfo.parse(b" " * (2 << 20), t)


GOLDEN = Path(__file__).parent / "golden"


def test_golden_v1_6_parts_join_into_the_pinned_file(tmp_path):
    """Pinned bytes of format 1.6 (tests/golden/make_golden.py v1.6): a hybrid in two parts, and the file they make."""
    ranges = []
    for i in range(2):
        path = GOLDEN / f"v1.6-part-{i}.slc"
        with pytest.raises(SlcFormatError, match="expected a whole .slc file, got a part"):
            SlcFile(path)
        with SlcFile(path, part=True) as f:
            f.verify()
            assert f.layout.minor == 6 and set(f.part.state) == {"encoder.weight", "encoder.bias"}
            ranges.append((f.part.first, f.part.stop, f.part.of, f.part.minor))
    assert ranges == [(0, 1, 3, 5), (1, 3, 3, 5)]
    slc.merge([GOLDEN / "v1.6-part-1.slc", GOLDEN / "v1.6-part-0.slc"], tmp_path / "m.slc")
    assert (tmp_path / "m.slc").read_bytes() == (GOLDEN / "v1.6-whole.slc").read_bytes()
    with slc.open_slc(tmp_path / "m.slc") as f:
        assert f.layout.minor == 5 and f.header.epochs_per_chunk == 2

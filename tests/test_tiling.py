"""Chunks that span epochs (format 1.5): the tiling, the files a writer makes, and how they read."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import slc
from slc.errors import SlcFormatError, SlcInputError
from slc.format.tiling import Tiling

GOLDEN = Path(__file__).parent / "golden"


@pytest.mark.parametrize("e,n,s,g", [(5, 7, 16, 2), (7, 3, 9, 3), (4, 10, 4, 1), (3, 10, 25, 1), (1, 5, 64, 1),
                                     (6, 4, 24, 6), (2, 21, 8, 1)])
def test_every_label_has_one_place_and_chunks_list_it(e, n, s, g):
    t = Tiling(e, n, s, g)
    seen = {}
    for i in range(len(t)):
        ce, cs, count = t.chunk(i)
        assert count <= s and sum(b - a for _, _, a, b in t.contents(i)) == count
        for epoch, first, a, b in t.contents(i):
            for k in range(b - a):
                assert seen.setdefault((i, a + k), (epoch, first + k)) == (epoch, first + k)
    assert len(seen) == e * n and sum(c * m for c, m in t.counts().items()) == e * n
    assert sum(t.counts().values()) == len(t)
    for epoch in range(e):  # locate is the inverse of contents, for any sample range
        for start, stop in [(0, n), (n // 2, n), (1, max(1, n - 1))]:
            got = [(i, r) for i, a, b, first in t.locate(epoch, start, stop) for r in range(a, b)]
            assert [seen[x] for x in got] == [(epoch, j) for j in range(start, stop)]


def test_default_spans_only_short_epochs():
    assert Tiling.default(100, 100, 4096).epochs_per_chunk == 40
    assert Tiling.default(3, 100, 4096).epochs_per_chunk == 3
    assert Tiling.default(100, 2049, 4096).epochs_per_chunk == 1  # half a chunk or more: as before
    assert Tiling.default(1, 100, 4096).epochs_per_chunk == 1
    with pytest.raises(SlcFormatError, match="epochs_per_chunk"):
        Tiling(10, 100, 4096, 41)


def test_golden_v1_5_files_keep_reading_the_same():
    """Pinned bytes of format 1.5 (tests/golden/make_golden.py v1.5): 5 epochs of 7 labels, 2 epochs a chunk."""
    expected = np.load(GOLDEN / "v1.5-expected.npz")
    for name in ("topk", "hybrid"):
        with slc.open_slc(GOLDEN / f"v1.5-epochs-per-chunk-{name}.slc") as f:
            f.verify()
            assert (f.layout.minor, f.header.epochs_per_chunk, len(f.index)) == (5, 2, 3)
            assert [(c.epoch, c.start, c.count) for c in f.index] == [(0, 0, 14), (2, 0, 14), (4, 0, 7)]
            got = np.stack([f.decode(e, out="logits") for e in range(5)])
            np.testing.assert_array_equal(got, expected[name])
            np.testing.assert_array_equal(f.decode(3, 2, 6, out="logits"), expected[name][3, 2:6])
        assert (got.argmax(-1) == expected["input"].argmax(-1)).all()


def test_a_reader_that_ignores_the_field_fails_cleanly(tmp_path):
    """What a 1.0-1.4 reader sees: it ignores ``epochs_per_chunk`` (unknown header fields are ignored by
    the spec), then the index is shorter than one chunk per epoch and the file is refused."""
    from test_malformed import assert_invalid, build, take_apart

    parts = take_apart(GOLDEN / "v1.5-epochs-per-chunk-topk.slc")
    old = {k: v for k, v in parts.header.items() if k != "epochs_per_chunk"}
    assert_invalid(build(tmp_path / "old.slc", parts, header=old), "an index of 5 chunks")


def labels(e=50, n=10, c=10, seed=0):
    return (np.random.default_rng(seed).normal(size=(e, n, c)) * 2).astype(np.float32)


@pytest.mark.parametrize("codec,kw", [("fp16", {}), ("topk", {"k": 2}), ("hybrid", {"options": {"top": 1, "m": 2, "codes": 16}, "fit_config": {"steps": 30}})])
def test_spanning_and_per_epoch_chunks_hold_the_same_labels(tmp_path, codec, kw):
    x = labels()
    span = slc.compress(x, tmp_path / "span.slc", codec=codec, temperature=2.0, seed=1, **kw)
    flat = slc.compress(x, tmp_path / "flat.slc", codec=codec, temperature=2.0, seed=1, epochs_per_chunk=1, **kw)
    with slc.open_slc(span.path) as a, slc.open_slc(flat.path) as b:
        a.verify()
        assert (a.header.epochs_per_chunk, len(a.index), a.layout.minor) == (50, 1, 5)
        assert (b.header.epochs_per_chunk, len(b.index)) == (1, 50) and b.layout.minor < 5
        if codec != "hybrid":  # a fitted codec is fitted on the same sample, but not to the same bytes
            for e in (0, 17, 49):
                np.testing.assert_array_equal(a.decode(e), b.decode(e))
        got = np.concatenate([y for _, _, y in a.iter_chunks()])
        assert got.shape == (500, 10)
    assert span.bytes < flat.bytes - 49 * 48  # one index entry instead of 50


def test_planned_bytes_are_the_file_bytes_when_chunks_span_epochs(tmp_path):
    x = labels(100, 100, 10)
    for ratio in (4, 7):
        r = slc.compress(x, tmp_path / f"r{ratio}.slc", codec="topk", ratio=ratio, zstd=False, force=True)
        assert r.bytes == r.plan.bytes and r.ratio >= ratio


def test_epochs_per_chunk_out_of_range_is_an_input_error(tmp_path):
    with pytest.raises(SlcInputError, match="epochs per chunk"):
        slc.compress(labels(5, 10, 10), tmp_path / "x.slc", codec="fp16", epochs_per_chunk=6)
    with pytest.raises(SlcInputError, match="epochs per chunk"):
        slc.compress(labels(5, 10, 10), tmp_path / "x.slc", codec="fp16", epochs_per_chunk=3, chunk_size=20)
    assert not (tmp_path / "x.slc").exists()


def test_resume_inside_spanning_chunks_is_byte_identical(tmp_path):
    """Interrupted after its first chunk of 4 epochs, a resumed run writes the same bytes as one run."""
    x = labels(10, 10, 10)
    np.save(tmp_path / "x.npy", x)
    whole = slc.compress(str(tmp_path / "x.npy"), tmp_path / "whole.slc", codec="topk", k=3, chunk_size=40)

    class Stop(Exception):
        pass

    def stop_after_one(count, written, dense):
        if count:
            raise Stop

    with pytest.raises(Stop):
        slc.compress(str(tmp_path / "x.npy"), tmp_path / "cut.slc", codec="topk", k=3, chunk_size=40,
                     progress=stop_after_one)
    slc.compress(str(tmp_path / "x.npy"), tmp_path / "cut.slc", codec="topk", k=3, chunk_size=40, resume=True)
    assert (tmp_path / "cut.slc").read_bytes() == Path(whole.path).read_bytes()
    with slc.open_slc(whole.path) as f:
        assert (f.header.epochs_per_chunk, len(f.index)) == (4, 3)


def test_cli_compress_inspect_and_decode_a_spanning_file(tmp_path):
    x = labels(30, 20, 10)
    np.save(tmp_path / "x.npy", x)
    run = lambda *a: subprocess.run([sys.executable, "-m", "slc", *a], capture_output=True, text=True, cwd=tmp_path)
    r = run("compress", "x.npy", "-o", "x.slc", "--codec", "topk", "--k", "3")
    assert r.returncode == 0, r.stderr
    r = run("inspect", "x.slc", "--json")
    assert r.returncode == 0, r.stderr
    info = json.loads(r.stdout)
    assert info["epochs_per_chunk"] == 30 and info["chunks"] == 1
    r = run("decode", "x.slc", "-o", "y.npy")
    assert r.returncode == 0, r.stderr
    y = np.load(tmp_path / "y.npy")
    with slc.open_slc(tmp_path / "x.slc") as f:
        np.testing.assert_array_equal(y, np.stack([f.decode(e) for e in range(30)]).astype(y.dtype))
    assert (y.argmax(-1) == x.argmax(-1)).all()

"""Decoding straight to probabilities (``decode_probs``, the fused row-block path of ``vqae`` and ``hybrid``)
gives what ``decode`` then ``retemper`` gives, but for the last bits, for every codec form, temperature, block
size and worker count, through the codec and through the reader."""
import numpy as np
import pytest

import slc
from slc.codecs.hybrid import HybridCodec
from slc.codecs.labels import decode_probs, retemper, softmax_rows, to_logp
from slc.codecs.vqae import FitConfig, VQAECodec
from tests.conftest import synthetic_logits

C, T = 60, 4.0
LOGP = to_logp(synthetic_logits(epochs=1, samples=700, classes=C, rank=8)[0], "logits", T)
FIT, HELD = LOGP[:500], LOGP[500:]


def vqae(**cfg) -> VQAECodec:
    return VQAECodec.fit(FIT, 16, 2, 8, FitConfig(steps=40, **cfg))


def hybrid(rest: str, **fixed) -> HybridCodec:
    return HybridCodec.fit(FIT, C, {**HybridCodec.ladder(C, {"rest": rest, **fixed})[-1], "steps": 40})


CODECS = {"vqae": lambda: vqae(), "vqae-no-bias": lambda: vqae(bias=False), "vqae-prob": lambda: vqae(domain="prob"),
          "hybrid-full": lambda: hybrid("full", top=2, m=3), "hybrid-collapsed": lambda: hybrid("collapsed", top=3),
          "hybrid-pca": lambda: hybrid("pca", top=1, components=5)}
FUSED = {"vqae", "vqae-no-bias", "hybrid-full"}


@pytest.fixture(scope="module", params=sorted(CODECS))
def codec(request):
    return request.param, CODECS[request.param]()


@pytest.mark.parametrize("t", [None, T, 1.0, 20.0])
def test_decode_probs_is_decode_then_retemper(codec, t):
    name, c = codec
    payload, n = c.encode(HELD), len(HELD)
    assert (c.logit_rows(payload, n) is not None) == (name in FUSED)
    want = retemper(*c.decode(payload, n), T, "probs", t)
    check = close if name in FUSED else np.testing.assert_array_equal  # whole chunks: the very same ops
    check(decode_probs(c, payload, n, T, t), want)
    into = np.full((n, C), np.nan, np.float32)
    assert decode_probs(c, payload, n, T, t, into) is into
    check(into, want)


def close(got: np.ndarray, want: np.ndarray) -> None:
    """Equal but for the last bits: a matmul's rounding may depend on how many rows it takes at once."""
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-12)


@pytest.mark.parametrize("rows", [1, 7, 64, 1024])
def test_blocks_change_at_most_the_last_bits_and_workers_none(codec, rows):
    name, c = codec
    if name not in FUSED:
        pytest.skip("decodes whole chunks")
    payload, n = c.encode(HELD), len(HELD)
    got = [softmax_rows(c.logit_rows(payload, n), n, C, rows=rows, workers=w) for w in (1, 2, 3)]
    close(got[0], retemper(*c.decode(payload, n), T, "probs"))
    for g in got[1:]:
        np.testing.assert_array_equal(g, got[0])


def test_a_bad_payload_fails_before_any_row_is_decoded():
    c = hybrid("full", top=2, m=3)
    payload = bytearray(c.encode(HELD[:4]))
    payload[0] = 0xFF  # class indices out of range or repeated
    with pytest.raises(slc.SlcFormatError):
        c.logit_rows(bytes(payload), 4)
    with pytest.raises(ValueError, match="C-contiguous float32"):
        softmax_rows(c.logit_rows(c.encode(HELD[:4]), 4), 4, C, into=np.zeros((4, C), np.float64))


@pytest.mark.parametrize("epochs_per_chunk", [1, 2])
def test_the_reader_decodes_as_it_did(tmp_path, epochs_per_chunk):
    logits = synthetic_logits(epochs=3, samples=50, classes=C, rank=8)
    path = tmp_path / "h.slc"
    slc.compress(logits, path, codec="hybrid", options={"top": 1, "m": 3, "steps": 40}, temperature=T,
                 source="logits", chunk_size=100 if epochs_per_chunk == 2 else 16, epochs_per_chunk=epochs_per_chunk)
    with slc.open_slc(path) as f:
        assert f.tiling.spans_epochs == (epochs_per_chunk == 2)
        for t in (None, 2.0):
            for e in range(f.shape[0]):
                old = np.concatenate([retemper(*f.codec.decode(f.chunk_payload(f.index[i]), f.index[i].count), T,
                                               "probs", t)[a:b] for i, a, b, _ in f.tiling.locate(e, 0, f.shape[1])])
                close(f.decode(e, temperature=t), old)
                close(f.decode(e, 3, 41, temperature=t), old[3:41])
                got = np.concatenate([a for _, _, a in f.iter_chunks([e], 5, 45, temperature=t)])
                close(got, old[5:45])


@pytest.mark.skipif(not hasattr(__import__("os"), "fork"), reason="no fork")
def test_a_forked_child_decodes_on_threads_of_its_own():
    """DataLoader workers fork: the parent's decode threads do not exist in the child."""
    import multiprocessing

    c = vqae()
    payload, n = c.encode(HELD), len(HELD)
    want = softmax_rows(c.logit_rows(payload, n), n, C, rows=32, workers=2)
    ctx = multiprocessing.get_context("fork")
    q = ctx.Queue()
    p = ctx.Process(target=lambda: q.put(softmax_rows(c.logit_rows(payload, n), n, C, rows=32, workers=2)))
    p.start()
    np.testing.assert_array_equal(q.get(timeout=60), want)
    p.join(timeout=60)

"""The Python API: compress / open_slc / decode, on synthetic labels (quality claims live in benchmarks/)."""
import re
from pathlib import Path

import numpy as np
import pytest

import slc
from slc.codecs.labels import retemper, to_logp
from slc.codecs.vqae import FitConfig
from tests.conftest import synthetic_logits

FAST = FitConfig(steps=40)


@pytest.fixture(scope="module")
def z():
    return synthetic_logits(epochs=3, samples=900, classes=48)


def test_decode_any_range_matches_whole_epochs(tmp_path, z):
    path = tmp_path / "a.slc"
    slc.compress(z, path, codec="vqae", ratio=6, temperature=3.0, chunk_size=128, fit_config=FAST)
    with slc.open_slc(path) as f:
        assert f.shape == (3, 900, 48) and len(f) == 2700 and f.temperature == 3.0
        whole = f.decode(epoch=2)
        assert whole.shape == (900, 48)
        np.testing.assert_allclose(whole.sum(1), 1, atol=1e-5)
        for start, stop in [(0, 1), (127, 129), (100, 700), (899, 900), (5, 5)]:
            np.testing.assert_array_equal(f.decode(2, start, stop), whole[start:stop])
        seen = [(e, s, len(a)) for e, s, a in f.iter_chunks(epochs=[0, 2], start=200, stop=300)]
        assert seen == [(0, 200, 56), (0, 256, 44), (2, 200, 56), (2, 256, 44)]
        with pytest.raises(IndexError):
            f.decode(3)
        with pytest.raises(IndexError):
            f.decode(0, 10, 901)


def test_same_input_and_seed_give_identical_bytes(tmp_path, z):
    for name in ("a", "b"):
        slc.compress(z, tmp_path / f"{name}.slc", codec="vqae", ratio=6, fit_config=FAST, seed=3)
    assert (tmp_path / "a.slc").read_bytes() == (tmp_path / "b.slc").read_bytes()


def test_ratio_is_met_in_real_bytes(tmp_path, z):
    for codec in ("vqae", "vqae-paper", "topk"):
        r = slc.compress(z, tmp_path / f"{codec}.slc", codec=codec, ratio=5, fit_config=FitConfig(steps=20))
        assert r.bytes == (tmp_path / f"{codec}.slc").stat().st_size
        assert 5 <= r.ratio < 7, (codec, r.ratio)


def test_auto_picks_the_lowest_kl_codec_that_keeps_top1(tmp_path, z):
    r = slc.compress(z, tmp_path / "auto.slc", ratio=6, temperature=2.0, fit_config=FAST)
    assert r.codec in ("hybrid", "topk")
    p = np.exp(to_logp(z.reshape(-1, 48), "logits", 2.0))
    kls, agree = {}, {}
    for codec in ("auto", "hybrid", "hybrid-prior", "topk"):
        if codec != "auto":
            slc.compress(z, tmp_path / f"{codec}.slc", codec=codec, ratio=6, temperature=2.0,
                         **({} if codec == "topk" else {"fit_config": FAST}))
        with slc.open_slc(tmp_path / f"{codec}.slc") as f:
            q = np.concatenate([f.decode(e) for e in range(3)])
            kls[codec] = float((p * (np.log(p) - np.log(np.maximum(q, 1e-30)))).sum(1).mean())
            agree[codec] = float((q.argmax(1) == p.argmax(1)).mean())
    # auto decides on a held-out slice, so allow a near-tie to go either way
    assert kls["auto"] <= min(kls[c] for c in ("hybrid", "hybrid-prior", "topk")) * 1.25, kls
    assert agree["auto"] >= 0.995, agree


def test_zstd_keeps_random_access(tmp_path):
    # peaked labels whose top-k indices repeat: zstd has something to find
    z = synthetic_logits(epochs=2, samples=600, classes=30, rank=2)
    plain = slc.compress(z, tmp_path / "p.slc", codec="topk", k=4)
    packed = slc.compress(z, tmp_path / "z.slc", codec="topk", k=4, zstd=True)
    assert packed.bytes < plain.bytes
    with slc.open_slc(tmp_path / "p.slc") as a, slc.open_slc(tmp_path / "z.slc") as b:
        assert b.header.entropy == "zstd"
        np.testing.assert_array_equal(a.decode(1, 300, 333), b.decode(1, 300, 333))
        b.verify()


def test_retemper_round_trip():
    z = synthetic_logits(epochs=1, samples=50, classes=12)[0]
    p2 = np.exp(to_logp(z, "logits", 2.0))
    p5 = retemper(p2, "probs", 2.0, "probs", 5.0)
    np.testing.assert_allclose(p5, np.exp(to_logp(z, "logits", 5.0)), rtol=1e-4, atol=1e-7)
    lg = retemper(p2, "probs", 2.0, "logits")
    np.testing.assert_allclose(np.exp(to_logp(lg, "logits", 1.0)), np.exp(to_logp(z, "logits", 1.0)), atol=1e-5)


def test_paper_recipe_is_the_published_one():
    cfg = FitConfig.paper()
    assert (cfg.domain, cfg.bias, cfg.init, cfg.kmeans_init, cfg.dead_code_restart) == ("prob", False, "random",
                                                                                         False, False)


def test_file_opened_for_decoding_cannot_encode(tmp_path, z):
    slc.compress(z, tmp_path / "a.slc", codec="vqae", ratio=6, fit_config=FAST)
    with slc.open_slc(tmp_path / "a.slc") as f, pytest.raises(ValueError, match="no encoder"):
        f.codec.encode(to_logp(z[0, :4], "logits", 1.0))


def test_bytes_do_not_depend_on_torch_threads(tmp_path, z):
    import torch

    threads = torch.get_num_threads()
    try:
        for n in (1, 2):
            torch.set_num_threads(n)
            slc.compress(z, tmp_path / f"t{n}.slc", codec="vqae", ratio=6, fit_config=FAST)
    finally:
        torch.set_num_threads(threads)
    assert (tmp_path / "t1.slc").read_bytes() == (tmp_path / "t2.slc").read_bytes()


def test_compress_resume_after_interrupt_is_byte_identical(tmp_path, z):
    npy = tmp_path / "z.npy"
    np.save(npy, z)
    whole = tmp_path / "whole.slc"
    slc.compress(str(npy), whole, codec="vqae", ratio=6, chunk_size=200, fit_config=FAST)
    out = tmp_path / "r.slc"
    calls = []

    def stop_after_three(count, written, dense):
        calls.append(count)
        if len(calls) == 3:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt) as info:
        slc.compress(str(npy), out, codec="vqae", ratio=6, chunk_size=200, fit_config=FAST, resume=True,
                     progress=stop_after_three)
    assert "`resume=True`" in info.value.slc_hint and not out.exists()
    with pytest.raises(slc.SlcInputError, match="ratio"):
        slc.compress(str(npy), out, codec="vqae", ratio=7, chunk_size=200, fit_config=FAST, resume=True)
    logs = []
    slc.compress(str(npy), out, codec="vqae", ratio=6, chunk_size=200, fit_config=FAST, resume=True, log=logs.append)
    assert any("3 finished chunks" in line for line in logs)
    assert out.read_bytes() == whole.read_bytes()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r.slc", "whole.slc", "z.npy"]


def test_auto_falls_back_when_one_codec_cannot_reach_the_target(tmp_path):
    # 10 classes, 12x: top-1 alone (index + value) is over budget, the VQAE fits
    z = np.random.default_rng(0).normal(size=(200, 100, 10)).astype(np.float32) * 3
    logs = []
    r = slc.compress(z, tmp_path / "a.slc", source="logits", temperature=4, ratio=12, chunk_size=100, log=logs.append)
    assert r.codec == "hybrid" and r.ratio >= 12 and r.plan.params["codes"] < 256  # fewer bits per code
    assert any(line.startswith("auto: topk cannot reach the target") for line in logs), logs


def test_a_target_the_replay_sections_alone_exceed_is_named(tmp_path):
    golden = Path(__file__).parent / "golden" / "v1.1-replay.slc"  # 24 labels of 10 classes: 480 fp16 bytes
    with pytest.raises(slc.SlcInputError, match=r"of which 786 are other sections .*: keep them dense with the fp16"):
        slc.compress(golden, tmp_path / "x.slc", ratio=1000)
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize("codec", ["auto", "topk", "vqae", "pca"])
def test_the_nearest_reachable_ratio_named_is_reachable(tmp_path, codec):
    logits = synthetic_logits(epochs=1, samples=300, classes=200)
    with pytest.raises(slc.SlcInputError, match=r"nearest reachable ratio is (\d+\.\d)x") as e:
        slc.compress(logits, tmp_path / "x.slc", ratio=5000, codec=codec)
    nearest = float(re.search(r"nearest reachable ratio is (\d+\.\d)x", str(e.value)).group(1))
    with pytest.raises(slc.SlcInputError, match="nearest reachable ratio"):
        slc.compress(logits, tmp_path / "x.slc", ratio=nearest + 0.2, codec=codec)
    r = slc.compress(logits, tmp_path / "x.slc", ratio=nearest, codec=codec, fit_config=FitConfig(steps=20))
    assert r.ratio >= nearest and r.bytes == (tmp_path / "x.slc").stat().st_size

"""The hybrid codec (exact top classes + a VQAE for the rest) and ``auto``'s top-1 agreement constraint:
round trips, the argmax kept by construction, exact planned sizes, rebuilding from the file, validation
of untrusted params and payloads, and the CLI's one-line refusal of a ratio no top-1-keeping codec meets."""
import re
import subprocess
import sys

import numpy as np
import pytest

import slc
from slc.codecs.hybrid import HybridCodec
from slc.codecs.labels import rank_fix, to_logp
from slc.codecs.planner import Frame, plan_for
from slc.codecs.presets import PRESETS
from slc.errors import SlcFormatError, SlcInputError
from tests.conftest import synthetic_logits

C = 60
LOGP = to_logp(synthetic_logits(epochs=1, samples=600, classes=C, rank=8)[0], "logits", 4.0)
FIT, HELD = LOGP[:500], LOGP[500:]


def rung(rest: str, **fixed) -> dict:
    return HybridCodec.ladder(C, {"rest": rest, **fixed})[-1 if fixed else 6]


@pytest.fixture(scope="module", params=["full", "collapsed"])
def fitted(request):
    params = {**rung(request.param), "steps": 120}
    return params, HybridCodec.fit(FIT, C, params)


def test_rank_fix_puts_the_given_classes_first_and_only_permutes():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(300, 20)).astype(np.float32)
    x[:7, :3] = 5.0  # ties among the largest values
    top = np.stack([rng.permutation(20)[:3] for _ in range(300)])
    v = rank_fix(x, top)
    assert (v.argmax(1) == top[:, 0]).all()
    assert (np.take_along_axis(v, top, 1) >= np.sort(v, 1)[:, -3:][:, ::-1] - 1e-6).all()
    np.testing.assert_allclose(np.sort(v, 1), np.sort(x, 1), atol=1e-5)  # same values, other classes


def test_round_trip_keeps_the_argmax_and_sizes_are_exact(fitted):
    params, codec = fitted
    payload = codec.encode(HELD)
    assert len(payload) == codec.payload_size(len(HELD)) == HybridCodec.planned_payload(params, C, len(HELD))
    labels, kind = codec.decode(payload, len(HELD))
    assert kind == "logits" and labels.shape == HELD.shape
    order = np.argsort(-HELD, 1)[:, :codec.top]
    np.testing.assert_array_equal(np.argsort(-labels, 1)[:, :1], order[:, :1])
    kept = np.take_along_axis(labels, order, 1)
    rest = labels.copy()
    np.put_along_axis(rest, order, -np.inf, 1)
    assert (np.diff(kept, axis=1) <= 0).all() and (rest.max(1) <= kept.min(1)).all()  # the top k, in order


def test_rebuilt_from_its_params_and_tensors_it_decodes_identically(fitted):
    params, codec = fitted
    specs = HybridCodec.tensor_specs(HybridCodec.planned_params(params, C), C)
    assert {k: (a.dtype.str, a.shape) for k, a in codec.tensors().items()} == specs
    again = HybridCodec.from_file(codec.params(), codec.tensors(), C)
    payload = codec.encode(HELD)
    np.testing.assert_array_equal(again.decode(payload, len(HELD))[0], codec.decode(payload, len(HELD))[0])


@pytest.mark.parametrize("change, got", [
    ({"top": 0}, "top in [1, "), ({"rest": "half"}, "rest in"), ({"index_bits": 9}, "index_bits in [6]"),
    ({"vq": "x"}, "'vq' (an object)"), ({"prior_weight": 2.0}, "prior_weight in"),
])
def test_bad_params_are_format_errors(change, got):
    codec = HybridCodec.fit(FIT, C, {**rung("collapsed"), "steps": 20})
    with pytest.raises(SlcFormatError, match=re.escape(got)):
        HybridCodec.from_file({**codec.params(), **change}, codec.tensors(), C)


def test_bad_payloads_are_format_errors():
    codec = HybridCodec.fit(FIT, C, {**rung("full", top=2), "steps": 20})
    payload = bytearray(codec.encode(HELD[:4]))
    with pytest.raises(SlcFormatError, match="expected a payload of"):
        codec.decode(bytes(payload[:-1]), 4)
    payload[0] = 0xFF  # first index 63 >= 60 classes
    with pytest.raises(SlcFormatError, match="class indices < 60"):
        codec.decode(bytes(payload), 4)
    same = bytearray(codec.encode(HELD[:4]))
    idx = HybridCodec(C, 2, "full", codec.inner)  # both stored classes of label 0 the same
    first = np.unpackbits(np.frombuffer(bytes(same[:2]), np.uint8), bitorder="little")[:6]
    bits = np.unpackbits(np.frombuffer(bytes(same), np.uint8), bitorder="little")
    bits[6:12] = first
    with pytest.raises(SlcFormatError, match="distinct classes"):
        idx.decode(np.packbits(bits, bitorder="little").tobytes(), 4)


@pytest.mark.parametrize("rest", ["full", "collapsed"])
def test_files_are_the_planned_bytes_and_read_back(tmp_path, rest):
    logits = synthetic_logits(epochs=3, samples=400, classes=C)
    plan = plan_for("hybrid", logits.shape, 4096, ratio=8, options={"rest": rest})
    r = slc.compress(logits, tmp_path / "h.slc", codec="hybrid", options={"rest": rest}, ratio=8, temperature=4,
                     fit_config={"steps": 60})
    assert r.bytes <= plan.bytes < r.bytes + 200 and 8 <= r.ratio <= 8.8
    f = slc.open_slc(tmp_path / "h.slc")
    assert f.header.codec == "hybrid" and (f.layout.minor, f.header.epochs_per_chunk) == (5, 3)  # 3 epochs a chunk
    probs = f.decode(1)
    ref = to_logp(logits[1], "logits", 4.0)
    assert (probs.argmax(1) == ref.argmax(1)).all()


def test_auto_keeps_only_codecs_that_keep_top1(tmp_path):
    logits = synthetic_logits(epochs=4, samples=500, classes=C)
    logs = []
    r = slc.compress(logits, tmp_path / "a.slc", ratio=10, temperature=4, log=logs.append, fit_config={"steps": 60})
    line = next(x for x in logs if x.startswith("auto: on "))
    assert "hybrid top-1" in line and "pca" in line and "agreement" in line
    assert r.codec in ("hybrid", "topk")
    probs = slc.open_slc(tmp_path / "a.slc").decode(0)
    assert (probs.argmax(1) == logits[0].argmax(1)).mean() >= 0.995


def test_a_ratio_out_of_reach_is_one_line_and_min_agreement_is_for_auto_only(tmp_path):
    # 10 classes at 30x leave 5 bits per label: a class index (4 bits) and nothing for its value
    z = synthetic_logits(epochs=20, samples=200, classes=10, rank=4)
    np.save(tmp_path / "z.npy", z)
    cmd = [sys.executable, "-m", "slc", "compress", str(tmp_path / "z.npy"), "-o", str(tmp_path / "z.slc"),
           "--ratio", "30", "-T", "4", "--fit-steps", "40", "-q"]
    p = subprocess.run(cmd, capture_output=True, text=True)
    assert p.returncode == 1 and "Traceback" not in p.stderr, p.stderr
    assert len(p.stderr.strip().splitlines()) == 1 and "nearest reachable ratio is" in p.stderr, p.stderr
    assert not (tmp_path / "z.slc").exists()
    p = subprocess.run(cmd[:-3] + ["--codec", "topk", "--min-agreement", "0.5"], capture_output=True, text=True)
    assert p.returncode == 1 and "--min-agreement only with a codec that chooses" in p.stderr, p.stderr


def test_auto_refuses_codecs_that_lose_top1_unless_min_agreement_is_0():
    from slc.codecs.planner import Unreachable
    from slc.codecs.presets import PRESETS, choose

    frame = Frame.of((1, 600, C), 4096)
    plans = {"pca": plan_for("pca", (1, 600, C), 4096, ratio=20, frame=frame)}
    refused = {"hybrid": Unreachable("too small", frame.dense // 10)}
    auto = PRESETS["auto"]
    with pytest.raises(SlcInputError, match=r"top-1 on >= 99.5% .* nearest ratio that keeps it is 10.0x .*"
                                          r"`min_agreement=0`"):
        choose(auto, plans, refused, LOGP, C, tensor_dtype=None, fit_config=None, progress=None, log=print)
    codec, plan = choose(auto, plans, refused, LOGP, C, tensor_dtype=None, fit_config=None, progress=None,
                         log=print, min_agreement=0)
    assert codec.name == "pca" and plan is plans["pca"]


def test_golden_v1_4_files_keep_reading_the_same():
    """Pinned bytes of format 1.4 (tests/golden/make_golden.py v1.4): both hybrid forms keep every argmax."""
    from pathlib import Path

    golden = Path(__file__).parent / "golden"
    expected = np.load(golden / "v1.4-expected.npz")
    logits = np.load(golden / "v1.0-topk.input.npy")
    for name in ("hybrid-full", "hybrid-collapsed"):
        with slc.open_slc(golden / f"v1.4-{name}.slc") as f:
            f.verify()
            assert (f.layout.major, f.layout.minor) == (1, 4) and f.header.codec == "hybrid"
            got = np.stack([f.decode(e, out="logits") for e in range(f.shape[0])])
        np.testing.assert_array_equal(got, expected[name])
        assert (got.argmax(-1) == logits.argmax(-1)).all()


def test_golden_v1_5_hybrid_pca_keeps_reading_the_same():
    """Pinned bytes of ``hybrid`` with a PCA rest (tests/golden/make_golden.py v1.5-pca): minor 5, top-1 exact."""
    from pathlib import Path

    golden = Path(__file__).parent / "golden"
    logits = np.load(golden / "v1.0-topk.input.npy")
    with slc.open_slc(golden / "v1.5-hybrid-pca.slc") as f:
        f.verify()
        assert (f.layout.minor, f.header.codec_params["rest"], f.header.codec_params["pca"]["components"]) == (5, "pca", 3)
        assert sorted(f.header.tensors) == ["hybrid.basis", "hybrid.mean"]
        got = np.stack([f.decode(e, out="logits") for e in range(f.shape[0])])
    np.testing.assert_array_equal(got, np.load(golden / "v1.5-hybrid-pca.expected.npy"))
    top2 = np.argsort(-logits, -1)[..., :2]
    assert (np.argsort(-got, -1)[..., :2] == top2).all()  # both stored classes, in the teacher's order


def test_hybrid_pca_is_the_pca_label_with_the_teachers_top_classes(tmp_path):
    """The PCA rest decodes as the ``pca`` codec does, then only the stored classes move: same KL order of
    magnitude, top-1 exact where PCA alone loses it."""
    from slc.codecs.labels import to_logp
    from slc.codecs.presets import held_out_score

    logits = synthetic_logits(epochs=2, samples=500, classes=C)
    lp = to_logp(logits.reshape(-1, C), "logits", 4.0)
    hyb = PRESETS["hybrid-pca"].build({"rest": "pca", "top": 1, "components": 6}, lp, C)
    pca = PRESETS["pca"].build({"components": 6, "domain": "logit", "eps": 1e-8}, lp, C)
    (kl_h, agree_h), (kl_p, agree_p) = held_out_score(hyb, lp), held_out_score(pca, lp)
    assert agree_h == 1.0 and agree_p < 1.0 and kl_h < 1.5 * kl_p
    assert hyb.describe() == "hybrid top-1 + 6 pca components"


def test_auto_tries_the_pca_hybrid(tmp_path):
    logs = []
    slc.compress(synthetic_logits(epochs=4, samples=500, classes=C), tmp_path / "a.slc", ratio=10, temperature=4,
                 log=logs.append, fit_config={"steps": 60})
    line = next(x for x in logs if x.startswith("auto: on "))
    assert "pca components" in line


def test_many_classes_cap_the_full_vqae_and_auto_leaves_it_out(tmp_path):
    """Past C x d_h = 2^20 the full-label ladder stores more exact classes instead of a wider VQAE, and
    ``auto`` does not fit that codec above 4,096 classes (slower, and worse on real 5,000-class labels)."""
    from slc.codecs.hybrid import FULL_WORK

    c = 5000
    rungs = HybridCodec.ladder(c, {"rest": "full"})
    widest = max(r["m"] * r["dc"] for r in rungs)
    assert widest * c <= FULL_WORK < (widest + 2) * c
    assert rungs[-1]["top"] > 1 and all(r["m"] * r["dc"] == widest for r in rungs if r["top"] > 1)
    plan = plan_for("hybrid", (1, 20_000, c), 4096, ratio=10)
    assert plan.params["top"] > 1 and 10 <= plan.ratio <= 11
    assert PRESETS["auto"].candidates(c) == ("hybrid-prior", "hybrid-pca", "topk", "pca")
    assert PRESETS["auto"].candidates(4096) == PRESETS["auto"].chooses
    logs = []
    slc.compress(synthetic_logits(epochs=1, samples=300, classes=4100), tmp_path / "w.slc", ratio=20,
                 temperature=4, log=logs.append, fit_config={"steps": 20})
    assert "auto: hybrid is left out above 4,096 classes (slower, and worse there)" in logs
    assert not any("+ " in x and "full" in x for x in logs if x.startswith("auto: on "))

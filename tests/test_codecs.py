"""The fitted baseline codecs of the paper's Table 3: ``pca`` (eq. S16), ``quant`` (eq. S17) and ``vq``
(the ablation "Ours w/o AE"): round trips, exact sizes, rebuilding from stored params and tensors,
validation of untrusted params, fidelity along the planner's ladder and deterministic fitting."""
import numpy as np
import pytest
import torch

from slc.errors import SlcFormatError, SlcInputError
from slc.codecs.labels import retemper, to_logp
from slc.fidelity import Fidelity
from slc.codecs.pca import PCACodec
from slc.codecs.quant import QuantCodec
from slc.codecs.vq import VQCodec
from tests.conftest import assert_probs_equal, synthetic_logits

C, T = 40, 2.0
LOGP = to_logp(synthetic_logits(epochs=1, samples=500, classes=C)[0], "logits", T)
FIT, HELD = LOGP[:400], LOGP[400:]

# codec, params of a mid-ladder codec, three rungs with rising fidelity
CASES = {
    "pca": (PCACodec, {"components": 6, "domain": "logit", "eps": 1e-8}, [1, 3, 6]),
    "pca-prob": (PCACodec, {"components": 6, "domain": "prob", "eps": 1e-8}, [1, 4, 12]),
    "quant": (QuantCodec, {"bits": 4, "domain": "prob", "eps": 1e-8}, [1, 3, 6]),
    "quant-logit": (QuantCodec, {"bits": 4, "domain": "logit", "eps": 1e-8}, [1, 3, 6]),
    "vq": (VQCodec, {"k": 64, "dc": 4, "bits": 6, "domain": "logit", "eps": 1e-8}, [2, 4, 7]),
    "vq-prob": (VQCodec, {"k": 16, "dc": 3, "bits": 4, "domain": "prob", "eps": 1e-8}, [1, 3, 6]),
    "vq-scalar": (VQCodec, {"k": 5, "dc": 1, "bits": 3, "domain": "logit", "eps": 1e-8}, [1, 2, 4]),
}
KNOB = {"pca": "components", "quant": "bits", "vq": "bits"}


def kl(codec, logp):
    labels, kind = codec.decode(codec.encode(logp), len(logp))
    meter = Fidelity()
    meter.update(logp, retemper(labels, kind, T, "probs"))
    return meter.result()["kl"]


@pytest.fixture(scope="module", params=sorted(CASES))
def case(request):
    cls, params, rungs = CASES[request.param]
    return cls, params, rungs, cls.fit(FIT, C, params, seed=0)


def test_round_trip_and_sizes(case):
    cls, params, _, codec = case
    assert codec.params() == params and cls.needs_fit
    for n in (1, 7, len(HELD)):
        payload = codec.encode(HELD[:n])
        assert len(payload) == codec.payload_size(n) == cls.planned_payload(params, C, n)
        labels, kind = codec.decode(payload, n)
        assert labels.shape == (n, C) and labels.dtype == np.float32 and np.isfinite(labels).all()
        assert kind == ("probs" if params["domain"] == "prob" else "logits")
        if kind == "probs":
            np.testing.assert_allclose(labels.sum(1), 1, rtol=1e-5)
    assert codec.decode(codec.encode(HELD[:0]), 0)[0].shape == (0, C)
    assert kl(codec, HELD) < 1.0
    assert codec.work_per_label() >= C


def test_rebuilt_from_file_decodes_identically(case):
    cls, params, _, codec = case
    tensors = codec.tensors()
    specs = cls.tensor_specs(params, C)
    assert {k: (v.dtype.str, v.shape) for k, v in tensors.items()} == specs
    assert all(name.startswith(cls.name + ".") for name in specs)
    assert [t.nbytes for t in tensors.values()] == cls.planned_tensors(params, C)
    # what a reader hands over: read-only fp16 views of the sections
    stored = {k: np.frombuffer(v.tobytes(), dtype="<f2").reshape(v.shape) for k, v in tensors.items()}
    again = cls.from_file(codec.params(), stored, C)
    payload = codec.encode(HELD)
    a, b = codec.decode(payload, len(HELD)), again.decode(payload, len(HELD))
    assert a[1] == b[1] and np.array_equal(a[0], b[0])
    assert again.encode(HELD) == payload  # a resumed writer encodes the same bytes


def test_fit_is_deterministic(case):
    cls, params, _, codec = case
    twin = cls.fit(FIT, C, params, seed=0)
    assert {k: v.tobytes() for k, v in twin.tensors().items()} == {k: v.tobytes() for k, v in codec.tensors().items()}
    assert twin.encode(HELD) == codec.encode(HELD)


def test_fidelity_improves_up_the_ladder(case):
    cls, params, rungs, _ = case
    knob = KNOB[cls.name]
    fixed = {"domain": params["domain"], "eps": params["eps"], **({"dc": params["dc"]} if cls is VQCodec else {})}
    ladder = cls.ladder(C, fixed)
    picked = [p for p in ladder if p[knob] in rungs]
    assert [p[knob] for p in picked] == rungs
    kls = [kl(cls.fit(FIT, C, p), HELD) for p in picked]
    assert kls[0] > kls[1] > kls[2], kls


@pytest.mark.parametrize("cls", [PCACodec, QuantCodec, VQCodec])
def test_ladder_is_ordered_and_honours_options(cls):
    ladder = cls.ladder(C, {"unknown": 1})
    assert ladder and ladder == cls.ladder(C, {})
    sizes = [cls.planned_payload(p, C, 1 << 20) + sum(cls.planned_tensors(p, C)) for p in ladder]
    assert sizes == sorted(sizes)
    for p in ladder:
        cls.tensor_specs(p, C)  # every rung is a valid stored params dict
    assert {p["domain"] for p in cls.ladder(C, {"domain": "prob"})} == {"prob"}
    with pytest.raises(SlcInputError):
        cls.ladder(C, {"domain": "log"})


def test_ladder_options():
    assert [p["components"] for p in PCACodec.ladder(C, {})] == list(range(1, C))
    assert PCACodec.ladder(C, {"components": 5}) == [{"components": 5, "domain": "logit", "eps": 1e-8}]
    assert [p["bits"] for p in QuantCodec.ladder(C, {})] == list(range(1, 9))
    assert QuantCodec.ladder(C, {"bits": 4, "domain": "logit"}) == [{"bits": 4, "domain": "logit", "eps": 1e-8}]
    assert {(p["k"], p["bits"]) for p in VQCodec.ladder(C, {"k": 100})} == {(100, 7)}
    assert {p["dc"] for p in VQCodec.ladder(C, {"dc": 3})} == {3}
    assert {p["k"] for p in VQCodec.ladder(C, {"bits": 5})} == {32}
    rates = [-(-C // p["dc"]) * p["bits"] for p in VQCodec.ladder(C, {})]
    assert len(rates) == len(set(rates))  # one candidate per bits-per-label
    for bad in ({"bits": 9}, {"components": 0}):
        with pytest.raises(SlcInputError):
            (QuantCodec if "bits" in bad else PCACodec).ladder(C, bad)
    with pytest.raises(SlcInputError):
        VQCodec.ladder(C, {"k": 100, "bits": 8})


@pytest.mark.parametrize("cls, params, got", [
    (QuantCodec, {"bits": 9, "domain": "prob", "eps": 1e-8}, "bits in [1, 8]"),
    (QuantCodec, {"bits": 4, "domain": "log", "eps": 1e-8}, "domain in"),
    (QuantCodec, {"bits": 4, "domain": "prob", "eps": 0}, "eps > 0"),
    (QuantCodec, {"bits": True, "domain": "prob", "eps": 1e-8}, "type int"),
    (PCACodec, {"components": 0, "domain": "logit", "eps": 1e-8}, "components in [1, 39]"),
    (PCACodec, {"components": C, "domain": "logit", "eps": 1e-8}, "components in [1, 39]"),
    (PCACodec, {"components": 3, "domain": "logit"}, "codec parameter 'eps'"),
    (VQCodec, {"k": 64, "dc": 4, "bits": 7, "domain": "logit", "eps": 1e-8}, "bits in [6]"),
    (VQCodec, {"k": 1, "dc": 4, "bits": 1, "domain": "logit", "eps": 1e-8}, "k in [2, 65536]"),
    (VQCodec, {"k": 64, "dc": C + 1, "bits": 6, "domain": "logit", "eps": 1e-8}, "dc in [1, 40]"),
    (VQCodec, {"k": 64, "dc": 4, "bits": 6, "domain": "Logit", "eps": 1e-8}, "domain in"),
])
def test_bad_params_are_rejected(cls, params, got):
    with pytest.raises(SlcFormatError, match="expected") as e:
        cls.tensor_specs(params, C)
    assert got in str(e.value)
    with pytest.raises(SlcFormatError):
        cls.from_file(params, {}, C)


def test_bad_tensors_and_payloads_are_rejected():
    q = QuantCodec.fit(FIT, C, {"bits": 2, "domain": "prob", "eps": 1e-8})
    levels = q.tensors()["quant.levels"].copy()
    with pytest.raises(SlcFormatError, match="strictly increasing"):
        QuantCodec.from_file(q.params(), {"quant.levels": levels[::-1].copy()}, C)
    levels[1] = np.nan
    with pytest.raises(SlcFormatError, match="finite"):
        QuantCodec.from_file(q.params(), {"quant.levels": levels}, C)
    with pytest.raises(SlcFormatError, match="shape"):
        QuantCodec.from_file(q.params(), {"quant.levels": levels[:2]}, C)

    p = PCACodec.fit(FIT, C, {"components": 2, "domain": "logit", "eps": 1e-8})
    with pytest.raises(SlcFormatError, match="finite pca coefficients"):
        p.decode(np.array([[np.inf, 0]], "<f2").tobytes(), 1)
    with pytest.raises(SlcFormatError, match="bytes"):
        p.decode(b"\0" * 3, 1)
    basis = p.tensors()["pca.basis"].copy()
    basis[0, 0] = np.inf
    with pytest.raises(SlcFormatError, match="finite"):
        PCACodec.from_file(p.params(), {"pca.mean": p.tensors()["pca.mean"], "pca.basis": basis}, C)

    v = VQCodec.fit(FIT, C, {"k": 3, "dc": 20, "bits": 2, "domain": "logit", "eps": 1e-8})
    assert v.m == 2 and v.payload_size(1) == 1
    with pytest.raises(SlcFormatError, match="code indices < k=3"):
        v.decode(bytes([0b1100]), 1)  # second code is 3
    with pytest.raises(SlcFormatError, match="padding"):
        v.decode(bytes([0b10000]), 1)


def test_vq_pads_the_last_segment():
    v = VQCodec.fit(FIT, C, {"k": 32, "dc": 7, "bits": 5, "domain": "prob", "eps": 1e-8})
    assert v.m == 6 and v.work_per_label() == C + 42 + 6
    assert len(v.encode(HELD)) == (len(HELD) * 6 * 5 + 7) // 8
    labels, kind = v.decode(v.encode(HELD), len(HELD))
    assert kind == "probs" and labels.shape == (len(HELD), C)


def test_golden_v1_2_files_keep_reading_the_same():
    """Pinned bytes of format 1.2: the new codecs and a pruned replay file (tests/golden/make_golden.py v1.2)."""
    import os

    import slc
    from slc import SoftLabelDataset

    golden = os.path.join(os.path.dirname(__file__), "golden")
    expected = np.load(os.path.join(golden, "v1.2-expected.npz"))
    for name in ("topk-mr", "topk-mrs", "pca", "quant", "vq-noae", "pruned"):
        with slc.open_slc(os.path.join(golden, f"v1.2-{name}.slc")) as f:
            f.verify()
            assert (f.layout.major, f.layout.minor) == (1, 2)
            got = np.stack([f.decode(e) for e in range(f.shape[0])])
        assert_probs_equal(got if name != "pruned" else got[0], expected[name])
    mr, mrs = expected["topk-mr"], expected["topk-mrs"]
    assert ((mr > 0).sum(-1) == 3).all()  # MR: nothing outside the top 3
    top3 = np.sort(mrs, -1)[..., -3:]
    np.testing.assert_allclose(np.sort(mrs, -1)[..., :-3], np.repeat(top3[..., :1], 7, -1))  # MRS: the rest = 3rd
    # the pruned file kept epoch 1 of the 1.1 replay file: its crops are that epoch's crops
    images = os.path.join(golden, "v1.1-images.npy")
    a = SoftLabelDataset(os.path.join(golden, "v1.2-pruned.slc"), images)
    b = SoftLabelDataset(os.path.join(golden, "v1.1-replay.slc"), images)
    assert a.epochs == 1
    for i in range(12):
        torch.testing.assert_close(a[i][0], b[12 + i][0])


def test_cli_param_pins_a_baseline_and_bad_params_are_one_line(tmp_path, logits_npy):
    import slc
    from tests.conftest import run_slc

    p = run_slc("compress", logits_npy, "-o", tmp_path / "q.slc", "--codec", "quant", "--param", "bits=3", "-q")
    assert p.returncode == 0, p.stderr.decode()
    with slc.open_slc(tmp_path / "q.slc") as f:
        assert f.header.codec == "quant" and f.header.codec_params["bits"] == 3
    for bad, says in ((["--codec", "quant", "--param", "bits=9"], "bits in [1, 8]"),
                      (["--codec", "pca", "--param", "components"], "KEY=VALUE"),
                      (["--codec", "topk", "--prune", "5"], "prune factor of at most 2")):
        p = run_slc("compress", logits_npy, "-o", tmp_path / "bad.slc", *bad, "-q")
        err = p.stderr.decode().strip()
        assert p.returncode != 0 and says in err and len(err.splitlines()) == 1, err
        assert not (tmp_path / "bad.slc").exists()


def test_principal_axes_of_many_classes_come_from_a_seeded_randomized_svd():
    """Above 2,048 classes a few directions come from a randomized SVD: the same axes on every call, and
    within 1% of the exact eigenvectors' residual on held-out rows."""
    import torch

    from slc.codecs.fitting import principal_axes

    gen = torch.Generator().manual_seed(0)
    basis = torch.linalg.qr(torch.randn(3000, 40, generator=gen))[0]
    scale = torch.logspace(1, -1, 40)

    def rows(n):
        return (torch.randn(n, 40, generator=gen) * scale) @ basis.t() + 0.01 * torch.randn(n, 3000, generator=gen)

    x, held = rows(2000), rows(500)
    mean, fast = principal_axes(x, 24)
    assert torch.equal(fast, principal_axes(x, 24)[1]) and fast.shape == (3000, 24)
    xc = x - mean
    evecs = torch.linalg.eigh((xc.t() @ xc).double())[1][:, -24:].float()

    def residual(b):
        h = held - mean
        return float((h - h @ b @ b.t()).pow(2).sum() / h.pow(2).sum())

    assert residual(fast) <= 1.01 * residual(evecs)

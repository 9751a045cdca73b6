"""slc.lm.distill.kd_loss against brute-force KL on small random data (n=8, V=50, k=5)."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from slc.lm.distill import kd_loss
from slc.codecs.sparse import SparseLabels, capped_tail, expand, kl_rows, select_topk

N, V, K = 8, 50, 5


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(0)
    t = rng.normal(size=(N, V)).astype(np.float32) * 2
    t[0, 5:] = -np.inf  # row 0: all mass on 5 words, so the tail is -inf
    t[1, 3:] = -np.inf  # row 1: 3 words, so two stored words have p = 0 and the tail is -inf
    s = select_topk(torch.log_softmax(torch.from_numpy(t), 1).numpy(), K)
    assert np.isneginf(s.tail[:2]).all() and np.isneginf(s.logp[1, 3:]).all()
    student = rng.normal(size=(N, V)).astype(np.float32) * 2
    prior = np.log(rng.dirichlet(np.full(V, 0.5))).astype(np.float32)
    return s, student, prior


def tensors(s: SparseLabels):
    return torch.from_numpy(s.indices), torch.from_numpy(s.logp), torch.from_numpy(s.tail)


def collapsed_by_hand(s: SparseLabels, q: np.ndarray) -> np.ndarray:
    """The (k+1)-class KL in float64: the stored words, then the rest as one class."""
    q = q.astype(np.float64)
    qs = np.take_along_axis(q, s.indices, 1)
    rest = np.ones(q.shape, bool)
    np.put_along_axis(rest, s.indices, False, 1)
    q_tail = np.array([np.logaddexp.reduce(r[m]) for r, m in zip(q, rest)])  # the student's other words
    p, pt = np.exp(s.logp.astype(np.float64)), np.exp(s.tail.astype(np.float64))
    with np.errstate(invalid="ignore"):
        stored = np.where(p > 0, p * (s.logp - qs), 0).sum(1)
        return stored + np.where(pt > 0, pt * (s.tail - q_tail), 0)


@pytest.mark.parametrize("T", [1.0, 2.5])
def test_collapsed_is_the_k_plus_1_class_kl(data, T):
    s, z, _ = data
    z = z.copy()
    z[2, s.indices[2]] += 5 * T  # the student's mass mostly on the stored words: its tail is not log1p(-mass)
    z[3, s.indices[3]] += 14 * T  # nearly all of it: a tail of ~1e-5
    q = torch.log_softmax(torch.from_numpy(z).double() / T, 1).numpy()
    qs = np.exp(np.take_along_axis(q, s.indices, 1)).sum(1)
    assert qs[2] > 0.9 and 1 - qs[3] < 1e-4 and (qs[4:] < 0.5).all()
    got = kd_loss(torch.from_numpy(z), *tensors(s), temperature=T, reduction="none")
    np.testing.assert_allclose(got.numpy(), collapsed_by_hand(s, q), rtol=1e-5, atol=1e-6)
    mean = kd_loss(torch.from_numpy(z), *tensors(s), temperature=T, scale_t2=True)
    assert mean.item() == pytest.approx(T * T * got.mean().item(), rel=1e-6)
    assert kd_loss(torch.from_numpy(z), *tensors(s), reduction="sum").item() == pytest.approx(
        collapsed_by_hand(s, torch.log_softmax(torch.from_numpy(z).double(), 1).numpy()).sum(), rel=1e-5)


@pytest.mark.parametrize("tail", ["uniform", "prior", "prior-with-zeros", "capped", "capped-with-zeros"])
def test_dense_is_the_full_kl_against_expand(data, tail):
    s, z, prior = data
    tail, _, zeros = tail.partition("-")
    if zeros:
        prior = prior.copy()
        prior[[7, 11]] = -np.inf  # words the prior rules out: no teacher mass, even where the student has -inf
        z = z.copy()
        z[2:, 7] = -np.inf
    teacher = expand(s, V, tail, prior)
    want = kl_rows(teacher, torch.log_softmax(torch.from_numpy(z), 1).numpy())
    got = kd_loss(torch.from_numpy(z), *tensors(s), mode="dense", reduction="none",
                  prior_logp=None if tail == "uniform" else torch.from_numpy(prior), tail_mode=tail)
    np.testing.assert_allclose(got.numpy(), want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("tail", ["uniform", "prior", "capped"])
def test_dense_gradient_equals_the_dense_kl_gradient(data, tail):
    s, z, prior = data
    teacher = torch.from_numpy(expand(s, V, tail, prior))
    x1 = torch.tensor(z, requires_grad=True)
    kd_loss(x1, *tensors(s), mode="dense", prior_logp=None if tail == "uniform" else torch.from_numpy(prior),
            tail_mode=tail).backward()
    x2 = torch.tensor(z, requires_grad=True)
    F.kl_div(torch.log_softmax(x2, 1), teacher, log_target=True, reduction="batchmean").backward()
    np.testing.assert_allclose(x1.grad.numpy(), x2.grad.numpy(), atol=1e-6)


@pytest.mark.parametrize("mode,prior", [("collapsed", False), ("dense", False), ("dense", True)])
def test_finite_gradients_with_minus_inf_logits_and_no_tail(data, mode, prior):
    s, z, p = data
    z = z.copy()
    z[0, s.indices[0]] += 3.0
    z[0, np.setdiff1d(np.arange(V), s.indices[0])] = -np.inf  # row 0 (tail -inf): the student has only its 5 words
    z[1, np.setdiff1d(np.arange(V), s.indices[1, :3])] = -np.inf  # row 1: only the 3 words with mass
    x = torch.tensor(z, requires_grad=True)
    loss = kd_loss(x, *tensors(s), mode=mode, prior_logp=torch.from_numpy(p) if prior else None, temperature=2.0)
    assert torch.isfinite(loss)
    loss.backward()
    assert torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0
    assert (x.grad[0].abs() > 0).sum() <= K and (x.grad[1].abs() > 0).sum() <= 3


@pytest.mark.parametrize("mode,tail", [("collapsed", None), ("dense", "uniform"), ("dense", "prior"),
                                       ("dense", "capped")])
def test_a_stored_word_without_mass_may_be_minus_inf(data, mode, tail):
    s, z, prior = data
    s = SparseLabels(s.indices, s.logp.copy(), s.tail)
    s.logp[4, -1] = -np.inf  # a stored word with p = 0 in a row with a tail (a codec can decode that)
    z = z.copy()
    z[4, s.indices[4, -1]] = -np.inf
    x = torch.tensor(z, requires_grad=True)
    got = kd_loss(x, *tensors(s), mode=mode, reduction="none",
                  prior_logp=torch.from_numpy(prior) if tail in ("prior", "capped") else None, tail_mode=tail)
    got.sum().backward()
    assert torch.isfinite(got).all() and torch.isfinite(x.grad).all()
    if mode == "dense":
        want = kl_rows(expand(s, V, tail, prior), torch.log_softmax(torch.from_numpy(z), 1).numpy())
        np.testing.assert_allclose(got.detach().numpy(), want, rtol=1e-5, atol=1e-5)


def test_exact_labels_give_zero_loss(data):
    s, _, _ = data
    z = torch.from_numpy(expand(s, V, "uniform"))
    for mode in ("collapsed", "dense"):
        assert kd_loss(z, *tensors(s), mode=mode).abs().item() < 1e-5


def test_bad_inputs(data):
    s, z, _ = data
    idx, lp, tl = tensors(s)
    x = torch.from_numpy(z)
    with pytest.raises(ValueError, match="vocabulary mismatch: labels index word 50 but the student has 40 words"):
        kd_loss(x[:, :40], torch.where(idx == idx.max(), 50, idx), lp, tl)
    with pytest.raises(ValueError, match=r"expected indices of shape \(8, k\), got \(7, 5\)"):
        kd_loss(x, idx[:7], lp, tl)
    with pytest.raises(ValueError, match=r"expected tail of shape \(8,\), got \(8, 1\)"):
        kd_loss(x, idx, lp, tl[:, None])
    with pytest.raises(ValueError, match="expected logp of shape"):
        kd_loss(x, idx, lp[:, :4], tl)
    with pytest.raises(ValueError, match=r"expected prior_logp of shape \(50,\)"):
        kd_loss(x, idx, lp, tl, mode="dense", prior_logp=torch.zeros(49))
    with pytest.raises(ValueError, match="expected prior_logp with tail_mode='capped', got none"):
        kd_loss(x, idx, lp, tl, mode="dense", tail_mode="capped")
    with pytest.raises(ValueError, match="expected tail_mode in"):
        kd_loss(x, idx, lp, tl, mode="dense", tail_mode="zipf")
    with pytest.raises(ValueError, match="expected mode in"):
        kd_loss(x, idx, lp, tl, mode="sparse")
    with pytest.raises(ValueError, match="expected integer indices"):
        kd_loss(x, idx.float(), lp, tl)


# --- the capped tail in closed form, against the dense teacher built by capped_tail ---------------------------------

def capped_brute(z: torch.Tensor, idx: torch.Tensor, lp: torch.Tensor, tail: torch.Tensor, prior: torch.Tensor,
                 T: float = 1.0) -> torch.Tensor:
    """Per-row KL(teacher || student) with the teacher built densely by ``capped_tail``, in z's dtype."""
    q = torch.log_softmax(z / T, 1)
    n, V = z.shape
    t = torch.zeros(n, V, dtype=torch.float64) if idx.shape[1] == V else capped_tail(idx, lp, tail, prior)
    dense = t.to(z).scatter(1, idx, lp.exp().to(z))
    return torch.where(dense > 0, dense * (torch.where(dense > 0, dense, 1).log() - q), 0).sum(1)


def capped_case(seed: int, V: int, k: int, prior_kind: str, n: int = 24):
    """Random labels (some rows with an inflated tail that falls back to uniform, some without a tail), a prior
    and student logits (some -inf at words the prior rules out, one row with -inf at an unstored word)."""
    g = np.random.default_rng(seed)
    ranks = g.permutation(V) + 1.0
    prior = {"zipf": -1.1 * np.log(ranks), "peaked": -12 * np.log(ranks), "flat": np.zeros(V),
             "fp16": (-1.1 * np.log(ranks)).astype(np.float16), "zeros": -1.1 * np.log(ranks)}[prior_kind]
    prior = np.asarray(prior, np.float64)
    if prior_kind == "zeros":
        prior[g.random(V) < 0.4] = -np.inf
        prior[np.argmax(prior)] = 0.0  # at least one word
    p = g.dirichlet(np.full(V, 0.3), size=n) + 1e-12
    idx = np.argsort(-p, 1, kind="stable")[:, :k]
    lp = np.log(np.take_along_axis(p, idx, 1))
    with np.errstate(divide="ignore"):
        tail = np.log(np.clip(1 - np.exp(lp).sum(1), 0, None))
    tail += np.log(g.uniform(0.2, 3.0, n))  # codecs round the tail: every water level, or none
    if k < V:
        cap = np.exp(lp.min(1))
        tail[:3] = np.log(cap[:3] * (V - k) * np.array([1.0, 1.5, 4.0]))  # cannot be spread under the cap
    tail[3:5] = -np.inf
    z = g.normal(size=(n, V)) * 2
    if prior_kind == "zeros":
        keep = np.take_along_axis(z, idx, 1)
        z[6:, np.isneginf(prior)] = -np.inf
        np.put_along_axis(z, idx, keep, 1)  # the stored words keep theirs
        z[:3, np.isneginf(prior)] = 0.0  # uniform rows put mass on those words
    if k < V:
        rest = np.setdiff1d(np.arange(V), idx[5])
        z[5, rest[0]] = -np.inf  # mass where the student has none: an infinite loss
    return (torch.from_numpy(z), torch.from_numpy(idx), torch.from_numpy(lp), torch.from_numpy(tail),
            torch.from_numpy(prior))


CASES = [(V, k, kind) for V in (7, 50, 1000) for k in sorted({1, 3, V - 1, V}) for kind in ("zipf", "peaked", "flat",
                                                                                         "fp16", "zeros")]
CASES += [(5000, k, kind) for k in (1, 64, 4999) for kind in ("zipf", "peaked", "zeros")]


@pytest.mark.parametrize("V,k,kind", CASES)
def test_capped_closed_form_equals_the_dense_teacher_in_float64(V, k, kind):
    from slc.lm.distill import _tail_capped

    for seed in range(3):
        z, idx, lp, tail, prior = capped_case(seed * 1000 + V + k, V, k, kind)
        T = (1.0, 2.5, 0.7)[seed]
        x1, x2 = z.clone().requires_grad_(), z.clone().requires_grad_()
        q = torch.log_softmax(x1 / T, 1)
        lpe = lp.exp()
        stored = torch.where(lpe > 0, lpe * (lp - q.gather(1, idx)), 0).sum(1)
        got = stored + _tail_capped(q, idx, lp, tail, prior)
        want = capped_brute(x2, idx, lp, tail, prior, T)
        np.testing.assert_allclose(got.detach().numpy(), want.detach().numpy(), rtol=1e-10, atol=1e-12)
        finite = torch.isfinite(want)
        assert finite.sum() >= len(want) // 3
        got[finite].sum().backward()
        want[finite].sum().backward()
        np.testing.assert_allclose(x1.grad.numpy(), x2.grad.numpy(), rtol=1e-9, atol=1e-13)
        assert torch.isfinite(x1.grad).all()


@pytest.mark.parametrize("reduction", ["none", "mean", "sum"])
@pytest.mark.parametrize("V,k,kind", [(50, 5, "zipf"), (1000, 64, "zeros"), (5000, 64, "peaked"), (5000, 20, "fp16")])
def test_capped_kd_loss_in_float32_equals_the_dense_teacher(V, k, kind, reduction):
    z, idx, lp, tail, prior = capped_case(V + k, V, k, kind)
    z[5, torch.isneginf(z[5])] = 0.0  # finite losses: the mean and sum too
    x1, x2 = z.float().requires_grad_(), z.clone().requires_grad_()
    got = kd_loss(x1, idx, lp.float(), tail.float(), mode="dense", prior_logp=prior.float(), tail_mode="capped",
                  temperature=2.0, reduction=reduction)
    # the brute force from the same float32 inputs, in float64
    rows = capped_brute(x2, idx, lp.float().double(), tail.float().double(), prior.float(), 2.0)
    want = rows.mean() if reduction == "mean" else rows.sum() if reduction == "sum" else rows
    np.testing.assert_allclose(got.detach().numpy(), want.detach().numpy(), rtol=1e-5, atol=1e-6)
    got.sum().backward()
    want.sum().backward()
    np.testing.assert_allclose(x1.grad.numpy(), x2.grad.numpy(), rtol=1e-4, atol=1e-7)


def test_capped_kd_loss_of_a_real_file_is_the_kl_to_its_dense_decode(tmp_path):
    import slc

    g = np.random.default_rng(0)
    base = -1.1 * np.log(np.arange(1, 3001))
    lp = torch.log_softmax(torch.from_numpy((base + g.normal(size=(300, 3000)) * 1.5).astype(np.float32)), 1)
    out = tmp_path / "capped.slc"
    slc.compress(lp.numpy(), out, codec="topk-vq", source="logits",
                 options={"k": 16, "values": "bf16", "tail": "capped"})
    with slc.open_slc(out) as f:
        s, dense, prior = f.sparse(), f.decode(0, out="logits"), f.sparse_codec.prior_logp
    assert f.sparse_codec.dense_tail == "capped"
    z = torch.from_numpy(g.normal(size=(300, 3000)).astype(np.float32) * 2)
    got = kd_loss(z, *tensors(s), mode="dense", prior_logp=torch.from_numpy(prior), tail_mode="capped",
                  reduction="none")
    want = kl_rows(torch.log_softmax(torch.from_numpy(dense), 1).numpy(), torch.log_softmax(z, 1).numpy())
    np.testing.assert_allclose(got.numpy(), want, rtol=1e-4, atol=1e-5)
    brute = capped_brute(z.double(), *(torch.from_numpy(a) for a in (s.indices.astype(np.int64), s.logp, s.tail)),
                         torch.from_numpy(prior))
    np.testing.assert_allclose(got.numpy(), brute.numpy(), rtol=1e-5, atol=1e-6)


def test_capped_kd_loss_sees_a_prior_changed_in_place():
    """The sorted prior is kept between calls: a prior edited in place is sorted again."""
    z, idx, lp, tail, prior = capped_case(3, 1000, 16, "zipf")
    z[5, torch.isneginf(z[5])] = 0.0
    prior = prior.float()
    for step in range(3):
        got = kd_loss(z.float(), idx, lp.float(), tail.float(), mode="dense", prior_logp=prior, tail_mode="capped",
                      reduction="none")
        want = capped_brute(z, idx, lp.float().double(), tail.float().double(), prior)
        np.testing.assert_allclose(got.numpy(), want.numpy(), rtol=1e-5, atol=1e-6)
        prior[step * 7:step * 7 + 300] += 3.0  # a different order and water level next time


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("tail", ["uniform", "prior", "capped"])
def test_dense_kd_loss_on_cuda_equals_cpu(tail):
    z, idx, lp, tail_lp, prior = capped_case(7, 5000, 64, "zeros", n=64)
    z[5, torch.isneginf(z[5])] = 0.0
    losses, grads = [], []
    for dev in ("cpu", "cuda"):
        x = z.float().to(dev).requires_grad_()
        loss = kd_loss(x, idx.to(dev), lp.float().to(dev), tail_lp.float().to(dev), mode="dense",
                       prior_logp=None if tail == "uniform" else prior.float().to(dev), tail_mode=tail,
                       temperature=1.5, reduction="none")
        loss.sum().backward()
        losses.append(loss.detach().cpu().numpy())
        grads.append(x.grad.cpu().numpy())
    np.testing.assert_allclose(losses[1], losses[0], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(grads[1], grads[0], rtol=1e-4, atol=1e-7)

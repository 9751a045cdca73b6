"""slc.lm.distill.kd_loss against brute-force KL on small random data (n=8, V=50, k=5)."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from slc.lm.distill import kd_loss
from slc.codecs.sparse import SparseLabels, expand, kl_rows, select_topk

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

"""slc.sparse: top-k selection, the collapsed (k+1)-class view and tail expansion (synthetic labels)."""
import numpy as np
import pytest
import torch

from slc.codecs.sparse import TAILS, collapse, expand, kl_rows, select_topk, uncollapse


@pytest.fixture(scope="module")
def lp():
    z = np.random.default_rng(0).normal(size=(64, 500)).astype(np.float32) * 3
    z[:, 7] = -np.inf  # a suppressed word
    return torch.log_softmax(torch.from_numpy(z), 1).numpy()


def test_topk_and_tail_hold_all_the_mass(lp):
    s = select_topk(lp, 12)
    assert s.indices.shape == (64, 12) and (np.diff(s.logp, axis=1) <= 0).all()
    np.testing.assert_allclose(np.exp(s.logp).sum(1) + np.exp(s.tail), 1, rtol=1e-5)
    assert (s.indices != 7).all()


@pytest.mark.parametrize("tail", TAILS)
def test_expand_is_a_distribution_that_keeps_the_stored_words(lp, tail):
    s = select_topk(lp, 12)
    with np.errstate(divide="ignore"):  # word 7 has no mass: a -inf prior entry is allowed
        prior = np.log(np.exp(lp).mean(0))
    q = expand(s, 500, tail, prior)
    np.testing.assert_allclose(np.exp(q).sum(1), 1, rtol=1e-5)
    np.testing.assert_array_equal(np.take_along_axis(q, s.indices, 1), s.logp)
    assert (kl_rows(lp, q) >= -1e-6).all()


def test_prior_tail_beats_uniform_when_the_tail_follows_the_prior():
    rng = np.random.default_rng(1)
    prior = np.log(rng.dirichlet(np.full(400, 0.3)))
    peak = np.zeros((32, 400))  # each row: half its mass on 4 words of its own, the rest as the prior
    np.put_along_axis(peak, rng.permuted(np.tile(np.arange(400), (32, 1)), axis=1)[:, :4], 0.125, axis=1)
    lp = np.log(0.5 * np.exp(prior) + peak).astype(np.float32)
    s = select_topk(lp, 8)
    assert kl_rows(lp, expand(s, 400, "prior", prior)).mean() < 0.5 * kl_rows(lp, expand(s, 400, "uniform")).mean()


def test_collapse_round_trip_and_full_k_is_exact(lp):
    s = select_topk(lp, 12)
    u = uncollapse(s.indices, collapse(s))
    np.testing.assert_allclose(u.logp, s.logp, atol=1e-5)
    np.testing.assert_allclose(u.tail, s.tail, atol=1e-4)
    everything = select_topk(lp, 499)
    assert np.abs(kl_rows(lp, expand(everything, 500))).max() < 1e-5

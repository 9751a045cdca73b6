"""Replayable augmentations: the counter RNG is pinned, boxes follow RandomResizedCrop's rules."""
import json
import math

import numpy as np
import pytest
import torch

from slc.vision.augment import (BOX_DTYPE, Recipe, apply_mix, box_array, crop_boxes, epoch_order, mix_for, random_u64,
                         render, uniform)
from slc.errors import SlcFormatError, SlcInputError

M = (1 << 64) - 1


def reference_u64(seed, *values):
    """The spec's SplitMix64 chain in plain Python integers."""

    def mix(z):
        z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & M
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & M
        return z ^ (z >> 31)

    h = mix(seed)
    for v in values:
        h = mix(((h ^ v) + 0x9E3779B97F4A7C15) & M)
    return h


def test_counter_rng_is_pinned_and_matches_the_spec():
    # golden values: changing them breaks every replayed file, so they are part of format 1.1
    assert int(random_u64(0, 1, 0, 0, 0)[0]) == 0xE28195DDD9EE4956
    assert int(random_u64(12345, 2, 7, 99, 3)[0]) == 0x6E73D13BFFCD952C
    rng = np.random.default_rng(0)
    for _ in range(200):
        seed, s, e, i, d = (int(x) for x in rng.integers(0, 2**62, 5))
        assert int(random_u64(seed, s, e, i, d)[0]) == reference_u64(seed, s, e, i, d)
    u = uniform(3, 1, 0, np.arange(100_000), 0)
    assert 0 <= u.min() and u.max() < 1 and abs(u.mean() - 0.5) < 0.01


def test_boxes_follow_random_resized_crop():
    r = Recipe(seed=5, size=64)
    sizes = np.array([[28, 28], [100, 50], [37, 301]] * 400)
    b = crop_boxes(r, 0, np.arange(len(sizes)), sizes)
    a = box_array(b)
    y, x, h, w, flip = a.T
    assert (h >= 1).all() and (w >= 1).all()
    assert (y + h <= sizes[:, 0]).all() and (x + w <= sizes[:, 1]).all()
    frac = h * w / (sizes[:, 0] * sizes[:, 1])
    assert 0.04 < frac.min() and frac.max() <= 1.0 + 1e-9 and 0.4 < frac[::3].mean() < 0.6  # square ones
    aspect = w / h
    assert np.median(aspect) == pytest.approx(1.0, abs=0.1)
    assert 0.45 < flip.mean() < 0.55
    # a pure function of (seed, epoch, image): any subset, any order gives the same boxes
    idx = np.array([1199, 3, 600])
    np.testing.assert_array_equal(crop_boxes(r, 0, idx, sizes[idx]), b[idx])
    assert not np.array_equal(crop_boxes(r, 1, np.arange(12), sizes[:12]), b[:12])
    assert not np.array_equal(crop_boxes(Recipe(seed=6, size=64), 0, np.arange(12), sizes[:12]), b[:12])


def test_fallback_is_a_centre_crop_clamped_to_the_ratio():
    r = Recipe(seed=0, size=32, scale=(1.0, 1.0), ratio=(1.0, 1.0), flip=0.0)
    b = box_array(crop_boxes(r, 0, np.arange(3), np.array([[10, 40], [40, 10], [20, 20]])))
    np.testing.assert_array_equal(b, [[0, 15, 10, 10, 0], [15, 0, 10, 10, 0], [0, 0, 20, 20, 0]])


def test_order_is_a_seeded_permutation_per_epoch():
    r = Recipe(seed=1)
    o0, o1 = epoch_order(r, 0, 1000), epoch_order(r, 1, 1000)
    assert sorted(o0) == list(range(1000)) and sorted(o1) == list(range(1000))
    assert not np.array_equal(o0, o1)
    np.testing.assert_array_equal(o0, epoch_order(r, 0, 1000))
    np.testing.assert_array_equal(epoch_order(Recipe(order="sequential"), 3, 5), np.arange(5))


@pytest.mark.parametrize("kind", ["mixup", "cutmix"])
def test_mix_pairs_stay_in_their_group(kind):
    r = Recipe(seed=2, size=32, mix=kind, mix_group=8)
    n = 20  # groups of 8, 8 and 4
    mixes = [mix_for(r, 0, p, n) for p in range(n)]
    partners = [m.partner for m in mixes]
    for g0, g1 in ((0, 8), (8, 16), (16, 20)):
        assert sorted(partners[g0:g1]) == list(range(g0, g1))  # a permutation within the group
        assert len({m.lam for m in mixes[g0:g1]}) == 1  # one lambda per group, as SRe2L mixes per batch
    if kind == "cutmix":
        m = mixes[0]
        y0, x0, y1, x1 = m.box
        assert m.lam == pytest.approx(1 - (y1 - y0) * (x1 - x0) / 32 ** 2)
        own, other = torch.zeros(3, 32, 32), torch.ones(3, 32, 32)
        assert apply_mix(own, other, m, kind).mean().item() == pytest.approx(1 - m.lam)
    assert mix_for(Recipe(), 0, 3, n) is None


def test_render_shape_normalisation_and_flip():
    r = Recipe(size=16, channels=3, mean=(0.5,) * 3, std=(0.25,) * 3, flip=1.0)
    img = np.tile(np.arange(16, dtype=np.uint8)[None, :, None] * 16, (16, 1, 1))  # grey ramp left to right
    box = np.zeros(1, BOX_DTYPE)[0]
    box["h"], box["w"], box["flip"] = 16, 16, 1
    x = render(img, box, r)
    assert x.shape == (3, 16, 16) and x.dtype == torch.float32
    expected = (torch.arange(16).flip(0).float() * 16 / 255 - 0.5) / 0.25
    torch.testing.assert_close(x[1, 5], expected)
    inv = render(img, box, Recipe(size=16, channels=1, mean=(0.0,), std=(1.0,), invert=True))
    torch.testing.assert_close(inv[0, 0, 0], torch.tensor(15 / 255))  # flipped: source column 15 is 240


def test_recipe_validation_and_json_roundtrip():
    r = Recipe(seed=9, size=112, mix="cutmix", mix_group=16, boxes="stored", invert=True, channels=1,
               mean=(0.5,), std=(0.5,))
    assert Recipe.from_json(r.to_json()) == r
    for bad in (dict(size=2), dict(scale=(0.5, 0.1)), dict(channels=2), dict(mix="cutmix"),
                dict(order="random"), dict(mean=(0.1,))):
        with pytest.raises(SlcInputError):
            Recipe(**bad)
    with pytest.raises(SlcFormatError):
        Recipe.from_json({**r.to_json(), "size": "big"})
    with pytest.raises(SlcFormatError):
        Recipe.from_json({**r.to_json(), "scale": [0.1, math.inf]})


def test_hostile_replay_sections_fail_cleanly():
    from slc.format.replay import ReplayInfo

    good = {"version": 1, "recipe": Recipe().to_json(), "images": 3, "digest": "ab" * 32, "source": ""}
    assert ReplayInfo.from_bytes(json.dumps(good).encode()).images == 3
    bad = [b'{"version":1,"version":1}', json.dumps({**good, "version": True}).encode(),
           json.dumps({**good, "digest": "zz" * 32}).encode(),
           json.dumps({**good, "recipe": {**good["recipe"], "scale": [0.1, 0.5, 1.0]}}).encode(),
           json.dumps({**good, "recipe": {**good["recipe"], "invert": "yes"}}).encode(),
           json.dumps({**good, "recipe": {**good["recipe"], "flip": True}}).encode(), b"\xff", b"[]"]
    for data in bad:
        with pytest.raises(SlcFormatError):
            ReplayInfo.from_bytes(data)

"""Two-channel patches: paired images, one geometry for both channels, training, real-field patches."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from test_defects_ablation import tiny_store

from tdmctx.defects.models import ContextClassifier, context_columns
from tdmctx.defects.patches import Augmentation, PatchSampler, extract_patches
from tdmctx.defects.train import train
from tdmctx.defects.two_channel import CHANNELS, TwoChannelSampler, channel_pairs, two_channel_patches

torch.set_num_threads(1)

# Geometry (jitter, rotation, mirror) on, read-out off: the patches are then a function of the geometry only.
CLEAN = Augmentation(dose_e_per_A2=None, dark_offset=(0.0, 0.0), read_noise=(0.0, 0.0), gamma=(1.0, 1.0))


def _store():
    ds = tiny_store(energies_kV=(60, 80), n_fields=3)
    ds["detector"] = ("image", np.array([c.split("-")[1] for c in ds.condition.values]))
    return ds


def test_channel_pairs_match_the_two_detector_images_of_each_structure():
    ds = _store()
    first, second = channel_pairs(ds)
    assert len(first) == ds.sizes["image"] // 2
    assert np.array_equal(ds.structure.values[first], ds.structure.values[second])
    assert set(ds.detector.values[first]) == {CHANNELS[0]} and set(ds.detector.values[second]) == {CHANNELS[1]}
    with pytest.raises(ValueError, match="two distinct detectors"):
        channel_pairs(ds, ("HAADF", "BF"))
    with pytest.raises(ValueError, match="two distinct detectors"):
        channel_pairs(ds, ("HAADF", "HAADF"))


def test_both_channels_share_sites_and_geometry_and_equal_single_channel_patches():
    ds = _store()
    first, second = channel_pairs(ds)
    pair = TwoChannelSampler(ds, augmentation=CLEAN, batch_size=16, device="cpu")
    sites = np.random.default_rng(1).choice(pair.usable_sites, 16, replace=False)
    batch = pair.batch(np.random.default_rng(7), sites)
    assert batch["image"].shape == (16, 2, 24, 24) and torch.isfinite(batch["image"]).all()
    # Channel 0 is the single-channel sampler's patch with the same draws (noise included).
    single = PatchSampler(ds, augmentation=CLEAN, images=first, batch_size=16, device="cpu")
    torch.testing.assert_close(batch["image"][:, 0], single.batch(np.random.default_rng(7), sites)["image"][:, 0])
    # Channel 1: the partner sites of the other detector's images, cut with the same geometry.
    partner = pair.partner_sites(sites)
    other = PatchSampler(ds, augmentation=CLEAN, images=second, batch_size=16, device="cpu")
    torch.testing.assert_close(batch["image"][:, 1], other.batch(np.random.default_rng(7), partner)["image"][:, 0])
    assert np.array_equal(ds.site_label.values[sites], ds.site_label.values[partner])
    assert np.array_equal(ds.site_image.values[partner], second[np.searchsorted(first, ds.site_image.values[sites])])
    # The detector angles are unknown to the network; the rest of the context is kept.
    for name in ("detector_inner_mrad", "detector_outer_mrad"):
        assert torch.all(batch["context"][:, context_columns(name)] == 0)
    assert torch.all(batch["context"][:, context_columns("energy_eV")][:, 0] == 1)
    with pytest.raises(ValueError, match="not usable sites"):
        pair.batch(np.random.default_rng(0), np.array([partner[0]]))
    # One copy of the images on the device serves both channels (the comparisons above ran on it).
    assert pair._other._images.data_ptr() == pair._images.data_ptr()


def test_two_channel_sampler_selects_structures_and_refuses_unpaired_sites():
    ds = _store()
    first, second = channel_pairs(ds)
    some = TwoChannelSampler(ds, images=second[:2], batch_size=4, device="cpu")  # either detector selects
    assert set(np.unique(ds.site_image.values[some.usable_sites])) <= set(first[:2])
    with pytest.raises(ValueError, match="selects no structure"):
        TwoChannelSampler(ds, images=[10_000], device="cpu")
    moved = ds.copy(deep=True)
    moved["site_x_px"].values[np.flatnonzero(ds.site_image.values == second[0])[0]] += 1.0
    with pytest.raises(ValueError, match="list different sites"):
        TwoChannelSampler(moved, device="cpu")


def test_a_two_channel_model_trains_on_the_sampler():
    ds = _store()
    sampler = TwoChannelSampler(ds, batch_size=32, batches_per_epoch=3, device="cpu", seed=0)
    val = [TwoChannelSampler(ds, batch_size=64, device="cpu", seed=1).batch(np.random.default_rng(0))]
    model = ContextClassifier("film", width=4, in_channels=2, seed=0)
    history = train(model, sampler, val, epochs=2, device="cpu", progress=False, patience=None)
    assert len(history["epoch"]) == 2 and np.isfinite(history["val_nll"]).all()


def test_two_channel_patches_stack_both_channels_in_order():
    rng = np.random.default_rng(0)
    high, low = rng.random((64, 64)), rng.random((64, 64))
    points = np.array([[20.0, 30.5], [40.2, 25.0]])
    out = two_channel_patches(high, low, points, source_pixel_A=0.4)
    assert out.shape == (2, 2, 24, 24)
    np.testing.assert_array_equal(out[:, 0], extract_patches(high, points, source_pixel_A=0.4))
    np.testing.assert_array_equal(out[:, 1], extract_patches(low, points, source_pixel_A=0.4))
    with pytest.raises(ValueError, match="must be one field"):
        two_channel_patches(high, low[:-1], points, source_pixel_A=0.4)

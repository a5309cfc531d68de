"""The patch definition, cutting geometry, invariances and the training loader."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import xarray as xr

from tdmctx.defects.context import CLASS_NAMES
from tdmctx.defects.patches import PATCH, Augmentation, PatchSampler, PatchSpec, extract_patches, image_contexts, patch_loader


def _spot_image(shape=(80, 90), spots=((30.25, 40.5),), sigma=1.2):
    yy, xx = np.indices(shape, dtype=float)
    img = np.zeros(shape)
    for x, y in spots:
        img += np.exp(-((xx - x) ** 2 + (yy - y) ** 2) / (2 * sigma**2))
    return img


def test_patch_definition():
    assert PATCH.size_px == 24 and PATCH.pixel_size_A == 0.4
    assert PATCH.extent_A == pytest.approx(9.6)
    with pytest.raises(ValueError, match="percentiles"):
        PatchSpec(low_percentile=90, high_percentile=10)
    with pytest.raises(ValueError, match="size_px"):
        PatchSpec(size_px=2)


def test_patch_is_centred_on_a_subpixel_column_and_resampled():
    img = _spot_image()
    spec = PatchSpec(size_px=25, pixel_size_A=0.2)  # finer than the source: 0.4 A
    patch = extract_patches(img, np.array([[30.25, 40.5]]), source_pixel_A=0.4, spec=spec)[0]
    assert patch.shape == (25, 25)
    # the spot's centroid falls on the patch centre, pixel (12, 12)
    w = np.clip(patch - 0.5 * patch.max(), 0, None)
    yy, xx = np.indices(patch.shape)
    assert (w * yy).sum() / w.sum() == pytest.approx(12.0, abs=0.15)
    assert (w * xx).sum() / w.sum() == pytest.approx(12.0, abs=0.15)
    # twice the sampling: the spot's width doubles in patch pixels
    profile = patch[12]
    assert (profile > 0.5 * profile.max()).sum() == pytest.approx(2 * (2.355 * 1.2), abs=1.5)


def test_normalisation_cancels_gain_and_dark_offset():
    # a lattice of columns, 2e4 counts of contrast: like the experimental frames
    spots = [(x + 0.3 * (y % 2), y) for x in range(10, 80, 5) for y in range(10, 70, 5)]
    img = 2e4 * _spot_image(spots=spots)
    pts = np.array([[30.0, 40.0], [35.2, 44.1]])
    a = extract_patches(img, pts, source_pixel_A=0.4)
    b = extract_patches(3.7 * img + 1e5, pts, source_pixel_A=0.4)
    assert np.allclose(a, b, atol=1e-4)
    assert a.min() >= -0.1 and np.percentile(a[0], 98) == pytest.approx(1.0, abs=1e-3)


def test_extract_patches_reads_pixel_size_from_dataarray_and_checks_input():
    img = xr.DataArray(_spot_image(), dims=("y", "x"), attrs={"pixel_size_A": 0.4})
    assert extract_patches(img, np.array([[30.0, 40.0]])).shape == (1, 24, 24)
    with pytest.raises(ValueError, match="source_pixel_A"):
        extract_patches(img.values, np.array([[30.0, 40.0]]))
    with pytest.raises(ValueError, match=r"points_px has shape \(2,\)"):
        extract_patches(img, np.array([30.0, 40.0]))


def _toy_dataset(n_images=2, seed=0):
    rng = np.random.default_rng(seed)
    shape = (90, 100)
    labels, xs, ys, idx, images = [], [], [], [], []
    for i in range(n_images):
        spots, brightness = [], {"metal": 1.0, "dopant": 0.2, "X2": 0.7, "V1": 0.35, "V2": 0.0}
        img = np.zeros(shape)
        yy, xx = np.indices(shape, dtype=float)
        for k in range(40):
            c = CLASS_NAMES[k % 5]
            x, y = rng.uniform(22, 78), rng.uniform(22, 68)
            img += brightness[c] * np.exp(-((xx - x) ** 2 + (yy - y) ** 2) / (2 * 1.0**2))
            labels.append(c), xs.append(x), ys.append(y), idx.append(i)
        images.append(0.02 * img + 0.001)
    ds = xr.Dataset(
        {
            "intensity": (("image", "y", "x"), np.stack(images).astype(np.float32)),
            "site_image": (("site",), np.array(idx)),
            "site_x_px": (("site",), np.array(xs, dtype=np.float32)),
            "site_y_px": (("site",), np.array(ys, dtype=np.float32)),
            "site_label": (("site",), np.array(labels)),
            "host_metal": (("image",), np.array(["W"] * n_images)),
            "chalcogen": (("image",), np.array(["Se"] * n_images)),
            "dopant": (("image",), np.array(["Ti", ""][:n_images] + ["Ti"] * (n_images - 2))),
            "energy_eV": (("image",), np.array([80e3, np.nan][:n_images] + [80e3] * (n_images - 2))),
            "detector_inner_mrad": (("image",), np.full(n_images, 70.0)),
            "detector_outer_mrad": (("image",), np.full(n_images, 200.0)),
        },
        attrs={"pixel_size_A": 0.4},
    )
    return ds


def test_image_contexts_keep_unknown_fields():
    contexts = image_contexts(_toy_dataset())
    assert contexts[0].dopant == "Ti" and contexts[0].energy_eV == 80e3
    assert contexts[1].dopant is None and contexts[1].energy_eV is None


def test_sampler_batches_are_balanced_labelled_and_reproducible():
    ds = _toy_dataset()
    sampler = PatchSampler(ds, batch_size=500, batches_per_epoch=2, seed=3)
    batches = list(sampler)
    b = batches[0]
    assert b["image"].shape == (500, 1, 24, 24) and b["image"].dtype == torch.float32
    assert b["label"].dtype == torch.int64 and b["context"].shape[0] == 500
    counts = np.bincount(b["label"].numpy(), minlength=5)
    assert counts.min() > 70  # class-balanced draw, 100 expected each
    # labels follow the sites they were cut from
    site_labels = np.array([CLASS_NAMES.index(v) for v in ds.site_label.values])
    assert (site_labels[b["site_index"].numpy()] == b["label"].numpy()).all()
    again = list(PatchSampler(ds, batch_size=500, batches_per_epoch=2, seed=3))
    assert torch.equal(again[1]["image"], batches[1]["image"])
    assert not torch.equal(batches[0]["image"], batches[1]["image"])
    assert len(patch_loader(ds, batch_size=8, batches_per_epoch=3)) == 3


def test_noise_free_unrotated_patches_see_the_class_at_the_centre():
    ds = _toy_dataset()
    plain = Augmentation(rotate=False, mirror=False, jitter_px=0.0, dose_e_per_A2=None, dark_offset=(0, 0), read_noise=(0, 0), gamma=(1, 1))
    b = next(iter(PatchSampler(ds, augmentation=plain, batch_size=1000, batches_per_epoch=1, seed=0)))
    centre = b["image"][:, 0, 11:13, 11:13].mean(dim=(1, 2))
    means = [float(centre[b["label"] == k].mean()) for k in range(5)]
    # metal brightest, then X2, V1, dopant; an empty V2 site darkest
    assert means[0] > means[2] > means[3] > means[1] > means[4]


def test_sites_near_edges_are_excluded_and_bad_selections_fail():
    ds = _toy_dataset()
    ds["site_x_px"][0] = 2.0
    sampler = PatchSampler(ds, batch_size=4, batches_per_epoch=1, images=[0])
    assert 0 not in set(sampler.usable_sites)
    assert all(ds.site_image.values[sampler.usable_sites] == 0)
    with pytest.raises(ValueError, match="no usable site"):
        PatchSampler(ds, images=[7])
    with pytest.raises(ValueError, match="dose_e_per_A2"):
        Augmentation(dose_e_per_A2=(0.0, 1.0))


def test_sampler_draws_new_batches_each_epoch():
    ds = _toy_dataset()
    sampler = PatchSampler(ds, batch_size=16, batches_per_epoch=1, seed=3)
    first = next(iter(sampler))["site_index"]
    assert torch.equal(next(iter(sampler))["site_index"], first)  # same epoch: same draw
    sampler.set_epoch(1)
    assert not torch.equal(next(iter(sampler))["site_index"], first)
    sampler.set_epoch(0)
    assert torch.equal(next(iter(sampler))["site_index"], first)


def test_batch_at_given_sites_cuts_exactly_those():
    ds = _toy_dataset()
    sampler = PatchSampler(ds, batch_size=4, batches_per_epoch=1, seed=0)
    sites = sampler.usable_sites[[0, 5, 9]]
    b = sampler.batch(np.random.default_rng(1), sites)
    assert b["image"].shape[0] == 3 and b["site_index"].tolist() == sites.tolist()
    again = sampler.batch(np.random.default_rng(1), sites)
    assert torch.equal(again["image"], b["image"])  # same generator, same read-out
    with pytest.raises(ValueError, match="usable sites"):
        sampler.batch(np.random.default_rng(1), np.array([10**6]))

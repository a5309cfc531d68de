"""Known-error 4D-STEM simulation with abTEM, and the synthetic stand-in."""

from __future__ import annotations

import numpy as np
import pytest

from tdmctx.ptycho.scan import LineJumps, RasterScan
from tdmctx.ptycho.simulate import abtem_to_yx, centred_scan, mos2_cell, simulate_4dstem, simulate_synthetic

pytest.importorskip("abtem")


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("TDMCTX_CACHE", str(tmp_path_factory.mktemp("cache")))
        atoms = mos2_cell((3, 2))
        scan = centred_scan(atoms, (5, 6), 0.5)
        error = LineJumps(rms_step=0.4, seed=5)
        data = simulate_4dstem(atoms, scan=scan, error=error, electrons_per_pattern=1e4, progress=False)
        yield atoms, scan, error, data


def test_dataset_layout_and_truth(tiny):
    atoms, scan, error, data = tiny
    assert data.scan_shape == (5, 6)
    k0, k1 = data.detector_shape
    assert k0 == k1  # the slightly rectangular cell was resampled onto a square detector
    assert data.angular_sampling_mrad[0] == data.angular_sampling_mrad[1]
    # The detector reaches about max_angle_mrad = 55 on each side.
    assert k0 * data.angular_sampling_mrad[0] / 2 == pytest.approx(55, abs=2 * data.angular_sampling_mrad[0])
    np.testing.assert_allclose(data.nominal_positions_A, scan.positions_A)
    np.testing.assert_allclose(data.extras["true_positions_A"], error.apply(scan))
    assert data.rotation_deg == 0.0 and data.transpose is False and data.defocus_A == 50.0
    # Poisson counts: integers, with about the requested electrons per pattern inside the detector.
    counts = data.datacube
    assert np.all(counts == np.round(counts)) and counts.min() >= 0
    assert counts.sum(axis=(2, 3)).mean() == pytest.approx(1e4, rel=0.05)
    # Ground truth: a phase object (|t| = 1) with positive phase peaks at the atoms.
    truth = data.extras["true_object"]
    cell = np.diag(np.asarray(atoms.cell))[:2]
    sampling = data.extras["true_object_sampling_A"]
    np.testing.assert_allclose(np.array(truth.shape[::-1]) * sampling, cell, rtol=1e-6)
    np.testing.assert_allclose(np.abs(truth), 1.0, atol=1e-5)
    phase = np.angle(truth)
    mo = atoms.positions[atoms.numbers == 42][0]
    peak = phase[int(round(mo[1] / sampling[1])) % truth.shape[0], int(round(mo[0] / sampling[0])) % truth.shape[1]]
    assert peak > np.percentile(phase, 99)


def test_patterns_follow_the_true_positions(tiny):
    """Centre-of-mass shifts must correlate better with the truth's phase gradient at the true positions."""
    atoms, scan, error, data = tiny
    n = data.detector_shape[0]
    k = np.arange(n) - n // 2
    total = data.datacube.sum(axis=(2, 3))
    com_x = (data.datacube.sum(axis=3) * k).sum(-1) / total  # k0 is parallel to x at rotation 0
    phase = np.angle(data.extras["true_object"])
    sampling = data.extras["true_object_sampling_A"]
    grad_x = np.gradient(phase, axis=1) / sampling[0]

    def sample(field, points):
        ix = np.round(points[..., 0] / sampling[0]).astype(int) % field.shape[1]
        iy = np.round(points[..., 1] / sampling[1]).astype(int) % field.shape[0]
        return field[iy, ix]

    from scipy import ndimage

    smooth = ndimage.gaussian_filter(grad_x, 0.6 / sampling[0], mode="wrap")  # the probe averages the gradient
    at_true = np.corrcoef(com_x.ravel(), sample(smooth, data.extras["true_positions_A"]).ravel())[0, 1]
    at_nominal = np.corrcoef(com_x.ravel(), sample(smooth, data.nominal_positions_A).ravel())[0, 1]
    assert at_true > 0.5 and at_true > at_nominal


def test_cache_returns_identical_data(tiny):
    atoms, scan, error, data = tiny
    again = simulate_4dstem(atoms, scan=scan, error=error, electrons_per_pattern=1e4, progress=False)
    np.testing.assert_array_equal(again.datacube, data.datacube)


def test_bad_inputs():
    atoms = mos2_cell((3, 2))
    with pytest.raises(ValueError, match="electrons_per_pattern"):
        simulate_4dstem(atoms, electrons_per_pattern=-5.0, cache=False)
    sheared = atoms.copy()
    sheared.cell[1, 0] = 1.0
    with pytest.raises(ValueError, match="orthogonal"):
        simulate_4dstem(sheared, cache=False)


def test_abtem_to_yx_swaps_the_last_two_axes():
    a = np.arange(24).reshape(2, 3, 4)
    assert abtem_to_yx(a).shape == (2, 4, 3) and abtem_to_yx(a)[1, 3, 2] == a[1, 2, 3]


def test_synthetic_is_seeded_and_noise_free_option():
    scan = RasterScan((3, 3), 0.5, origin_A=(8.0, 8.0))
    a = simulate_synthetic(scan, n_detector=24, seed=1)
    b = simulate_synthetic(scan, n_detector=24, seed=1)
    c = simulate_synthetic(scan, n_detector=24, electrons_per_pattern=None)
    np.testing.assert_array_equal(a.datacube, b.datacube)
    assert c.datacube.sum(axis=(2, 3)).mean() == pytest.approx(1.0, rel=1e-3)
    with pytest.raises(ValueError, match="from the origin"):
        simulate_synthetic(RasterScan((2, 2), 0.5), n_detector=24)

"""Position-error metrics, the error decomposition, and object phase fidelity."""

from __future__ import annotations

import numpy as np
import pytest

from tdmctx.ptycho.metrics import (
    decomposition_history,
    error_decomposition,
    fourier_ring_correlation,
    phase_fidelity,
    rms_error_A,
    truth_on_grid,
)
from tdmctx.ptycho.scan import AffineError, JitterError, LineJumps, RasterScan


def test_rms_error_removes_only_the_translation():
    truth = RasterScan((4, 5), 0.5).positions_A
    assert rms_error_A(truth + [0.3, -0.2], truth) == pytest.approx(0.0, abs=1e-12)
    assert rms_error_A(truth + [0.3, -0.2], truth, remove_translation=False) == pytest.approx(np.hypot(0.3, 0.2))
    bumped = truth.copy()
    bumped[0, 0, 0] += 1.0  # one point off by 1 A: RMS = sqrt((1 - 1/N)^2 + (N-1)/N^2) / sqrt(N)
    n = truth.shape[0] * truth.shape[1]
    assert rms_error_A(bumped, truth) == pytest.approx(np.sqrt((n - 1) / n) / np.sqrt(n))
    with pytest.raises(ValueError, match="differ"):
        rms_error_A(truth, truth[:2])


@pytest.mark.parametrize(
    "model, dominant",
    [
        (AffineError(scale_x=0.03, rotation_deg=2.0), "affine"),
        (LineJumps(rms_step=0.3, seed=1), "line"),
        (JitterError(rms_step=0.1, seed=2), "highpass"),
    ],
)
def test_decomposition_attributes_each_error_type(model, dominant):
    scan = RasterScan((24, 24), 0.5)
    true = model.apply(scan)
    parts = error_decomposition(scan.positions_A, true)
    assert parts["total"] == pytest.approx(rms_error_A(scan.positions_A, true))
    assert parts[dominant] > 0.8 * parts["total"]
    assert all(parts[k] < 0.6 * parts["total"] for k in ("affine", "line", "lowpass", "highpass") if k != dominant)
    history = decomposition_history(np.stack([scan.positions_A, true]), true)
    assert history["total"][1] == pytest.approx(0.0, abs=1e-12) and history["total"][0] == parts["total"]


def _lattice(shape, pixel):
    iy, ix = np.indices(shape) * pixel
    return 0.5 * (np.cos(2 * np.pi * ix / 3.2) * np.cos(2 * np.pi * iy / 2.77) + np.cos(2 * np.pi * (ix + iy) / 4.1))


def test_phase_fidelity_ignores_global_phase_ramp_and_subpixel_shift():
    true_phase = _lattice((400, 400), 0.05)
    true_object = np.exp(1j * true_phase)
    pixel, origin = 0.3, np.array([1.3, 2.1])
    shape = (50, 50)
    region = (origin[0] + 2, origin[0] + 12, origin[1] + 2, origin[1] + 12)
    sampled = truth_on_grid(true_object, (0.05, 0.05), shape, pixel, origin + 0.11, k_limit_per_A=1.0)
    iy, ix = np.indices(shape)
    recon = np.exp(1j * (sampled + 0.7 + 0.02 * ix - 0.03 * iy))
    good = phase_fidelity(recon, pixel, origin, true_object, (0.05, 0.05), region, k_limit_per_A=1.0)
    assert good.correlation > 0.98 and good.frc_mean > 0.9
    np.testing.assert_allclose(np.abs(good.shift_A), [0.11, 0.11], atol=0.03)
    noise = np.exp(1j * np.random.default_rng(0).normal(size=shape))
    bad = phase_fidelity(noise, pixel, origin, true_object, (0.05, 0.05), region, k_limit_per_A=1.0)
    assert bad.correlation < 0.5 and bad.frc_mean < 0.5
    with pytest.raises(ValueError, match="region_A"):
        phase_fidelity(recon, pixel, origin, true_object, (0.05, 0.05), (2, 2.5, 3, 3.5), k_limit_per_A=1.0)


def test_fourier_ring_correlation_of_identical_images_is_one():
    image = np.random.default_rng(1).normal(size=(64, 64))
    k, frc = fourier_ring_correlation(image, image, 0.2)
    np.testing.assert_allclose(frc[np.isfinite(frc)], 1.0)
    assert k.max() < 0.5 / 0.2

"""Preprocessing: dark/gain, bright-field disk, and defocus from parallax against a forward model."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from tdmctx.ptycho.detector import wavelength_A
from tdmctx.ptycho.preprocess import (
    BrightFieldDisk,
    angular_sampling_from_disk,
    apply_dark_gain,
    bright_field_disk,
    estimate_defocus,
)

ENERGY_EV = 80e3


def forward_model(defocus_A, *, n=64, dx_A=0.2, semiangle_mrad=21.0, step_px=3, scan=(32, 32), seed=0):
    """Far-field patterns of a defocused probe on a random phase object, abTEM's phase convention.

    The probe is ``IFFT[A(k) exp(-i chi(k))]`` with ``chi = 2 pi / lambda * C10 alpha^2 / 2``
    and ``C10 = -defocus`` (as in abTEM). Returned in the package's axis convention:
    (scan_rows, scan_cols, k0, k1) with k0 along x.
    """
    lam = wavelength_A(ENERGY_EV)
    k = np.fft.fftfreq(n, dx_A)
    kx, ky = np.meshgrid(k, k, indexing="xy")
    alpha = lam * np.hypot(kx, ky)
    chi = 2 * np.pi / lam * 0.5 * (-defocus_A) * alpha**2
    probe = np.fft.fftshift(np.fft.ifft2((alpha <= semiangle_mrad * 1e-3) * np.exp(-1j * chi)))
    rng = np.random.default_rng(seed)
    size = (scan[0] * step_px + n, scan[1] * step_px + n)
    phase = ndimage.gaussian_filter(rng.normal(size=size), 2.0)
    obj = np.exp(1j * 0.4 * phase / phase.std())
    cube = np.empty((*scan, n, n), dtype=np.float32)
    for r in range(scan[0]):
        for c in range(scan[1]):
            exit_wave = probe * obj[r * step_px : r * step_px + n, c * step_px : c * step_px + n]
            cube[r, c] = np.abs(np.fft.fftshift(np.fft.fft2(exit_wave))).T ** 2  # (ky, kx) -> (k0=kx, k1=ky)
    return cube, step_px * dx_A, 1e3 * lam / (n * dx_A)


@pytest.mark.parametrize("defocus_A", [150.0, -120.0])
def test_defocus_from_parallax_matches_forward_model(defocus_A):
    cube, step_A, dk_mrad = forward_model(defocus_A)
    est = estimate_defocus(cube, step_A, dk_mrad)
    assert est.defocus_A == pytest.approx(defocus_A, rel=0.1), est
    assert est.residual_A < 0.25 * abs(defocus_A) * 15e-3


def test_defocus_sign_survives_transpose_and_rotation():
    cube, step_A, dk_mrad = forward_model(150.0)
    # Present the same data with the detector transposed, and say so: the answer must not change.
    est = estimate_defocus(np.swapaxes(cube, 2, 3).copy(), step_A, dk_mrad, transpose=True)
    assert est.defocus_A == pytest.approx(150.0, rel=0.1)
    # Rotating the detector by 90 degrees and declaring it gives the same answer too.
    rotated = np.rot90(cube, k=1, axes=(2, 3)).copy()
    est_rot = estimate_defocus(rotated, step_A, dk_mrad, rotation_deg=-90.0)
    est_wrong = estimate_defocus(rotated, step_A, dk_mrad, rotation_deg=0.0)
    assert est_rot.defocus_A == pytest.approx(150.0, rel=0.1)
    assert est_rot.residual_A < est_wrong.residual_A


def test_bright_field_disk_known_answer():
    n0, n1 = 60, 70
    k0, k1 = np.meshgrid(np.arange(n0), np.arange(n1), indexing="ij")
    centre, radius = (28.3, 36.6), 11.0
    pattern = ((k0 - centre[0]) ** 2 + (k1 - centre[1]) ** 2 <= radius**2) * 100.0 + 1.0
    rng = np.random.default_rng(0)
    stack = rng.poisson(np.broadcast_to(pattern, (5, n0, n1))).astype(float)
    disk = bright_field_disk(stack)
    assert disk.centre_px == pytest.approx(centre, abs=0.15)
    assert disk.radius_px == pytest.approx(radius, abs=0.3)
    assert angular_sampling_from_disk(disk, 22.0) == pytest.approx(2.0, rel=0.03)
    with pytest.raises(ValueError, match="no positive intensity"):
        bright_field_disk(np.zeros((8, 8)))


def test_dark_gain():
    cube = np.full((2, 2, 3, 4), 10.0)
    dark = np.full((3, 4), 2.0)
    gain = np.full((3, 4), 0.5)
    np.testing.assert_allclose(apply_dark_gain(cube, dark, gain), 4.0)
    with pytest.raises(ValueError, match="dark has shape"):
        apply_dark_gain(cube, dark=np.zeros((4, 3)))
    with pytest.raises(ValueError, match="gain holds NaN"):
        apply_dark_gain(cube, gain=np.full((3, 4), np.nan))


def test_defocus_bad_input():
    with pytest.raises(ValueError, match="expected"):
        estimate_defocus(np.zeros((3, 3, 8, 8)), 0.5, 1.0)
    with pytest.raises(ValueError, match="positive"):
        estimate_defocus(np.ones((6, 6, 8, 8)), -0.5, 1.0, disk=BrightFieldDisk((4.0, 4.0), 3.0))


def test_central_field_is_the_middle_crop():
    from tdmctx.ptycho.preprocess import central_field

    cube = np.arange(10 * 7).reshape(10, 7, 1, 1)
    crop = central_field(cube, 4)
    assert crop.shape == (4, 4, 1, 1)
    assert crop[0, 0, 0, 0] == cube[3, 1, 0, 0]  # rows 3-6, columns 1-4
    assert central_field(cube, 32).shape == cube.shape  # a small scan is kept whole
    with pytest.raises(ValueError, match="max_positions"):
        central_field(cube, 0)

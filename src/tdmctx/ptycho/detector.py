"""Detector-side preparation shared by every reconstruction method.

Three jobs, done once before any engine sees the data:

* :func:`prepare_counts` turns detector counts into electrons and applies the policy for
  negative pixels (clipped to zero) and zero-dose frames (masked out of the likelihood);
* :func:`square_detector` resamples a detector with different angular samplings or
  extents along ``k0`` and ``k1`` to a square grid (square object pixels);
* :func:`estimate_rotation` finds the detector rotation and transposition from the
  centre-of-mass field, as py4DSTEM does, when the file does not give them.

Also the electron wavelength, :func:`wavelength_A`, and the real-space pixel of a
ptychographic reconstruction, :func:`object_pixel_size_A`.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy import ndimage

__all__ = [
    "wavelength_A",
    "object_pixel_size_A",
    "prepare_counts",
    "square_detector",
    "estimate_rotation",
]


def wavelength_A(energy_eV: float) -> float:
    """Relativistic electron wavelength, Angstrom.

    Parameters
    ----------
    energy_eV
        Beam energy, eV (e.g. ``80e3``).
    """
    if not (np.isfinite(energy_eV) and energy_eV > 0):
        raise ValueError(f"energy_eV={energy_eV!r} must be a positive number of eV (e.g. 80e3)")
    h, c, m0, e = 6.62607015e-34, 299792458.0, 9.1093837015e-31, 1.602176634e-19
    energy_J = energy_eV * e
    return float(h * c / np.sqrt(energy_J * (2 * m0 * c**2 + energy_J)) * 1e10)


def object_pixel_size_A(energy_eV: float, n_pixels: int, angular_sampling_mrad: float) -> float:
    """Real-space pixel of a ptychographic reconstruction, ``lambda / (N * dk)``, Angstrom.

    Parameters
    ----------
    energy_eV
        Beam energy, eV.
    n_pixels
        Detector pixels along one (square) axis.
    angular_sampling_mrad
        Angular size of one detector pixel, mrad.
    """
    if not angular_sampling_mrad > 0 or n_pixels < 1:
        raise ValueError(
            f"need n_pixels >= 1 and angular_sampling_mrad > 0, got {n_pixels!r} and {angular_sampling_mrad!r}"
        )
    return wavelength_A(energy_eV) / (n_pixels * angular_sampling_mrad * 1e-3)


def prepare_counts(datacube: np.ndarray, electrons_per_count: float | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Apply the package's policy for real detector data and return electrons per pixel.

    Policy: counts are multiplied by ``electrons_per_count`` (1 when unknown); negative pixels,
    which dark subtraction produces, are clipped to zero (a Poisson count cannot be negative);
    frames whose total is zero or less after clipping carry no information and are masked
    (weight 0 in the likelihood, so their positions get no gradient).

    Parameters
    ----------
    datacube
        ``(scan_rows, scan_cols, k0, k1)`` counts.
    electrons_per_count
        Detector gain, electrons per count; ``None`` means the data are already electrons.

    Returns
    -------
    electrons : ndarray, float32, same shape
    frame_mask : ndarray, bool, ``(scan_rows, scan_cols)``; false for masked frames
    """
    gain = 1.0 if electrons_per_count is None else float(electrons_per_count)
    if not (np.isfinite(gain) and gain > 0):
        raise ValueError(f"electrons_per_count={electrons_per_count!r} must be a positive number")
    electrons = np.clip(np.asarray(datacube, dtype=np.float32) * np.float32(gain), 0.0, None)
    frame_mask = electrons.sum(axis=(-2, -1)) > 0
    return electrons, frame_mask


def square_detector(
    datacube: np.ndarray, angular_sampling_mrad: Sequence[float]
) -> tuple[np.ndarray, float]:
    """Resample patterns to one angular sampling and a square field of view.

    The common sampling is the coarser of the two (no axis is upsampled) and the field of
    view the smaller of the two angular extents, centred on the pattern centre; counts are
    conserved per unit solid angle (linear interpolation, scaled by the pixel-area ratio).
    Square detectors with equal samplings are returned unchanged (no copy, no interpolation,
    so Poisson statistics are untouched).

    Parameters
    ----------
    datacube
        ``(..., k0, k1)`` patterns.
    angular_sampling_mrad
        ``(dk0, dk1)``, mrad per pixel.

    Returns
    -------
    patterns : ndarray, ``(..., n, n)``
    sampling_mrad : float
    """
    dk = np.asarray(angular_sampling_mrad, dtype=np.float64)
    if dk.shape != (2,) or not np.all(dk > 0):
        raise ValueError(f"angular_sampling_mrad={angular_sampling_mrad!r} must be two positive numbers (dk0, dk1)")
    n0, n1 = datacube.shape[-2:]
    if n0 == n1 and np.isclose(dk[0], dk[1], rtol=1e-6):
        return datacube, float(dk[0])
    step = float(dk.max())
    extent = min(n0 * dk[0], n1 * dk[1])
    n = int(np.floor(extent / step))
    n -= n % 2  # an even grid keeps the zero frequency on a pixel at n // 2
    # Pattern centres sit at index n // 2 (the FFT-shift convention), measured in mrad.
    k = (np.arange(n) - n // 2) * step
    c0 = k / dk[0] + n0 // 2
    c1 = k / dk[1] + n1 // 2
    grid = np.stack(np.meshgrid(c0, c1, indexing="ij"))
    flat = datacube.reshape(-1, n0, n1)
    out = np.empty((flat.shape[0], n, n), dtype=datacube.dtype)
    for i, frame in enumerate(flat):
        out[i] = ndimage.map_coordinates(frame, grid, order=1, mode="constant", cval=0.0)
    out *= step * step / (dk[0] * dk[1])
    return out.reshape(*datacube.shape[:-2], n, n), step


def _centre_of_mass(datacube: np.ndarray) -> np.ndarray:
    """Centre of mass of every pattern, detector pixels, ``(scan_rows, scan_cols, 2)`` along (k0, k1)."""
    n0, n1 = datacube.shape[-2:]
    total = datacube.sum(axis=(-2, -1))
    total = np.where(total > 0, total, 1.0)
    com0 = (datacube.sum(axis=-1) * np.arange(n0)).sum(axis=-1) / total
    com1 = (datacube.sum(axis=-2) * np.arange(n1)).sum(axis=-1) / total
    com = np.stack([com0, com1], axis=-1)
    return com - com.reshape(-1, 2).mean(axis=0)


def estimate_rotation(datacube: np.ndarray, *, n_angles: int = 360) -> tuple[float, bool]:
    """Find the detector rotation and transposition from the curl of the centre-of-mass field.

    The centre-of-mass shift of a thin object is proportional to the gradient of its projected
    potential, so rotated into the real-space frame it has no curl; the (rotation, transpose)
    pair that minimises the mean squared curl is kept. The remaining 180 degree ambiguity is
    fixed by integrating the field: the beam is pulled towards the atoms, so the integrated
    potential must have sharp positive peaks (positive skewness).

    Parameters
    ----------
    datacube
        ``(scan_rows, scan_cols, k0, k1)`` patterns on a raster (at least 3 x 3).
    n_angles
        Number of trial angles over 180 degrees.

    Returns
    -------
    rotation_deg : float
        Counter-clockwise angle from real-space x to detector axis k0, degrees.
    transpose : bool
        Whether k0 and k1 must be swapped before the rotation.
    """
    if datacube.ndim != 4 or min(datacube.shape[:2]) < 3:
        raise ValueError(f"datacube shape {datacube.shape} must be (scan_rows>=3, scan_cols>=3, k0, k1)")
    com = _centre_of_mass(np.asarray(datacube, dtype=np.float64))
    best = (np.inf, 0.0, False)
    angles = np.linspace(0.0, np.pi, n_angles, endpoint=False)
    for transpose in (False, True):
        field = com[..., ::-1] if transpose else com
        for t in angles:
            gx, gy = _rotate_to_real(field, t)
            curl = np.gradient(gy, axis=1) - np.gradient(gx, axis=0)
            score = float(np.mean(curl**2))
            if score < best[0]:
                best = (score, t, transpose)
    _, t, transpose = best
    field = com[..., ::-1] if transpose else com
    gx, gy = _rotate_to_real(field, t)
    potential = _integrate_gradient(gx, gy)
    centred = potential - potential.mean()
    if np.mean(centred**3) < 0:
        t += np.pi
    return float(np.rad2deg(t) % 360.0), bool(transpose)


def _rotate_to_real(field: np.ndarray, angle_rad: float) -> tuple[np.ndarray, np.ndarray]:
    """Express a detector-frame vector field (k0, k1 components) in real-space (x, y).

    Detector axis k0 points at ``angle_rad`` from x, k1 at ``angle_rad + 90 deg``.
    """
    c, s = np.cos(angle_rad), np.sin(angle_rad)
    v0, v1 = field[..., 0], field[..., 1]
    return c * v0 - s * v1, s * v0 + c * v1


def _integrate_gradient(gx: np.ndarray, gy: np.ndarray) -> np.ndarray:
    """Least-squares potential whose gradient is ``(gx, gy)`` on a (y, x) grid (Fourier integration)."""
    ky = np.fft.fftfreq(gx.shape[0])[:, None]
    kx = np.fft.fftfreq(gx.shape[1])[None, :]
    k2 = kx**2 + ky**2
    k2[0, 0] = 1.0
    spectrum = (kx * np.fft.fft2(gx) + ky * np.fft.fft2(gy)) / (2j * np.pi * k2)
    spectrum[0, 0] = 0.0
    return np.real(np.fft.ifft2(spectrum))

"""Preprocessing that real 4D-STEM data need before a reconstruction.

* dark and gain correction, and a threshold that removes the read noise of empty pixels;
* whole-pixel centring of the patterns and detector binning;
* the bright-field (BF) disk: centre and radius on the detector, and from the radius and
  the known convergence semi-angle, the detector's angular sampling;
* the detector rotation and transposition from the centre-of-mass field
  (:func:`tdmctx.ptycho.detector.estimate_rotation`);
* a defocus estimate from the parallax of BF virtual images: the image formed by one
  detector pixel at scattering angle ``alpha`` (rad) is the BF image displaced by
  ``C10 * alpha`` (the geometric ray offset of a defocused probe), so fitting the displacement
  of each pixel's image against its angle gives ``C10``; the package follows abTEM's sign,
  ``defocus_A = -C10`` (positive = underfocus).

Each function returns what it measured so that a chapter can show it.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from tdmctx.ptycho.detector import _rotate_to_real

__all__ = [
    "BrightFieldDisk",
    "DefocusEstimate",
    "apply_dark_gain",
    "bright_field_disk",
    "angular_sampling_from_disk",
    "estimate_defocus",
    "central_field",
    "threshold_electrons",
    "centre_patterns",
    "bin_patterns",
]


def apply_dark_gain(datacube: np.ndarray, dark: np.ndarray | None = None, gain: np.ndarray | None = None) -> np.ndarray:
    """Return ``(datacube - dark) * gain`` as float32.

    Parameters
    ----------
    datacube
        (scan_rows, scan_cols, k0, k1) raw frames.
    dark, gain
        (k0, k1) dark reference (counts) and per-pixel gain (dimensionless), or ``None``.
        Negative values after dark subtraction are kept: the reconstruction clips them by
        its documented policy (:func:`tdmctx.ptycho.detector.prepare_counts`).
    """
    cube = np.asarray(datacube, dtype=np.float32)
    if cube.ndim != 4:
        raise ValueError(f"datacube has shape {cube.shape}; expected (scan_rows, scan_cols, k0, k1)")
    for name, ref in (("dark", dark), ("gain", gain)):
        if ref is not None:
            ref = np.asarray(ref)
            if ref.shape != cube.shape[2:]:
                raise ValueError(f"{name} has shape {ref.shape}; expected the detector shape {cube.shape[2:]}")
            if not np.all(np.isfinite(ref)):
                raise ValueError(f"{name} holds NaN or infinite values")
    if dark is not None:
        cube = cube - np.asarray(dark, dtype=np.float32)
    if gain is not None:
        cube = cube * np.asarray(gain, dtype=np.float32)
    return cube


@dataclass(frozen=True)
class BrightFieldDisk:
    """Centre (k0, k1) and radius of the bright-field disk, detector pixels."""

    centre_px: tuple[float, float]
    radius_px: float


def bright_field_disk(patterns: np.ndarray, *, threshold: float = 0.5) -> BrightFieldDisk:
    """Find the bright-field disk in the mean diffraction pattern.

    The disk is the connected region above ``threshold`` times the pattern's robust
    maximum that contains the brightest pixel; its centre is the intensity-weighted
    centroid and its radius ``sqrt(area / pi)``, which is exact for a uniform disk and
    insensitive to the speckle inside it.

    Parameters
    ----------
    patterns
        (k0, k1) mean pattern, or a (..., k0, k1) stack that is averaged first.
    threshold
        Fraction of the robust maximum (99.5th percentile) that separates disk from dark field.
    """
    mean = np.asarray(patterns, dtype=np.float64)
    if mean.ndim < 2:
        raise ValueError(f"patterns has shape {mean.shape}; expected (..., k0, k1)")
    if mean.ndim > 2:
        mean = mean.reshape(-1, *mean.shape[-2:]).mean(axis=0)
    if not 0 < threshold < 1:
        raise ValueError(f"threshold={threshold!r} must lie in (0, 1)")
    top = np.percentile(mean, 99.5)
    if not top > 0:
        raise ValueError("the mean pattern has no positive intensity; is the datacube empty or dark-subtracted to zero?")
    mask = mean > threshold * top
    labels, _ = ndimage.label(mask)
    brightest = np.unravel_index(np.argmax(ndimage.uniform_filter(mean, 3)), mean.shape)
    disk = labels == labels[brightest]
    weights = np.where(disk, mean, 0.0)
    c0, c1 = ndimage.center_of_mass(weights)
    return BrightFieldDisk(centre_px=(float(c0), float(c1)), radius_px=float(np.sqrt(disk.sum() / np.pi)))


def angular_sampling_from_disk(disk: BrightFieldDisk, semiangle_mrad: float) -> float:
    """Detector sampling, mrad per pixel, from the disk radius and the convergence semi-angle."""
    if not semiangle_mrad > 0:
        raise ValueError(f"semiangle_mrad={semiangle_mrad!r} must be positive")
    return float(semiangle_mrad / disk.radius_px)


@dataclass(frozen=True)
class DefocusEstimate:
    """Result of :func:`estimate_defocus`.

    Attributes
    ----------
    defocus_A
        abTEM convention (``-C10``), Angstrom; positive = underfocus.
    angles_mrad
        (G, 2) scattering angle (x, y) of each pixel group, mrad, in the real-space frame.
    shifts_A
        (G, 2) measured displacement (x, y) of each group's virtual image, Angstrom.
    residual_A
        RMS of the shifts not explained by the fit, Angstrom.
    """

    defocus_A: float
    angles_mrad: np.ndarray
    shifts_A: np.ndarray
    residual_A: float


def _subpixel_shift(reference: np.ndarray, image: np.ndarray, upsample: int) -> np.ndarray:
    from skimage.registration import phase_cross_correlation

    shift, _, _ = phase_cross_correlation(reference, image, upsample_factor=upsample, normalization=None)
    return np.asarray(shift, dtype=np.float64)  # (rows, cols) that moves image onto reference


def central_field(datacube: np.ndarray, max_positions: int) -> np.ndarray:
    """The central ``max_positions x max_positions`` scan positions of a 4D dataset (all if fewer).

    The parallax defocus estimate wants a field several times the largest parallax shift but
    not so large that, on a crystal, a wrong lattice peak of the periodic correlation wins
    (:func:`estimate_defocus`); a central crop keeps the sharpest, least distorted part.

    Parameters
    ----------
    datacube
        (scan_rows, scan_cols, k0, k1) patterns.
    max_positions
        Largest side of the field, scan positions.
    """
    cube = np.asarray(datacube)
    if cube.ndim != 4 or int(max_positions) < 1:
        raise ValueError(f"datacube {cube.shape} must be 4-D and max_positions={max_positions!r} >= 1")
    n = int(max_positions)
    rows0, cols0 = max(0, (cube.shape[0] - n) // 2), max(0, (cube.shape[1] - n) // 2)
    return cube[rows0:rows0 + n, cols0:cols0 + n]


def estimate_defocus(
    datacube: np.ndarray,
    step_A: float | tuple[float, float],
    angular_sampling_mrad: float | tuple[float, float],
    *,
    rotation_deg: float = 0.0,
    transpose: bool = False,
    disk: BrightFieldDisk | None = None,
    max_fraction: float = 0.8,
    group_px: int | None = None,
    upsample: int = 20,
    iterations: int = 3,
) -> DefocusEstimate:
    """Estimate the probe defocus from the parallax of bright-field virtual images.

    Parameters
    ----------
    datacube
        (scan_rows, scan_cols, k0, k1) patterns on a regular raster.
    step_A
        Scan step along (x, y), Angstrom.
    angular_sampling_mrad
        Detector sampling along (k0, k1), mrad per pixel.
    rotation_deg, transpose
        Detector orientation (design notes); the fit is done in the real-space frame.
    disk
        The BF disk; found with :func:`bright_field_disk` by default.
    max_fraction
        Only pixels within this fraction of the disk radius are used (the disk edge carries
        little signal and much aperture ringing).
    group_px
        Side of the square pixel groups summed into one virtual image; chosen so that about
        50 groups cover the disk by default.
    upsample
        Sub-pixel factor of the cross-correlation.
    iterations
        Rounds of reference sharpening (align, fit, average the back-shifted images).

    Returns
    -------
    DefocusEstimate

    Notes
    -----
    The field of view must be several times the largest parallax shift
    ``|defocus| * alpha_max``: the correlations are periodic, and on a field only about four
    times the shift the estimate comes out low (measured on the forward model of the tests:
    a 16 x 16 scan at 0.6 A steps with 150 A defocus gave 71 A; 32 x 32 gave 145 A).
    """
    cube = np.asarray(datacube, dtype=np.float32)
    if cube.ndim != 4 or min(cube.shape[:2]) < 4:
        raise ValueError(f"datacube has shape {cube.shape}; expected (scan_rows>=4, scan_cols>=4, k0, k1)")
    step = np.broadcast_to(np.asarray(step_A, dtype=np.float64), (2,))
    dk = np.broadcast_to(np.asarray(angular_sampling_mrad, dtype=np.float64), (2,))
    if not (np.all(step > 0) and np.all(dk > 0)):
        raise ValueError(f"step_A={step_A!r} and angular_sampling_mrad={angular_sampling_mrad!r} must be positive")
    disk = disk or bright_field_disk(cube)
    r_max = max_fraction * disk.radius_px
    if group_px is None:
        group_px = max(1, int(round(np.sqrt(np.pi * r_max**2 / 50))))
    n0, n1 = cube.shape[2:]
    k0, k1 = np.meshgrid(np.arange(n0) - disk.centre_px[0], np.arange(n1) - disk.centre_px[1], indexing="ij")
    inside = k0**2 + k1**2 <= r_max**2
    group = (np.floor(k0 / group_px).astype(int) * 100003 + np.floor(k1 / group_px).astype(int))
    ids = np.unique(group[inside])
    images, angles = [], []
    for gid in ids:
        members = inside & (group == gid)
        if members.sum() < max(1, group_px * group_px // 2):
            continue  # partial groups at the rim are noisy and biased
        images.append(cube[:, :, members].sum(axis=-1))
        angles.append([k0[members].mean() * dk[0], k1[members].mean() * dk[1]])
    if len(images) < 6:
        raise ValueError(f"only {len(images)} pixel groups inside the bright-field disk; lower group_px")
    images = np.asarray(images, dtype=np.float64)
    images -= images.mean(axis=(1, 2), keepdims=True)
    angles = np.asarray(angles)
    detector = angles[:, ::-1] if transpose else angles
    ax, ay = _rotate_to_real(detector, np.deg2rad(rotation_deg))
    angles_xy = np.stack([ax, ay], axis=-1)
    alpha = angles_xy * 1e-3
    # The mean of all images is a poor reference (its content is smeared over every shift,
    # which leaves a flat-topped correlation peak), so start from the group nearest the
    # optical axis, which is hardly displaced, and sharpen the reference by averaging the
    # images shifted back along the fitted model.
    reference = images[np.argmin(np.hypot(*angles_xy.T))]
    window = np.outer(np.hanning(images.shape[1]), np.hanning(images.shape[2]))
    for _ in range(iterations):
        shifts_px = np.array([_subpixel_shift(reference * window, image * window, upsample) for image in images])
        # phase_cross_correlation returns the shift that registers image onto reference, i.e.
        # minus the displacement of the image content; (rows, cols) -> (x, y) Angstrom.
        shifts_A = -shifts_px[:, ::-1] * step
        # The content seen through angle alpha is displaced by -C10 * alpha (shown against a
        # forward model with abTEM's phase convention in the tests); defocus = -C10, so the
        # displacement is defocus * alpha.
        slope = float(np.sum(shifts_A * alpha) / np.sum(alpha * alpha))
        back_px = -(slope * alpha / step)[:, ::-1]  # (rows, cols) that undo each displacement
        reference = np.mean(
            [np.real(np.fft.ifft2(ndimage.fourier_shift(np.fft.fft2(im), shift))) for im, shift in zip(images, back_px)],
            axis=0,
        )
    residual = float(np.sqrt(np.mean(np.sum((shifts_A - slope * alpha) ** 2, axis=1))))
    return DefocusEstimate(defocus_A=slope, angles_mrad=angles_xy, shifts_A=shifts_A, residual_A=residual)


def threshold_electrons(electrons: np.ndarray, threshold_e: float = 0.5) -> np.ndarray:
    """Zero every pixel below ``threshold_e`` electrons (the read noise of empty pixels).

    Why: most dark-field pixels receive no electron, and their Gaussian read noise, once the
    reconstruction clips negative values (:func:`tdmctx.ptycho.detector.prepare_counts`),
    becomes a positive background of ``0.4 sigma`` per pixel (about 2 % of the electrons of
    a pattern for the defaults) that no object explains. With read noise well below one
    electron, a threshold of half an electron removes it and keeps every real electron.

    Parameters
    ----------
    electrons
        Dark- and gain-corrected patterns in electrons, any shape.
    threshold_e
        Threshold, electrons; 0 keeps everything.
    """
    values = np.asarray(electrons)
    if not (np.isfinite(threshold_e) and threshold_e >= 0):
        raise ValueError(f"threshold_e={threshold_e!r} must be a finite number of electrons >= 0")
    return np.where(values < threshold_e, values.dtype.type(0), values)


def centre_patterns(datacube: np.ndarray, centre_px: tuple[float, float]) -> tuple[np.ndarray, tuple[int, int]]:
    """Move the pattern centre to pixel ``(n0 // 2, n1 // 2)`` by a whole-pixel shift.

    Pixels shifted in from outside the detector are zero (no wrap-around); a sub-pixel
    remainder (at most half a pixel) is a small probe tilt that probe retrieval absorbs.

    Parameters
    ----------
    datacube
        ``(..., k0, k1)`` patterns.
    centre_px
        Measured centre ``(k0, k1)``, e.g. :func:`bright_field_disk`.

    Returns
    -------
    patterns : ndarray, same shape
    shift_px : (int, int), the whole-pixel shift applied along (k0, k1)
    """
    cube = np.asarray(datacube)
    if cube.ndim < 2:
        raise ValueError(f"datacube has shape {cube.shape}; expected (..., k0, k1)")
    n0, n1 = cube.shape[-2:]
    shift = (int(round(n0 // 2 - centre_px[0])), int(round(n1 // 2 - centre_px[1])))
    if abs(shift[0]) > n0 // 4 or abs(shift[1]) > n1 // 4:
        raise ValueError(f"centre_px={centre_px!r} lies outside the central half of a {n0} x {n1} detector")
    out = np.zeros_like(cube)
    src0, dst0 = slice(max(0, -shift[0]), n0 - max(0, shift[0])), slice(max(0, shift[0]), n0 - max(0, -shift[0]))
    src1, dst1 = slice(max(0, -shift[1]), n1 - max(0, shift[1])), slice(max(0, shift[1]), n1 - max(0, -shift[1]))
    out[..., dst0, dst1] = cube[..., src0, src1]
    return out, shift


def bin_patterns(datacube: np.ndarray, factor: int) -> np.ndarray:
    """Sum ``factor x factor`` blocks of detector pixels (a coarser detector, same real-space pixel).

    The reconstruction's real-space pixel ``lambda / (n dk)`` is unchanged, its window shrinks
    by ``factor`` and each pass costs about ``factor**2`` times less. The summed pixel is a
    slight blur of the pattern that the engine's forward model does not include, and the
    pattern centre moves to ``(n // 2 - 1/2 + 1/(2 factor))`` of the new grid: for an even
    factor the disk sits a fraction of a pixel off the grid's centre, a small probe tilt.

    Parameters
    ----------
    datacube
        ``(..., k0, k1)`` patterns; both detector axes must be divisible by ``factor``.
    factor
        Block size, 1 (no binning) or more.
    """
    cube = np.asarray(datacube)
    factor = int(factor)
    if factor < 1:
        raise ValueError(f"factor={factor!r} must be a positive integer")
    n0, n1 = cube.shape[-2:]
    if n0 % factor or n1 % factor:
        raise ValueError(f"detector {n0} x {n1} is not divisible by factor={factor}")
    if factor == 1:
        return cube
    shaped = cube.reshape(*cube.shape[:-2], n0 // factor, factor, n1 // factor, factor)
    return shaped.sum(axis=(-3, -1), dtype=np.float64).astype(cube.dtype)

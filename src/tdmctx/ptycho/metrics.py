"""Scoring reconstructions against the truth: position error, its decomposition, object fidelity.

* :func:`rms_error_A`: RMS distance to the true positions after removing the global
  translation, the one freedom ptychography cannot see when the detector calibration is given.
* :func:`error_decomposition`: the same error split into affine, line, low-pass and high-pass
  parts by :func:`tdmctx.ptycho.constraints.decompose` (RMS of each part).
* :func:`phase_fidelity`: the reconstructed object phase against the ground-truth
  transmission function, after removing a global phase, a linear phase ramp and a sub-pixel
  shift, compared within the information limit (Pearson correlation and Fourier ring
  correlation).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy import ndimage, optimize

from tdmctx.ptycho.constraints import decompose, fit_affine

__all__ = [
    "rms_error_A",
    "error_decomposition",
    "decomposition_history",
    "PhaseFidelity",
    "phase_fidelity",
    "truth_on_grid",
    "fourier_ring_correlation",
    "information_limit_per_A",
    "score",
    "affine_parameters",
    "rms_without_rotation_A",
]

_PARTS = ("affine", "line", "lowpass", "highpass")


def _flat_pair(name: str, value: np.ndarray) -> np.ndarray:
    arr = np.asarray(value, dtype=np.float64)
    if arr.shape[-1:] != (2,):
        raise ValueError(f"{name} has shape {arr.shape}; expected (..., 2) (x, y) positions in Angstrom")
    return arr.reshape(-1, 2)


def rms_error_A(positions_A: np.ndarray, true_positions_A: np.ndarray, *, remove_translation: bool = True) -> float:
    """RMS position error, Angstrom, after removing the mean offset (the global translation).

    Parameters
    ----------
    positions_A, true_positions_A
        ``(..., 2)`` (x, y) positions of equal shape, Angstrom.
    remove_translation
        Subtract the mean error first (default); ``False`` gives the raw RMS.
    """
    p = _flat_pair("positions_A", positions_A)
    t = _flat_pair("true_positions_A", true_positions_A)
    if p.shape != t.shape:
        raise ValueError(
            f"positions_A {np.shape(positions_A)} and true_positions_A {np.shape(true_positions_A)} differ; "
            "expected equal shapes"
        )
    err = p - t
    if remove_translation:
        err = err - err.mean(axis=0)
    return float(np.sqrt(np.mean(np.sum(err**2, axis=1))))


def error_decomposition(
    positions_A: np.ndarray, true_positions_A: np.ndarray, scan_shape: tuple[int, int] | None = None
) -> dict[str, float]:
    """RMS of each part of the position error (affine, line, low-pass, high-pass), Angstrom.

    The error is split by :func:`tdmctx.ptycho.constraints.decompose`, fitted against the true
    positions; the parts sum to the error, and ``total`` is :func:`rms_error_A`.

    Parameters
    ----------
    positions_A, true_positions_A
        ``(scan_rows, scan_cols, 2)`` arrays, or ``(N, 2)`` with ``scan_shape`` given.
    scan_shape
        ``(scan_rows, scan_cols)`` when the inputs are flat.
    """

    if scan_shape is None:
        if np.ndim(true_positions_A) != 3:
            raise ValueError("scan_shape is needed when the positions are flat (N, 2)")
        scan_shape = tuple(np.shape(true_positions_A)[:2])  # type: ignore[assignment]
    p = _flat_pair("positions_A", positions_A)
    t = _flat_pair("true_positions_A", true_positions_A)
    parts = decompose(p - t, t, scan_shape)
    out = {"total": rms_error_A(p, t)}
    for name in _PARTS:
        out[name] = float(np.sqrt(np.mean(np.sum(np.asarray(parts[name]) ** 2, axis=1))))
    return out


def decomposition_history(history_A: np.ndarray, true_positions_A: np.ndarray) -> dict[str, np.ndarray]:
    """:func:`error_decomposition` for every entry of a position history ``(iterations, rows, cols, 2)``."""
    rows = [error_decomposition(p, true_positions_A) for p in np.asarray(history_A)]
    return {key: np.array([r[key] for r in rows]) for key in rows[0]}


def truth_on_grid(
    true_object: np.ndarray,
    true_sampling_A: tuple[float, float],
    shape: tuple[int, int],
    pixel_size_A: float,
    origin_A: np.ndarray,
    rotation_deg: float = 0.0,
    k_limit_per_A: float | None = None,
) -> np.ndarray:
    """Phase of a periodic ground-truth transmission function sampled on a reconstruction grid.

    Parameters
    ----------
    true_object
        Complex transmission function over one periodic cell, ``(y, x)``, pixel (0, 0) at the origin.
    true_sampling_A
        ``(x, y)`` pixel size of ``true_object``, Angstrom.
    shape
        ``(rows, cols)`` of the reconstruction grid.
    pixel_size_A, origin_A, rotation_deg
        Reconstruction pixel, ``(x, y)`` of its pixel (0, 0) in the reconstruction frame, and the
        frame's rotation from real-space x.
    k_limit_per_A
        Low-pass the truth to this spatial frequency first (1/Angstrom), so that sampling it on a
        coarser grid does not alias.

    Returns
    -------
    ndarray, ``shape``: the phase, radians.
    """
    phase = np.angle(true_object * np.exp(-1j * np.angle(np.mean(true_object))))
    if k_limit_per_A is not None:
        ky = np.fft.fftfreq(phase.shape[0], d=true_sampling_A[1])[:, None]
        kx = np.fft.fftfreq(phase.shape[1], d=true_sampling_A[0])[None, :]
        phase = np.real(np.fft.ifft2(np.fft.fft2(phase) * (kx**2 + ky**2 <= k_limit_per_A**2)))
    iy, ix = np.indices(shape, dtype=np.float64)
    fx = origin_A[0] + ix * pixel_size_A
    fy = origin_A[1] + iy * pixel_size_A
    t = np.deg2rad(rotation_deg)
    x = np.cos(t) * fx - np.sin(t) * fy
    y = np.sin(t) * fx + np.cos(t) * fy
    coords = np.stack([y / true_sampling_A[1], x / true_sampling_A[0]])
    return ndimage.map_coordinates(phase, coords, order=3, mode="grid-wrap")


def fourier_ring_correlation(a: np.ndarray, b: np.ndarray, pixel_size_A: float, n_rings: int = 24):
    """Fourier ring correlation of two equally shaped real images (Hann-windowed).

    Returns
    -------
    k_per_A : ndarray, ring centres, 1/Angstrom
    frc : ndarray, correlation per ring
    """
    if a.shape != b.shape:
        raise ValueError(f"images have shapes {a.shape} and {b.shape}; expected equal shapes")
    window = np.outer(np.hanning(a.shape[0]), np.hanning(a.shape[1]))
    fa = np.fft.fft2((a - a.mean()) * window)
    fb = np.fft.fft2((b - b.mean()) * window)
    ky = np.fft.fftfreq(a.shape[0], d=pixel_size_A)[:, None]
    kx = np.fft.fftfreq(a.shape[1], d=pixel_size_A)[None, :]
    k = np.sqrt(kx**2 + ky**2)
    edges = np.linspace(0.0, 0.5 / pixel_size_A, n_rings + 1)
    ring = np.digitize(k, edges) - 1
    frc = np.full(n_rings, np.nan)
    for i in range(n_rings):
        sel = ring == i
        denom = np.sqrt(np.sum(np.abs(fa[sel]) ** 2) * np.sum(np.abs(fb[sel]) ** 2))
        if denom > 0:
            frc[i] = np.real(np.sum(fa[sel] * np.conj(fb[sel]))) / denom
    return 0.5 * (edges[1:] + edges[:-1]), frc


@dataclass
class PhaseFidelity:
    """Object phase compared with the truth (see :func:`phase_fidelity`)."""

    correlation: float
    frc_mean: float
    k_limit_per_A: float
    shift_A: np.ndarray
    frc_k_per_A: np.ndarray
    frc: np.ndarray
    phase: np.ndarray
    true_phase: np.ndarray


def phase_fidelity(
    obj: np.ndarray,
    pixel_size_A: float,
    origin_A: np.ndarray,
    true_object: np.ndarray,
    true_sampling_A: tuple[float, float],
    region_A: tuple[float, float, float, float],
    k_limit_per_A: float,
    rotation_deg: float = 0.0,
) -> PhaseFidelity:
    """Compare a reconstructed object phase with the ground truth within the information limit.

    A global phase, a linear phase ramp and a sub-pixel shift are removed first (none is
    determined by ptychography without extra references); both phases are then low-passed to
    ``k_limit_per_A`` and compared inside ``region_A`` (the scanned field).

    Parameters
    ----------
    obj
        Complex object ``(y, x)`` (the first slice is used for a multislice object).
    pixel_size_A, origin_A, rotation_deg
        As in :class:`tdmctx.ptycho.io.ReconstructionResult`.
    true_object, true_sampling_A
        Periodic ground truth and its ``(x, y)`` sampling.
    region_A
        ``(x_min, x_max, y_min, y_max)`` in the reconstruction frame, Angstrom.
    k_limit_per_A
        Information limit, 1/Angstrom (for ptychography about twice the aperture, ``2 alpha / lambda``).

    Returns
    -------
    PhaseFidelity
    """
    from skimage.registration import phase_cross_correlation

    obj = np.asarray(obj)
    if obj.ndim == 3:
        obj = obj[0]
    truth = truth_on_grid(true_object, true_sampling_A, obj.shape, pixel_size_A, origin_A, rotation_deg, k_limit_per_A)
    x0, x1, y0, y1 = region_A
    c0 = int(np.ceil((x0 - origin_A[0]) / pixel_size_A))
    c1 = int(np.floor((x1 - origin_A[0]) / pixel_size_A)) + 1
    r0 = int(np.ceil((y0 - origin_A[1]) / pixel_size_A))
    r1 = int(np.floor((y1 - origin_A[1]) / pixel_size_A)) + 1
    if min(r1 - r0, c1 - c0) < 8:
        raise ValueError(f"region_A={region_A!r} covers fewer than 8 x 8 object pixels")
    sl = (slice(max(r0, 0), r1), slice(max(c0, 0), c1))
    # Remove the ramp on the complex object first (mean phase step between neighbours), so
    # that taking the angle does not wrap; the least-squares plane below removes the rest.
    sub = obj[sl]
    gx = np.angle(np.sum(sub[:, 1:] * np.conj(sub[:, :-1])))
    gy = np.angle(np.sum(sub[1:, :] * np.conj(sub[:-1, :])))
    rows, cols = np.indices(obj.shape)
    obj = obj * np.exp(-1j * (gx * cols + gy * rows))
    phase = np.angle(obj * np.exp(-1j * np.angle(np.mean(obj[sl]))))
    ky = np.fft.fftfreq(phase.shape[0], d=pixel_size_A)[:, None]
    kx = np.fft.fftfreq(phase.shape[1], d=pixel_size_A)[None, :]
    lowpass = kx**2 + ky**2 <= k_limit_per_A**2
    phase = np.real(np.fft.ifft2(np.fft.fft2(phase) * lowpass))
    spectrum = np.fft.fft2(phase)
    yy, xx = np.indices(truth[sl].shape, dtype=np.float64)
    design = np.stack([np.ones(xx.size), xx.ravel(), yy.ravel()], axis=1)

    def aligned(shift_px: np.ndarray) -> np.ndarray:
        """Phase shifted by (dy, dx) pixels, minus the best plane against the truth, in the region."""
        moved = np.real(np.fft.ifft2(spectrum * np.exp(-2j * np.pi * (ky * shift_px[0] + kx * shift_px[1])
                                                        * pixel_size_A)))[sl]
        coef, *_ = np.linalg.lstsq(design, (moved - truth[sl]).ravel(), rcond=None)
        return moved - (design @ coef).reshape(moved.shape)

    # Cross-correlation gives the start; a direct least-squares fit refines it, since the
    # upsampled correlation peak is biased on small non-periodic regions.
    start, _, _ = phase_cross_correlation(truth[sl], phase[sl], upsample_factor=10, normalization=None)
    fit = optimize.minimize(lambda s: float(np.sum((aligned(s) - truth[sl]) ** 2)), start, method="Nelder-Mead",
                            options={"xatol": 1e-3, "fatol": 1e-12})
    shift = fit.x
    a, b = aligned(shift), truth[sl]
    corr = float(np.corrcoef(a.ravel(), b.ravel())[0, 1])
    k_rings, frc = fourier_ring_correlation(a, b, pixel_size_A)
    inside = (k_rings <= k_limit_per_A) & np.isfinite(frc)
    return PhaseFidelity(
        correlation=corr,
        frc_mean=float(np.mean(frc[inside])) if inside.any() else float("nan"),
        k_limit_per_A=float(k_limit_per_A),
        shift_A=np.asarray(shift[::-1]) * pixel_size_A,
        frc_k_per_A=k_rings,
        frc=frc,
        phase=a,
        true_phase=b,
    )


def information_limit_per_A(energy_eV: float, semiangle_mrad: float, pixel_size_A: float) -> float:
    """Ptychographic information limit, ``2 alpha / lambda``, capped at the object grid's Nyquist (1/Angstrom)."""
    from tdmctx.ptycho.detector import wavelength_A

    return float(min(2 * semiangle_mrad * 1e-3 / wavelength_A(energy_eV), 0.5 / pixel_size_A))


def score(result, dataset, *, margin_A: float = 0.5) -> dict[str, float]:
    """Score a reconstruction of a simulated dataset against its stored truth.

    Parameters
    ----------
    result
        :class:`tdmctx.ptycho.io.ReconstructionResult`.
    dataset
        :class:`tdmctx.ptycho.io.PtychoDataset` with ``true_positions_A`` (and, for the object
        scores, ``true_object`` and ``true_object_sampling_A``) in its extras.
    margin_A
        The object is compared inside the scanned field shrunk by this margin, Angstrom.

    Returns
    -------
    dict
        ``rms_A`` and its parts (``affine_A``, ``line_A``, ``lowpass_A``, ``highpass_A``),
        ``best_rms_A`` and ``best_iteration`` over the log, ``phase_correlation`` and
        ``frc_mean`` (NaN without an object truth), ``seconds_per_pass``.
    """
    true = np.asarray(dataset.extras["true_positions_A"], dtype=np.float64)
    parts = error_decomposition(result.positions_A, true)
    out = {"rms_A": parts["total"]}
    out.update({f"{k}_A": parts[k] for k in _PARTS})
    rms_log = np.asarray(result.log.get("rms_position_error_A", [parts["total"]]))
    out["best_rms_A"] = float(rms_log.min())
    out["best_iteration"] = int(np.argmin(rms_log)) + 1
    times = np.asarray(result.log.get("time_s", [np.nan]))
    out["seconds_per_pass"] = float(times[-1] / len(times))
    out["phase_correlation"] = out["frc_mean"] = float("nan")
    if "true_object" in dataset.extras:
        # The scanned field in the reconstruction frame, shrunk by the margin.
        t = np.deg2rad(result.object_rotation_deg)
        rot = np.array([[np.cos(t), np.sin(t)], [-np.sin(t), np.cos(t)]])
        frame = true.reshape(-1, 2) @ rot.T
        lo, hi = frame.min(axis=0) + margin_A, frame.max(axis=0) - margin_A
        fid = phase_fidelity(
            result.object, result.object_pixel_size_A, np.asarray(result.object_origin_A),
            dataset.extras["true_object"], tuple(dataset.extras["true_object_sampling_A"]),
            (lo[0], hi[0], lo[1], hi[1]),
            information_limit_per_A(dataset.energy_eV, dataset.semiangle_mrad, result.object_pixel_size_A),
            rotation_deg=result.object_rotation_deg,
        )
        out["phase_correlation"], out["frc_mean"] = fid.correlation, fid.frc_mean
    return out


def affine_parameters(positions_A: np.ndarray, reference_A: np.ndarray) -> dict[str, float]:
    """The global affine part of ``positions - reference`` as scale, rotation and shear.

    The least-squares affine map (:func:`tdmctx.ptycho.constraints.fit_affine`) of the
    displacement field is read as ``R(rotation) @ [[1 + scale_x, shear], [0, 1 + scale_y]] - I``
    (:class:`tdmctx.ptycho.scan.AffineError`) to first order: ``scale_x = M[0, 0]``,
    ``scale_y = M[1, 1]``, ``rotation = M[1, 0]`` (rad) and ``shear = M[0, 1] + M[1, 0]``.
    Linear drift in a raster is affine and shows up here too.

    Parameters
    ----------
    positions_A, reference_A
        ``(..., 2)`` positions (x, y), Angstrom, e.g. true (or refined) and nominal.

    Returns
    -------
    dict
        ``scale_x_pct``, ``scale_y_pct``, ``rotation_deg``, ``shear_pct``.
    """
    reference = np.asarray(reference_A, dtype=np.float64).reshape(-1, 2)
    matrix, _ = fit_affine(np.asarray(positions_A, dtype=np.float64).reshape(-1, 2) - reference, reference)
    return {
        "scale_x_pct": 100.0 * float(matrix[0, 0]),
        "scale_y_pct": 100.0 * float(matrix[1, 1]),
        "rotation_deg": float(np.rad2deg(matrix[1, 0])),
        "shear_pct": 100.0 * float(matrix[0, 1] + matrix[1, 0]),
    }


def rms_without_rotation_A(positions_A: np.ndarray, true_positions_A: np.ndarray) -> tuple[float, float]:
    """RMS position error after removing the global translation and the best global rotation.

    Why: the data fix the scan only relative to the detector, so a rotation of the whole scan
    cannot be told from an error of the detector rotation estimated from the same data (the
    centre-of-mass estimate absorbs the scan's own rotation). This is the error that is left
    once that shared gauge is removed; :func:`tdmctx.ptycho.metrics.rms_error_A` keeps it.

    Parameters
    ----------
    positions_A, true_positions_A
        ``(..., 2)`` positions (x, y) of equal shape, Angstrom.

    Returns
    -------
    rms_A : float
        Angstrom.
    rotation_deg : float
        The rotation of the estimate about its centroid that was removed (counter-clockwise).
    """
    p = np.asarray(positions_A, dtype=np.float64).reshape(-1, 2)
    t = np.asarray(true_positions_A, dtype=np.float64).reshape(-1, 2)
    if p.shape != t.shape or not (np.all(np.isfinite(p)) and np.all(np.isfinite(t))):
        raise ValueError(f"positions_A {np.shape(positions_A)} and true_positions_A {np.shape(true_positions_A)} "
                         "must be finite and of equal shape (..., 2)")
    p, t = p - p.mean(axis=0), t - t.mean(axis=0)
    # The rotation angle that maps p best onto t (2-D Procrustes without scaling).
    angle = math.atan2(float(np.sum(p[:, 0] * t[:, 1] - p[:, 1] * t[:, 0])), float(np.sum(p * t)))
    c, s = math.cos(angle), math.sin(angle)
    aligned = p @ np.array([[c, -s], [s, c]]).T
    return float(np.sqrt(np.mean(np.sum((aligned - t) ** 2, axis=1)))), float(-np.rad2deg(angle))

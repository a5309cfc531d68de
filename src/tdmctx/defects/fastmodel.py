"""Calibrated incoherent imaging model: column intensities x effective probe, then convolution.

In the incoherent approximation an ADF image is the probe intensity convolved with an
object function made of one small blob per atomic column,

    I(R) = b + sum_c sum_{j in c} [P * O_c](R - r_j),      O_c = sum_k A_ck G_k,

where ``P`` is the probe intensity, point-reflected (the image of a point scatterer at
r0 is ``|psi(r0 - R)|^2``, so odd aberrations such as coma appear mirrored), and the
object function of class ``c`` is a sum of normalised Gaussians ``G_k`` of fixed widths
(``sigma = 0`` is a point). ``A_ck`` are fitted by linear least squares to one multislice
image of a calibration cell that holds every class; ``sum_k A_ck`` is the column's
integrated intensity (fraction of the beam x A^2). The probe comes from abTEM with the
aberrations of the condition, so the fitted part is only the column physics.

Once calibrated, an image of any cell follows from the exact structure factors of each
class (a matrix product of per-axis phase factors, no rounding of column positions to
pixels), multiplied by the kernel transforms: one FFT per image.

The approximation breaks where the detector records coherent interference between
neighbouring columns (overlapping Bragg disks on a low-angle detector); :func:`compare`
measures the error against multislice on the same cell, per detector, so that the
dataset build uses the model only under a stated tolerance.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import xarray as xr

from tdmctx.defects.conditions import ProbeSettings
from tdmctx.defects.context import CLASS_NAMES
from tdmctx.devices import resolve_device

__all__ = [
    "OBJECT_SIGMAS_A",
    "FastModel",
    "probe_transfer",
    "calibrate",
    "compare",
    "column_integrals",
    "sample_periodic",
    "COLUMN_RADIUS_A",
]

#: Widths of the Gaussians that build a column's object function, Angstrom: a point
#: (HAADF scattering is concentrated within ~0.1 A, thermal smearing included), then
#: wider terms for low-angle scattering and for cross-talk into neighbouring columns.
OBJECT_SIGMAS_A: tuple[float, ...] = (0.0, 0.3, 0.6, 1.2)

#: Radius of the disk over which a column's intensity is integrated, Angstrom: below
#: half the metal-chalcogen column distance (1.82-1.90 A in the four hosts).
COLUMN_RADIUS_A = 0.8

# Ridge weight relative to the largest squared singular value of the column-normalised
# design. Broad Gaussians summed over a lattice are nearly constant, like the
# background: without it the fit trades them off and class intensities turn negative
# (measured); 1e-4 changes the fit residual by < 2 % of itself.
_RIDGE = 1e-4


def _frequencies(extent_A: tuple[float, float], shape: tuple[int, int], device: torch.device):
    ny, nx = shape
    qx = torch.as_tensor(np.fft.fftfreq(nx, d=extent_A[0] / nx), device=device)
    qy = torch.as_tensor(np.fft.fftfreq(ny, d=extent_A[1] / ny), device=device)
    return qx, qy


def probe_transfer(
    energy_eV: float,
    probe: ProbeSettings,
    extent_A: tuple[float, float],
    shape: tuple[int, int],
    focal_spread_samples: int = 1,
) -> np.ndarray:
    """Fourier transform of the image-space probe intensity on a periodic grid.

    Parameters
    ----------
    energy_eV
        Beam energy, eV.
    probe
        Probe settings; the focal spread is integrated with ``focal_spread_samples``
        Gauss-Hermite nodes (1 = coherent probe at nominal focus).
    extent_A
        Cell (Lx, Ly), Angstrom.
    shape
        (ny, nx) grid; the pixel must be finer than ``lambda / (4 alpha)`` so that the
        intensity (band limit ``2 alpha / lambda``) is not aliased.

    Returns
    -------
    numpy.ndarray
        (ny, nx) complex transform in FFT order, 1 at q = 0: the transfer function of a
        point scatterer at the origin.

    Raises
    ------
    ValueError
        If the grid is too coarse for the probe.
    """
    import abtem

    from tdmctx.defects.simulate import defocus_samples, abtem_to_yx, wavelength_A

    ny, nx = (int(s) for s in shape)
    limit = wavelength_A(energy_eV) / (4 * probe.semiangle_mrad * 1e-3)
    pixel = max(extent_A[0] / nx, extent_A[1] / ny)
    if pixel > limit * 1.0001:
        raise ValueError(f"shape={shape!r} gives {pixel:.3f} A pixels; the probe needs <= {limit:.3f} A (lambda / 4 alpha)")
    aberrations = {k: v for k, v in probe.aberrations_A.items()}
    intensity = np.zeros((nx, ny))
    for defocus, weight in zip(*defocus_samples(probe, focal_spread_samples)):
        wave = abtem.Probe(
            energy=energy_eV, semiangle_cutoff=probe.semiangle_mrad, extent=extent_A, gpts=(nx, ny), defocus=defocus, **aberrations
        )
        intensity += weight * np.abs(np.asarray(wave.build(lazy=False).array)) ** 2
    image = abtem_to_yx(intensity / intensity.sum(), extent_A).values
    qx = np.fft.fftfreq(nx, d=extent_A[0] / nx)
    qy = np.fft.fftfreq(ny, d=extent_A[1] / ny)
    # abTEM builds the probe at the cell centre; move it to the origin, then point-reflect
    # (complex conjugate of a real function's transform).
    centre = np.exp(2j * np.pi * (qx[None, :] * extent_A[0] / 2 + qy[:, None] * extent_A[1] / 2))
    return np.conj(np.fft.fft2(image) * centre)


def _structure_factors(points_A, labels, extent_A, shape, device) -> dict[str, torch.Tensor]:
    """Per-class structure factors sum_j exp(-2 pi i q.r_j) on the grid's frequencies."""
    qx, qy = _frequencies(extent_A, shape, device)
    points = torch.as_tensor(np.asarray(points_A, dtype=np.float64), device=device)
    labels = np.asarray(labels)
    out = {}
    for c in CLASS_NAMES:
        sel = labels == c
        if not sel.any():
            continue
        p = points[torch.as_tensor(sel, device=device)]
        ex = torch.exp(-2j * np.pi * p[:, :1] * qx[None, :])
        ey = torch.exp(-2j * np.pi * p[:, 1:] * qy[None, :])
        out[c] = ey.T @ ex
    return out


def _gauss_hat(sigma: float, extent_A, shape, device) -> torch.Tensor:
    qx, qy = _frequencies(extent_A, shape, device)
    return torch.exp(-2 * np.pi**2 * sigma**2 * (qy[:, None] ** 2 + qx[None, :] ** 2))


def _to_image(spectrum: torch.Tensor, extent_A, shape) -> torch.Tensor:
    # Fourier coefficients of a periodic sum are (1 / area) x the continuous transform.
    ny, nx = shape
    return torch.fft.ifft2(spectrum).real * (nx * ny) / (extent_A[0] * extent_A[1])


@dataclass(frozen=True)
class FastModel:
    """A calibrated incoherent model for one system, energy and detector.

    Attributes
    ----------
    energy_eV
        Beam energy, eV.
    probe
        Probe settings the model renders with.
    amplitudes
        (5, K) weight of each object-function Gaussian per class (rows in
        :data:`CLASS_NAMES` order), fraction of the beam x A^2.
    sigmas_A
        Widths of the object-function Gaussians, Angstrom.
    background
        Constant background, fraction of the beam.
    fit_nrmse
        RMS residual of the calibration fit / standard deviation of the image.
    """

    energy_eV: float
    probe: ProbeSettings
    amplitudes: np.ndarray
    sigmas_A: tuple[float, ...]
    background: float
    fit_nrmse: float

    def column_intensity(self) -> dict[str, float]:
        """Integrated intensity of each class, fraction of the beam x A^2."""
        return {c: float(self.amplitudes[i].sum()) for i, c in enumerate(CLASS_NAMES)}

    def render(
        self,
        points_A: np.ndarray,
        labels: np.ndarray,
        extent_A: tuple[float, float],
        shape: tuple[int, int],
        *,
        focal_spread_samples: int = 1,
        device: str | torch.device | None = None,
    ) -> np.ndarray:
        """Render the periodic image of a cell on a regular (ny, nx) grid.

        Parameters
        ----------
        points_A, labels
            Columns (N, 2) as (x, y), Angstrom, and their class names.
        extent_A
            Cell (Lx, Ly), Angstrom; pixel (0, 0) sits at the origin.
        shape
            (ny, nx); pixels finer than ``lambda / (4 alpha)``.
        focal_spread_samples
            Gauss-Hermite samples of the focal spread (1 = coherent probe).
        device
            Torch device; the image returns to the CPU.

        Returns
        -------
        numpy.ndarray
            (ny, nx) float32 image, fraction of the beam.
        """
        shape = (int(shape[0]), int(shape[1]))
        if min(shape) < 1:
            raise ValueError(f"shape={shape!r} must be two positive integers")
        unknown = set(np.unique(labels)) - set(CLASS_NAMES)
        if unknown:
            raise ValueError(f"labels hold {sorted(unknown)}; expected class names from {CLASS_NAMES}")
        dev = resolve_device(device)
        p_hat = torch.as_tensor(probe_transfer(self.energy_eV, self.probe, extent_A, shape, focal_spread_samples), device=dev)
        g_hat = [_gauss_hat(s, extent_A, shape, dev) for s in self.sigmas_A]
        spectrum = torch.zeros(shape, dtype=torch.complex128, device=dev)
        for c, structure in _structure_factors(points_A, labels, extent_A, shape, dev).items():
            row = self.amplitudes[CLASS_NAMES.index(c)]
            spectrum += sum(float(a) * g for a, g in zip(row, g_hat)) * structure
        image = _to_image(spectrum * p_hat, extent_A, shape) + self.background
        return image.to(torch.float32).cpu().numpy()


def calibrate(
    image: xr.DataArray,
    points_A: np.ndarray,
    labels: np.ndarray,
    extent_A: tuple[float, float],
    energy_eV: float,
    probe: ProbeSettings,
    *,
    focal_spread_samples: int = 1,
    sigmas_A: tuple[float, ...] = OBJECT_SIGMAS_A,
) -> FastModel:
    """Fit the object functions of every class to a periodic image of a calibration cell.

    Parameters
    ----------
    image
        (y, x) periodic multislice image on its scan grid, coords in Angstrom.
    points_A, labels
        Columns of the cell, (x, y) Angstrom, and their class names.
    extent_A
        Cell (Lx, Ly), Angstrom.
    energy_eV, probe, focal_spread_samples
        The probe the image was simulated with.
    sigmas_A
        Widths of the object-function Gaussians, Angstrom.

    Raises
    ------
    ValueError
        If a class is missing from the cell (its object function would be undefined).
    """
    labels = np.asarray(labels)
    counts = {c: int(np.sum(labels == c)) for c in CLASS_NAMES}
    missing = [c for c, n in counts.items() if n == 0]
    if missing:
        raise ValueError(f"calibration cell lacks class(es) {missing}; counts seen {counts}; every class needs >= 1 site")
    shape = image.shape
    dev = torch.device("cpu")
    p_hat = torch.as_tensor(probe_transfer(energy_eV, probe, extent_A, shape, focal_spread_samples))
    structures = _structure_factors(points_A, labels, extent_A, shape, dev)
    columns = []
    for c in CLASS_NAMES:
        for s in sigmas_A:
            columns.append(_to_image(structures[c] * _gauss_hat(s, extent_A, shape, dev) * p_hat, extent_A, shape).numpy().ravel())
    columns.append(np.ones(int(np.prod(shape))))
    design = np.stack(columns, axis=1)
    target = np.asarray(image.values, dtype=float).ravel()
    norms = np.linalg.norm(design, axis=0)
    scaled = design / norms
    lhs = scaled.T @ scaled
    lhs += _RIDGE * np.linalg.norm(lhs, 2) * np.eye(len(norms))
    coef = np.linalg.solve(lhs, scaled.T @ target) / norms
    residual = design @ coef - target
    return FastModel(
        energy_eV=float(energy_eV),
        probe=probe,
        amplitudes=coef[:-1].reshape(len(CLASS_NAMES), len(sigmas_A)),
        sigmas_A=tuple(float(s) for s in sigmas_A),
        background=float(coef[-1]),
        fit_nrmse=float(np.sqrt(np.mean(residual**2)) / np.std(target)),
    )


def sample_periodic(image: xr.DataArray | np.ndarray, positions_A: np.ndarray, extent_A: tuple[float, float] | None = None) -> np.ndarray:
    """Evaluate a band-limited periodic (y, x) image at (x, y) positions by Fourier series.

    Exact for images sampled above Nyquist (ADF images on the scan grid); cost
    O(positions x pixels), meant for column positions rather than whole images.

    Parameters
    ----------
    image
        (y, x) image of the whole periodic cell with pixel (0, 0) at the origin; a
        DataArray carries its extent in its coords, a plain array needs ``extent_A``.
    positions_A
        (N, 2) positions (x, y), Angstrom.
    """
    values = np.asarray(image.values if isinstance(image, xr.DataArray) else image, dtype=float)
    ny, nx = values.shape
    if extent_A is None:
        if not isinstance(image, xr.DataArray):
            raise ValueError("extent_A is required when image is a plain array")
        extent_A = (float(image["x"][1] - image["x"][0]) * nx, float(image["y"][1] - image["y"][0]) * ny)
    coef = np.fft.fft2(values) / (nx * ny)
    qx = np.fft.fftfreq(nx, d=extent_A[0] / nx)
    qy = np.fft.fftfreq(ny, d=extent_A[1] / ny)
    p = np.asarray(positions_A, dtype=float)
    ex = np.exp(2j * np.pi * p[:, :1] * qx[None, :])
    ey = np.exp(2j * np.pi * p[:, 1:] * qy[None, :])
    return np.einsum("py,yx,px->p", ey, coef, ex).real


def column_integrals(
    image: np.ndarray, extent_A: tuple[float, float], points_A: np.ndarray, radius_A: float = COLUMN_RADIUS_A
) -> np.ndarray:
    """Intensity integrated over a disk around each column of a periodic band-limited image.

    The image is Fourier-interpolated to a grid of <= 0.05 A before summing, so the disk
    edge is resolved. Integrated intensities barely move when a column is displaced,
    unlike peak values: they are robust to the frozen-phonon noise of few configurations.

    Returns
    -------
    numpy.ndarray
        (N,) integrals, image units x A^2.
    """
    from tdmctx.defects.acquisition import fourier_resample

    ny, nx = np.shape(image)
    f = int(np.ceil(max(extent_A[0] / nx, extent_A[1] / ny) / 0.05))
    fine = fourier_resample(np.asarray(image, dtype=float), (ny * f, nx * f))
    dx_px, dy_px = extent_A[0] / (nx * f), extent_A[1] / (ny * f)
    x = np.arange(nx * f) * dx_px
    y = np.arange(ny * f) * dy_px
    out = np.empty(len(points_A))
    for i, (px, py) in enumerate(np.asarray(points_A, dtype=float)):
        # minimum-image offsets along each axis, then the disk mask
        ddx = (x - px + extent_A[0] / 2) % extent_A[0] - extent_A[0] / 2
        ddy = (y - py + extent_A[1] / 2) % extent_A[1] - extent_A[1] / 2
        mask = ddy[:, None] ** 2 + ddx[None, :] ** 2 < radius_A**2
        out[i] = fine[mask].sum() * dx_px * dy_px
    return out


def compare(
    reference: xr.DataArray,
    fast: np.ndarray,
    points_A: np.ndarray,
    labels: np.ndarray,
    extent_A: tuple[float, float],
    reference_noise: np.ndarray | None = None,
) -> dict[str, float]:
    """Error of a fast image against a reference image of the same cell and grid.

    ``reference_noise`` (the ``<detector>_phonon_noise`` image of
    :func:`~tdmctx.defects.simulate.simulate_adf`) adds the reference's own frozen-phonon
    noise at the columns, ``column_noise``, and the fast model's error beyond it,
    ``column_excess = sqrt(max(0, column_rmse^2 - column_noise^2))``: with few phonon
    configurations the reference is not the converged image, and its noise would
    otherwise be charged to the model.

    Returns
    -------
    dict
        ``image_nrmse``: RMS difference / standard deviation of the reference;
        ``column_rmse``: RMS difference of the column intensities (integrated within
        :data:`COLUMN_RADIUS_A`) / mean reference metal-column intensity;
        ``column_error_<class>``: difference of the class-mean column intensity / mean
        reference metal-column intensity (signed).
    """
    ref = np.asarray(reference.values, dtype=float)
    fast = np.asarray(fast, dtype=float)
    if ref.shape != fast.shape:
        raise ValueError(f"fast image shape {fast.shape} differs from the reference {ref.shape}")
    labels = np.asarray(labels)
    out = {"image_nrmse": float(np.sqrt(np.mean((fast - ref) ** 2)) / np.std(ref))}
    ref_cols = column_integrals(ref, extent_A, points_A)
    fast_cols = column_integrals(fast, extent_A, points_A)
    metal = ref_cols[labels == "metal"].mean()
    out["column_rmse"] = float(np.sqrt(np.mean((fast_cols - ref_cols) ** 2)) / metal)
    if reference_noise is not None:
        noise_cols = column_integrals(np.asarray(reference_noise, dtype=float), extent_A, points_A)
        out["column_noise"] = float(np.sqrt(np.mean(noise_cols**2)) / metal)
        out["column_excess"] = float(np.sqrt(max(0.0, out["column_rmse"] ** 2 - out["column_noise"] ** 2)))
    for c in CLASS_NAMES:
        sel = labels == c
        if sel.any():
            out[f"column_error_{c}"] = float((fast_cols[sel].mean() - ref_cols[sel].mean()) / metal)
    return out

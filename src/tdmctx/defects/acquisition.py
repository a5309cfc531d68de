"""From a periodic simulated image to what a STEM records: source blur, scan, dose, read-out.

The simulation engines return the expected intensity of a periodic cell (fraction of the
incident beam). A real acquisition adds

- the finite source size: an incoherent Gaussian blur of the image;
- the scan: the probe visits a (rows, cols) grid in time order, row by row with a
  flyback, while the stage drifts (a linear drift, i.e. an affine distortion) and every
  line is offset by scan-coil jitter; each pixel is the intensity at the probe's true
  position, and columns appear where the distorted scan met them;
- the dose: Poisson counting of the electrons that reach the detector;
- the read-out: gain, a dark offset (the experimental Ti-WSe2 frames sit on ~1e5 counts
  with no vacuum in the field) and Gaussian read noise.

The first two are fixed per stored image (both detectors of one acquisition share the
scan); dose and read-out are drawn per patch by the loader, so that every epoch sees new
noise.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.ndimage import map_coordinates

__all__ = [
    "ScanSettings",
    "fourier_resample",
    "blur_periodic",
    "scan_positions_A",
    "sample_positions",
    "apparent_positions_px",
    "expose",
    "read_out",
]

_FWHM_PER_SIGMA = 2.0 * np.sqrt(2.0 * np.log(2.0))


@dataclass(frozen=True)
class ScanSettings:
    """How a simulated field is scanned.

    Attributes
    ----------
    pixel_size_A
        Scan step, Angstrom (0.4 A like the experimental Ti-WSe2 frames).
    dwell_s, flyback_s
        Time per pixel and per line return, s.
    drift_A_per_s
        RMS of each component of the (constant) drift velocity, drawn per image, A/s.
    line_jitter_A
        RMS offset of every scan line along x (fast axis) and y, A.
    margin_px
        Pixels added around the periodic cell on every side (wrapped), so that a patch
        around any column of the cell lies inside the image.
    """

    pixel_size_A: float = 0.4
    dwell_s: float = 4e-6
    flyback_s: float = 2e-4
    drift_A_per_s: float = 1.0
    line_jitter_A: float = 0.08
    margin_px: int = 20

    def __post_init__(self) -> None:
        if not self.pixel_size_A > 0:
            raise ValueError(f"pixel_size_A={self.pixel_size_A!r} must be positive")
        for name in ("dwell_s", "flyback_s", "drift_A_per_s", "line_jitter_A"):
            if not getattr(self, name) >= 0:
                raise ValueError(f"{name}={getattr(self, name)!r} must be >= 0")
        if int(self.margin_px) < 0:
            raise ValueError(f"margin_px={self.margin_px!r} must be >= 0")


def fourier_resample(image: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Resample a band-limited periodic (y, x) image to a new grid over the same cell.

    The spectrum is zero-padded (or cropped) keeping the frequencies strictly below the
    Nyquist frequency of both grids: exact for images sampled above Nyquist, which the
    simulation's scan step guarantees.
    """
    image = np.asarray(image, dtype=float)
    ny, nx = image.shape
    my, mx = (int(s) for s in shape)
    spec = np.fft.fft2(image)
    out = np.zeros((my, mx), dtype=complex)
    ky = np.rint(np.fft.fftfreq(ny) * ny).astype(int)
    kx = np.rint(np.fft.fftfreq(nx) * nx).astype(int)
    keep_y = np.abs(ky) < min(ny, my) / 2
    keep_x = np.abs(kx) < min(nx, mx) / 2
    out[np.ix_(ky[keep_y] % my, kx[keep_x] % mx)] = spec[np.ix_(keep_y, keep_x)]
    return np.fft.ifft2(out).real * (my * mx) / (ny * nx)


def blur_periodic(image: np.ndarray, extent_A: tuple[float, float], fwhm_A: float) -> np.ndarray:
    """Convolve a periodic (y, x) image with a unit-integral Gaussian of given FWHM, Angstrom."""
    if fwhm_A < 0:
        raise ValueError(f"fwhm_A={fwhm_A!r} must be >= 0")
    if fwhm_A == 0:
        return np.asarray(image, dtype=float)
    ny, nx = image.shape
    sigma = fwhm_A / _FWHM_PER_SIGMA
    qx = np.fft.fftfreq(nx, d=extent_A[0] / nx)
    qy = np.fft.fftfreq(ny, d=extent_A[1] / ny)
    transfer = np.exp(-2 * np.pi**2 * sigma**2 * (qy[:, None] ** 2 + qx[None, :] ** 2))
    return np.fft.ifft2(np.fft.fft2(image) * transfer).real


def scan_positions_A(
    extent_A: tuple[float, float], settings: ScanSettings, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """True probe positions of a distorted raster over a periodic cell plus margins.

    Parameters
    ----------
    extent_A
        Cell (Lx, Ly), Angstrom.
    settings
        Scan settings.
    rng
        Generator for the drift velocity and line jitter.

    Returns
    -------
    positions_A
        (rows, cols, 2) probe positions (x, y), Angstrom.
    offsets_A
        (rows, cols, 2) distortion: true minus nominal position, Angstrom.
    """
    p, m = settings.pixel_size_A, int(settings.margin_px)
    cols = int(np.floor(extent_A[0] / p)) + 2 * m
    rows = int(np.floor(extent_A[1] / p)) + 2 * m
    x = (np.arange(cols) - m) * p
    y = (np.arange(rows) - m) * p
    nominal = np.stack(np.meshgrid(x, y, indexing="xy"), axis=-1)
    line_time = cols * settings.dwell_s + settings.flyback_s
    t = np.arange(rows)[:, None] * line_time + np.arange(cols)[None, :] * settings.dwell_s
    velocity = rng.normal(0.0, settings.drift_A_per_s, 2)
    jitter = rng.normal(0.0, settings.line_jitter_A, (rows, 1, 2))
    offsets = t[..., None] * velocity + jitter
    return nominal + offsets, offsets


def sample_positions(fine: np.ndarray, extent_A: tuple[float, float], positions_A: np.ndarray) -> np.ndarray:
    """Cubic-spline value of a periodic (y, x) image at (x, y) positions (wrapped), Angstrom.

    ``fine`` should be sampled finely (<= 0.1 A) so that the spline error is negligible.
    """
    ny, nx = fine.shape
    px = positions_A[..., 0] / (extent_A[0] / nx)
    py = positions_A[..., 1] / (extent_A[1] / ny)
    coords = np.stack([py.ravel(), px.ravel()])
    return map_coordinates(fine, coords, order=3, mode="grid-wrap").reshape(positions_A.shape[:-1])


def apparent_positions_px(points_A: np.ndarray, offsets_A: np.ndarray, settings: ScanSettings) -> np.ndarray:
    """Pixel coordinates (x, y) at which columns at ``points_A`` appear in the distorted scan.

    Solves ``nominal(p) + offset(p) = r`` by fixed-point iteration, reading the offset of
    the pixel nearest to the current estimate (the drift is smooth and the jitter is
    constant along a line, so two iterations converge to far below a pixel).
    """
    p, m = settings.pixel_size_A, int(settings.margin_px)
    rows, cols = offsets_A.shape[:2]
    est = np.asarray(points_A, dtype=float) / p + m
    for _ in range(3):
        i = np.clip(np.rint(est[:, 1]).astype(int), 0, rows - 1)
        j = np.clip(np.rint(est[:, 0]).astype(int), 0, cols - 1)
        est = (np.asarray(points_A) - offsets_A[i, j]) / p + m
    return est


def expose(image: np.ndarray, dose_e_per_A2: float | np.ndarray, pixel_size_A: float, rng: np.random.Generator) -> np.ndarray:
    """Poisson-count the electrons reaching the detector.

    Parameters
    ----------
    image
        Expected intensity, fraction of the incident beam.
    dose_e_per_A2
        Incident dose, electrons per square Angstrom (scalar or broadcastable).
    pixel_size_A
        Scan step, Angstrom: each pixel receives ``dose * pixel_size_A**2`` electrons.

    Raises
    ------
    ValueError
        If the dose is not positive.
    """
    dose = np.asarray(dose_e_per_A2, dtype=float)
    if not np.all(dose > 0):
        raise ValueError(f"dose_e_per_A2={dose_e_per_A2!r} must be positive (electrons per A^2)")
    expected = np.clip(image, 0.0, None) * dose * pixel_size_A**2
    return rng.poisson(expected).astype(np.float64)


def read_out(
    counts: np.ndarray, gain: float, dark_offset: float, read_noise: float, rng: np.random.Generator
) -> np.ndarray:
    """Detector signal: ``gain * counts + dark_offset`` plus Gaussian read noise (signal units)."""
    if not gain > 0:
        raise ValueError(f"gain={gain!r} must be positive")
    if read_noise < 0:
        raise ValueError(f"read_noise={read_noise!r} must be >= 0")
    return gain * counts + dark_offset + rng.normal(0.0, read_noise, np.shape(counts))

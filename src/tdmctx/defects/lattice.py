"""The fine triangular lattice of a 1H-TMD monolayer image: peaks, then a lattice fit.

The projected honeycomb is a lattice, so the columns that show a peak fix the positions of
those that do not (an empty site, a light dopant). This module finds that lattice, steps
1-4 of :func:`tdmctx.defects.sites.find_sites`, which then places the sites on it:

1. **Lattice estimate** from the power spectrum (:func:`estimate_lattice`): the strongest
   reflection in the annulus of the metal {100} spacing (1.5 bond lengths; bonds of
   ``bond_range_A``, 1.6-2.3 A, cover MoS2 at 1.83 A to the tellurides near 2.05 A) and
   its partner at 60 degrees give the metal lattice vectors ``u``, ``v``. Only the pixel
   size sets the scale.
2. **Peaks** (:func:`find_peaks`): local maxima of the image smoothed by a Gaussian of
   ``smooth_A`` (about a column's width at 60-300 kV), found with
   :func:`skimage.feature.peak_local_max`.
3. **Lattice fit** (:func:`fit_lattice`). Metal sites, chalcogen sites and the empty
   hexagon centres (hollows) are the three cosets of one triangular lattice whose spacing
   is the bond length (:class:`Lattice`). Every peak takes the nearest integer index, and
   the two basis vectors and the origin are fitted by least squares to the peaks within
   ``0.3 bond`` of their site, first in a disc around the image centre that doubles at
   each pass (a 1 % error of the spectral estimate would mis-index peaks 50 bonds away),
   then over the whole image. Noise maxima, contamination and a few percent of missing
   peaks fall outside that window and do not pull the fit.
4. **Cosets**: the hollow coset is the darkest one (it is empty, whatever the detector);
   the other two are the sublattices. Slow scan distortion that the affine lattice cannot
   follow is added back as a smooth displacement field (the peaks' residuals averaged
   with a Gaussian of two bond lengths, about 20 columns).

:func:`as_image` and :func:`pixel_size_of` check an image and its pixel size for every
function here and in :mod:`tdmctx.defects.sites`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import xarray as xr
from scipy import ndimage

__all__ = [
    "BOND_RANGE_A",
    "as_image",
    "pixel_size_of",
    "Lattice",
    "find_peaks",
    "estimate_lattice",
    "fit_lattice",
]

#: Projected metal-chalcogen distances (``a / sqrt 3``) searched for, Angstrom.
BOND_RANGE_A: tuple[float, float] = (1.6, 2.3)

# Peaks within this many bonds of their lattice site count as on it (the sites of the fine
# lattice are 1 bond apart, so a peak is within 0.5 of exactly one).
_INLIER_BONDS = 0.3


@dataclass(frozen=True)
class Lattice:
    """The fine triangular lattice of a projected honeycomb (metal, chalcogen and hollow cosets).

    Attributes
    ----------
    basis_px
        (2, 2) rows ``e1``, ``e2``: (x, y) vectors of one bond length, pixels (60 degrees
        apart for an undistorted lattice; the fit lets them shear and stretch).
    origin_px
        (2,) (x, y) position of the lattice point with index (0, 0), pixels.
    hollow_coset
        Coset id (see :meth:`coset`) of the empty hexagon centres.
    pixel_size_A
        Image pixel, Angstrom.

    Notes
    -----
    With metal lattice vectors ``u``, ``v`` (120 degrees apart), ``e1 = (2u + v) / 3`` and
    ``e2 = (u + 2v) / 3`` (bond vectors, 30 degrees from ``u``, ``v``); the point
    ``origin + n1 e1 + n2 e2`` is in coset ``(n1 - n2) mod 3``, and each coset is one of
    the triangular lattices of metal sites, chalcogen sites and hollows. Which coset is
    which depends on where the fit put the origin: :attr:`hollow_coset` names the empty
    one, :class:`~tdmctx.defects.sites.Sites` the metal one.
    """

    basis_px: np.ndarray
    origin_px: np.ndarray
    hollow_coset: int
    pixel_size_A: float

    @property
    def bond_px(self) -> float:
        """Mean length of the two basis vectors (metal-chalcogen distance), pixels."""
        return float(np.mean(np.hypot(self.basis_px[:, 0], self.basis_px[:, 1])))

    @property
    def bond_A(self) -> float:
        """Metal-chalcogen distance in projection, Angstrom."""
        return self.bond_px * self.pixel_size_A

    @property
    def lattice_constant_A(self) -> float:
        """In-plane lattice constant ``a = sqrt(3) bond``, Angstrom."""
        return math.sqrt(3.0) * self.bond_A

    @property
    def rotation_deg(self) -> float:
        """Angle of the bond vector ``e1`` from the image x axis towards y, folded into [0, 60) degrees."""
        return float(np.degrees(np.arctan2(self.basis_px[0, 1], self.basis_px[0, 0])) % 60.0)

    def indices(self, points_px: np.ndarray) -> np.ndarray:
        """Fractional lattice indices (N, 2) of (x, y) positions."""
        pts = np.asarray(points_px, dtype=np.float64)
        return np.linalg.solve(self.basis_px.T, (pts - self.origin_px).T).T

    def positions(self, indices: np.ndarray) -> np.ndarray:
        """(x, y) positions (N, 2), pixels, of lattice indices (N, 2)."""
        return self.origin_px + np.asarray(indices, dtype=np.float64) @ self.basis_px

    @staticmethod
    def coset(indices: np.ndarray) -> np.ndarray:
        """Coset id 0, 1 or 2 of integer indices (N, 2)."""
        n = np.asarray(indices, dtype=np.int64)
        return (n[:, 0] - n[:, 1]) % 3

    def sites_in(self, shape: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
        """Integer indices (N, 2) and cosets (N,) of every site but the hollows inside ``shape``.

        Inside means a centre on the image's pixels, ``-0.5 <= x <= nx - 0.5`` and likewise
        y (pixel (0, 0) is the centre of the first pixel), as in
        :func:`~tdmctx.experimental.check_points`.
        """
        ny, nx = shape
        corners = np.array([[0, 0], [nx - 1, 0], [0, ny - 1], [nx - 1, ny - 1]], dtype=np.float64)
        f = self.indices(corners)
        lo, hi = np.floor(f.min(axis=0)) - 1, np.ceil(f.max(axis=0)) + 1
        n1, n2 = np.meshgrid(np.arange(lo[0], hi[0] + 1), np.arange(lo[1], hi[1] + 1), indexing="ij")
        n = np.stack([n1.ravel(), n2.ravel()], axis=1).astype(np.int64)
        xy = self.positions(n)
        inside = (xy[:, 0] >= -0.5) & (xy[:, 0] <= nx - 0.5) & (xy[:, 1] >= -0.5) & (xy[:, 1] <= ny - 0.5)
        cos = self.coset(n)
        keep = inside & (cos != self.hollow_coset)
        return n[keep], cos[keep]


def as_image(image: np.ndarray | xr.DataArray) -> np.ndarray:
    """The (y, x) float64 values of an image, checked to be 2-D and finite.

    Raises
    ------
    ValueError
        If the image is not 2-D or holds NaN or infinite pixels.
    """
    values = np.asarray(image.values if isinstance(image, xr.DataArray) else image, dtype=np.float64)
    if values.ndim != 2:
        raise ValueError(f"image must be a 2-D (y, x) array; got shape {values.shape}")
    if not np.all(np.isfinite(values)):
        bad = int((~np.isfinite(values)).sum())
        raise ValueError(f"image holds {bad} NaN or infinite pixel(s); expected finite intensities everywhere")
    return values


def pixel_size_of(image: np.ndarray | xr.DataArray, pixel_size_A: float | None = None) -> float:
    """``pixel_size_A``, or the image's ``pixel_size_A`` attribute when it is ``None``, checked.

    Raises
    ------
    ValueError
        If neither gives a positive finite number.
    """
    if pixel_size_A is None:
        pixel_size_A = getattr(image, "attrs", {}).get("pixel_size_A")
    if pixel_size_A is None:
        raise ValueError("pixel_size_A=None: give the image pixel size in Angstrom (the file records none)")
    try:
        value = float(pixel_size_A)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"pixel_size_A={pixel_size_A!r} is not a number; expected Angstrom per pixel") from exc
    if not (math.isfinite(value) and value > 0):
        raise ValueError(f"pixel_size_A={pixel_size_A!r} must be a positive length in Angstrom")
    return value


def find_peaks(image: np.ndarray, pixel_size_A: float, *, smooth_A: float = 0.4) -> np.ndarray:
    """Local maxima of the smoothed image, (N, 2) whole-pixel (x, y) positions.

    Parameters
    ----------
    image
        (y, x) image.
    pixel_size_A
        Pixel size, Angstrom.
    smooth_A
        Standard deviation of the Gaussian smoothing, Angstrom.
    """
    from skimage.feature import peak_local_max

    img = as_image(image)
    smooth = ndimage.gaussian_filter(img, smooth_A / pixel_size_A) if smooth_A > 0 else img
    # 3 x 3 maxima: columns are >= 4 px apart at any useful sampling, and the lattice fit
    # discards the extra maxima that noise leaves in the hollows.
    peaks = peak_local_max(smooth, min_distance=1, exclude_border=False)
    return peaks[:, ::-1].astype(np.float64)


def estimate_lattice(
    image: np.ndarray, pixel_size_A: float, *, bond_range_A: tuple[float, float] = BOND_RANGE_A
) -> np.ndarray:
    """Fine-lattice basis (2, 2) (rows ``e1``, ``e2``, (x, y) px) from the power spectrum.

    Parameters
    ----------
    image
        (y, x) image.
    pixel_size_A
        Pixel size, Angstrom.
    bond_range_A
        (low, high) metal-chalcogen distances searched, Angstrom.
    """
    img = as_image(image)
    ny, nx = img.shape
    window = np.outer(np.hanning(ny), np.hanning(nx))
    power = np.fft.fftshift(np.abs(np.fft.fft2((img - img.mean()) * window)) ** 2)
    kx = (np.arange(nx) - nx // 2) / nx
    ky = (np.arange(ny) - ny // 2) / ny
    k = np.hypot(*np.meshgrid(kx, ky))
    # {100} of the metal lattice: d = 1.5 bond, in cycles per pixel.
    k_lo, k_hi = pixel_size_A / (1.5 * bond_range_A[1]), pixel_size_A / (1.5 * bond_range_A[0])
    if k_hi >= 0.5:
        raise ValueError(
            f"pixel_size_A={pixel_size_A!r} is too coarse to resolve a TMD lattice (bonds {bond_range_A} A); "
            "expected pixels below ~0.7 A"
        )
    if k_lo * min(nx, ny) < 3:
        raise ValueError(f"image of shape {img.shape} at {pixel_size_A} A/px holds too few unit cells; expected >= 3")
    smooth = ndimage.gaussian_filter(power, 1.0)
    annulus = (k >= k_lo) & (k <= k_hi)
    first = np.unravel_index(np.argmax(np.where(annulus, smooth, -np.inf)), power.shape)

    def refine(iy: int, ix: int) -> np.ndarray:
        # Strongest pixel near the guess, then the centroid of its 3 x 3 neighbourhood.
        r = max(2, int(0.08 * math.hypot(iy - ny // 2, ix - nx // 2)))
        y0, x0 = max(iy - r, 1), max(ix - r, 1)
        win = smooth[y0 : min(iy + r + 1, ny - 1), x0 : min(ix + r + 1, nx - 1)]
        j = np.unravel_index(np.argmax(win), win.shape)
        cy, cx = y0 + j[0], x0 + j[1]
        local = power[cy - 1 : cy + 2, cx - 1 : cx + 2]
        oy, ox = np.mgrid[-1:2, -1:2]
        total = local.sum()
        fx = cx + (local * ox).sum() / total - nx // 2
        fy = cy + (local * oy).sum() / total - ny // 2
        return np.array([fx / nx, fy / ny])

    k1 = refine(*first)
    c, s = math.cos(math.pi / 3), math.sin(math.pi / 3)
    guess = np.array([c * k1[0] - s * k1[1], s * k1[0] + c * k1[1]])
    k2 = refine(int(round(guess[1] * ny)) + ny // 2, int(round(guess[0] * nx)) + nx // 2)
    recip = np.stack([k1, k2])
    if abs(np.linalg.det(recip)) < 1e-12:
        raise ValueError("no lattice found in the power spectrum; is this an atomic-resolution image?")
    u, v = np.linalg.inv(recip).T  # real-space metal lattice vectors, k_i . u_j = delta_ij
    return np.stack([(2 * u + v) / 3, (u + 2 * v) / 3])


def fit_lattice(
    peaks_px: np.ndarray, basis_px: np.ndarray, shape: tuple[int, int]
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Least-squares affine fit of the fine lattice to peaks (step 3 of the module docstring).

    Parameters
    ----------
    peaks_px
        (N, 2) (x, y) peak positions, pixels.
    basis_px
        (2, 2) starting basis (rows ``e1``, ``e2``).
    shape
        Image (ny, nx); the fit grows from its centre.

    Returns
    -------
    basis_px, origin_px, inlier
        Fitted (2, 2) basis, (2,) origin, and (N,) bool: peaks within 0.3 bond of a site.
    """
    peaks = np.asarray(peaks_px, dtype=np.float64)
    basis = np.asarray(basis_px, dtype=np.float64)
    bond = float(np.mean(np.hypot(basis[:, 0], basis[:, 1])))
    # Origin from the circular mean of the peaks' fractional indices (all sit near a site).
    frac = np.linalg.solve(basis.T, peaks.T).T
    phase = np.angle(np.exp(2j * np.pi * frac).mean(axis=0)) / (2 * np.pi)
    origin = phase @ basis
    centre = np.array([(shape[1] - 1) / 2, (shape[0] - 1) / 2])
    radius = np.hypot(*(peaks - centre).T) / bond
    inlier = np.zeros(len(peaks), bool)
    limit, largest = 8.0, float(radius.max()) if len(radius) else 0.0
    while True:
        for _ in range(2):
            n = np.round(np.linalg.solve(basis.T, (peaks - origin).T).T)
            resid = peaks - (origin + n @ basis)
            inlier = np.hypot(*resid.T) < _INLIER_BONDS * bond
            use = inlier & (radius <= limit)
            if use.sum() < 6:
                break
            design = np.column_stack([n[use], np.ones(use.sum())])
            solution, *_ = np.linalg.lstsq(design, peaks[use], rcond=None)
            basis, origin = solution[:2], solution[2]
            bond = float(np.mean(np.hypot(basis[:, 0], basis[:, 1])))
        if limit >= largest:
            break
        limit *= 2.0
    n = np.round(np.linalg.solve(basis.T, (peaks - origin).T).T)
    inlier = np.hypot(*(peaks - (origin + n @ basis)).T) < _INLIER_BONDS * bond
    return basis, origin, inlier


def _hollow_coset(
    image: np.ndarray, basis: np.ndarray, origin: np.ndarray, pixel_size_A: float, smooth_A: float
) -> int:
    """The darkest coset (the empty hexagon centres), from the smoothed image at its points."""
    # hollow_coset=-1 while undecided, so that sites_in returns all three cosets.
    provisional = Lattice(basis, origin, hollow_coset=-1, pixel_size_A=pixel_size_A)
    n, coset = provisional.sites_in(image.shape)
    xy = provisional.positions(n)
    smooth = ndimage.gaussian_filter(image, smooth_A / pixel_size_A)
    level = ndimage.map_coordinates(smooth, [xy[:, 1], xy[:, 0]], order=1, mode="nearest")
    return int(np.argmin([np.median(level[coset == c]) for c in range(3)]))


def _displacement_field(
    peaks: np.ndarray, resid: np.ndarray, shape: tuple[int, int], sigma_px: float
) -> tuple[np.ndarray, np.ndarray]:
    """Smooth (dx, dy) images: Gaussian-weighted mean of the peaks' residuals."""
    ny, nx = shape
    ix = np.clip(np.rint(peaks[:, 0]).astype(int), 0, nx - 1)
    iy = np.clip(np.rint(peaks[:, 1]).astype(int), 0, ny - 1)
    weight = np.zeros(shape)
    np.add.at(weight, (iy, ix), 1.0)
    weight = ndimage.gaussian_filter(weight, sigma_px, mode="constant")
    out = []
    for k in range(2):
        acc = np.zeros(shape)
        np.add.at(acc, (iy, ix), resid[:, k])
        acc = ndimage.gaussian_filter(acc, sigma_px, mode="constant")
        out.append(np.divide(acc, weight, out=np.zeros(shape), where=weight > 1e-6))
    return out[0], out[1]

"""Atomic columns of a 1H-TMD monolayer found without given points: peaks, then a lattice.

Peak finding alone misses exactly the columns a defect study is about: an empty site (V2)
shows no peak and a light dopant a weak one. The projected honeycomb is a lattice, so the
columns that are there fix the positions of those that are not. :func:`find_sites`:

1. **Lattice estimate** from the power spectrum: the strongest reflection in the annulus
   of the metal {100} spacing (1.5 bond lengths; bonds of ``bond_range_A``, 1.6-2.3 A,
   cover MoS2 at 1.83 A to the tellurides near 2.05 A) and its partner at 60 degrees
   give the metal lattice vectors ``u``, ``v``. Only the pixel size sets the scale.
2. **Peaks**: local maxima of the image smoothed by a Gaussian of ``smooth_A`` (about a
   column's width at 60-300 kV), found with :func:`skimage.feature.peak_local_max`.
3. **Lattice fit.** Metal sites, chalcogen sites and the empty hexagon centres (hollows)
   are the three cosets of one triangular lattice whose spacing is the bond length
   (:class:`Lattice`). Every peak takes the nearest integer index, and the two basis
   vectors and the origin are fitted by least squares to the peaks within
   ``0.3 bond`` of their site, first in a disc around the image centre that doubles at
   each pass (a 1 % error of the spectral estimate would mis-index peaks 50 bonds away),
   then over the whole image. Noise maxima, contamination and a few percent of missing
   peaks fall outside that window and do not pull the fit.
4. **Cosets**: the hollow coset is the darkest one (it is empty, whatever the detector);
   the other two are the sublattices. Slow scan distortion that the affine lattice cannot
   follow is added back as a smooth displacement field (the peaks' residuals averaged
   with a Gaussian of two bond lengths, about 20 columns).
5. **Positions**: every site, with or without a peak (V2, a very dark column), sits at
   its lattice position plus the displacement field. ``refine=True`` moves the sites
   with a peak within ``0.35 bond`` to the peak's sub-pixel centre
   (:func:`~tdmctx.experimental.refine_columns`) instead. The default is the lattice
   because one column's maximum carries the shot noise of a few pixels while the field
   averages twenty: on the two labelled Ti-WSe2 fields (0.4 A pixels) 99.7-99.95 % of
   the labelled whole-pixel sites lie within 1 px of the lattice positions, 96-97 % within
   1 px of the refined maxima.

Which sublattice holds the metal
--------------------------------
Geometry cannot tell: the projected honeycomb is symmetric under the exchange of its
sublattices (as in :func:`tdmctx.defects.baseline.split_sublattices`). Brightness can,
but not with a fixed sign: at high angles a metal column outshines the chalcogen pair,
while at medium angles and low voltage the contrast reverses (the Se2 columns of the
lower-angle Ti-WSe2 channel are brighter than the W columns). :func:`find_sites` takes
the answer as ``metal_brighter``:

- ``True`` / ``False``: the brighter / darker sublattice is the metal;
- ``None``: left unassigned (:attr:`Sites.metal_group` is ``None``); assign it later with
  :meth:`Sites.with_metal_group`.

Two sources of that bit: :func:`metal_brighter_from_context` (host, energy and the
detector's inner angle, from the Z-contrast rule calibrated on the package's own
simulations), and, when the detector is unknown or the rule is undecided,
:func:`metal_group_from_proba`: the group that a classifier calls metal or dopant more
often (a patch shows the column's neighbours, which the network reads).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import numpy as np
import pandas as pd
import xarray as xr
from scipy import ndimage
from scipy.spatial import cKDTree

from tdmctx.defects.context import CLASS_IDS, Context
from tdmctx.defects.patches import PATCH, PatchSpec
from tdmctx.experimental.columns import column_intensities, refine_columns

__all__ = [
    "BOND_RANGE_A",
    "as_image",
    "pixel_size_of",
    "Lattice",
    "Sites",
    "find_peaks",
    "estimate_lattice",
    "fit_lattice",
    "find_sites",
    "metal_brighter_from_context",
    "metal_group_from_proba",
]

#: Projected metal-chalcogen distances (``a / sqrt 3``) searched for, Angstrom.
BOND_RANGE_A: tuple[float, float] = (1.6, 2.3)

# Peaks within this many bonds of their lattice site count as on it (the sites of the fine
# lattice are 1 bond apart, so a peak is within 0.5 of exactly one).
_INLIER_BONDS = 0.3
# A site takes the sub-pixel centre of a peak within this many bonds.
_MATCH_BONDS = 0.35
# Width of the smooth displacement field, bonds: several unit cells, so that one column's
# noise does not move its neighbours, yet below the scale of slow scan distortion.
_FIELD_BONDS = 2.0
# A honeycomb explains nearly every maximum (columns and hollow noise sit on the fine
# lattice); random maxima land within 0.3 bond of a fine-lattice point only ~33 % of the time.
_MIN_INLIER_FRACTION = 0.6
# Column-intensity disc radius, Angstrom (below half a bond).
_DISC_A = 0.6


# -- lattice ------------------------------------------------------------------------------


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
    one, :class:`Sites` the metal one.
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


# -- sites --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Sites:
    """Every metal and chalcogen site of an image (output of :func:`find_sites`).

    Attributes
    ----------
    points_px
        (N, 2) (x, y) centres, pixels: lattice positions plus the displacement field, or,
        with ``refine=True``, the refined peak centre of every site that shows a peak.
    group
        (N,) int: the geometric sublattice, 0 or 1 (which one holds the metal is
        :attr:`metal_group`).
    has_peak
        (N,) bool: a peak was found at the site.
    full_patch
        (N,) bool: a whole patch (:data:`~tdmctx.defects.patches.PATCH`) fits inside the image.
    metal_group
        0 or 1, or ``None`` while unassigned.
    lattice
        The fitted :class:`Lattice`.
    residual_rms_px
        RMS distance of the matched peaks from the affine lattice, pixels (before the
        displacement field): a measure of scan distortion plus noise.
    """

    points_px: np.ndarray
    group: np.ndarray
    has_peak: np.ndarray
    full_patch: np.ndarray
    metal_group: int | None
    lattice: Lattice
    residual_rms_px: float

    def __len__(self) -> int:
        return len(self.points_px)

    @property
    def sublattice(self) -> np.ndarray:
        """(N,) ``"metal"`` / ``"chalcogen"``, or ``"unassigned"`` while :attr:`metal_group` is ``None``."""
        if self.metal_group is None:
            return np.full(len(self), "unassigned")
        return np.where(self.group == self.metal_group, "metal", "chalcogen")

    def with_metal_group(self, metal_group: int) -> Sites:
        """A copy with the metal sublattice set to group ``metal_group`` (0 or 1)."""
        if metal_group not in (0, 1):
            raise ValueError(f"metal_group={metal_group!r}; expected 0 or 1")
        return replace(self, metal_group=int(metal_group))

    def to_frame(self) -> pd.DataFrame:
        """One row per site: ``x_px``, ``y_px``, ``sublattice``, ``has_peak``, ``full_patch``."""
        return pd.DataFrame(
            {
                "x_px": self.points_px[:, 0],
                "y_px": self.points_px[:, 1],
                "sublattice": self.sublattice,
                "has_peak": self.has_peak,
                "full_patch": self.full_patch,
            }
        )


def find_sites(
    image: np.ndarray | xr.DataArray,
    pixel_size_A: float | None = None,
    *,
    metal_brighter: bool | None = None,
    drop_partial: bool = False,
    refine: bool = False,
    smooth_A: float = 0.4,
    bond_range_A: tuple[float, float] = BOND_RANGE_A,
    spec: PatchSpec = PATCH,
) -> Sites:
    """Find every metal and chalcogen site of a 1H-TMD monolayer image (see the module docstring).

    Parameters
    ----------
    image
        (y, x) ADF image, any units (a DataArray may carry ``pixel_size_A``).
    pixel_size_A
        Pixel size, Angstrom; read from ``image.attrs`` when ``None``.
    metal_brighter
        ``True``: the brighter sublattice is the metal (high-angle detectors); ``False``:
        the darker one (contrast reversal at medium angles); ``None``: leave unassigned.
    drop_partial
        Drop sites too close to the border for a whole patch (else they are kept and
        flagged in :attr:`Sites.full_patch`).
    refine
        Place sites that show a peak at the peak's sub-pixel centre instead of the lattice
        position (step 5 of the module docstring).
    smooth_A
        Gaussian smoothing before peak finding and refinement, Angstrom.
    bond_range_A
        (low, high) metal-chalcogen distances searched, Angstrom.
    spec
        Patch definition, for :attr:`Sites.full_patch`.

    Returns
    -------
    Sites
        In raster order of the lattice indices.

    Raises
    ------
    ValueError
        For an image that is not 2-D and finite, a missing or non-positive pixel size, or
        an image in which no honeycomb lattice explains the peaks (wrong pixel size, not an
        atomic-resolution image of a monolayer).
    """
    img = as_image(image)
    px = pixel_size_of(image, pixel_size_A)
    if min(img.shape) < 16:
        raise ValueError(f"image of shape {img.shape} is too small to find a lattice in; expected at least 16 x 16 pixels")
    if not (len(bond_range_A) == 2 and 0 < bond_range_A[0] < bond_range_A[1]):
        raise ValueError(f"bond_range_A={bond_range_A!r}; expected (low, high) in Angstrom with 0 < low < high")
    peaks = find_peaks(img, px, smooth_A=smooth_A)
    if len(peaks) < 12:
        raise ValueError(f"only {len(peaks)} intensity maxima in the image; expected an atomic-resolution lattice")
    basis, origin, inlier = fit_lattice(peaks, estimate_lattice(img, px, bond_range_A=bond_range_A), img.shape)
    fraction = float(inlier.mean())
    bond_A = float(np.mean(np.hypot(basis[:, 0], basis[:, 1]))) * px
    if fraction < _MIN_INLIER_FRACTION or not (0.8 * bond_range_A[0] <= bond_A <= 1.2 * bond_range_A[1]):
        raise ValueError(
            f"no honeycomb lattice fits the image: {fraction:.0%} of the intensity maxima lie on the best lattice "
            f"(bond {bond_A:.2f} A); expected > {_MIN_INLIER_FRACTION:.0%} with a bond in {bond_range_A} A. "
            f"Check pixel_size_A={px!r}"
        )
    lattice = Lattice(basis, origin, hollow_coset=_hollow_coset(img, basis, origin, px, smooth_A), pixel_size_A=px)
    n, coset = lattice.sites_in(img.shape)
    ny, nx = img.shape
    bond = lattice.bond_px

    # Lattice positions plus the smooth displacement field of the peaks on the two sublattices.
    n_peaks = np.round(lattice.indices(peaks))
    resid = peaks - lattice.positions(n_peaks)
    on_site = inlier & (Lattice.coset(n_peaks) != lattice.hollow_coset)
    residual_rms = float(np.sqrt(np.mean(np.sum(resid[on_site] ** 2, axis=1)))) if on_site.any() else float("nan")
    predicted = lattice.positions(n)
    dx, dy = _displacement_field(peaks[on_site], resid[on_site], img.shape, _FIELD_BONDS * bond)
    coords = [np.clip(predicted[:, 1], 0, ny - 1), np.clip(predicted[:, 0], 0, nx - 1)]
    predicted = predicted + np.stack([ndimage.map_coordinates(d, coords, order=1) for d in (dx, dy)], axis=1)
    predicted[:, 0] = np.clip(predicted[:, 0], -0.5, nx - 0.5)
    predicted[:, 1] = np.clip(predicted[:, 1], -0.5, ny - 0.5)

    dist, nearest = cKDTree(peaks).query(predicted)
    has_peak = dist <= _MATCH_BONDS * bond
    # A maximum on the outermost pixels belongs to a column cut by the border: it is biased
    # inwards and has no neighbour pixel for the sub-pixel fit, so the lattice places it.
    cut = (peaks[:, 0] < 1) | (peaks[:, 0] > nx - 2) | (peaks[:, 1] < 1) | (peaks[:, 1] > ny - 2)
    use = has_peak & ~cut[nearest] & refine
    points = predicted.copy()
    if use.any():
        points[use] = refine_columns(
            img, peaks[nearest[use]], search_radius_px=max(1.0, 0.25 * bond), smooth_sigma_px=smooth_A / px
        )

    half = spec.size_px / 2 * spec.pixel_size_A / px
    full = (
        (points[:, 0] - half >= 0) & (points[:, 0] + half <= nx - 1)
        & (points[:, 1] - half >= 0) & (points[:, 1] + half <= ny - 1)
    )
    # Group 0: the lower of the two non-hollow coset ids.
    group = (coset != min(c for c in range(3) if c != lattice.hollow_coset)).astype(np.int64)
    metal_group = None
    if metal_brighter is not None:
        intensity = column_intensities(img, points, radius_px=max(0.5, _DISC_A / px))
        brighter = int(np.median(intensity[group == 1]) > np.median(intensity[group == 0]))
        metal_group = brighter if metal_brighter else 1 - brighter
    sites = Sites(points, group, has_peak, full, metal_group, lattice, residual_rms)
    if drop_partial:
        keep = full
        sites = replace(
            sites, points_px=points[keep], group=group[keep], has_peak=has_peak[keep], full_patch=full[keep]
        )
    return sites


# -- which sublattice is the metal --------------------------------------------------------

# Effective Z-contrast exponent n (column intensity ~ sum Z^n) against the detector's inner
# angle over the wavelength, q = theta_inner / lambda (1/A), from the hollow-referenced
# X2/metal ratios of the package's WSe2 simulations (tdmctx.defects.ratios.simulated_ratios
# on the quick dataset store, six conditions, 2 * (Z_Se / Z_W)^n = ratio):
#   60 kV MAADF q 0.72: 1.44 -> n 0.42; 80 kV MAADF q 0.84: 1.31 -> 0.54;
#   200 kV MAADF q 1.40: 0.91 -> 1.01; 60 kV HAADF q 1.44: 0.74 -> 1.28;
#   80 kV HAADF q 1.68: 0.67 -> 1.41; 200 kV HAADF q 2.79: 0.58 -> 1.59.
_Q_PER_A = (0.72, 0.84, 1.42, 1.68, 2.79)
_EXPONENT = (0.42, 0.54, 1.15, 1.41, 1.59)
# Predicted chalcogen-pair/metal ratios inside this band are too close to call.
_UNDECIDED = (0.85, 1.15)


def metal_brighter_from_context(context: Context) -> bool | None:
    """Whether the metal sublattice is the brighter one, from the imaging context.

    The rule: a column's ADF intensity grows as ``Z^n``, with ``n`` rising with the inner
    detector angle measured in units of the wavelength (``q = theta_inner / lambda``),
    interpolated from the package's WSe2 simulations at 60, 80 and 200 kV with MAADF
    (35-80 mrad) and HAADF (70-200 mrad) detectors (n from 0.42 at q = 0.72 / A to 1.59 at
    2.8 / A). The chalcogen pair over the metal is then ``2 (Z_X / Z_M)^n``.

    Parameters
    ----------
    context
        Needs ``host_metal``, ``chalcogen``, ``energy_eV`` and ``detector_inner_mrad``.

    Returns
    -------
    bool or None
        ``True`` when the predicted ratio is below 0.85, ``False`` above 1.15, ``None``
        when it is in between or a needed field is unknown (decide from the data then,
        e.g. :func:`metal_group_from_proba`).
    """
    if not isinstance(context, Context):
        raise ValueError(f"context is a {type(context).__name__}; expected a tdmctx.defects.Context")
    needed = (context.host_metal_Z, context.chalcogen_Z, context.energy_eV, context.detector_inner_mrad)
    if any(v is None for v in needed):
        return None
    from tdmctx.defects.models import _wavelength_A

    q = context.detector_inner_mrad * 1e-3 / _wavelength_A(context.energy_eV)
    exponent = float(np.interp(q, _Q_PER_A, _EXPONENT))
    ratio = 2.0 * (context.chalcogen_Z / context.host_metal_Z) ** exponent
    if ratio < _UNDECIDED[0]:
        return True
    if ratio > _UNDECIDED[1]:
        return False
    return None


def metal_group_from_proba(group: np.ndarray, proba: np.ndarray) -> int:
    """The group (0 or 1) that a classifier calls ``metal`` or ``dopant`` more often.

    Parameters
    ----------
    group
        (N,) geometric sublattice ids (:attr:`Sites.group`).
    proba
        (N, 5) class probabilities in :data:`~tdmctx.defects.context.CLASS_NAMES` order.

    Returns
    -------
    int
        The group whose mean probability of a metal-site class (metal or dopant) is larger.
    """
    group = np.asarray(group)
    proba = np.asarray(proba, dtype=np.float64)
    if proba.ndim != 2 or proba.shape != (len(group), len(CLASS_IDS)):
        raise ValueError(f"proba has shape {proba.shape}; expected ({len(group)}, {len(CLASS_IDS)})")
    if not (np.any(group == 0) and np.any(group == 1)):
        raise ValueError("group must hold sites of both groups 0 and 1")
    metal_like = proba[:, CLASS_IDS["metal"]] + proba[:, CLASS_IDS["dopant"]]
    return int(metal_like[group == 1].mean() > metal_like[group == 0].mean())

"""Atomic columns of a 1H-TMD monolayer found without given points: peaks, then a lattice.

Peak finding alone misses exactly the columns a defect study is about: an empty site (V2)
shows no peak and a light dopant a weak one. The projected honeycomb is a lattice, so the
columns that are there fix the positions of those that are not. :func:`find_sites`:

Steps 1-4 (lattice estimate, peaks, lattice fit, cosets) are in :mod:`tdmctx.defects.lattice`.

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

from dataclasses import dataclass, replace

import numpy as np
import pandas as pd
import xarray as xr
from scipy import ndimage
from scipy.spatial import cKDTree

from tdmctx.defects.context import CLASS_IDS, Context
from tdmctx.defects.lattice import (
    BOND_RANGE_A,
    Lattice,
    _displacement_field,
    _hollow_coset,
    as_image,
    estimate_lattice,
    find_peaks,
    fit_lattice,
    pixel_size_of,
)
from tdmctx.defects.patches import PATCH, PatchSpec
from tdmctx.experimental.columns import column_intensities, refine_columns

# as_image and pixel_size_of are re-exported: callers import them from here.
__all__ = [
    "as_image",
    "pixel_size_of",
    "Sites",
    "find_sites",
    "metal_brighter_from_context",
    "metal_group_from_proba",
]

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
        The fitted :class:`~tdmctx.defects.lattice.Lattice`.
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

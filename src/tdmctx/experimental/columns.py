"""Atomic-column positions and intensities in ADF-STEM images.

Labelled sites come as whole pixels; intensities and patches need the column centre to a
fraction of a pixel. The refinement here is a local-maximum search on a lightly smoothed
image followed by a separable parabolic fit, which is robust for the dim single-chalcogen
(V1) columns where a centre-of-mass estimate is pulled towards brighter neighbours.

There is no vacuum in typical monolayer fields, so the detector's dark offset cannot be
read from the image directly. :func:`hollow_sites` and :func:`hollow_level` give the
intensity at the empty hexagon centres of the honeycomb lattice, a reference that exists in
simulated and experimental images alike: ratios referenced to it are comparable between the
two whatever the offset (the hollow level itself contains probe-tail signal, so it is an
upper bound on the dark offset, not the offset).
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage
from scipy.spatial import cKDTree

__all__ = [
    "check_points",
    "refine_columns",
    "column_intensities",
    "hollow_sites",
    "hollow_level",
]


def check_points(points_px: np.ndarray, shape: tuple[int, int], *, name: str = "points_px") -> np.ndarray:
    """Validate (N, 2) (x, y) pixel positions against an image shape; return float64 copy.

    Raises
    ------
    ValueError
        On a wrong shape, non-finite values, or points outside the image (the message
        names how many and the first offender).
    """
    points = np.asarray(points_px, dtype=np.float64)
    if points.ndim != 2 or points.shape[1] != 2:
        raise ValueError(f"{name} must have shape (N, 2) as (x, y) pixels; got {points.shape}")
    if not np.all(np.isfinite(points)):
        raise ValueError(f"{name} holds {int((~np.isfinite(points)).any(axis=1).sum())} non-finite rows")
    ny, nx = shape
    outside = (points[:, 0] < -0.5) | (points[:, 0] > nx - 0.5) | (points[:, 1] < -0.5) | (points[:, 1] > ny - 0.5)
    if outside.any():
        first = int(np.flatnonzero(outside)[0])
        raise ValueError(
            f"{int(outside.sum())} of {len(points)} {name} lie outside the {ny} x {nx} (y, x) image; "
            f"first is row {first} at (x, y) = {tuple(points[first])}"
        )
    return points


def refine_columns(
    image: np.ndarray,
    points_px: np.ndarray,
    *,
    search_radius_px: float = 2.0,
    smooth_sigma_px: float = 1.0,
) -> np.ndarray:
    """Refine approximate column positions to sub-pixel centres.

    Parameters
    ----------
    image
        (y, x) image.
    points_px
        (N, 2) approximate centres as (x, y) pixels.
    search_radius_px
        Largest distance, in pixels, that a centre may move; keep it below half the
        nearest-neighbour distance so that a column cannot jump to its neighbour.
    smooth_sigma_px
        Gaussian smoothing before the search, pixels (suppresses shot noise).

    Returns
    -------
    numpy.ndarray
        (N, 2) refined (x, y) centres in pixels.
    """
    img = np.asarray(image, dtype=np.float64)
    if img.ndim != 2:
        raise ValueError(f"image must be 2-D (y, x); got shape {img.shape}")
    points = check_points(points_px, img.shape)
    if not search_radius_px > 0:
        raise ValueError(f"search_radius_px={search_radius_px!r} must be positive")
    smooth = ndimage.gaussian_filter(img, smooth_sigma_px) if smooth_sigma_px > 0 else img
    r = int(np.ceil(search_radius_px))
    oy, ox = np.mgrid[-r : r + 1, -r : r + 1]
    inside = (ox**2 + oy**2) <= search_radius_px**2
    ox, oy = ox[inside], oy[inside]
    ny, nx = img.shape
    cx = np.rint(points[:, 0]).astype(int)
    cy = np.rint(points[:, 1]).astype(int)
    xs = np.clip(cx[:, None] + ox[None], 0, nx - 1)
    ys = np.clip(cy[:, None] + oy[None], 0, ny - 1)
    best = np.argmax(smooth[ys, xs], axis=1)
    px = np.clip(xs[np.arange(len(points)), best], 1, nx - 2)
    py = np.clip(ys[np.arange(len(points)), best], 1, ny - 2)

    def parabolic(minus: np.ndarray, centre: np.ndarray, plus: np.ndarray) -> np.ndarray:
        curvature = minus - 2 * centre + plus
        with np.errstate(divide="ignore", invalid="ignore"):
            shift = np.where(curvature < 0, 0.5 * (minus - plus) / curvature, 0.0)
        return np.clip(shift, -0.5, 0.5)

    c = smooth[py, px]
    dx = parabolic(smooth[py, px - 1], c, smooth[py, px + 1])
    dy = parabolic(smooth[py - 1, px], c, smooth[py + 1, px])
    refined = np.stack([px + dx, py + dy], axis=1)
    # Never move further than the search radius from the given point.
    offset = refined - points
    dist = np.hypot(offset[:, 0], offset[:, 1])
    too_far = dist > search_radius_px
    refined[too_far] = points[too_far] + offset[too_far] * (search_radius_px / dist[too_far])[:, None]
    return refined


def column_intensities(
    image: np.ndarray,
    points_px: np.ndarray,
    *,
    radius_px: float = 1.5,
    offset: float = 0.0,
    samples: int = 7,
) -> np.ndarray:
    """Mean intensity in a disc around each (sub-pixel) column centre.

    The disc is sampled on a regular ``samples x samples`` grid of sub-pixel points with
    bilinear interpolation, so that a half-pixel shift of the centre changes nothing but
    the signal.

    Parameters
    ----------
    image
        (y, x) image.
    points_px
        (N, 2) centres as (x, y) pixels.
    radius_px
        Disc radius, pixels.
    offset
        Subtracted from the image first (a dark or hollow-site level).

    Returns
    -------
    numpy.ndarray
        (N,) mean intensities.
    """
    img = np.asarray(image, dtype=np.float64)
    if img.ndim != 2:
        raise ValueError(f"image must be 2-D (y, x); got shape {img.shape}")
    points = check_points(points_px, img.shape)
    if not radius_px > 0:
        raise ValueError(f"radius_px={radius_px!r} must be positive")
    grid = np.linspace(-radius_px, radius_px, samples)
    gx, gy = np.meshgrid(grid, grid)
    keep = gx**2 + gy**2 <= radius_px**2
    gx, gy = gx[keep], gy[keep]
    xs = points[:, 0:1] + gx[None]
    ys = points[:, 1:2] + gy[None]
    values = ndimage.map_coordinates(img, [ys.ravel(), xs.ravel()], order=1, mode="nearest")
    return values.reshape(xs.shape).mean(axis=1) - offset


def hollow_sites(metal_px: np.ndarray, chalcogen_px: np.ndarray, shape: tuple[int, int] | None = None) -> np.ndarray:
    """Hexagon centres of a projected 1H-TMD honeycomb.

    In projection the metal (M) and chalcogen (X) columns and the empty hexagon centres (H)
    occupy the three sub-lattices of one triangular lattice, with ``H = 2 M - X`` for every
    nearest M-X pair. Each hollow site is returned once.

    Parameters
    ----------
    metal_px, chalcogen_px
        (N, 2) and (M, 2) (x, y) positions of metal-site and chalcogen-site columns.
    shape
        Image (ny, nx); when given, sites outside it are dropped.

    Returns
    -------
    numpy.ndarray
        (K, 2) hollow-site positions, (x, y) pixels.
    """
    metal = np.asarray(metal_px, dtype=np.float64)
    chalc = np.asarray(chalcogen_px, dtype=np.float64)
    if len(metal) < 2 or len(chalc) < 2:
        raise ValueError(f"need at least two metal and two chalcogen columns; got {len(metal)} and {len(chalc)}")
    tree = cKDTree(chalc)
    dist, idx = tree.query(metal, k=3)
    bond = np.median(dist[:, 0])
    ok = dist < 1.3 * bond
    cand = (2 * metal[:, None, :] - chalc[idx])[ok]
    if shape is not None:
        ny, nx = shape
        inside = (cand[:, 0] >= 0) & (cand[:, 0] <= nx - 1) & (cand[:, 1] >= 0) & (cand[:, 1] <= ny - 1)
        cand = cand[inside]
    # Each hollow site is found from up to three metals: merge those within a third of a bond.
    merged = np.round(cand / (bond / 3.0)).astype(np.int64)
    _, first = np.unique(merged, axis=0, return_index=True)
    cand = cand[np.sort(first)]
    keep = np.ones(len(cand), bool)
    pairs = cKDTree(cand).query_pairs(bond / 3.0, output_type="ndarray")
    keep[pairs[:, 1]] = False
    return cand[keep]


def hollow_level(image: np.ndarray, metal_px: np.ndarray, chalcogen_px: np.ndarray, *, radius_px: float = 1.0) -> float:
    """Median image intensity at the hollow sites (see :func:`hollow_sites`)."""
    img = np.asarray(image, dtype=np.float64)
    sites = hollow_sites(metal_px, chalcogen_px, img.shape)
    return float(np.median(column_intensities(img, sites, radius_px=radius_px)))

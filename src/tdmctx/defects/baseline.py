"""Intensity-threshold baseline for labelled-site images: what column intensity alone can do.

The networks must beat this. For every site:

1. **Sublattice from geometry.** In a projected 1H-MX2 honeycomb each site's nearest
   neighbours sit on the other sublattice, at angles ``phi0 + 0/120/240`` degrees for one
   sublattice and ``phi0 + 60/180/300`` for the other, so ``exp(3 i phi)`` summed over the
   nearest-neighbour bonds points one way on one sublattice and the opposite way on the
   other (:func:`split_sublattices`). No intensity and no labels are used. Geometry cannot
   say *which* group holds the metal (the honeycomb is symmetric); that bit comes from the
   contrast: :func:`metal_sites` (the brighter group at high angles) or, with two detectors,
   :func:`metal_sites_two_channels` (the group whose high/low-angle ratio is larger, since
   a single heavy atom scatters relatively more to high angles than two lighter ones; this
   holds through the contrast reversal of low-angle detectors).
2. **One feature per column.** Mean intensity in a small disc at the refined centre, minus
   the hollow-site level (the package's zero reference, see
   :func:`tdmctx.experimental.hollow_level`), divided by the median of the same
   sublattice, either over the whole image or over the neighbours within
   ``local_radius_px`` (which removes slow contamination and thickness variations).
3. **One threshold per sublattice**, below which a column is the defect of its sublattice:
   ``dopant`` on the metal sublattice, ``V1`` on the chalcogen sublattice (a V2, empty site,
   falls below the same threshold and is reported as V1; the baseline has no third level).
   Fitted without labels (:func:`fit_threshold`), or tuned on the labels themselves
   (:func:`oracle_baseline`), the upper bound of any single intensity threshold.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
from scipy.spatial import cKDTree
from scipy.stats import norm

from tdmctx.experimental.columns import check_points, column_intensities, hollow_level, refine_columns

if TYPE_CHECKING:
    import pandas as pd

__all__ = [
    "METHODS",
    "BaselineResult",
    "split_sublattices",
    "metal_sites",
    "metal_sites_two_channels",
    "column_features",
    "fit_threshold",
    "oracle_threshold",
    "intensity_baseline",
    "oracle_baseline",
    "baseline_table",
]

#: Label-free threshold methods of :func:`fit_threshold`.
METHODS: tuple[str, ...] = ("mixture", "otsu")

# Neighbour shells used by the sublattice split, in median bond lengths: the first shell
# (1 bond) up to _FIRST_SHELL, the third (2 bonds) in the _THIRD_SHELL window; the second
# shell (sqrt 3) lies between them.
_FIRST_SHELL = 1.3
_THIRD_SHELL = (1.88, 2.2)


@dataclass(frozen=True)
class BaselineResult:
    """Output of the intensity baseline for one image.

    Attributes
    ----------
    classes
        (N,) class names (``metal``, ``dopant``, ``X2``, ``V1``), in input order.
    metal_site
        (N,) True on the metal sublattice.
    feature
        (N,) normalised column intensity (majority of each sublattice near 1).
    points_px
        (N, 2) refined (x, y) centres, pixels.
    thresholds
        ``{"metal": t, "chalcogen": t}``: a column below ``t`` is a defect; ``-inf`` when no
        defect population was found.
    """

    classes: np.ndarray
    metal_site: np.ndarray
    feature: np.ndarray
    points_px: np.ndarray
    thresholds: dict[str, float]


# -- sublattices --------------------------------------------------------------------------


def _bond_length(points: np.ndarray) -> float:
    """Median metal-chalcogen distance, pixels."""
    dist, _ = cKDTree(points).query(points, k=4)
    # The nearest of three noisy bonds is biased short: take all first-shell bonds.
    first = dist[:, 1:][dist[:, 1:] < _FIRST_SHELL * np.median(dist[:, 1])]
    return float(np.median(first))


def split_sublattices(points_px: np.ndarray) -> np.ndarray:
    """Split honeycomb sites into its two sublattices from the geometry alone.

    Parameters
    ----------
    points_px
        (N, 2) (x, y) site positions, pixels (metal and chalcogen sites together, N >= 4).

    Returns
    -------
    numpy.ndarray
        (N,) int64 group ids, 0 or 1 (which one is the metal is not decided here).
    """
    points = np.asarray(points_px, dtype=np.float64)
    if points.ndim != 2 or points.shape[1] != 2 or len(points) < 4:
        raise ValueError(f"points_px must be (N, 2) (x, y) with N >= 4; got shape {points.shape}")
    bond = _bond_length(points)
    tree = cKDTree(points)
    pairs = tree.query_pairs(_THIRD_SHELL[1] * bond, output_type="ndarray")
    vec = points[pairs[:, 1]] - points[pairs[:, 0]]
    dist = np.hypot(vec[:, 0], vec[:, 1]) / bond
    # First shell (1 bond) and third shell (2 bonds) both lie on the other sublattice, in
    # opposite directions, so they vote with opposite signs; the second shell (sqrt 3
    # bonds, same sublattice) is orthogonal in exp(3 i phi) and left out. Using the third
    # shell keeps sites whose nearest neighbours are missing (vacancies, edges) decided.
    weight = np.where(dist < _FIRST_SHELL, 1.0, np.where((dist > _THIRD_SHELL[0]), -1.0, 0.0))
    # exp(3 i phi) of a bond and of its reverse differ in sign: both ends get their own view.
    phase = weight * np.exp(3j * np.arctan2(vec[:, 1], vec[:, 0]))
    z = np.zeros(len(points), complex)
    np.add.at(z, pairs[:, 0], phase)
    np.add.at(z, pairs[:, 1], -phase)
    # z is +-exp(i psi) on the two sublattices; psi is fixed by the lattice orientation.
    psi = np.angle(np.sum(z**2)) / 2
    return (np.real(z * np.exp(-1j * psi)) < 0).astype(np.int64)


def _refined(image: np.ndarray, points: np.ndarray, refine: bool) -> np.ndarray:
    if not refine:
        return points
    # Less than half a bond, so that a dim column cannot be pulled onto its neighbour.
    return refine_columns(image, points, search_radius_px=0.4 * _bond_length(points))


def metal_sites(points_px: np.ndarray, image: np.ndarray, *, brighter: bool = True, refine: bool = True) -> np.ndarray:
    """Metal-sublattice mask: the geometric group that is brighter (or darker) in ``image``.

    The metal column is the brighter one at high angles (W > Se2); low-angle detectors may
    reverse the contrast, hence ``brighter``. With two detectors prefer
    :func:`metal_sites_two_channels`, which needs no such choice.

    Returns
    -------
    numpy.ndarray
        (N,) bool, True on the metal sublattice.
    """
    img = _image(image)
    points = check_points(points_px, img.shape)
    groups = split_sublattices(points)
    intensity = column_intensities(img, _refined(img, points, refine))
    medians = [np.median(intensity[groups == g]) for g in (0, 1)]
    metal = int(np.argmax(medians)) if brighter else int(np.argmin(medians))
    return groups == metal


def metal_sites_two_channels(
    points_px: np.ndarray, low_angle: np.ndarray, high_angle: np.ndarray, *, refine: bool = True
) -> np.ndarray:
    """Metal-sublattice mask from two simultaneous detectors, without a contrast assumption.

    The group whose median ``high / low`` intensity ratio (hollow level removed in each)
    is larger holds the metal.

    Returns
    -------
    numpy.ndarray
        (N,) bool, True on the metal sublattice.
    """
    low, high = _image(low_angle, "low_angle"), _image(high_angle, "high_angle")
    if low.shape != high.shape:
        raise ValueError(f"low_angle {low.shape} and high_angle {high.shape} must have the same shape")
    points = check_points(points_px, low.shape)
    groups = split_sublattices(points)
    ratios = []
    for img in (low, high):
        refined = _refined(img, points, refine)
        zero = hollow_level(img, refined[groups == 0], refined[groups == 1])
        ratios.append(column_intensities(img, refined, offset=zero))
    ratio = ratios[1] / np.where(ratios[0] == 0, np.nan, ratios[0])
    medians = [np.nanmedian(ratio[groups == g]) for g in (0, 1)]
    return groups == int(np.argmax(medians))


# -- features and thresholds --------------------------------------------------------------


def _image(image: np.ndarray, name: str = "image") -> np.ndarray:
    img = np.asarray(image, dtype=np.float64)
    if img.ndim != 2:
        raise ValueError(f"{name} must be a 2-D (y, x) image; got shape {img.shape}")
    return img


def column_features(
    image: np.ndarray,
    points_px: np.ndarray,
    metal_site: np.ndarray,
    *,
    radius_px: float = 1.5,
    local_radius_px: float | None = 15.0,
    refine: bool = True,
) -> tuple[np.ndarray, np.ndarray]:
    """Normalised column intensities (step 2 of the module docstring).

    Parameters
    ----------
    image
        (y, x) image.
    points_px
        (N, 2) (x, y) site positions, pixels.
    metal_site
        (N,) bool metal-sublattice mask.
    radius_px
        Disc radius of the column intensity, pixels.
    local_radius_px
        Radius, pixels, of the same-sublattice neighbourhood whose median normalises each
        column; ``None`` normalises by the median over the whole image.
    refine
        Refine the centres to sub-pixel positions first.

    Returns
    -------
    feature, points
        (N,) normalised intensities and (N, 2) the (refined) centres.
    """
    img = _image(image)
    points = check_points(points_px, img.shape)
    mask = np.asarray(metal_site, dtype=bool)
    if mask.shape != (len(points),) or mask.all() or not mask.any():
        raise ValueError(f"metal_site must be a ({len(points)},) bool mask with both sublattices present")
    if local_radius_px is not None and not local_radius_px > 0:
        raise ValueError(f"local_radius_px={local_radius_px!r} must be positive or None")
    refined = _refined(img, points, refine)
    zero = hollow_level(img, refined[mask], refined[~mask])
    intensity = column_intensities(img, refined, radius_px=radius_px, offset=zero)
    feature = np.empty_like(intensity)
    for sub in (mask, ~mask):
        idx = np.flatnonzero(sub)
        if local_radius_px is None:
            feature[idx] = intensity[idx] / np.median(intensity[idx])
            continue
        neighbours = cKDTree(refined[idx]).query_ball_point(refined[idx], local_radius_px)
        # The median is robust to the defects in the neighbourhood as long as they are a minority.
        local = np.array([np.median(intensity[idx[n]]) for n in neighbours])
        feature[idx] = intensity[idx] / local
    return feature, refined


def _mixture_threshold(values: np.ndarray, max_iter: int, min_separation: float) -> float:
    # Contaminated normal: the majority is a Gaussian pinned to the robust location and
    # scale (median, MAD), the defect population a free Gaussian below it. A free
    # two-component mixture would split a unimodal majority in half when the defects are
    # a fraction of a percent (V1); pinning the majority prevents that.
    m0 = float(np.median(values))
    s0 = float(1.4826 * np.median(np.abs(values - m0)))
    if s0 == 0:
        return float("-inf")
    m1, s1, w1 = float(np.quantile(values, 0.01)), s0, 0.01
    for _ in range(max_iter):
        a = (1 - w1) * norm.pdf(values, m0, s0)
        b = w1 * norm.pdf(values, m1, s1)
        r = b / np.maximum(a + b, 1e-300)
        if r.sum() < 1e-6:
            return float("-inf")
        new = (r.mean(), (r * values).sum() / r.sum())
        s1 = max(float(np.sqrt((r * (values - new[1]) ** 2).sum() / r.sum())), 0.05 * s0)
        converged = abs(new[0] - w1) < 1e-9 and abs(new[1] - m1) < 1e-9
        w1, m1 = float(new[0]), float(new[1])
        if converged:
            break
    if m1 > m0 - min_separation * s0:
        return float("-inf")  # no population below the majority: no defects found
    xs = np.linspace(m1, m0, 4001)
    majority_wins = (1 - w1) * norm.pdf(xs, m0, s0) > w1 * norm.pdf(xs, m1, s1)
    return float(xs[np.argmax(majority_wins)]) if majority_wins.any() else float(m0)


def _otsu_threshold(values: np.ndarray, bins: int = 512) -> float:
    # Otsu (1979): the histogram cut that maximises the between-class variance.
    hist, edges = np.histogram(values, bins=bins)
    centres = 0.5 * (edges[:-1] + edges[1:])
    n_low = np.cumsum(hist)[:-1]
    n_high = hist.sum() - n_low
    sum_low = np.cumsum(hist * centres)[:-1]
    mean_low = sum_low / np.maximum(n_low, 1)
    mean_high = (np.sum(hist * centres) - sum_low) / np.maximum(n_high, 1)
    between = n_low * n_high * (mean_low - mean_high) ** 2
    return float(edges[1 + int(np.argmax(between))])


def fit_threshold(
    values: np.ndarray, *, method: str = "mixture", max_iter: int = 500, min_separation: float = 2.0
) -> float:
    """Label-free threshold separating a dim defect population from the majority.

    Parameters
    ----------
    values
        (N,) features of one sublattice.
    method
        ``"mixture"``: two Gaussians, the majority pinned to the median and MAD scale, the
        defects free (fitted by EM); the threshold is where the two weighted densities
        cross. If the defect component does not sit at least ``min_separation`` majority
        standard deviations below the majority, no defects are found (``-inf``).
        ``"otsu"``: Otsu's threshold (maximum between-class variance), which always
        splits, and splits the majority itself when the defects are very rare.
    max_iter
        EM iterations (``"mixture"``).
    min_separation
        See ``"mixture"``.

    Returns
    -------
    float
        Threshold: values below it are defects (``-inf``: none).
    """
    v = np.asarray(values, dtype=np.float64)
    if v.ndim != 1 or v.size < 10 or not np.all(np.isfinite(v)):
        raise ValueError(f"values must be 1-D, finite, with at least 10 entries; got shape {v.shape}")
    if method == "mixture":
        return _mixture_threshold(v, max_iter, min_separation)
    if method == "otsu":
        return _otsu_threshold(v)
    raise ValueError(f"method={method!r} is not a threshold method; expected one of {METHODS}")


def oracle_threshold(values: np.ndarray, is_defect: np.ndarray) -> float:
    """Threshold that makes the fewest errors against the labels (ties: the lowest).

    Returns
    -------
    float
        Midpoint between two sorted values, or ``-inf`` when predicting no defect at all is
        best.
    """
    v = np.asarray(values, dtype=np.float64)
    y = np.asarray(is_defect, dtype=bool)
    if v.ndim != 1 or y.shape != v.shape or v.size == 0:
        raise ValueError(f"values {v.shape} and is_defect {y.shape} must be 1-D of the same non-zero length")
    order = np.argsort(v, kind="stable")
    vs, ys = v[order], y[order]
    # Predicting the k lowest as defects: missed defects + false alarms.
    defects_below = np.concatenate([[0], np.cumsum(ys)])
    k = np.arange(len(v) + 1)
    errors = (k - defects_below) + (ys.sum() - defects_below)
    # Only cut between distinct values, otherwise the threshold could not realise k.
    valid = np.concatenate([[True], vs[1:] > vs[:-1], [True]])
    errors = np.where(valid, errors, np.iinfo(np.int64).max)
    best = int(np.argmin(errors))
    if best == 0:
        return float("-inf")
    if best == len(v):
        return float(np.inf)
    return float(0.5 * (vs[best - 1] + vs[best]))


# -- the baselines -------------------------------------------------------------------------


def _classify(feature: np.ndarray, metal_site: np.ndarray, t_metal: float, t_chalc: float) -> np.ndarray:
    classes = np.where(metal_site, "metal", "X2").astype("<U6")
    classes[metal_site & (feature < t_metal)] = "dopant"
    classes[~metal_site & (feature < t_chalc)] = "V1"
    return classes


def intensity_baseline(
    image: np.ndarray,
    points_px: np.ndarray,
    *,
    metal_site: np.ndarray | None = None,
    method: str = "mixture",
    radius_px: float = 1.5,
    local_radius_px: float | None = 15.0,
    refine: bool = True,
) -> BaselineResult:
    """Label-free intensity baseline: geometric sublattices, one fitted threshold each.

    Parameters
    ----------
    image
        (y, x) image (raw counts are fine: the hollow level is removed).
    points_px
        (N, 2) (x, y) site positions, pixels.
    metal_site
        (N,) bool metal-sublattice mask; ``None`` uses :func:`metal_sites` (brighter group),
        which is wrong for a low-angle detector that reverses the contrast: pass the mask
        of :func:`metal_sites_two_channels` there.
    method
        Threshold method of :func:`fit_threshold`.
    radius_px, local_radius_px, refine
        See :func:`column_features`.
    """
    img = _image(image)
    points = check_points(points_px, img.shape)
    mask = metal_sites(points, img, refine=refine) if metal_site is None else np.asarray(metal_site, dtype=bool)
    feature, refined = column_features(img, points, mask, radius_px=radius_px,
                                       local_radius_px=local_radius_px, refine=refine)
    t_metal = fit_threshold(feature[mask], method=method)
    t_chalc = fit_threshold(feature[~mask], method=method)
    return BaselineResult(_classify(feature, mask, t_metal, t_chalc), mask, feature, refined,
                          {"metal": t_metal, "chalcogen": t_chalc})


def oracle_baseline(
    image: np.ndarray,
    points_px: np.ndarray,
    labels: Sequence[str] | np.ndarray,
    *,
    radius_px: float = 1.5,
    local_radius_px: float | None = 15.0,
    refine: bool = True,
) -> BaselineResult:
    """Label-tuned intensity baseline: the best any one threshold per sublattice can do.

    The geometric groups are matched to the labels (the group holding more metal/dopant
    labels is the metal sublattice) and each threshold minimises the errors against the
    labels (:func:`oracle_threshold`). An upper bound for intensity alone, not a method.

    Parameters
    ----------
    labels
        (N,) class names; ``metal``/``dopant`` belong to the metal sublattice, the others
        to the chalcogen one.
    """
    img = _image(image)
    points = check_points(points_px, img.shape)
    names = np.asarray(labels).astype(str)
    if names.shape != (len(points),):
        raise ValueError(f"labels has shape {names.shape}; expected ({len(points)},), one class name per point")
    labelled_metal = np.isin(names, ("metal", "dopant"))
    groups = split_sublattices(points)
    metal_group = int(np.argmax([np.sum(labelled_metal & (groups == g)) for g in (0, 1)]))
    mask = groups == metal_group
    feature, refined = column_features(img, points, mask, radius_px=radius_px,
                                       local_radius_px=local_radius_px, refine=refine)
    t_metal = oracle_threshold(feature[mask], names[mask] == "dopant")
    t_chalc = oracle_threshold(feature[~mask], np.isin(names[~mask], ("V1", "V2")))
    return BaselineResult(_classify(feature, mask, t_metal, t_chalc), mask, feature, refined,
                          {"metal": t_metal, "chalcogen": t_chalc})


def baseline_table(
    fields: Sequence[int] | None = None,
    *,
    local_radii_px: Sequence[float | None] = (None, 15.0),
    methods: Sequence[str] = METHODS,
    radius_px: float = 1.5,
) -> pd.DataFrame:
    """Score the baselines on the labelled Ti-WSe2 fields, both detector channels.

    The metal sublattice of the label-free variants comes from
    :func:`metal_sites_two_channels` (no labels, no contrast assumption).

    Parameters
    ----------
    fields
        Field numbers (default: all of :data:`tdmctx.experimental.FIELDS`).
    local_radii_px
        Normalisation radii to compare (``None``: whole-image median).
    methods
        Label-free threshold methods to include; the oracle is always included.
    radius_px
        Column disc radius, pixels.

    Returns
    -------
    pandas.DataFrame
        One row per field, channel, variant (``mixture``, ``otsu``, ``oracle``) and
        normalisation radius: ``kappa``, ``accuracy``, ``sublattice_agreement`` (fraction
        of sites whose geometric sublattice matches its label), dopant and V1
        ``precision``/``recall``/``f1`` and the counts ``n_dopant``, ``n_V1``.
    """
    import pandas as pd

    from tdmctx.defects.evaluate import accuracy, cohen_kappa, per_class_scores
    from tdmctx.experimental import FIELDS, load_ti_wse2

    rows = []
    for field in FIELDS if fields is None else fields:
        ds = load_ti_wse2(field)
        points = ds["points_px"].values
        labels = ds["label"].values.astype(str)
        mask = metal_sites_two_channels(points, ds["adf1"].values, ds["adf2"].values)
        agreement = float(np.mean(mask == np.isin(labels, ("metal", "dopant"))))
        for channel in ("adf1", "adf2"):
            image = ds[channel].values
            for local in local_radii_px:
                results = {m: intensity_baseline(image, points, metal_site=mask, method=m, radius_px=radius_px,
                                                 local_radius_px=local) for m in methods}
                results["oracle"] = oracle_baseline(image, points, labels, radius_px=radius_px, local_radius_px=local)
                for variant, res in results.items():
                    scores = per_class_scores(labels, res.classes)
                    row = {"field": field, "channel": channel, "variant": variant,
                           "local_radius_px": np.nan if local is None else local,
                           "kappa": cohen_kappa(labels, res.classes), "accuracy": accuracy(labels, res.classes),
                           "sublattice_agreement": agreement}
                    for name, k in (("dopant", 1), ("V1", 3)):
                        row.update({f"{name}_{s}": float(scores[s][k]) for s in ("precision", "recall", "f1")})
                        row[f"n_{name}"] = int(scores["support"][k])
                    rows.append(row)
    return pd.DataFrame(rows)

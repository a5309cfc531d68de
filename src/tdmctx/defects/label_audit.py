"""Audit of human column labels against the columns' own intensities, in every channel.

A label can only be reproduced by a method that reads the image if the labelled column
looks like its class. This module flags the sites where it does not, in *every* recorded
channel at once, so that a single noisy channel cannot raise a flag:

- ``defect_looks_intact``: labelled ``dopant`` (metal sublattice) or ``V1``/``V2``
  (chalcogen sublattice) whose normalised intensity (:func:`~tdmctx.defects.baseline.column_features`:
  hollow level removed, divided by the local median of its sublattice) is at least
  ``intact_level`` in every channel, i.e. as bright as the intact columns around it;
- ``intact_looks_defect``: labelled ``metal`` or ``X2`` at most ``defect_level`` in every
  channel.

Neither flag says the label is wrong (a human may have seen something the intensities do not
show, or labelled another frame); they bound what any column-reading classifier can
agree with. From the flags follow ceilings: at most ``1 - flagged / n`` of a class's labels
can be recalled by such a classifier, and its F1 for that class is then at most
``2 r / (1 + r)`` even with perfect precision.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from tdmctx.defects.baseline import column_features, metal_sites, metal_sites_two_channels
from tdmctx.defects.context import CLASS_NAMES
from tdmctx.experimental.columns import check_points

if TYPE_CHECKING:
    import pandas as pd
    from matplotlib.figure import Figure

__all__ = ["LabelAudit", "audit_labels", "plot_label_audit"]

_DEFECT_CLASSES = ("dopant", "V1", "V2")


@dataclass(frozen=True)
class LabelAudit:
    """Per-site result of :func:`audit_labels`.

    Attributes
    ----------
    labels
        (N,) class names, input order.
    metal_site
        (N,) True on the metal sublattice (from the geometry and the contrast, no labels).
    features
        Channel name -> (N,) normalised column intensity (intact columns near 1).
    points_px
        (N, 2) refined (x, y) centres of the first channel, pixels.
    defect_looks_intact, intact_looks_defect
        (N,) flags (module docstring).
    intact_level, defect_level
        The levels used.
    """

    labels: np.ndarray
    metal_site: np.ndarray
    features: dict[str, np.ndarray]
    points_px: np.ndarray
    defect_looks_intact: np.ndarray
    intact_looks_defect: np.ndarray
    intact_level: float
    defect_level: float

    def summary(self) -> pd.DataFrame:
        """One row per labelled class: count, flagged count, recall and F1 ceilings.

        For defect classes ``flagged`` counts ``defect_looks_intact`` and the ceilings
        follow from it; for intact classes it counts ``intact_looks_defect`` (columns that
        a reader would call defects: a bound on the defect class's precision instead).
        """
        import pandas as pd

        rows = []
        for name in CLASS_NAMES:
            sel = self.labels == name
            n = int(sel.sum())
            if n == 0:
                continue
            defect = name in _DEFECT_CLASSES
            flagged = int((self.defect_looks_intact if defect else self.intact_looks_defect)[sel].sum())
            recall = 1.0 - flagged / n if defect else np.nan
            rows.append({"label": name, "n": n, "flagged": flagged, "flagged_fraction": flagged / n,
                         "recall_ceiling": recall,
                         "f1_ceiling": 2 * recall / (1 + recall) if defect else np.nan})
        return pd.DataFrame(rows)


def audit_labels(
    images: Mapping[str, np.ndarray],
    points_px: np.ndarray,
    labels: Sequence[str] | np.ndarray,
    *,
    metal_site: np.ndarray | None = None,
    intact_level: float = 0.8,
    defect_level: float = 0.6,
    radius_px: float = 1.5,
    local_radius_px: float | None = 15.0,
) -> LabelAudit:
    """Flag labelled sites whose columns contradict their label in every channel.

    Parameters
    ----------
    images
        Channel name -> (y, x) image, all of the same field (simultaneous detectors). The
        first channel's refined centres are reported.
    points_px
        (N, 2) (x, y) site positions, pixels.
    labels
        (N,) class names among ``metal, dopant, X2, V1, V2``.
    metal_site
        (N,) metal-sublattice mask; by default from the geometry and, with two or more
        channels, :func:`~tdmctx.defects.baseline.metal_sites_two_channels` on the first
        two (else the brighter group of the single channel).
    intact_level, defect_level
        Normalised intensities above / below which a column looks intact / defective
        (``0 < defect_level < intact_level``).
    radius_px, local_radius_px
        See :func:`~tdmctx.defects.baseline.column_features`.

    Raises
    ------
    ValueError
        For no channel, images of different shapes, a label outside the five classes,
        a label count that does not match the points, or inconsistent levels.
    """
    if not images:
        raise ValueError("images is empty; give at least one channel")
    channels = list(images)
    arrays = {c: np.asarray(images[c], dtype=np.float64) for c in channels}
    shapes = {a.shape for a in arrays.values()}
    if len(shapes) != 1:
        raise ValueError(f"the channels have different shapes {sorted(shapes)}; they must be one field")
    first = arrays[channels[0]]
    points = check_points(points_px, first.shape)
    names = np.asarray(labels).astype(str)
    if names.shape != (len(points),):
        raise ValueError(f"labels has shape {names.shape}; expected ({len(points)},), one class name per point")
    unknown = sorted(str(n) for n in set(names.tolist()) - set(CLASS_NAMES))
    if unknown:
        raise ValueError(f"unknown label(s) {unknown}; expected some of {list(CLASS_NAMES)}")
    if not 0 < defect_level < intact_level:
        raise ValueError(f"need 0 < defect_level < intact_level; got {defect_level!r} and {intact_level!r}")
    if metal_site is None:
        if len(channels) >= 2:
            metal_site = metal_sites_two_channels(points, arrays[channels[0]], arrays[channels[1]])
        else:
            metal_site = metal_sites(points, first)
    mask = np.asarray(metal_site, dtype=bool)
    columns = {c: column_features(arrays[c], points, mask, radius_px=radius_px, local_radius_px=local_radius_px)
               for c in channels}
    features = {c: feature for c, (feature, _) in columns.items()}
    refined = columns[channels[0]][1]
    stack = np.stack(list(features.values()))
    defect_label = np.isin(names, _DEFECT_CLASSES)
    intact_label = np.isin(names, ("metal", "X2"))
    return LabelAudit(
        labels=names, metal_site=mask, features=features, points_px=refined,
        defect_looks_intact=defect_label & np.all(stack >= intact_level, axis=0),
        intact_looks_defect=intact_label & np.all(stack <= defect_level, axis=0),
        intact_level=float(intact_level), defect_level=float(defect_level),
    )


def plot_label_audit(audit: LabelAudit, image: np.ndarray, *, title: str = "", pixel_size_A: float | None = None) -> Figure:
    """Metal-sublattice intensities of two channels by label, and the flagged sites on the image.

    Left: one point per metal-sublattice site, normalised intensity in the first two
    channels (one channel: against the site index), coloured by label, with the flag
    levels. Right: ``image`` with the flagged sites circled.
    """
    import matplotlib.pyplot as plt

    from tdmctx.plotting import CLASS_COLORS, show_image

    channels = list(audit.features)
    fig, (ax0, ax1) = plt.subplots(1, 2, figsize=(11, 4.8))
    m = audit.metal_site
    for name in ("metal", "dopant"):
        sel = m & (audit.labels == name)
        x = audit.features[channels[0]][sel]
        y = audit.features[channels[1]][sel] if len(channels) > 1 else np.flatnonzero(sel)
        ax0.scatter(x, y, s=4 if name == "metal" else 9, alpha=0.5 if name == "metal" else 0.9,
                    color=CLASS_COLORS[name], label=f"labelled {name} ({sel.sum()})", rasterized=True)
    flagged = m & audit.defect_looks_intact
    x = audit.features[channels[0]][flagged]
    y = audit.features[channels[1]][flagged] if len(channels) > 1 else np.flatnonzero(flagged)
    ax0.scatter(x, y, s=40, facecolors="none", edgecolors="k", label=f"dopant label, intact column ({flagged.sum()})")
    ax0.axvline(audit.intact_level, color="0.4", ls="--", lw=1)
    if len(channels) > 1:
        ax0.axhline(audit.intact_level, color="0.4", ls="--", lw=1)
        ax0.set_ylabel(f"{channels[1]}: column / local metal median")
    else:
        ax0.set_ylabel("site index")
    ax0.set_xlabel(f"{channels[0]}: column / local metal median")
    ax0.set_title("metal sublattice")
    ax0.legend(fontsize=8, loc="upper left")
    show_image(ax1, image, pixel_size_A, title=title or "flagged sites")
    for flags, colour, label in ((audit.defect_looks_intact, "#EE6677", "defect label, intact column"),
                                 (audit.intact_looks_defect, "#66CCEE", "intact label, defect-like column")):
        pts = audit.points_px[flags]
        ax1.scatter(pts[:, 0], pts[:, 1], s=40, facecolors="none", edgecolors=colour, lw=1.2,
                    label=f"{label} ({len(pts)})")
    ax1.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.01), ncol=2)
    fig.tight_layout()
    return fig

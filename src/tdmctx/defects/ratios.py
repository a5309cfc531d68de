"""Column intensity ratios that simulated and experimental images can share.

Real frames have an unknown dark offset and gain and no vacuum; simulated ones are in
units of the incident beam. Both have empty hexagon centres (hollow sites), whose level
holds the same probe tails in both, so intensities referenced to it,

    r_c = (I_c - I_hollow) / (I_metal - I_hollow),

compare across the two whatever the offset and gain. Column intensities are disc means
around sub-pixel centres (:func:`tdmctx.experimental.column_intensities`).
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import xarray as xr

from tdmctx.defects.context import CLASS_NAMES

__all__ = ["COLUMN_RADIUS_A", "hollow_referenced_ratios", "simulated_ratios", "experimental_ratios"]

#: Disc radius for column intensities, Angstrom (1.5 px of the experimental 0.4 A frames,
#: below half the 1.9 A metal-chalcogen column distance).
COLUMN_RADIUS_A = 0.6


def hollow_referenced_ratios(
    image: np.ndarray, points_px: np.ndarray, labels: np.ndarray, pixel_size_A: float
) -> dict[str, float]:
    """Mean class intensities relative to the metal class, hollow level removed.

    Parameters
    ----------
    image
        (y, x) image in any units.
    points_px
        (N, 2) sub-pixel column centres (x, y), pixels.
    labels
        (N,) class names.
    pixel_size_A
        Pixel size, Angstrom.

    Returns
    -------
    dict
        ``{"<class>/metal": ratio}`` for every class present besides metal, plus
        ``"raw X2/metal"`` (no hollow reference) and ``"hollow/metal"`` (the hollow level
        over the raw metal intensity, an upper bound of the offset fraction).
    """
    from tdmctx.experimental import column_intensities, hollow_level

    labels = np.asarray(labels)
    points = np.asarray(points_px, dtype=float)
    radius_px = COLUMN_RADIUS_A / pixel_size_A
    metal_pts = points[labels == "metal"]
    chalc_pts = points[np.isin(labels, ["X2", "V1", "V2"])]
    hollow = hollow_level(image, np.concatenate([metal_pts, points[labels == "dopant"]]), chalc_pts, radius_px=radius_px)
    raw = column_intensities(image, points, radius_px=radius_px)
    metal_raw = raw[labels == "metal"].mean()
    out = {}
    for c in CLASS_NAMES[1:]:
        sel = labels == c
        if sel.any():
            out[f"{c}/metal"] = float((raw[sel].mean() - hollow) / (metal_raw - hollow))
    out["raw X2/metal"] = float(raw[labels == "X2"].mean() / metal_raw)
    out["hollow/metal"] = float(hollow / metal_raw)
    return out


def simulated_ratios(dataset: xr.Dataset, condition: str, system: str = "WSe2:Ti") -> dict[str, float]:
    """Hollow-referenced ratios over the clean images of one case of a dataset store.

    Sites closer than 3 px to an image edge or on NaN padding are left out.
    """
    images = np.where((dataset["condition"].values == condition) & (dataset["system"].values == system))[0]
    if len(images) == 0:
        raise ValueError(f"condition={condition!r}, system={system!r}: no such images in the dataset")
    pixel = float(dataset.attrs["pixel_size_A"])
    per_image = []
    for i in images:
        image = np.asarray(dataset["intensity"][i].values, dtype=float)
        valid = np.isfinite(image)
        rows, cols = np.where(valid.any(axis=1))[0], np.where(valid.any(axis=0))[0]
        image = image[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1]
        sel = dataset["site_image"].values == i
        pts = np.stack([dataset["site_x_px"].values[sel] - cols[0], dataset["site_y_px"].values[sel] - rows[0]], axis=1)
        lab = dataset["site_label"].values[sel].astype(str)
        inside = (pts[:, 0] > 3) & (pts[:, 1] > 3) & (pts[:, 0] < image.shape[1] - 4) & (pts[:, 1] < image.shape[0] - 4)
        per_image.append(hollow_referenced_ratios(image, pts[inside], lab[inside], pixel))
    return pd.DataFrame(per_image).mean().to_dict()


def experimental_ratios(field: int, channel: str, *, root=None) -> dict[str, float]:
    """Hollow-referenced ratios of one labelled Ti-WSe2 field and detector channel.

    The labelled whole-pixel points are refined to sub-pixel centres first.
    """
    from tdmctx.experimental import load_ti_wse2, refine_columns

    if channel not in ("adf1", "adf2"):
        raise ValueError(f"channel={channel!r} is unknown; expected 'adf1' or 'adf2'")
    data = load_ti_wse2(field, root=root)
    image = np.asarray(data[channel].values, dtype=float)
    points = refine_columns(image, np.asarray(data["points_px"].values))
    return hollow_referenced_ratios(image, points, data["label"].values.astype(str), float(data[channel].attrs["pixel_size_A"]))

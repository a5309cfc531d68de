"""The real Ti-doped WSe2 fields with human column labels (two ADF detectors per field).

Data: the public repository ``jiadongdan/random-defect-model`` (MIT licence, copyright (c)
2024 jiadongdan), read from the shared data folder through :mod:`tdmctx.data`.
"""

from __future__ import annotations

import os

import numpy as np
import xarray as xr

from tdmctx.data import fetch
from tdmctx.experimental.columns import check_points
from tdmctx.experimental.dm import read_dm

__all__ = ["FIELDS", "LABEL_IDS", "load_ti_wse2"]

#: Fields available in the shared data.
FIELDS: tuple[int, ...] = (2, 11)

#: Class id in the label files -> class name of the package.
LABEL_IDS: dict[int, str] = {0: "metal", 1: "dopant", 2: "X2", 3: "V1"}

_FOLDER = "experimental/ti-wse2"


def load_ti_wse2(field: int, *, root: str | os.PathLike | None = None) -> xr.Dataset:
    """Load one labelled Ti-WSe2 field.

    Parameters
    ----------
    field
        Field number, one of :data:`FIELDS`.
    root
        Data folder (see :mod:`tdmctx.data`); found automatically by default.

    Returns
    -------
    xarray.Dataset
        ``adf1`` (lower-angle detector) and ``adf2`` (higher-angle detector) as (y, x) raw
        counts with coordinates in Angstrom; ``points_px`` (site, xy) whole-pixel (x, y)
        positions; ``label`` (site) class names. Attributes: ``host`` ``"WSe2"``, ``metal``
        ``"W"``, ``chalcogen`` ``"Se"``, ``dopant`` ``"Ti"``, ``energy_eV`` 80000,
        ``pixel_size_A``, and the detector angles as the string ``"unknown"`` (they are not
        recorded; the context treats them as ``None``).

    Raises
    ------
    ValueError
        For an unknown field, labels that disagree with the points, unknown label ids or
        points outside the images.
    tdmctx.data.MissingDataError, tdmctx.data.CorruptDataError
        If a file is absent or fails its checksum.
    """
    if field not in FIELDS:
        raise ValueError(f"field={field!r} is not a Ti-WSe2 field; available: {FIELDS}")
    adf = {}
    for channel in ("adf1", "adf2"):
        image = read_dm(fetch(f"{_FOLDER}/field{field}_{channel}.dm4", root))
        adf[channel] = image.rename(channel)
    if adf["adf1"].shape != adf["adf2"].shape:
        raise ValueError(f"field {field}: adf1 {adf['adf1'].shape} and adf2 {adf['adf2'].shape} differ in shape")
    points = np.load(fetch(f"{_FOLDER}/field{field}_points.npy", root))
    labels = np.load(fetch(f"{_FOLDER}/field{field}_labels.npy", root))
    if labels.shape != (len(points),):
        raise ValueError(f"field {field}: {labels.shape} labels for {len(points)} points; expected one label per point")
    check_points(points, adf["adf1"].shape, name=f"field {field} points")
    unknown = sorted(set(np.unique(labels).astype(int)) - set(LABEL_IDS))
    if unknown:
        raise ValueError(f"field {field}: unknown label ids {unknown}; known {LABEL_IDS}")
    names = np.array([LABEL_IDS[int(i)] for i in labels])
    pixel_size_A = float(adf["adf1"].attrs["pixel_size_A"])
    for image in adf.values():
        image.attrs = {k: v for k, v in image.attrs.items() if k in ("pixel_size_A", "units", "source", "signal")}
    return xr.Dataset(
        {
            "adf1": adf["adf1"],
            "adf2": adf["adf2"],
            "points_px": (("site", "xy"), points.astype(np.int64)),
            "label": (("site",), names),
        },
        coords={"xy": ["x", "y"]},
        attrs={
            "field": int(field),
            "host": "WSe2",
            "metal": "W",
            "chalcogen": "Se",
            "dopant": "Ti",
            "energy_eV": 80000.0,
            "pixel_size_A": pixel_size_A,
            "detector_adf1_mrad": "unknown",
            "detector_adf2_mrad": "unknown",
            "source": "jiadongdan/random-defect-model (MIT)",
        },
    )

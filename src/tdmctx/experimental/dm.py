"""Reading Gatan DigitalMicrograph (dm3/dm4) images into labelled xarray objects."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import xarray as xr

__all__ = ["read_dm", "DMReadError"]

_LENGTH_TO_A = {"nm": 10.0, "A": 1.0, "Å": 1.0, "\u00c5": 1.0, "pm": 0.01, "um": 1e4, "µm": 1e4, "\u00b5m": 1e4}


class DMReadError(ValueError):
    """A file could not be read as a DigitalMicrograph image."""


def _largest_image(dm) -> int:
    # dm files may carry a small preview thumbnail as the first object; the data image is
    # the largest two-dimensional one.
    sizes = []
    for index in range(dm.numObjects):
        ny, nx = int(dm.ySize[index]), int(dm.xSize[index])
        nz = int(dm.zSize[index]) if hasattr(dm, "zSize") else 1
        sizes.append((ny * nx if nz <= 1 else -1, index))
    best = max(sizes)
    if best[0] <= 0:
        raise DMReadError(f"{dm.file_name}: holds no two-dimensional image")
    # ncempy's getDataset counts objects after skipping the thumbnail
    return best[1] - (1 if dm.thumbnail else 0)


def read_dm(path: str | os.PathLike) -> xr.DataArray:
    """Read the data image of a dm3/dm4 file (not its thumbnail).

    Parameters
    ----------
    path
        A ``.dm3`` or ``.dm4`` file.

    Returns
    -------
    xarray.DataArray
        Dimensions ``("y", "x")`` with coordinates in Angstrom (pixel centres, the first at 0),
        the raw counts in their original dtype, and attributes ``pixel_size_A``, ``signal``,
        ``energy_eV`` (when recorded), ``source`` (the file name) and ``units``.

    Raises
    ------
    FileNotFoundError
        If the file does not exist.
    DMReadError
        If it is not a readable DM file (wrong magic, truncated, no 2-D image) or has no
        length calibration.
    """
    from ncempy.io import dm as ncem_dm

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no such DM file: {path}")
    with open(path, "rb") as fh:
        head = fh.read(4)
    if len(head) < 4 or int.from_bytes(head, "big") not in (3, 4):
        raise DMReadError(f"{path}: not a DigitalMicrograph file (version word {head!r}, expected 3 or 4)")
    try:
        with ncem_dm.fileDM(str(path), verbose=False) as dm:
            index = _largest_image(dm)
            dataset = dm.getDataset(index)
            try:
                meta = dm.getMetadata(index)
            except Exception:  # metadata is optional; the image is what matters
                meta = {}
    except DMReadError:
        raise
    except Exception as exc:  # ncempy raises a zoo of errors for broken files
        raise DMReadError(f"{path}: cannot be read as a DM image ({type(exc).__name__}: {exc}); is it truncated?") from exc

    data = np.asarray(dataset["data"])
    if data.ndim != 2:
        raise DMReadError(f"{path}: data object has shape {data.shape}; expected a 2-D image")
    units = [str(u) for u in dataset["pixelUnit"]]
    scales = [float(s) for s in dataset["pixelSize"]]
    factors = [_LENGTH_TO_A.get(u) for u in units[:2]]
    if any(f is None for f in factors) or not all(s > 0 for s in scales[:2]):
        raise DMReadError(f"{path}: pixel calibration {scales[:2]} {units[:2]} is not a length; cannot give Angstrom")
    # ncempy lists calibrations in numpy axis order (rows first)
    dy_A, dx_A = scales[0] * factors[0], scales[1] * factors[1]
    ny, nx = data.shape
    attrs = {
        "pixel_size_A": float(dx_A),
        "units": "counts",
        "source": path.name,
        "signal": str(meta.get("DataBar Signal Name", "")),
    }
    if not np.isclose(dx_A, dy_A, rtol=1e-4):
        attrs["pixel_size_y_A"] = float(dy_A)
    voltage = meta.get("Microscope Info Voltage")
    if voltage:
        attrs["energy_eV"] = float(voltage)
    return xr.DataArray(
        data,
        dims=("y", "x"),
        coords={"y": ("y", np.arange(ny) * dy_A, {"units": "Å"}), "x": ("x", np.arange(nx) * dx_A, {"units": "Å"})},
        attrs=attrs,
        name=path.stem,
    )

"""A dataset store as one portable file, for machines without zarr or the store folder.

A store is a folder of zarr groups (:mod:`tdmctx.defects.store`). To train on another
machine (a cluster node, a rented GPU) it is often simpler to move one file that needs
nothing beyond numpy and xarray::

    ds = open_dataset("~/.cache/tdmctx/defects/multi-seed0")
    export_dataset(ds, "multi-seed0.npz")          # here
    ds = open_dataset("multi-seed0.npz").load()     # there: the same arrays and attributes

The file is a compressed ``.npz`` (no pickles): every variable and coordinate of the
dataset with its dimensions, the attributes, and the store key that names trained models
in the ablation cache (:func:`tdmctx.defects.ablation.store_key`), so that models trained
on the exported copy are found again next to the original store. Large floating-point
arrays are stored byte-plane by byte-plane (a lossless reordering that compresses about
13 % better than the plain bytes for simulated images). Where the file must be smaller
(a transfer limit), ``float_dtype="float16"`` stores those arrays at half precision,
scaled by their largest magnitude first so that none falls into float16's subnormal range:
a relative rounding error of at most 2**-11 (0.05 %), far below the shot noise that
the patches are later drawn with; they are read back as their original dtype.
"""

from __future__ import annotations

import json
import os
import zipfile
from pathlib import Path

import numpy as np
import xarray as xr

__all__ = ["FORMAT", "export_dataset", "open_exported"]

#: Version written in the file's metadata; readers refuse other versions.
FORMAT = "tdmctx-dataset-npz/1"
_META = "__meta__"
_SHUFFLE_MIN_BYTES = 1 << 20


def _shuffled(values: np.ndarray) -> np.ndarray:
    bytes_ = np.ascontiguousarray(values).view(np.uint8).reshape(-1, values.dtype.itemsize)
    return np.ascontiguousarray(bytes_.T)


def _unshuffled(planes: np.ndarray, dtype: np.dtype, shape: tuple[int, ...]) -> np.ndarray:
    return np.ascontiguousarray(planes.T).view(dtype).reshape(shape)


def _half(values: np.ndarray) -> tuple[np.ndarray, float]:
    if np.isinf(values).any():
        raise ValueError("float16 export needs finite values (NaN padding is kept); this array holds inf")
    magnitude = np.abs(values[~np.isnan(values)])
    scale = float(magnitude.max()) if magnitude.size and magnitude.max() > 0 else 1.0
    return (values / scale).astype(np.float16), scale


def export_dataset(dataset: xr.Dataset, path: str | os.PathLike, *, float_dtype: str | None = None) -> Path:
    """Write a dataset store (as opened by ``open_dataset``) to one ``.npz`` file.

    Parameters
    ----------
    dataset
        The store's dataset (:func:`~tdmctx.defects.store.open_dataset`); lazy arrays are
        read.
    path
        Output file; ``.npz`` is appended if missing. Written under a temporary name and
        renamed, so an interrupted export leaves no partial file.
    float_dtype
        ``None`` (lossless) or ``"float16"``: floating-point arrays of 1 MiB or more are
        stored at half precision (module notes), about halving the file.

    Returns
    -------
    pathlib.Path
        The file written.

    Raises
    ------
    ValueError
        If a variable holds Python objects (the file stores plain arrays only), if
        ``float_dtype`` is not ``None`` or ``"float16"``, or if a float16 array would
        hold inf.
    """
    from tdmctx.defects.ablation import store_key

    if float_dtype not in (None, "float16"):
        raise ValueError(f"float_dtype={float_dtype!r} is not supported; expected None (lossless) or 'float16'")
    out = Path(path).expanduser()
    if out.suffix != ".npz":
        out = out.with_name(out.name + ".npz")
    arrays: dict[str, np.ndarray] = {}
    variables = {}
    for name, var in dataset.variables.items():
        values = np.asarray(var.values)
        if values.dtype == object:
            raise ValueError(f"variable {name!r} holds Python objects; export needs plain numeric or string arrays")
        key = f"v{len(variables)}"
        shuffle = values.dtype.kind == "f" and values.nbytes >= _SHUFFLE_MIN_BYTES
        info = {"key": key, "dims": list(var.dims), "coord": name in dataset.coords, "shuffled": shuffle,
                "dtype": values.dtype.str, "shape": list(values.shape), "attrs": {k: v for k, v in var.attrs.items()}}
        stored = values
        if shuffle and float_dtype == "float16":
            try:
                stored, info["scale"] = _half(values)
            except ValueError as err:
                raise ValueError(f"variable {name!r}: {err}") from None
            info["stored_dtype"] = stored.dtype.str
        arrays[key] = _shuffled(stored) if shuffle else stored
        variables[name] = info
    meta = {"format": FORMAT, "attrs": dict(dataset.attrs), "store_key": store_key(dataset), "variables": variables}
    arrays[_META] = np.array(json.dumps(meta, default=str))
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp")
    with open(tmp, "wb") as fh:
        np.savez_compressed(fh, **arrays)
    os.replace(tmp, out)
    return out


def open_exported(path: str | os.PathLike) -> xr.Dataset:
    """Read a file written by :func:`export_dataset` back into an :class:`xarray.Dataset`.

    The dataset's attributes gain ``store_key`` (the original store's key) and ``store``
    is the original store folder, as recorded at export.

    Raises
    ------
    FileNotFoundError
        If the file does not exist.
    ValueError
        If it is not such a file, is truncated, or was written by another format version.
    """
    path = Path(path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"{str(path)!r} does not exist; expected a .npz written by export_dataset")
    try:
        with np.load(path, allow_pickle=False) as npz:
            if _META not in npz.files:
                raise ValueError(f"{str(path)!r} is an .npz without tdmctx metadata; was it written by export_dataset?")
            meta = json.loads(str(npz[_META]))
            if meta.get("format") != FORMAT:
                raise ValueError(f"{str(path)!r} has format {meta.get('format')!r}; this tdmctx reads {FORMAT!r}")
            data_vars, coords = {}, {}
            for name, info in meta["variables"].items():
                values = npz[info["key"]]
                if info["shuffled"]:
                    stored = np.dtype(info.get("stored_dtype", info["dtype"]))
                    values = _unshuffled(values, stored, tuple(info["shape"]))
                    if "scale" in info:
                        values = values.astype(np.dtype(info["dtype"])) * np.dtype(info["dtype"]).type(info["scale"])
                target = coords if info["coord"] else data_vars
                target[name] = xr.Variable(tuple(info["dims"]), values, info["attrs"])
    except (zipfile.BadZipFile, EOFError, OSError) as err:
        raise ValueError(f"{str(path)!r} is unreadable or truncated ({err}); export it again") from err
    return xr.Dataset(data_vars, coords=coords, attrs={**meta["attrs"], "store_key": meta["store_key"]})

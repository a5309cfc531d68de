"""Readers for the file formats that real 4D-STEM data come in.

* **EMPAD** (``.raw`` with its ``.xml``): little-endian float32 frames of 130 rows x 128
  columns in numpy (C) order, one per scan position, the two trailing rows of each frame
  holding metadata, frames in acquisition order (row-major, x fast). The ``.xml`` gives the
  scan size (``pix_x``/``pix_y`` or ``scan_parameters/scan_resolution_x|y``), the raw file's
  name and, where the acquisition software wrote them, the scan field of view.
* **EMD 1.0** (Berkeley format, HDF5, as written by py4DSTEM/emdfile): the first
  ``emd_group_type = array`` group holding a 4-D ``data`` set, with ``dim0..dim3``
  calibration vectors (R in Angstrom or nm, Q in mrad or inverse Angstrom).
* The package's own ``.npz``/HDF5 format (:mod:`tdmctx.ptycho.io`).

:func:`read_4dstem` dispatches on the file and returns a :class:`~tdmctx.ptycho.io.PtychoDataset`;
what a format does not record (beam energy, convergence angle, detector sampling, scan
step) is passed as keyword arguments, and a missing one is named in the error.
"""

from __future__ import annotations

import os
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path, PureWindowsPath
from typing import Any

import numpy as np

from tdmctx.ptycho.detector import wavelength_A
from tdmctx.ptycho.io import PtychoDataset, dataset_from_mapping, load_dataset

__all__ = [
    "EMPAD_FRAME_SHAPE",
    "RawDatacube",
    "ReaderError",
    "read_empad",
    "read_emd",
    "read_4dstem",
    "write_empad",
]

#: Rows x columns of one EMPAD frame as stored; the last two rows are metadata.
EMPAD_FRAME_SHAPE: tuple[int, int] = (130, 128)

_LENGTH_TO_A = {"A": 1.0, "Å": 1.0, "angstrom": 1.0, "nm": 10.0, "pm": 0.01, "m": 1e10}


class ReaderError(ValueError):
    """A file is not what its format promises (truncated, inconsistent, missing data)."""


@dataclass
class RawDatacube:
    """A 4D-STEM datacube as read from a detector file, with what the file recorded.

    Attributes
    ----------
    datacube
        (scan_rows, scan_cols, k0, k1) float32.
    step_A
        Scan step (x, y) in Angstrom, or ``None`` when the file does not record it.
    angular_sampling_mrad
        Detector sampling along (k0, k1) in mrad, or ``None``.
    energy_eV
        Beam energy, or ``None``.
    metadata
        Everything else the file held, flattened to ``{"a/b/c": value}``.
    source
        The file read.
    """

    datacube: np.ndarray
    step_A: tuple[float, float] | None = None
    angular_sampling_mrad: tuple[float, float] | None = None
    energy_eV: float | None = None
    metadata: dict[str, Any] = field(default_factory=dict)
    source: str = ""


# ----------------------------------------------------------------------------- EMPAD


def _flatten_xml(element: ET.Element, prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for child in element:
        key = f"{prefix}{child.tag}"
        for name, value in child.attrib.items():
            out[f"{key}@{name}"] = value
        if len(child):
            out.update(_flatten_xml(child, key + "/"))
        elif child.text and child.text.strip():
            out[key] = child.text.strip()
    return out


def _empad_paths(path: Path) -> tuple[Path, Path | None]:
    if path.suffix.lower() == ".xml":
        return path, None
    if path.suffix.lower() == ".raw":
        xml = path.with_suffix(".xml")
        return (xml if xml.is_file() else None), path  # type: ignore[return-value]
    raise ReaderError(f"{path}: an EMPAD dataset is a .xml with its .raw; got suffix {path.suffix!r}")


def read_empad(path: str | os.PathLike, *, scan_shape: tuple[int, int] | None = None, memmap: bool = False) -> RawDatacube:
    """Read an EMPAD dataset.

    Parameters
    ----------
    path
        The ``.xml`` (preferred; it names the ``.raw``) or the ``.raw`` file.
    scan_shape
        ``(scan_rows, scan_cols)``; required only when there is no ``.xml``.
    memmap
        Map the file instead of reading it (large scans).

    Returns
    -------
    RawDatacube
        ``datacube`` is (scan_rows, scan_cols, 128, 128) float32 (metadata rows dropped).

    Raises
    ------
    FileNotFoundError
        If the ``.xml`` or the ``.raw`` is missing.
    ReaderError
        If the ``.xml`` cannot be parsed or names no scan size, or the ``.raw`` size does not
        match the scan size (a truncated file or a wrong ``.xml``).
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"no such EMPAD file: {path}")
    xml_path, raw_path = _empad_paths(path)
    metadata: dict[str, Any] = {}
    step_A = None
    if xml_path is not None:
        try:
            root = ET.parse(xml_path).getroot()
        except ET.ParseError as exc:
            raise ReaderError(f"{xml_path}: not a readable EMPAD .xml ({exc})") from exc
        metadata = _flatten_xml(root)
        if raw_path is None:
            name = metadata.get("raw_file@filename")
            if not name:
                raise ReaderError(f"{xml_path}: no <raw_file filename=...> entry naming the .raw file")
            # the acquisition PC writes a Windows path; only the file name is meaningful here
            raw_path = xml_path.parent / PureWindowsPath(name).name
        shape_keys = [("pix_y", "pix_x"), ("scan_parameters/scan_resolution_y", "scan_parameters/scan_resolution_x")]
        for rows_key, cols_key in shape_keys:
            if rows_key in metadata and cols_key in metadata:
                xml_shape = (int(metadata[rows_key]), int(metadata[cols_key]))
                if scan_shape is not None and tuple(scan_shape) != xml_shape:
                    raise ReaderError(f"{xml_path}: scan shape {xml_shape} disagrees with scan_shape={tuple(scan_shape)}")
                scan_shape = xml_shape
                break
        fov = metadata.get("iom_measurements/optics/get_full_scan_field_of_view")
        if fov and scan_shape is not None:
            try:
                values = [float(v) for v in fov.strip("[]() ").replace(",", " ").split()]
                # the field of view is (x, y) in metres
                step_A = (values[0] * 1e10 / scan_shape[1], values[1] * 1e10 / scan_shape[0])
            except (ValueError, IndexError):
                step_A = None
    if scan_shape is None:
        raise ReaderError(f"{path}: the scan size is not recorded; pass scan_shape=(rows, cols) or give the .xml")
    if raw_path is None or not raw_path.is_file():
        raise FileNotFoundError(f"the EMPAD raw file {raw_path} named by {xml_path} is missing")
    rows, cols = (int(s) for s in scan_shape)
    frame = EMPAD_FRAME_SHAPE[0] * EMPAD_FRAME_SHAPE[1]
    expected = rows * cols * frame * 4
    size = raw_path.stat().st_size
    if size != expected:
        what = "truncated" if size < expected else "larger than the scan"
        raise ReaderError(
            f"{raw_path}: {size} bytes, but a {rows} x {cols} scan of {EMPAD_FRAME_SHAPE[0]} x "
            f"{EMPAD_FRAME_SHAPE[1]} float32 frames needs {expected} bytes ({what}; does the .xml match the file?)"
        )
    if memmap:
        raw = np.memmap(raw_path, dtype="<f4", mode="r", shape=(rows, cols, *EMPAD_FRAME_SHAPE))
    else:
        raw = np.fromfile(raw_path, dtype="<f4").reshape(rows, cols, *EMPAD_FRAME_SHAPE)
    data = raw[:, :, : EMPAD_FRAME_SHAPE[0] - 2, :]
    return RawDatacube(
        datacube=data if memmap else np.ascontiguousarray(data),
        step_A=step_A,
        metadata=metadata,
        source=str(xml_path or raw_path),
    )


def write_empad(datacube: np.ndarray, path: str | os.PathLike, *, step_A: float | None = None) -> Path:
    """Write a (rows, cols, 128, 128) datacube as an EMPAD ``.raw`` + ``.xml`` pair.

    Meant for tests and for exchanging simulated data with EMPAD tools; the two metadata rows
    of each frame are written as zeros. Returns the ``.xml`` path.
    """
    data = np.asarray(datacube, dtype="<f4")
    if data.ndim != 4 or data.shape[2:] != (EMPAD_FRAME_SHAPE[0] - 2, EMPAD_FRAME_SHAPE[1]):
        raise ValueError(f"datacube has shape {data.shape}; expected (rows, cols, 128, 128)")
    xml_path = Path(path).with_suffix(".xml")
    raw_path = xml_path.with_suffix(".raw")
    rows, cols = data.shape[:2]
    frames = np.zeros((rows, cols, *EMPAD_FRAME_SHAPE), dtype="<f4")
    frames[:, :, :-2, :] = data
    frames.tofile(raw_path)
    fov = "" if step_A is None else (
        "<iom_measurements><optics><get_full_scan_field_of_view>"
        f"[{cols * step_A * 1e-10!r}, {rows * step_A * 1e-10!r}]"
        "</get_full_scan_field_of_view></optics></iom_measurements>"
    )
    xml_path.write_text(
        f'<root><raw_file filename="{raw_path.name}"/><pix_x>{cols}</pix_x><pix_y>{rows}</pix_y>{fov}</root>\n'
    )
    return xml_path


# ----------------------------------------------------------------------------- EMD 1.0


def _dim_step(dim: Any, axis: str, path: Path) -> tuple[float, str]:
    values = np.asarray(dim[()], dtype=np.float64).ravel()
    units = dim.attrs.get("units", "")
    units = units.decode() if isinstance(units, bytes) else str(units)
    if len(values) < 2:
        raise ReaderError(f"{path}: calibration {axis} holds {len(values)} value(s); expected at least 2")
    return float(values[1] - values[0]), units


def read_emd(path: str | os.PathLike, *, energy_eV: float | None = None) -> RawDatacube:
    """Read the first 4-D array of an EMD 1.0 (Berkeley) HDF5 file, e.g. one saved by py4DSTEM.

    Parameters
    ----------
    path
        The ``.emd``/``.h5`` file.
    energy_eV
        Beam energy, needed only to convert a Q calibration in inverse Angstrom to mrad.

    Returns
    -------
    RawDatacube
        ``datacube`` (scan_rows, scan_cols, k0, k1) as stored (py4DSTEM's Rx, Ry, Qx, Qy),
        ``step_A`` and ``angular_sampling_mrad`` from the ``dim`` vectors when they carry
        length and angle (or inverse-length) units.

    Raises
    ------
    ReaderError
        If the file is not HDF5, is not EMD 1.0, or holds no 4-D array.
    """
    import h5py

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no such EMD file: {path}")
    try:
        handle = h5py.File(path, "r")
    except OSError as exc:
        raise ReaderError(f"{path}: not an HDF5 file ({exc})") from exc
    with handle as h5:
        if "datacube" in h5 and "nominal_positions_A" in h5:
            raise ReaderError(f"{path}: this is a tdmctx ptychography file, not EMD; read it with read_4dstem")
        found: list[str] = []

        def visit(name: str, obj: Any) -> None:
            if isinstance(obj, h5py.Group) and obj.attrs.get("emd_group_type") in ("array", 1, b"array"):
                if "data" in obj and obj["data"].ndim == 4:
                    found.append(name)

        h5.visititems(visit)
        if not found:
            kind = "an EMD 1.0 file" if h5.attrs.get("emd_group_type") in ("file", b"file") else "not EMD 1.0"
            raise ReaderError(f"{path}: {kind} without a 4-D datacube (no array group with 4-D 'data')")
        group = h5[found[0]]
        data = np.asarray(group["data"][()], dtype=np.float32)
        step_A = sampling = None
        steps = [(_dim_step(group[f"dim{i}"], f"dim{i}", path) if f"dim{i}" in group else None) for i in range(4)]
        if steps[0] and steps[1] and steps[0][1] in _LENGTH_TO_A and steps[1][1] in _LENGTH_TO_A:
            # rows (dim0) are along y, columns (dim1) along x
            step_A = (steps[1][0] * _LENGTH_TO_A[steps[1][1]], steps[0][0] * _LENGTH_TO_A[steps[0][1]])
        if steps[2] and steps[3]:
            converted = []
            for step, units in (steps[2], steps[3]):
                if units == "mrad":
                    converted.append(step)
                elif units in ("A^-1", "1/A", "Å^-1") and energy_eV is not None:
                    converted.append(step * wavelength_A(energy_eV) * 1e3)
            if len(converted) == 2:
                sampling = (converted[0], converted[1])
        metadata = {"emd_path": found[0]}
        for key in ("Q_pixel_size", "Q_pixel_units", "R_pixel_size", "R_pixel_units"):
            for candidate in (f"{found[0].split('/')[0]}/metadatabundle/calibration/{key}",):
                if candidate in h5:
                    value = h5[candidate][()]
                    metadata[key] = value.decode() if isinstance(value, bytes) else value
    return RawDatacube(datacube=data, step_A=step_A, angular_sampling_mrad=sampling, energy_eV=energy_eV,
                       metadata=metadata, source=str(path))


# ----------------------------------------------------------------------------- dispatch


def _is_tdmctx_hdf5(path: Path) -> bool:
    import h5py

    try:
        with h5py.File(path, "r") as h5:
            return "datacube" in h5 and "nominal_positions_A" in h5
    except OSError:
        return False


def read_4dstem(
    path: str | os.PathLike,
    *,
    energy_eV: float | None = None,
    semiangle_mrad: float | None = None,
    angular_sampling_mrad: float | tuple[float, float] | None = None,
    step_A: float | tuple[float, float] | None = None,
    scan_shape: tuple[int, int] | None = None,
    **optional: Any,
) -> PtychoDataset:
    """Read any supported 4D-STEM file into a validated :class:`PtychoDataset`.

    Values given here complete (or, for detector files, override) what the file records.
    ``optional`` takes the format's optional keys (``defocus_A``, ``rotation_deg``,
    ``transpose``, ``electrons_per_count``).

    Raises
    ------
    ValueError
        Naming every required value that neither the file nor the arguments give.
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix == ".npz" or (suffix in (".h5", ".hdf5") and _is_tdmctx_hdf5(path)):
        dataset = load_dataset(path)
        overrides = {k: v for k, v in dict(energy_eV=energy_eV, semiangle_mrad=semiangle_mrad, **optional).items() if v is not None}
        if not overrides:
            return dataset
        mapping = dataset.to_mapping()
        mapping.update(overrides)
        return dataset_from_mapping(mapping)
    if suffix in (".xml", ".raw"):
        raw = read_empad(path, scan_shape=scan_shape)
    elif suffix in (".emd", ".h5", ".hdf5"):
        raw = read_emd(path, energy_eV=energy_eV)
    else:
        raise ReaderError(f"{path}: unknown 4D-STEM format {suffix!r}; expected .npz, .h5/.emd (EMD 1.0) or EMPAD .xml/.raw")
    energy = energy_eV if energy_eV is not None else raw.energy_eV
    sampling = angular_sampling_mrad if angular_sampling_mrad is not None else raw.angular_sampling_mrad
    step = step_A if step_A is not None else raw.step_A
    missing = [name for name, value in (("energy_eV", energy), ("semiangle_mrad", semiangle_mrad),
                                        ("angular_sampling_mrad", sampling), ("step_A", step)) if value is None]
    if missing:
        raise ValueError(f"{path}: the file does not record {', '.join(missing)}; pass them as arguments")
    sampling = np.broadcast_to(np.asarray(sampling, dtype=np.float64), (2,)).copy()
    step_xy = np.broadcast_to(np.asarray(step, dtype=np.float64), (2,))
    rows, cols = raw.datacube.shape[:2]
    yy, xx = np.mgrid[:rows, :cols]
    positions = np.stack([xx * step_xy[0], yy * step_xy[1]], axis=-1).astype(np.float64)
    mapping = {
        "datacube": raw.datacube,
        "nominal_positions_A": positions,
        "energy_eV": energy,
        "semiangle_mrad": semiangle_mrad,
        "angular_sampling_mrad": sampling,
        **{k: v for k, v in optional.items() if v is not None},
    }
    return dataset_from_mapping(mapping)

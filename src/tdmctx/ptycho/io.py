"""The one file format for real and simulated 4D-STEM ptychography data, and reconstruction outputs.

Input files are ``.npz`` archives or HDF5 files (``.h5``/``.hdf5``) with the same keys at the
root:

===========================  ===============================  ==========================================
key                          shape / type                     meaning
===========================  ===============================  ==========================================
``datacube``                 (scan_rows, scan_cols, k0, k1)   counts, float
``nominal_positions_A``      (scan_rows, scan_cols, 2)        probe positions (x, y), Angstrom
``energy_eV``                scalar                           beam energy, eV
``semiangle_mrad``           scalar                           probe convergence semi-angle, mrad
``angular_sampling_mrad``    (2,)                             detector pixel along (k0, k1), mrad
``defocus_A``                scalar, optional                 abTEM sign: ``-C10``, positive = underfocus
``rotation_deg``             scalar, optional                 CCW angle from real-space x to k0, degrees
``transpose``                bool, optional                   k0/k1 swapped before the rotation
``electrons_per_count``      scalar, optional                 detector gain
===========================  ===============================  ==========================================

Other keys (``true_positions_A``, ``true_object`` ... in simulated files) are kept in
:attr:`PtychoDataset.extras` and ignored by the reconstruction. Detectors need not be square.
NaN or infinite values are refused; negative pixels and zero-dose frames are accepted and
handled by :func:`tdmctx.ptycho.detector.prepare_counts` (clip, mask).

Every file is written to a temporary name in the target folder and renamed into place, so a
crash never leaves a half-written file under the final name.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

__all__ = [
    "REQUIRED_KEYS",
    "OPTIONAL_KEYS",
    "PtychoDataset",
    "dataset_from_mapping",
    "load_dataset",
    "save_dataset",
    "save_arrays",
    "load_arrays",
    "ReconstructionResult",
    "load_reconstruction",
]

REQUIRED_KEYS: tuple[str, ...] = (
    "datacube",
    "nominal_positions_A",
    "energy_eV",
    "semiangle_mrad",
    "angular_sampling_mrad",
)
OPTIONAL_KEYS: tuple[str, ...] = ("defocus_A", "rotation_deg", "transpose", "electrons_per_count")
_HDF5_SUFFIXES = (".h5", ".hdf5")


@dataclass
class PtychoDataset:
    """A validated 4D-STEM ptychography dataset (see the module docstring for the keys)."""

    datacube: np.ndarray
    nominal_positions_A: np.ndarray
    energy_eV: float
    semiangle_mrad: float
    angular_sampling_mrad: np.ndarray
    defocus_A: float | None = None
    rotation_deg: float | None = None
    transpose: bool | None = None
    electrons_per_count: float | None = None
    extras: dict[str, np.ndarray] = field(default_factory=dict)

    @property
    def scan_shape(self) -> tuple[int, int]:
        """``(scan_rows, scan_cols)``."""
        return tuple(self.datacube.shape[:2])  # type: ignore[return-value]

    @property
    def detector_shape(self) -> tuple[int, int]:
        """``(k0, k1)`` pixels."""
        return tuple(self.datacube.shape[2:])  # type: ignore[return-value]

    def to_mapping(self) -> dict[str, np.ndarray]:
        """All keys as numpy arrays, optional ones only when set, extras included."""
        out: dict[str, np.ndarray] = {
            "datacube": self.datacube,
            "nominal_positions_A": self.nominal_positions_A,
            "energy_eV": np.float64(self.energy_eV),
            "semiangle_mrad": np.float64(self.semiangle_mrad),
            "angular_sampling_mrad": np.asarray(self.angular_sampling_mrad, dtype=np.float64),
        }
        for key in OPTIONAL_KEYS:
            value = getattr(self, key)
            if value is not None:
                out[key] = np.asarray(value)
        out.update(self.extras)
        return out


def _scalar(mapping: Mapping[str, Any], key: str, *, positive: bool, optional: bool = False) -> float | None:
    if key not in mapping or mapping[key] is None:
        if optional:
            return None
        raise ValueError(f"missing key {key!r}: expected a scalar")
    arr = np.asarray(mapping[key])
    if arr.size != 1 or not np.issubdtype(arr.dtype, np.number):
        raise ValueError(f"key {key!r} has shape {arr.shape} and dtype {arr.dtype}; expected a numeric scalar")
    value = float(arr.reshape(()))
    if not np.isfinite(value):
        raise ValueError(f"key {key!r} is {value}; expected a finite number")
    if positive and value <= 0:
        raise ValueError(f"key {key!r} is {value}; expected a positive number")
    return value


def dataset_from_mapping(mapping: Mapping[str, Any]) -> PtychoDataset:
    """Validate a mapping of arrays (a loaded file, a dict) and return a :class:`PtychoDataset`.

    Raises
    ------
    ValueError
        Naming the key and the shape or value expected, for a missing key, shapes that
        disagree, or NaN / infinite values.
    """
    for key in ("datacube", "nominal_positions_A", "angular_sampling_mrad"):
        if key not in mapping:
            raise ValueError(f"missing key {key!r}; a ptychography file needs {', '.join(REQUIRED_KEYS)}")
    cube = np.asarray(mapping["datacube"])
    if cube.ndim != 4 or not np.issubdtype(cube.dtype, np.number) or np.iscomplexobj(cube):
        raise ValueError(
            f"key 'datacube' has shape {cube.shape} and dtype {cube.dtype}; "
            "expected real numbers shaped (scan_rows, scan_cols, k0, k1)"
        )
    if min(cube.shape) < 1:
        raise ValueError(f"key 'datacube' has shape {cube.shape}; every axis must be non-empty")
    if not np.all(np.isfinite(cube)):
        bad = int(np.size(cube) - np.count_nonzero(np.isfinite(cube)))
        raise ValueError(f"key 'datacube' holds {bad} NaN or infinite values; expected finite counts")
    rows, cols = cube.shape[:2]
    pos = np.asarray(mapping["nominal_positions_A"], dtype=np.float64)
    if pos.shape != (rows, cols, 2):
        raise ValueError(
            f"key 'nominal_positions_A' has shape {pos.shape}; expected ({rows}, {cols}, 2) "
            "to match the scan axes of 'datacube' (x, y pairs in Angstrom)"
        )
    if not np.all(np.isfinite(pos)):
        raise ValueError("key 'nominal_positions_A' holds NaN or infinite values; expected finite Angstrom")
    sampling = np.asarray(mapping["angular_sampling_mrad"], dtype=np.float64)
    if sampling.size == 1:
        sampling = np.full(2, float(sampling.reshape(())))
    if sampling.shape != (2,) or not np.all(np.isfinite(sampling)) or not np.all(sampling > 0):
        raise ValueError(
            f"key 'angular_sampling_mrad' is {sampling!r}; expected two positive finite numbers along (k0, k1)"
        )
    transpose = mapping.get("transpose")
    if transpose is not None:
        arr = np.asarray(transpose)
        if arr.size != 1:
            raise ValueError(f"key 'transpose' has shape {arr.shape}; expected a boolean scalar")
        transpose = bool(arr.reshape(()))
    known = set(REQUIRED_KEYS) | set(OPTIONAL_KEYS)
    extras = {k: np.asarray(v) for k, v in mapping.items() if k not in known}
    return PtychoDataset(
        datacube=cube,
        nominal_positions_A=pos,
        energy_eV=_scalar(mapping, "energy_eV", positive=True),  # type: ignore[arg-type]
        semiangle_mrad=_scalar(mapping, "semiangle_mrad", positive=True),  # type: ignore[arg-type]
        angular_sampling_mrad=sampling,
        defocus_A=_scalar(mapping, "defocus_A", positive=False, optional=True),
        rotation_deg=_scalar(mapping, "rotation_deg", positive=False, optional=True),
        transpose=transpose,
        electrons_per_count=_scalar(mapping, "electrons_per_count", positive=True, optional=True),
        extras=extras,
    )


def load_arrays(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """Read every root-level array of an ``.npz`` or HDF5 file into memory.

    Raises
    ------
    FileNotFoundError
        If ``path`` does not exist.
    ValueError
        If the suffix is neither ``.npz`` nor ``.h5``/``.hdf5``.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"ptychography file {str(path)!r} does not exist")
    suffix = path.suffix.lower()
    if suffix == ".npz":
        with np.load(path, allow_pickle=False) as archive:
            return {key: archive[key] for key in archive.files}
    if suffix in _HDF5_SUFFIXES:
        import h5py

        with h5py.File(path, "r") as fh:
            return {key: np.asarray(fh[key][()]) for key in fh.keys() if isinstance(fh[key], h5py.Dataset)}
    raise ValueError(f"file {str(path)!r} has suffix {suffix!r}; expected '.npz', '.h5' or '.hdf5'")


def load_dataset(path: str | os.PathLike) -> PtychoDataset:
    """Read and validate a ptychography input file (``.npz`` or HDF5)."""
    try:
        return dataset_from_mapping(load_arrays(path))
    except ValueError as exc:
        raise ValueError(f"{path}: {exc}") from exc


def save_arrays(arrays: Mapping[str, Any], path: str | os.PathLike) -> Path:
    """Write arrays to ``.npz`` or HDF5 atomically (temporary file in the same folder, then rename).

    Returns the final path.
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in (".npz", *_HDF5_SUFFIXES):
        raise ValueError(f"output {str(path)!r} has suffix {suffix!r}; expected '.npz', '.h5' or '.hdf5'")
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            if suffix == ".npz":
                np.savez(fh, **{k: np.asarray(v) for k, v in arrays.items()})
        if suffix in _HDF5_SUFFIXES:
            import h5py

            with h5py.File(tmp, "w") as h5:
                for key, value in arrays.items():
                    h5.create_dataset(key, data=np.asarray(value))
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


def save_dataset(dataset: PtychoDataset, path: str | os.PathLike) -> Path:
    """Write a dataset in the documented format (``.npz`` or HDF5), atomically."""
    return save_arrays(dataset.to_mapping(), path)


@dataclass
class ReconstructionResult:
    """What every reconstruction method returns, and what ``tdmctx ptycho reconstruct`` writes.

    Attributes
    ----------
    positions_A
        Refined probe positions (x, y), Angstrom, ``(scan_rows, scan_cols, 2)``.
    object
        Complex transmission function, ``(y, x)`` in the reconstruction frame, or
        ``(slices, y, x)`` for a multislice object.
    object_pixel_size_A
        Object pixel, Angstrom (square).
    object_origin_A
        ``(x, y)`` of the centre of object pixel (0, 0) in the reconstruction frame, Angstrom.
    object_rotation_deg
        Angle of the reconstruction frame's x axis from real-space x (the detector rotation).
    probe
        Complex probe in real space, ``(n, n)``, or ``(modes, n, n)`` for a mixed-state probe.
    log
        Per-iteration arrays of equal length: at least ``iteration`` and ``data_error``, plus
        ``rms_position_error_A`` when the truth was given, ``time_s`` and method-specific ones.
    method
        ``"gd"`` or ``"py4dstem"``.
    position_history_A
        Optional positions after every iteration, ``(iterations + 1, scan_rows, scan_cols, 2)``.
    info
        Scalars and strings describing the run (settings, detector resampling, device).
    """

    positions_A: np.ndarray
    object: np.ndarray
    object_pixel_size_A: float
    object_origin_A: np.ndarray
    object_rotation_deg: float
    probe: np.ndarray
    log: dict[str, np.ndarray]
    method: str
    position_history_A: np.ndarray | None = None
    info: dict[str, Any] = field(default_factory=dict)

    def log_frame(self):
        """The per-iteration log as a :class:`pandas.DataFrame`."""
        import pandas as pd

        return pd.DataFrame(self.log)

    def to_arrays(self) -> dict[str, np.ndarray]:
        """Flat mapping of arrays for :func:`save_arrays`; log columns are prefixed ``log_``."""
        out: dict[str, np.ndarray] = {
            "positions_A": np.asarray(self.positions_A, dtype=np.float64),
            "object": np.asarray(self.object),
            "object_pixel_size_A": np.float64(self.object_pixel_size_A),
            "object_origin_A": np.asarray(self.object_origin_A, dtype=np.float64),
            "object_rotation_deg": np.float64(self.object_rotation_deg),
            "probe": np.asarray(self.probe),
            "method": np.asarray(self.method),
        }
        for key, values in self.log.items():
            out[f"log_{key}"] = np.asarray(values)
        if self.position_history_A is not None:
            out["position_history_A"] = np.asarray(self.position_history_A, dtype=np.float64)
        for key, value in self.info.items():
            out[f"info_{key}"] = np.asarray(value)
        return out

    def save(self, path: str | os.PathLike) -> Path:
        """Write the result atomically (``.npz`` or HDF5)."""
        return save_arrays(self.to_arrays(), path)


def load_reconstruction(path: str | os.PathLike) -> ReconstructionResult:
    """Read a file written by :meth:`ReconstructionResult.save`."""
    arrays = load_arrays(path)
    missing = [k for k in ("positions_A", "object", "object_pixel_size_A", "probe") if k not in arrays]
    if missing:
        raise ValueError(f"{path}: missing key(s) {missing}; not a tdmctx reconstruction file")
    return ReconstructionResult(
        positions_A=arrays["positions_A"],
        object=arrays["object"],
        object_pixel_size_A=float(arrays["object_pixel_size_A"]),
        object_origin_A=arrays.get("object_origin_A", np.zeros(2)),
        object_rotation_deg=float(arrays.get("object_rotation_deg", 0.0)),
        probe=arrays["probe"],
        log={k[4:]: v for k, v in arrays.items() if k.startswith("log_")},
        method=str(arrays.get("method", "unknown")),
        position_history_A=arrays.get("position_history_A"),
        info={k[5:]: (v.item() if v.ndim == 0 else v) for k, v in arrays.items() if k.startswith("info_")},
    )

"""Electron ptychography with scan-position correction.

Modules, one idea each:

* :mod:`~tdmctx.ptycho.scan`: raster scans, acquisition times, seeded scan-error models;
* :mod:`~tdmctx.ptycho.simulate`: known-error 4D-STEM data (abTEM ``CustomScan``; a fast synthetic stand-in);
* :mod:`~tdmctx.ptycho.io`: the one input format (``.npz`` / HDF5), validation, atomic writes, results;
* :mod:`~tdmctx.ptycho.detector`: counts policy, square-detector resampling, rotation from the data;
* :mod:`~tdmctx.ptycho.engine`: torch gradient-descent ptychography (object, probe, positions);
* :mod:`~tdmctx.ptycho.constraints`: projections of the position step;
* :mod:`~tdmctx.ptycho.baselines`: py4DSTEM behind the same interface;
* :mod:`~tdmctx.ptycho.metrics`: position error and its decomposition, object phase fidelity;
* :mod:`~tdmctx.ptycho.cli`: ``tdmctx ptycho reconstruct``.

Heavy imports (torch, abTEM, py4DSTEM) happen only when the function that needs them runs.
"""

from __future__ import annotations

from tdmctx.ptycho.io import PtychoDataset, ReconstructionResult, load_dataset, load_reconstruction, save_dataset
from tdmctx.ptycho.metrics import error_decomposition, phase_fidelity, rms_error_A
from tdmctx.ptycho.scan import (
    AffineError,
    CompositeError,
    DriftError,
    FlybackError,
    JitterError,
    LineJumps,
    RasterScan,
    ScanError,
    mixed_error,
)

__all__ = [
    "RasterScan",
    "ScanError",
    "AffineError",
    "LineJumps",
    "FlybackError",
    "DriftError",
    "JitterError",
    "CompositeError",
    "mixed_error",
    "PtychoDataset",
    "ReconstructionResult",
    "load_dataset",
    "save_dataset",
    "load_reconstruction",
    "rms_error_A",
    "error_decomposition",
    "phase_fidelity",
    "simulate_4dstem",
    "simulate_synthetic",
    "reconstruct",
    "GDPtychography",
    "reconstruct_py4dstem",
]


def __getattr__(name: str):
    # Lazy: torch / abTEM / py4DSTEM load only when these are first used.
    if name in ("simulate_4dstem", "simulate_synthetic"):
        from tdmctx.ptycho import simulate

        return getattr(simulate, name)
    if name in ("reconstruct", "GDPtychography"):
        from tdmctx.ptycho import engine

        return getattr(engine, name)
    if name == "reconstruct_py4dstem":
        from tdmctx.ptycho.baselines import reconstruct_py4dstem

        return reconstruct_py4dstem
    raise AttributeError(f"module 'tdmctx.ptycho' has no attribute {name!r}")

"""From a raw detector file to a dataset the reconstructions can use, in one call.

:func:`prepare_dataset` runs the preprocessing steps of :mod:`tdmctx.ptycho.preprocess` in the
order the MoS2 chapter shows them one by one: dark and gain, counts to electrons, the
read-noise threshold, whole-pixel centring on the bright-field disk, the detector rotation
and transpose from the centre of mass, a defocus estimate from parallax on a central field,
and detector binning. Whatever the file already records (rotation, defocus) is kept unless
asked to be estimated. The measured values come back in a :class:`Preparation` so that a
command line can print them and a notebook can show them.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
import numpy as np

from tdmctx.ptycho.detector import estimate_rotation
from tdmctx.ptycho.io import PtychoDataset
from tdmctx.ptycho.preprocess import (
    apply_dark_gain,
    bin_patterns,
    bright_field_disk,
    central_field,
    centre_patterns,
    estimate_defocus,
    threshold_electrons,
)

__all__ = ["Preparation", "prepare_dataset"]


@dataclass
class Preparation:
    """What :func:`prepare_dataset` measured and did (units in the names)."""

    electrons_per_pattern: float
    shift_px: tuple[int, int] = (0, 0)
    disk_centre_px: tuple[float, float] | None = None
    disk_radius_px: float | None = None
    rotation_deg: float | None = None
    transpose: bool | None = None
    defocus_A: float | None = None
    defocus_residual_A: float | None = None
    bin_factor: int = 1
    notes: list[str] = field(default_factory=list)

    def summary(self) -> str:
        """One line per step, for a log or the command line."""
        lines = [f"electrons per pattern: {self.electrons_per_pattern:.4g}"]
        if self.disk_radius_px is not None:
            lines.append(f"bright-field disk: centre ({self.disk_centre_px[0]:.2f}, {self.disk_centre_px[1]:.2f}) px, "
                         f"radius {self.disk_radius_px:.2f} px; patterns shifted by {self.shift_px} px")
        if self.rotation_deg is not None:
            lines.append(f"detector rotation {self.rotation_deg:.2f} deg, transpose {self.transpose}")
        if self.defocus_A is not None:
            residual = "" if self.defocus_residual_A is None else f" (fit residual {self.defocus_residual_A:.3f} A)"
            lines.append(f"defocus {self.defocus_A:.1f} A{residual}")
        if self.bin_factor > 1:
            lines.append(f"detector binned {self.bin_factor} x {self.bin_factor}")
        return "\n".join(lines + self.notes)


def _step_A(dataset: PtychoDataset) -> tuple[float, float]:
    p = dataset.nominal_positions_A
    return (float(np.hypot(*(p[0, 1] - p[0, 0]))), float(np.hypot(*(p[1, 0] - p[0, 0]))))


def prepare_dataset(
    dataset: PtychoDataset,
    *,
    dark: np.ndarray | None = None,
    gain: np.ndarray | None = None,
    electrons_per_count: float | None = None,
    threshold_e: float | None = 0.5,
    centre: bool = True,
    rotation: str | tuple[float, bool] | None = "keep",
    defocus: str | float | None = "keep",
    defocus_field: int = 32,
    defocus_max_fraction: float = 0.5,
    bin_factor: int = 1,
    rotation_angles: int = 3600,
) -> tuple[PtychoDataset, Preparation]:
    """Preprocess a raw 4D-STEM dataset for reconstruction.

    Parameters
    ----------
    dataset
        Raw data, e.g. from :func:`tdmctx.ptycho.readers.read_4dstem`.
    dark, gain
        Dark reference (counts) and flat-field gain, ``(k0, k1)``; ``None`` skips each.
    electrons_per_count
        Detector gain, electrons per count; ``None``: the dataset's own, else 1.
    threshold_e
        Pixels below this many electrons are set to zero (read noise); ``None`` or 0 keeps all.
    centre
        Shift the patterns by whole pixels so that the bright-field disk sits at the middle.
    rotation
        ``"keep"`` (the file's, else estimated), ``"estimate"`` (from the centre of mass), or a
        ``(rotation_deg, transpose)`` pair.
    defocus
        ``"keep"`` (the file's, else estimated), ``"estimate"`` (parallax), or a value in
        Angstrom (abTEM sign: positive = underfocus).
    defocus_field, defocus_max_fraction
        The parallax fit uses at most ``defocus_field`` central positions per axis and detector
        pixels within this fraction of the disk radius (on a crystal a large field lets a wrong
        lattice peak of the periodic correlation win).
    bin_factor
        Sum ``bin_factor x bin_factor`` detector pixels (same real-space pixel, cheaper passes).
    rotation_angles
        Trial angles over 180 degrees for the rotation estimate.

    Returns
    -------
    dataset : PtychoDataset
        The prepared data (in electrons), with rotation, transpose and defocus set.
    preparation : Preparation
        What was measured.
    """
    if rotation not in ("keep", "estimate") and not (isinstance(rotation, tuple) and len(rotation) == 2):
        raise ValueError(f"rotation={rotation!r}; expected 'keep', 'estimate' or (rotation_deg, transpose)")
    if isinstance(defocus, str) and defocus not in ("keep", "estimate"):
        raise ValueError(f"defocus={defocus!r}; expected 'keep', 'estimate' or a number of Angstrom")
    gain_e = float(electrons_per_count if electrons_per_count is not None else dataset.electrons_per_count or 1.0)
    if not (np.isfinite(gain_e) and gain_e > 0):
        raise ValueError(f"electrons_per_count={gain_e!r} must be a positive number")
    electrons = apply_dark_gain(dataset.datacube, dark, gain) * np.float32(gain_e)
    if threshold_e:
        electrons = threshold_electrons(electrons, threshold_e)
    report = Preparation(electrons_per_pattern=float(electrons.sum((-2, -1)).mean()), bin_factor=int(bin_factor))

    disk = None
    if centre:
        disk = bright_field_disk(electrons)
        electrons, report.shift_px = centre_patterns(electrons, disk.centre_px)
        report.disk_centre_px, report.disk_radius_px = tuple(map(float, disk.centre_px)), float(disk.radius_px)

    if isinstance(rotation, tuple):
        rotation_deg, transpose = float(rotation[0]), bool(rotation[1])
    elif rotation == "keep" and dataset.rotation_deg is not None:
        rotation_deg, transpose = float(dataset.rotation_deg), bool(dataset.transpose)
    else:
        rotation_deg, transpose = estimate_rotation(electrons, n_angles=rotation_angles)
        report.notes.append("rotation estimated from the centre of mass")
    report.rotation_deg, report.transpose = rotation_deg, transpose

    if isinstance(defocus, (int, float)) and not isinstance(defocus, bool):
        defocus_A = float(defocus)
    elif defocus == "keep" and dataset.defocus_A is not None:
        defocus_A = float(dataset.defocus_A)
    else:
        estimate = estimate_defocus(central_field(electrons, defocus_field), _step_A(dataset),
                                    dataset.angular_sampling_mrad,
                                    rotation_deg=rotation_deg, transpose=transpose,
                                    disk=disk or bright_field_disk(electrons), max_fraction=defocus_max_fraction)
        defocus_A, report.defocus_residual_A = float(estimate.defocus_A), float(estimate.residual_A)
        report.notes.append("defocus estimated from the parallax of bright-field images")
    report.defocus_A = defocus_A

    prepared = replace(
        dataset,
        datacube=bin_patterns(electrons, bin_factor),
        angular_sampling_mrad=np.asarray(dataset.angular_sampling_mrad, dtype=np.float64) * int(bin_factor),
        rotation_deg=rotation_deg,
        transpose=transpose,
        defocus_A=defocus_A,
        electrons_per_count=1.0,
        extras=dict(dataset.extras),
    )
    return prepared, report


"""Raster scans, their acquisition times, and seeded models of scan-position errors.

A scan is a raster of ``(scan_rows, scan_cols)`` probe positions, rows along y (slow axis)
and columns along x (fast axis). Positions are ``(x, y)`` pairs in Angstrom, public arrays
have shape ``(scan_rows, scan_cols, 2)``. Every position also has an acquisition time
(row-major order, a dwell per position and a flyback per row), which the time-dependent
errors (drift, jitter) use.

Each error model maps the nominal raster to a displacement field ``(scan_rows, scan_cols, 2)``
in Angstrom; magnitudes are given relative to the scan step so that one set of numbers
means the same thing at every step size. Models compose by ``+`` (their displacements add),
and :meth:`ScanError.apply` returns the true positions for the nominal ones::

    scan = RasterScan((24, 24), step_A=0.5)
    error = AffineError(rotation_deg=1.0) + LineJumps(rms_step=0.2, seed=1) + JitterError(0.05, seed=2)
    true_A = error.apply(scan)
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

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
]


def _pair(value: float | Sequence[float], name: str) -> np.ndarray:
    """Return ``value`` as a finite float64 (x, y) pair; a scalar is used for both."""
    try:
        arr = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{name}={value!r} must be a number or an (x, y) pair of numbers") from exc
    if arr.ndim == 0:
        arr = np.full(2, float(arr))
    if arr.shape != (2,) or not np.all(np.isfinite(arr)):
        raise ValueError(f"{name}={value!r} must be a finite number or an (x, y) pair of finite numbers")
    return arr


@dataclass(frozen=True)
class RasterScan:
    """A raster of probe positions with acquisition times.

    Parameters
    ----------
    scan_shape
        ``(scan_rows, scan_cols)``; rows run along y (slow axis), columns along x (fast axis).
    step_A
        Distance between neighbouring positions, Angstrom (the same along x and y).
    origin_A
        ``(x, y)`` of the first position, Angstrom.
    dwell_s
        Time spent at each position, seconds.
    flyback_s
        Extra time at the end of every row before the next row starts, seconds.
    """

    scan_shape: tuple[int, int]
    step_A: float
    origin_A: tuple[float, float] = (0.0, 0.0)
    dwell_s: float = 1e-3
    flyback_s: float = 5e-3

    def __post_init__(self) -> None:
        given = np.atleast_1d(np.asarray(self.scan_shape))
        if given.shape != (2,) or not np.all(given == np.round(given)) or np.any(given < 1):
            raise ValueError(f"scan_shape={self.scan_shape!r} must be two positive integers (scan_rows, scan_cols)")
        object.__setattr__(self, "scan_shape", (int(given[0]), int(given[1])))
        if not (np.isfinite(self.step_A) and self.step_A > 0):
            raise ValueError(f"step_A={self.step_A!r} must be a positive number of Angstrom")
        if not (np.isfinite(self.dwell_s) and self.dwell_s > 0):
            raise ValueError(f"dwell_s={self.dwell_s!r} must be a positive number of seconds")
        if not (np.isfinite(self.flyback_s) and self.flyback_s >= 0):
            raise ValueError(f"flyback_s={self.flyback_s!r} must be a non-negative number of seconds")
        object.__setattr__(self, "origin_A", tuple(_pair(self.origin_A, "origin_A")))

    @property
    def n_positions(self) -> int:
        """Number of positions, ``scan_rows * scan_cols``."""
        return self.scan_shape[0] * self.scan_shape[1]

    @property
    def positions_A(self) -> np.ndarray:
        """Nominal ``(x, y)`` positions, Angstrom, shape ``(scan_rows, scan_cols, 2)``."""
        rows, cols = self.scan_shape
        x = self.origin_A[0] + self.step_A * np.arange(cols)
        y = self.origin_A[1] + self.step_A * np.arange(rows)
        xx, yy = np.meshgrid(x, y, indexing="xy")
        return np.stack([xx, yy], axis=-1)

    @property
    def times_s(self) -> np.ndarray:
        """Acquisition time of every position, seconds, shape ``(scan_rows, scan_cols)``.

        Row ``r``, column ``c`` starts at ``r * (scan_cols * dwell_s + flyback_s) + c * dwell_s``.
        """
        rows, cols = self.scan_shape
        line_s = cols * self.dwell_s + self.flyback_s
        return np.arange(rows)[:, None] * line_s + np.arange(cols)[None, :] * self.dwell_s

    @property
    def duration_s(self) -> float:
        """Time from the first to the last position, seconds."""
        return float(self.times_s[-1, -1])

    @property
    def centre_A(self) -> np.ndarray:
        """``(x, y)`` centre of the nominal raster, Angstrom."""
        return self.positions_A.reshape(-1, 2).mean(axis=0)


class ScanError:
    """Base class of the scan-error models: a displacement field over a raster.

    Subclasses implement :meth:`displacement_A`. Models add with ``+``.
    """

    def displacement_A(self, scan: RasterScan) -> np.ndarray:
        """Displacement of every position, Angstrom, shape ``(scan_rows, scan_cols, 2)`` as (x, y)."""
        raise NotImplementedError

    def apply(self, scan: RasterScan) -> np.ndarray:
        """True positions for the nominal raster, Angstrom, shape ``(scan_rows, scan_cols, 2)``."""
        return scan.positions_A + self.displacement_A(scan)

    def __add__(self, other: ScanError) -> CompositeError:
        if not isinstance(other, ScanError):
            return NotImplemented
        left = self.models if isinstance(self, CompositeError) else (self,)
        right = other.models if isinstance(other, CompositeError) else (other,)
        return CompositeError(tuple(left) + tuple(right))


@dataclass(frozen=True)
class CompositeError(ScanError):
    """Sum of several error models (their displacements add)."""

    models: tuple[ScanError, ...] = field(default_factory=tuple)

    def displacement_A(self, scan: RasterScan) -> np.ndarray:
        total = np.zeros((*scan.scan_shape, 2))
        for model in self.models:
            total += model.displacement_A(scan)
        return total


@dataclass(frozen=True)
class AffineError(ScanError):
    """Global affine distortion about the scan centre.

    The true position is ``c + A (p - c)`` with ``A = R(rotation) @ [[1 + scale_x, shear], [0, 1 + scale_y]]``,
    ``p`` the nominal position and ``c`` the scan centre.

    Parameters
    ----------
    scale_x, scale_y
        Relative scale errors along x and y (``0.02`` is a 2 % expansion).
    rotation_deg
        Counter-clockwise rotation of the scan, degrees.
    shear
        Shear: x displacement per unit of y, dimensionless.
    """

    scale_x: float = 0.0
    scale_y: float = 0.0
    rotation_deg: float = 0.0
    shear: float = 0.0

    @property
    def matrix(self) -> np.ndarray:
        """The 2 x 2 matrix ``A`` acting on (x, y) column vectors."""
        t = np.deg2rad(self.rotation_deg)
        rot = np.array([[np.cos(t), -np.sin(t)], [np.sin(t), np.cos(t)]])
        return rot @ np.array([[1.0 + self.scale_x, self.shear], [0.0, 1.0 + self.scale_y]])

    def displacement_A(self, scan: RasterScan) -> np.ndarray:
        rel = scan.positions_A - scan.centre_A
        return rel @ (self.matrix - np.eye(2)).T


@dataclass(frozen=True)
class LineJumps(ScanError):
    """Rigid shifts of whole rows (line-to-line jumps from instabilities or mains pick-up).

    Parameters
    ----------
    rms_step
        RMS shift of an affected row, in units of the scan step (applied to x and y independently,
        weighted by ``direction``).
    fraction_rows
        Fraction of rows that jump; the others stay put.
    direction
        Relative weight of the (x, y) components; ``(1, 0)`` shifts along the fast axis only.
    cumulative
        When true the jumps add up from row to row (a random walk) instead of being independent.
    seed
        Seed of the random draw.
    """

    rms_step: float = 0.2
    fraction_rows: float = 1.0
    direction: tuple[float, float] = (1.0, 1.0)
    cumulative: bool = False
    seed: int | None = 0

    def displacement_A(self, scan: RasterScan) -> np.ndarray:
        if not 0.0 <= self.fraction_rows <= 1.0:
            raise ValueError(f"fraction_rows={self.fraction_rows!r} must lie in [0, 1]")
        rng = np.random.default_rng(self.seed)
        rows, cols = scan.scan_shape
        weight = _pair(self.direction, "direction")
        shifts = rng.normal(size=(rows, 2)) * weight * self.rms_step * scan.step_A
        shifts *= (rng.random(rows) < self.fraction_rows)[:, None]
        if self.cumulative:
            shifts = np.cumsum(shifts, axis=0)
        return np.broadcast_to(shifts[:, None, :], (rows, cols, 2)).copy()


@dataclass(frozen=True)
class FlybackError(ScanError):
    """A per-column pattern at the start of every row: the beam settling after flyback.

    The displacement at column ``c`` is ``amplitude_step * step_A * exp(-c / decay_cols)``,
    the same for every row except for an optional random row-to-row spread of the amplitude.

    Parameters
    ----------
    amplitude_step
        ``(x, y)`` displacement of the first column, in units of the scan step.
    decay_cols
        1/e decay length, in columns.
    row_spread
        Relative RMS row-to-row variation of the amplitude (``0`` is the same pattern on every row).
    seed
        Seed of the row-to-row variation.
    """

    amplitude_step: tuple[float, float] = (0.5, 0.0)
    decay_cols: float = 3.0
    row_spread: float = 0.0
    seed: int | None = 0

    def displacement_A(self, scan: RasterScan) -> np.ndarray:
        if not self.decay_cols > 0:
            raise ValueError(f"decay_cols={self.decay_cols!r} must be a positive number of columns")
        rows, cols = scan.scan_shape
        profile = np.exp(-np.arange(cols) / self.decay_cols)
        amp = _pair(self.amplitude_step, "amplitude_step") * scan.step_A
        gain = 1.0 + self.row_spread * np.random.default_rng(self.seed).normal(size=rows)
        return gain[:, None, None] * profile[None, :, None] * amp[None, None, :]


@dataclass(frozen=True)
class DriftError(ScanError):
    """Slow smooth specimen drift: linear and quadratic in acquisition time.

    The displacement at time ``t`` is ``(linear_step * u + quadratic_step * u**2) * step_A`` with
    ``u = t / duration`` running from 0 to 1 over the scan; both are (x, y) pairs giving the
    drift accumulated over the whole scan, in units of the scan step. Linear drift in a
    raster is an affine distortion (a shear and a scale); the decomposition reports it so.
    """

    linear_step: tuple[float, float] = (1.0, 0.5)
    quadratic_step: tuple[float, float] = (0.0, 0.0)

    def displacement_A(self, scan: RasterScan) -> np.ndarray:
        u = scan.times_s / max(scan.duration_s, np.finfo(float).tiny)
        lin = _pair(self.linear_step, "linear_step")
        quad = _pair(self.quadratic_step, "quadratic_step")
        return (u[..., None] * lin + u[..., None] ** 2 * quad) * scan.step_A


@dataclass(frozen=True)
class JitterError(ScanError):
    """Fast random jitter, white or exponentially correlated in acquisition time.

    Parameters
    ----------
    rms_step
        RMS displacement per axis, in units of the scan step.
    correlation_s
        Correlation time, seconds; ``0`` gives independent (white) jitter at every position.
    seed
        Seed of the random draw.
    """

    rms_step: float = 0.05
    correlation_s: float = 0.0
    seed: int | None = 0

    def displacement_A(self, scan: RasterScan) -> np.ndarray:
        if self.correlation_s < 0:
            raise ValueError(f"correlation_s={self.correlation_s!r} must be >= 0 seconds")
        rng = np.random.default_rng(self.seed)
        noise = rng.normal(size=(scan.n_positions, 2))
        if self.correlation_s > 0:
            # An AR(1) process on the acquisition clock keeps the stationary RMS at rms_step
            # while correlating positions that are close in time (including across flyback).
            times = scan.times_s.ravel()
            rho = np.exp(-np.diff(times) / self.correlation_s)
            for i in range(1, scan.n_positions):
                noise[i] = rho[i - 1] * noise[i - 1] + np.sqrt(1.0 - rho[i - 1] ** 2) * noise[i]
        return noise.reshape(*scan.scan_shape, 2) * self.rms_step * scan.step_A


def mixed_error(strength_step: float = 0.3, seed: int = 0) -> CompositeError:
    """A representative mixture of every error type, for demonstrations.

    Parameters
    ----------
    strength_step
        Overall magnitude, in units of the scan step: each component's size scales with it.
    seed
        Seed; the components draw from independent child seeds.

    Returns
    -------
    CompositeError
        Affine (scale, rotation, shear) + line jumps + flyback + drift + jitter.
    """
    if not strength_step >= 0:
        raise ValueError(f"strength_step={strength_step!r} must be >= 0 (units of the scan step)")
    s = float(strength_step)
    seeds = np.random.SeedSequence(seed).generate_state(3)
    return (
        AffineError(scale_x=0.02 * s, scale_y=-0.015 * s, rotation_deg=1.0 * s, shear=0.01 * s)
        + LineJumps(rms_step=0.5 * s, fraction_rows=0.3, direction=(1.0, 0.5), seed=int(seeds[0]))
        + FlybackError(amplitude_step=(1.0 * s, 0.2 * s), decay_cols=2.0, row_spread=0.1, seed=int(seeds[1]))
        + DriftError(linear_step=(1.0 * s, 0.5 * s), quadratic_step=(-0.5 * s, 0.5 * s))
        + JitterError(rms_step=0.1 * s, seed=int(seeds[2]))
    )

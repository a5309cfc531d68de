"""Constraint experiments: one scan-error type, five ways to correct it, scored against the truth.

For one error type (``"affine"``, ``"line"``, ``"drift"``, ``"jitter"``) at one magnitude and one
dose, :func:`run_constraint_experiment` simulates monolayer MoS2 4D-STEM data with abTEM whose
only scan error is that type, then reconstructs it with

========================  ====================================================================
``nominal``               positions frozen at the nominal raster (the damage); only the warm-up is
                          run, since frozen positions keep the nominal error at every later pass
``unconstrained``         free position descent (the engine's Gauss-Newton step, no hook)
``constrained``           the same step projected by the constraint (:data:`CONSTRAINT_FOR`)
``py4dstem``              py4DSTEM's own position correction; several settings are tried and the
                          one with the lowest best-iteration error is kept (an oracle choice that
                          favours py4DSTEM); its best and final iterations are both reported
``floor``                 the constrained refinement started from the true positions
========================  ====================================================================

Every tdmctx run shares the schedule: ``warmup`` passes with frozen positions (object only; the
three runs from the nominal raster share them), then position passes up to ``iterations``.

Conventions. A magnitude is the RMS length of the error vectors after removing their mean (the
global translation ptychography cannot see), in units of the scan step; the error shapes of
:func:`error_model` are scaled to it, so the nominal error is exactly ``magnitude_step * step_A``.
A dose is electrons per square Angstrom; each pattern gets ``dose * step_A**2`` electrons.
Noise-free patterns are simulated once per (error, magnitude, seed) and cached by
:func:`tdmctx.ptycho.simulate.simulate_4dstem`; the Poisson noise of each dose is drawn here.

Why a square cell (:func:`tdmctx.ptycho.simulate.square_mos2_cell`): abTEM's angular sampling is lambda / cell extent
per axis, so the default 15.95 x 16.58 Angstrom cell gives a non-square detector that must be
resampled by interpolation, and that interpolation is a model error that the engine turns into
a ~0.07 Angstrom RMS position bias on noise-free data. A square cell needs no resampling.
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from tdmctx.ptycho.io import PtychoDataset, dataset_from_mapping
from tdmctx.ptycho.metrics import error_decomposition, rms_error_A
from tdmctx.ptycho.scan import AffineError, DriftError, JitterError, LineJumps, RasterScan, ScanError
from tdmctx.ptycho.simulate import square_mos2_cell

if TYPE_CHECKING:
    from ase import Atoms

__all__ = [
    "ERROR_TYPES",
    "CONSTRAINT_FOR",
    "METHODS",
    "PARTS",
    "PY4DSTEM_PRESETS",
    "Conditions",
    "ScaledError",
    "HighpassError",
    "error_model",
    "experiment_scan",
    "experiment_dataset",
    "make_constraint",
    "MethodRun",
    "ExperimentResult",
    "run_constraint_experiment",
    "run_sweep",
    "run_cross_check",
    "summary_table",
    "cross_check_table",
]

ERROR_TYPES: tuple[str, ...] = ("affine", "line", "drift", "jitter", "white_jitter")
#: The constraint that matches each error type. White jitter is not a pure type: a draw of it has a
#: part that is smooth in time (drift-like); ``jitter`` is white jitter without that part.
CONSTRAINT_FOR: dict[str, str] = {"affine": "affine", "line": "line", "drift": "lowpass", "jitter": "highpass",
                                  "white_jitter": "highpass"}
METHODS: tuple[str, ...] = ("nominal", "unconstrained", "constrained", "py4dstem", "floor")
#: py4DSTEM position-correction settings by name (passed to ``reconstruct_py4dstem``).
PY4DSTEM_PRESETS: dict[str, dict[str, Any]] = {
    "default": {},
    "small_step": {"positions_step_size": 0.2},
    "limited": {"max_position_update_distance_A": 0.05, "max_position_total_distance_A": 1.0},
    "global_affine": {"global_affine_transformation": True},
}
#: The parts of the error decomposition, in its order.
PARTS: tuple[str, ...] = ("affine", "line", "lowpass", "highpass")


@dataclass(frozen=True)
class Conditions:
    """Microscope and simulation settings (80 kV MoS2 defaults).

    Parameters
    ----------
    energy_eV, semiangle_mrad, defocus_A
        Beam energy (eV), convergence semi-angle (mrad), defocus (abTEM sign, Angstrom).
    max_angle_mrad
        Detector cut-off, mrad; twice the semi-angle keeps the engine's far field from aliasing.
    potential_sampling_A
        abTEM potential sampling, Angstrom.
    margin_A
        Least distance from any probe position to the cell edge (the seam), Angstrom.
    """

    energy_eV: float = 80e3
    semiangle_mrad: float = 25.0
    defocus_A: float = 50.0
    max_angle_mrad: float = 50.0
    potential_sampling_A: float = 0.1
    margin_A: float = 8.0


@dataclass(frozen=True)
class ScaledError(ScanError):
    """Another error model's displacement times ``factor`` (to set its RMS magnitude)."""

    model: ScanError
    factor: float

    def displacement_A(self, scan: RasterScan) -> np.ndarray:
        return self.factor * self.model.displacement_A(scan)


@dataclass(frozen=True)
class HighpassError(ScanError):
    """Another error model's displacement without its part that is smooth in acquisition time.

    The high-pass projection (:class:`tdmctx.ptycho.constraints.Highpass` on the scan's real
    acquisition times, translation removed): the error that the high-pass constraint is made for.
    """

    model: ScanError

    def displacement_A(self, scan: RasterScan) -> np.ndarray:
        d = self.model.displacement_A(scan).reshape(-1, 2)
        fast = make_constraint("highpass", scan)(d, None, scan.scan_shape)
        return np.asarray(fast).reshape(*scan.scan_shape, 2)


def experiment_scan(atoms: Atoms, scan_shape: tuple[int, int], step_A: float) -> RasterScan:
    """A raster of ``scan_shape`` with ``step_A`` centred in the cell of ``atoms``."""
    from tdmctx.ptycho.simulate import centred_scan

    return centred_scan(atoms, scan_shape, step_A)


def error_model(error: str, magnitude_step: float, scan: RasterScan, *, seed: int = 0) -> ScanError:
    """The error model of one type, scaled to an RMS magnitude (translation removed).

    Shapes: ``affine`` scale_x 2 %, scale_y -1.5 %, rotation 1 deg, shear 0.01; ``line`` an
    independent rigid shift of every row, weighted (1, 0.5) along (x, y); ``drift`` linear
    (1, 0.5) plus quadratic (-1, 1) in acquisition time; ``white_jitter`` white, independent per axis;
    ``jitter`` the same draw without its part that is smooth in time (:class:`HighpassError`).

    Parameters
    ----------
    error
        One of :data:`ERROR_TYPES`.
    magnitude_step
        RMS error vector length after removing the mean, in units of the scan step (>= 0).
    scan
        The nominal raster.
    seed
        Seed of the random draws (line, jitter).
    """
    shapes: dict[str, ScanError] = {
        "affine": AffineError(scale_x=0.02, scale_y=-0.015, rotation_deg=1.0, shear=0.01),
        "line": LineJumps(rms_step=1.0, direction=(1.0, 0.5), seed=seed),
        "drift": DriftError(linear_step=(1.0, 0.5), quadratic_step=(-1.0, 1.0)),
        "jitter": HighpassError(JitterError(rms_step=1.0, seed=seed)),
        "white_jitter": JitterError(rms_step=1.0, seed=seed),
    }
    if error not in shapes:
        raise ValueError(f"error={error!r}; expected one of {ERROR_TYPES}")
    if not (np.isfinite(magnitude_step) and magnitude_step >= 0):
        raise ValueError(f"magnitude_step={magnitude_step!r} must be >= 0 (units of the scan step)")
    d = shapes[error].displacement_A(scan).reshape(-1, 2)
    rms = float(np.sqrt(np.mean(np.sum((d - d.mean(axis=0)) ** 2, axis=1))))
    return ScaledError(shapes[error], magnitude_step * scan.step_A / rms)


def experiment_dataset(
    error: str,
    magnitude_step: float,
    dose_e_per_A2: float,
    *,
    scan_shape: tuple[int, int] = (10, 10),
    step_A: float = 0.6,
    seed: int = 0,
    conditions: Conditions | None = None,
    progress: bool = False,
) -> tuple[PtychoDataset, RasterScan]:
    """Simulated MoS2 data whose only scan error is ``error``, at a dose (e/A^2), and its raster.

    The noise-free abTEM simulation is cached (same error, magnitude, seed and conditions: one
    simulation for every dose); the Poisson draw uses the seed ``(seed, dose)``. The dataset's
    ``extras`` hold ``true_positions_A`` and ``dose_e_per_A2``.
    """
    from tdmctx.ptycho.simulate import simulate_4dstem

    cond = Conditions() if conditions is None else conditions
    if not (np.isfinite(dose_e_per_A2) and dose_e_per_A2 > 0):
        raise ValueError(f"dose_e_per_A2={dose_e_per_A2!r} must be a positive number of electrons per A^2")
    rows, cols = scan_shape
    extent = step_A * (max(rows, cols) - 1)
    atoms = square_mos2_cell(extent + 2 * cond.margin_A)
    scan = experiment_scan(atoms, (rows, cols), step_A)
    clean = simulate_4dstem(
        atoms, scan=scan, error=error_model(error, magnitude_step, scan, seed=seed), energy_eV=cond.energy_eV,
        semiangle_mrad=cond.semiangle_mrad, defocus_A=cond.defocus_A, max_angle_mrad=cond.max_angle_mrad,
        potential_sampling_A=cond.potential_sampling_A, electrons_per_pattern=None, seed=seed, progress=progress,
    )
    electrons = dose_e_per_A2 * step_A**2
    rng = np.random.default_rng([int(seed), int(round(dose_e_per_A2))])
    mapping = clean.to_mapping()
    mapping["datacube"] = rng.poisson(np.asarray(clean.datacube, np.float64) * electrons).astype(np.float32)
    mapping["electrons_per_pattern"] = float(electrons)
    mapping["dose_e_per_A2"] = float(dose_e_per_A2)
    return dataset_from_mapping(mapping), scan


def make_constraint(name: str, scan: RasterScan):
    """The constraint ``name`` for a raster; low-/high-pass use its real acquisition times (flyback)."""
    from tdmctx.ptycho.constraints import get_constraint

    if name in ("lowpass", "highpass"):
        return get_constraint(name, times_s=scan.times_s)
    return get_constraint(name)


@dataclass
class MethodRun:
    """One reconstruction: position history (start + one entry per pass) and its RMS error."""

    method: str
    history_A: np.ndarray
    rms_A: np.ndarray
    data_error: np.ndarray
    time_s: float
    settings: dict[str, Any] = field(default_factory=dict)
    #: Cramer-Rao bound of a single position at the last pass (tdmctx runs that moved positions), Angstrom.
    crb_A: float = float("nan")

    @property
    def final_A(self) -> float:
        """RMS error after the last pass, Angstrom."""
        return float(self.rms_A[-1])

    @property
    def best_A(self) -> float:
        """Lowest RMS error over the passes (the start included), Angstrom."""
        return float(np.min(self.rms_A))

    @property
    def best_iteration(self) -> int:
        """Pass with the lowest RMS error (0 is the start)."""
        return int(np.argmin(self.rms_A))


@dataclass
class ExperimentResult:
    """Everything one experiment measured; RMS errors in Angstrom, translation removed."""

    error: str
    constraint: str
    magnitude_step: float
    dose_e_per_A2: float
    electrons_per_pattern: float
    seed: int
    scan_shape: tuple[int, int]
    step_A: float
    iterations: int
    warmup: int
    nominal_positions_A: np.ndarray
    true_positions_A: np.ndarray
    runs: dict[str, MethodRun]
    py4dstem_trials: list[dict[str, Any]] = field(default_factory=list)
    unreachable_A: float = float("nan")

    @property
    def nominal_A(self) -> float:
        """RMS error of the nominal positions (the start of every run but the floor)."""
        return rms_error_A(self.nominal_positions_A, self.true_positions_A)

    def error_field_A(self, method: str) -> np.ndarray:
        """Final position error (estimate - truth) of a method, mean removed, ``(rows, cols, 2)``."""
        pos = self.nominal_positions_A if method == "nominal" and method not in self.runs else \
            self.runs[method].history_A[-1]
        err = pos - self.true_positions_A
        return err - err.reshape(-1, 2).mean(axis=0)

    def decomposition(self) -> dict[str, dict[str, float]]:
        """RMS of the affine, line, low-pass and high-pass parts of each method's final error."""
        out = {"nominal": error_decomposition(self.nominal_positions_A, self.true_positions_A)}
        for name, run in self.runs.items():
            if name != "nominal":
                out[name] = error_decomposition(run.history_A[-1], self.true_positions_A)
        return out

    def rate_per_pass(self, method: str = "constrained", last: int = 10) -> float:
        """Geometric mean factor by which the RMS error shrank per pass over the last passes."""
        rms = self.runs[method].rms_A
        last = min(last, len(rms) - 1)
        return float((rms[-1] / rms[-1 - last]) ** (1.0 / last)) if last > 0 else float("nan")

    def convergence(self, method: str = "constrained", last: int = 10) -> dict[str, float]:
        """Rate per pass at the end, and the passes that rate would still need to reach the targets.

        Returns ``rate`` (:meth:`rate_per_pass`), ``passes_to_10x`` and ``passes_to_floor``
        (to 1.5x the floor; 0 when already there, ``inf`` when the error no longer shrinks).
        """
        rate = self.rate_per_pass(method, last)
        final = self.runs[method].final_A
        floor = self.runs["floor"].final_A if "floor" in self.runs else float("nan")

        def passes(target: float) -> float:
            if final <= target:
                return 0.0
            return math.log(target / final) / math.log(rate) if 0 < rate < 1 else float("inf")

        return {"rate": rate, "passes_to_10x": passes(self.nominal_A / 10), "passes_to_floor": passes(1.5 * floor)}

    def summary(self) -> dict[str, Any]:
        """One table row: the final RMS errors, the py4DSTEM setting, and the issue's targets."""
        row: dict[str, Any] = {"error": self.error, "constraint": self.constraint,
                               "magnitude_step": self.magnitude_step, "dose_e_per_A2": self.dose_e_per_A2,
                               "electrons_per_pattern": self.electrons_per_pattern, "seed": self.seed,
                               "nominal_A": self.nominal_A}
        for name in ("unconstrained", "constrained", "floor"):
            row[f"{name}_A"] = self.runs[name].final_A if name in self.runs else float("nan")
        p4 = self.runs.get("py4dstem")
        row["py4dstem_best_A"] = p4.best_A if p4 else float("nan")
        row["py4dstem_best_iteration"] = p4.best_iteration if p4 else -1
        row["py4dstem_final_A"] = p4.final_A if p4 else float("nan")
        row["py4dstem_setting"] = p4.settings.get("preset", "") if p4 else ""
        row["unreachable_A"] = self.unreachable_A
        c = row["constrained_A"]
        # Written as "not c >= x" so that a method that was not run (NaN) does not fail the target.
        row["reduction"] = row["nominal_A"] / c
        row["vs_floor"] = c / row["floor_A"]
        row["target_met"] = bool((row["reduction"] >= 10 or row["vs_floor"] <= 1.5)
                                 and not c >= row["unconstrained_A"]
                                 and not c >= min(row["py4dstem_best_A"], row["py4dstem_final_A"]))
        return row


def _gd_run(engine, method: str, t0: float, true: np.ndarray, settings: dict[str, Any]) -> MethodRun:
    history = np.stack(engine.history)
    rms = np.array([rms_error_A(p, true) for p in history])
    crb = np.asarray(engine.log.get("crb_rms_A", []), dtype=float)
    crb = crb[np.isfinite(crb)]
    return MethodRun(method, history, rms, np.asarray(engine.log["data_error"]), time.perf_counter() - t0, settings,
                     float(crb[-1]) if crb.size else float("nan"))


def run_constraint_experiment(
    error: str,
    magnitude_step: float,
    dose_e_per_A2: float,
    *,
    constraint: str | None = None,
    methods: Sequence[str] = METHODS,
    iterations: int = 60,
    warmup: int = 5,
    scan_shape: tuple[int, int] = (10, 10),
    step_A: float = 0.6,
    position_damping: float = 1.0,
    refine_probe: bool = False,
    py4dstem_settings: Sequence[str] = ("default", "small_step"),
    conditions: Conditions | None = None,
    seed: int = 0,
    device: str | None = None,
    progress: bool = True,
) -> ExperimentResult:
    """Simulate data with one error type and reconstruct them with each method.

    Parameters
    ----------
    error
        Error type of the data, one of :data:`ERROR_TYPES`.
    magnitude_step
        RMS error (translation removed), units of the scan step.
    dose_e_per_A2
        Electron dose, e/A^2 (``dose * step_A**2`` electrons per pattern).
    constraint
        Constraint name for ``constrained`` and ``floor``; the one matching ``error`` by default
        (pass another for the wrong-type cross-check).
    methods
        Subset of :data:`METHODS`.
    iterations, warmup
        Full passes in total, and passes with frozen positions at the start.
    scan_shape, step_A
        Raster ``(rows, cols)`` and its step, Angstrom.
    position_damping
        Fraction of the Gauss-Newton position step taken per pass (all tdmctx runs).
    refine_probe
        Refine the probe too (all tdmctx runs); off by default because the simulated probe is
        known and probe retrieval trades against the scan's global scale.
    py4dstem_settings
        Names from :data:`PY4DSTEM_PRESETS` to try; the best (lowest best-iteration error) is kept.
    conditions
        Microscope and simulation settings (:class:`Conditions`).
    seed
        Seed of the error draw, the shot noise and the minibatch order.
    device
        ``None`` (CUDA when available, else CPU), ``"cpu"`` or ``"cuda"``.
    progress
        Show a bar over the methods.

    Returns
    -------
    ExperimentResult
    """
    from tqdm.auto import tqdm

    from tdmctx.ptycho.engine import GDPtychography

    if error not in ERROR_TYPES:
        raise ValueError(f"error={error!r}; expected one of {ERROR_TYPES}")
    unknown = [m for m in methods if m not in METHODS]
    if unknown or not methods:
        raise ValueError(f"methods={tuple(methods)!r}; expected a non-empty subset of {METHODS}")
    if not (isinstance(iterations, int) and isinstance(warmup, int) and 0 <= warmup < iterations):
        raise ValueError(f"iterations={iterations!r}, warmup={warmup!r}: need integers 0 <= warmup < iterations")
    bad = [s for s in py4dstem_settings if s not in PY4DSTEM_PRESETS]
    if "py4dstem" in methods and (bad or not py4dstem_settings):
        raise ValueError(f"py4dstem_settings={tuple(py4dstem_settings)!r}; expected names from {tuple(PY4DSTEM_PRESETS)}")
    constraint = CONSTRAINT_FOR[error] if constraint is None else constraint
    dataset, scan = experiment_dataset(error, magnitude_step, dose_e_per_A2, scan_shape=scan_shape, step_A=step_A,
                                       seed=seed, conditions=conditions)
    nominal, true = dataset.nominal_positions_A, dataset.extras["true_positions_A"]
    hook = make_constraint(constraint, scan)
    # The part of the start error that the constraint cannot move: its floor from the nominal start.
    start_error = (nominal - true).reshape(-1, 2)
    reachable = hook(start_error, nominal.reshape(-1, 2), scan.scan_shape)
    unreachable = float(np.sqrt(np.mean(np.sum((start_error - start_error.mean(0) - reachable) ** 2, axis=1))))

    common = dict(refine_probe=refine_probe, progress=False)
    refine = dict(position_damping=position_damping, **common)
    settings = dict(iterations=iterations, warmup=warmup, position_damping=position_damping, refine_probe=refine_probe)

    def engine(start: np.ndarray) -> GDPtychography:
        return GDPtychography(dataset, initial_positions_A=start, true_positions_A=true, seed=seed, device=device)

    runs: dict[str, MethodRun] = {}
    trials: list[dict[str, Any]] = []
    order = [m for m in METHODS if m in methods]
    bar = tqdm(order, desc=f"{error} experiment", disable=not progress, leave=False)
    shared = None
    for method in bar:
        t0 = time.perf_counter()
        if method in ("nominal", "unconstrained", "constrained"):
            if shared is None:
                # The three runs from the nominal raster share their frozen-position warm-up.
                shared = engine(nominal).run(warmup, refine_positions=False, **common)
                shared_s = time.perf_counter() - t0
            if method == "nominal":
                # Frozen positions never move, so further object-only passes would not change the
                # position error; the run is the shared warm-up, its history held for every pass.
                run = _gd_run(shared, method, t0, true, settings)
                run.history_A = np.concatenate([run.history_A, np.repeat(run.history_A[-1:], iterations - warmup, 0)])
                run.rms_A = np.concatenate([run.rms_A, np.repeat(run.rms_A[-1:], iterations - warmup)])
                runs[method] = run
                continue
            eng = copy.deepcopy(shared)
            hook_m = hook if method == "constrained" else None
            eng.run(iterations - warmup, position_step=hook_m, **refine)
            runs[method] = _gd_run(eng, method, t0 - shared_s, true, settings)
        elif method == "floor":
            eng = engine(true).run(warmup, refine_positions=False, **common)
            eng.run(iterations - warmup, position_step=hook, **refine)
            runs[method] = _gd_run(eng, method, t0, true, settings)
        else:
            runs[method], trials = _py4dstem(dataset, true, py4dstem_settings, iterations, warmup, seed, device)
    return ExperimentResult(
        error=error, constraint=constraint, magnitude_step=float(magnitude_step), dose_e_per_A2=float(dose_e_per_A2),
        electrons_per_pattern=float(dataset.extras["electrons_per_pattern"]), seed=int(seed),
        scan_shape=tuple(scan.scan_shape), step_A=float(step_A), iterations=iterations, warmup=warmup,
        nominal_positions_A=nominal, true_positions_A=true, runs=runs, py4dstem_trials=trials,
        unreachable_A=unreachable,
    )


def _py4dstem(dataset, true, presets, iterations, warmup, seed, device) -> tuple[MethodRun, list[dict[str, Any]]]:
    """Run py4DSTEM with each preset; keep the one whose best iteration is lowest."""
    from tdmctx.ptycho.baselines import reconstruct_py4dstem

    best, trials = None, []
    for name in presets:
        t0 = time.perf_counter()
        res = reconstruct_py4dstem(dataset, iterations=iterations, position_start=warmup, true_positions_A=true,
                                   seed=seed, device=device, progress=False, **PY4DSTEM_PRESETS[name])
        history = res.position_history_A
        rms = np.array([rms_error_A(p, true) for p in history])
        run = MethodRun("py4dstem", history, rms, np.asarray(res.log["data_error"]), time.perf_counter() - t0,
                        {"preset": name, **PY4DSTEM_PRESETS[name]})
        trials.append({"setting": name, "best_A": run.best_A, "best_iteration": run.best_iteration,
                       "final_A": run.final_A, "time_s": run.time_s})
        if best is None or run.best_A < best.best_A:
            best = run
    return best, trials


def run_sweep(
    error: str, magnitudes_step: Sequence[float], doses_e_per_A2: Sequence[float], **kwargs: Any
) -> list[ExperimentResult]:
    """:func:`run_constraint_experiment` for every magnitude x dose (one simulation per magnitude)."""
    if not magnitudes_step or not doses_e_per_A2:
        raise ValueError(f"magnitudes_step={magnitudes_step!r}, doses_e_per_A2={doses_e_per_A2!r}: need one of each")
    return [run_constraint_experiment(error, float(m), float(d), **kwargs) for m in magnitudes_step
            for d in doses_e_per_A2]


def run_cross_check(
    constraint: str, errors: Sequence[str], magnitude_step: float, dose_e_per_A2: float, **kwargs: Any
) -> list[ExperimentResult]:
    """Run one constraint (``constrained`` only) on data with other error types: what it cannot fix."""
    kwargs = {**kwargs, "methods": ("constrained",), "constraint": constraint}
    return [run_constraint_experiment(e, magnitude_step, dose_e_per_A2, **kwargs) for e in errors]


def summary_table(results: Sequence[ExperimentResult]):
    """:meth:`ExperimentResult.summary` of each result as a :class:`pandas.DataFrame`."""
    import pandas as pd

    return pd.DataFrame([r.summary() for r in results])


def cross_check_table(results: Sequence[ExperimentResult]):
    """A constraint run on other error types: nominal, final and unreachable RMS, and the parts left."""
    import pandas as pd

    rows = []
    for r in results:
        parts = r.decomposition()["constrained"]
        rows.append({"data error": r.error, "constraint": r.constraint, "nominal_A": r.nominal_A,
                     "constrained_A": r.runs["constrained"].final_A, "unreachable_A": r.unreachable_A,
                     **{f"left_{p}_A": parts[p] for p in PARTS}})
    return pd.DataFrame(rows)

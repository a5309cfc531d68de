"""iCGD: integrated constrained gradient descent for scan-position errors.

Free position refinement lets the object absorb part of a scan error, because object and
positions are entangled. iCGD (Ning et al., Ultramicroscopy 248, 113716, 2023) refines the
positions in stages, each projecting the position step onto one physically meaningful
error model (:mod:`tdmctx.ptycho.constraints`), from coarse to fine, while the object and
the probe are updated throughout:

========== ===================================================== ==============================
stage      position step projected onto                          what it removes
========== ===================================================== ==============================
warm-up    (positions frozen)                                    builds an object to align to
affine     global affine map (scale, rotation, shear)            calibration, linear drift
line       rigid per-row shifts + the per-column flyback pattern  line jumps, flyback settling
drift      low-pass in acquisition time                          slow smooth drift
jitter     high-pass (what the smooth basis cannot describe)     fast local jitter
========== ===================================================== ==============================

No stage moves the scan as a whole (every constraint removes the net translation).

**When a stage ends.** A stage ends when its position step has converged: the RMS step of a
pass has stayed below ``rel_tol`` times the largest RMS step of that stage, or below
``abs_tol_A``, for ``patience`` consecutive passes (and at least ``min_iterations`` were
run), or at ``max_iterations``. The step, not the data error, is watched because the data
error keeps falling while the object sharpens, long after the positions have settled.

**When a stage is skipped.** A stage with a ``noise_gate`` compares its first position step
with the single-pattern Cramer-Rao bound that the engine reports (``crb_rms_A``, from the
Fisher information of the current object and probe, no truth needed). With positions already
right, a pass still moves them by about the bound (shot noise); with a residual error ``r`` of
the stage's type it moves them by about ``sqrt(r**2 + crb**2)``. If the first step is below
``noise_gate * crb`` (default for the high-pass stage: sqrt(2), i.e. ``r < crb``) the stage
would add about as much noise as it removes, so that pass is undone and the stage is skipped
(logged as ``skipped``). On the book's MoS2 data at 1e5 e/A^2 the jitter stage's first step is
0.98 crb from the nominal start and from the truth alike; run anyway, it raised the error of
the run started from the truth from 0.023 to 0.046 A.

**Cycles.** During the first pass through the stages the object absorbs part of the global
(affine) distortion it was built on, and a distorted object then holds the positions in
place: the affine part converges by only a few per cent per pass. The default schedule
therefore runs the stages twice; the second cycle starts from a blank object at the refined
positions (``Stage.restart_object``); the MoS2 chapter of the book measures what each cycle
leaves.
"""

from __future__ import annotations

import math
import os
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from tdmctx.ptycho.constraints import Constraint, Span, Weighted, get_constraint
from tdmctx.ptycho.engine import GDPtychography

__all__ = ["Stage", "default_schedule", "ICGDResult", "run_icgd", "stage_constraint"]


@dataclass(frozen=True)
class Stage:
    """One stage of the iCGD schedule.

    Parameters
    ----------
    name
        Label in logs and figures.
    constraint
        Constraint name (``"affine"``, ``"line"``, ``"column"``, ``"lowpass"``, ``"highpass"``,
        ``"none"`` for free descent), a list of names whose subspaces are orthogonal (the
        projection onto their sum, :class:`~tdmctx.ptycho.constraints.Span`), a dict
        ``{name: weight}`` for a weighted combination (weights summing to at most 1; the rest
        of the step is left unconstrained), or a ready constraint object. ``None`` freezes
        the positions (warm-up).
    max_iterations, min_iterations
        Bounds on the number of full passes.
    rel_tol, abs_tol_A, patience
        Convergence of the position step (module docstring).
    options
        Constraint settings, e.g. ``{"min_period_rows": 16}`` for the low-pass basis.
    noise_gate
        Skip the stage when its first RMS position step is below ``noise_gate`` times the
        single-pattern Cramer-Rao bound (module docstring); ``None`` always runs it.
    restart_object
        Replace the object by a blank one (unit transmission) at the start of the stage,
        keeping the probe and the positions: the start of a new cycle.
    """

    name: str
    constraint: str | list[str] | dict[str, float] | Constraint | None
    max_iterations: int = 20
    min_iterations: int = 3
    rel_tol: float = 0.1
    abs_tol_A: float = 1e-3
    patience: int = 2
    options: dict[str, Any] = field(default_factory=dict)
    noise_gate: float | None = None
    restart_object: bool = False

    def __post_init__(self) -> None:
        if self.max_iterations < 1 or not 0 <= self.min_iterations <= self.max_iterations:
            raise ValueError(
                f"stage {self.name!r}: need 1 <= max_iterations and 0 <= min_iterations <= max_iterations; "
                f"got {self.min_iterations}, {self.max_iterations}"
            )
        if not (0 < self.rel_tol < 1) or self.abs_tol_A < 0 or self.patience < 1:
            raise ValueError(f"stage {self.name!r}: rel_tol in (0, 1), abs_tol_A >= 0 and patience >= 1 expected")


def default_schedule(scale: float = 1.0, *, cycles: int = 2, min_period_rows: float = 16.0) -> list[Stage]:
    """The default coarse-to-fine schedule.

    Per cycle: warm-up 5 passes (frozen positions), affine up to 15 (``rel_tol`` 0.05: the
    affine step shrinks slowly and a looser test stops it early), line + column up to 10,
    low-pass drift up to 5 and high-pass jitter up to 5 (skipped when its first step is within the
    shot noise, ``noise_gate`` sqrt(2)); every cycle after the first starts from
    a blank object (module docstring). These are the passes of the book's MoS2 chapter.

    Parameters
    ----------
    scale
        Multiplies every pass bound (at least one pass each).
    cycles
        How many times the stages run.
    min_period_rows
        Cut-off of the low-pass basis (:class:`~tdmctx.ptycho.constraints.Lowpass`), scan rows.
    """
    if int(cycles) < 1:
        raise ValueError(f"cycles={cycles!r} must be a positive integer")
    if not scale > 0:
        raise ValueError(f"scale={scale!r} must be positive")

    def n(value: int) -> int:
        return max(1, int(round(value * scale)))

    lowpass = {"min_period_rows": min_period_rows}
    schedule = []
    for cycle in range(int(cycles)):
        tag = "" if cycles == 1 else f" ({cycle + 1})"
        schedule += [
            Stage(f"warm-up{tag}", None, max_iterations=n(5), min_iterations=n(5), restart_object=cycle > 0),
            Stage(f"affine{tag}", "affine", max_iterations=n(15), min_iterations=min(n(4), n(15)), rel_tol=0.05),
            Stage(f"line{tag}", ["line", "column"], max_iterations=n(10), min_iterations=min(n(3), n(10))),
            Stage(f"drift{tag}", "lowpass", max_iterations=n(5), min_iterations=min(n(3), n(5)), options=lowpass),
            Stage(f"jitter{tag}", "highpass", max_iterations=n(5), min_iterations=min(n(3), n(5)), options=lowpass,
                  noise_gate=math.sqrt(2.0)),
        ]
    return schedule


def stage_constraint(stage: Stage) -> Callable | None:
    """The position hook of a stage (``None`` for free descent)."""
    spec = stage.constraint

    def one(name: str):
        options = stage.options if name in ("lowpass", "highpass") else {}
        return get_constraint(name, **options)

    if spec is None or spec == "none":
        return None
    if isinstance(spec, Constraint):
        return spec
    if isinstance(spec, str):
        return one(spec)
    if isinstance(spec, dict):
        return Weighted({one(name): weight for name, weight in spec.items()})
    return Span([one(name) for name in spec])


@dataclass
class ICGDResult:
    """What :func:`run_icgd` returns besides the engine's own state.

    Attributes
    ----------
    stages
        One dict per stage: name, first and last pass, passes run, whether it converged,
        final data error, RMS position change in the stage, and (with the truth) the RMS
        position error and its decomposition at the end of the stage.
    boundaries
        Pass number at which each stage ended (for plots of the per-pass log).
    """

    stages: list[dict[str, Any]]
    boundaries: list[int]


def _save_checkpoint(path: Path, payload: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    os.close(fd)
    try:
        torch.save(payload, tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def run_icgd(
    engine: GDPtychography,
    schedule: Sequence[Stage] | None = None,
    *,
    checkpoint: str | os.PathLike | None = None,
    object_step: float = 0.5,
    probe_step: float = 0.5,
    position_damping: float = 1.0,
    max_position_step_A: float | None = None,
    progress: bool = True,
) -> ICGDResult:
    """Run the iCGD schedule on an engine, stage by stage, with checkpoints.

    Parameters
    ----------
    engine
        A :class:`~tdmctx.ptycho.engine.GDPtychography` built on the data (with
        ``true_positions_A`` when the truth is known, for the per-stage error log).
    schedule
        Stages (:func:`default_schedule` by default).
    checkpoint
        File to write the state to after every pass (atomically); when it exists and
        matches the schedule, the run resumes from it.
    object_step, probe_step, position_damping, max_position_step_A
        Passed to :meth:`GDPtychography.run`.
    progress
        Show a bar over the passes.

    Returns
    -------
    ICGDResult
        The engine holds the final object, probe and positions (``engine.result()``).
    """
    schedule = list(default_schedule() if schedule is None else schedule)
    if not schedule:
        raise ValueError("schedule is empty; give at least one Stage")
    signature = [asdict(stage) for stage in schedule]
    checkpoint = None if checkpoint is None else Path(checkpoint)
    stages: list[dict[str, Any]] = []
    boundaries: list[int] = []
    start_stage, start_pass, stage_state = 0, 0, None
    if checkpoint is not None and checkpoint.is_file():
        saved = torch.load(checkpoint, weights_only=False)
        if saved.get("schedule") != signature:
            raise ValueError(f"checkpoint {checkpoint} was written for another schedule; delete it or pass another path")
        engine.load_state_dict(saved["engine"])
        stages, boundaries = saved["stages"], saved["boundaries"]
        start_stage, start_pass, stage_state = saved["stage_index"], saved["stage_pass"], saved["stage_state"]

    total = sum(stage.max_iterations for stage in schedule)
    bar = tqdm(total=total, desc="iCGD", disable=not progress, leave=False)
    bar.update(sum(schedule[i].max_iterations for i in range(start_stage)) + start_pass)
    for index in range(start_stage, len(schedule)):
        stage = schedule[index]
        hook = stage_constraint(stage)
        refine = stage.constraint is not None
        if stage_state is None and stage.restart_object:
            engine_state = engine.state_dict()
            engine_state["object"] = torch.ones_like(engine_state["object"])
            engine.load_state_dict(engine_state)
        state = stage_state or {"first": engine.iteration + 1, "largest": 0.0, "quiet": 0,
                                "start_positions": engine.positions_A.copy()}
        stage_state = None
        converged = skipped = False
        done = start_pass if index == start_stage else 0
        while done < stage.max_iterations:
            before = engine.state_dict() if (stage.noise_gate and refine and done == 0) else None
            engine.run(1, refine_positions=refine, position_step=hook, object_step=object_step,
                       probe_step=probe_step, position_damping=position_damping,
                       max_position_step_A=max_position_step_A, progress=False)
            done += 1
            bar.update(1)
            if before is not None:
                crb = engine.log["crb_rms_A"][-1]
                if np.isfinite(crb) and engine.log["rms_step_A"][-1] < stage.noise_gate * crb:
                    engine.load_state_dict(before)  # undo the pass: the stage would only add noise
                    bar.update(stage.max_iterations - done)
                    skipped = True
                    break
            if refine:
                step = engine.log["rms_step_A"][-1]
                state["largest"] = max(state["largest"], step)
                quiet = step <= max(stage.abs_tol_A, stage.rel_tol * state["largest"])
                state["quiet"] = state["quiet"] + 1 if quiet else 0
                converged = done >= stage.min_iterations and state["quiet"] >= stage.patience
            else:
                converged = done >= stage.min_iterations
            if checkpoint is not None:
                _save_checkpoint(checkpoint, {
                    "schedule": signature, "engine": engine.state_dict(), "stages": stages, "boundaries": boundaries,
                    "stage_index": index, "stage_pass": done, "stage_state": state,
                })
            if converged:
                break
        entry: dict[str, Any] = {
            "stage": stage.name,
            "constraint": "frozen" if stage.constraint is None else str(stage.constraint),
            "first_pass": state["first"],
            "last_pass": engine.iteration,
            "passes": engine.iteration - state["first"] + 1,
            "converged": bool(converged),
            "skipped": skipped,
            "data_error": engine.log["data_error"][-1],
            "position_change_A": float(np.sqrt(np.mean(np.sum((engine.positions_A - state["start_positions"]) ** 2, -1)))),
        }
        if engine.true_positions_A is not None:
            from tdmctx.ptycho.metrics import error_decomposition

            parts = error_decomposition(engine.positions_A, engine.true_positions_A)
            entry.update({f"rms_{k}_A" if k != "total" else "rms_error_A": v for k, v in parts.items()})
        stages.append(entry)
        boundaries.append(engine.iteration)
        if checkpoint is not None:
            _save_checkpoint(checkpoint, {
                "schedule": signature, "engine": engine.state_dict(), "stages": stages, "boundaries": boundaries,
                "stage_index": index + 1, "stage_pass": 0, "stage_state": None,
            })
    bar.close()
    return ICGDResult(stages=stages, boundaries=boundaries)

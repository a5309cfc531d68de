"""The iCGD protocol: stages, convergence bookkeeping, checkpoint and resume."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tdmctx.ptycho.engine import GDPtychography
from tdmctx.ptycho.icgd import Stage, default_schedule, run_icgd, stage_constraint
from tdmctx.ptycho.scan import AffineError, RasterScan
from tdmctx.ptycho.simulate import simulate_synthetic


@pytest.fixture(scope="module")
def small_problem():
    torch.set_num_threads(1)
    scan = RasterScan((12, 12), 0.6, origin_A=(8.0, 8.0))
    true = scan.positions_A + AffineError(scale_x=0.03, scale_y=-0.02, rotation_deg=1.5).displacement_A(scan)
    data = simulate_synthetic(scan, true, n_detector=24, electrons_per_pattern=None, seed=0)
    return data, true


SCHEDULE = [
    Stage("warm-up", None, max_iterations=4, min_iterations=4),
    Stage("affine", "affine", max_iterations=6, min_iterations=2),
    Stage("line", ["line", "column"], max_iterations=3, min_iterations=1),
]


def _engine(data, true):
    return GDPtychography(data, true_positions_A=true, batch_size=48, seed=0, device="cpu")


def test_stages_run_in_order_and_keep_the_truth_log(small_problem):
    data, true = small_problem
    engine = _engine(data, true)
    result = run_icgd(engine, SCHEDULE, progress=False)
    assert [s["stage"] for s in result.stages] == ["warm-up", "affine", "line"]
    assert result.boundaries[-1] == engine.iteration == sum(s["passes"] for s in result.stages)
    warm, affine = result.stages[0], result.stages[1]
    assert warm["position_change_A"] == 0.0  # positions frozen during the warm-up
    assert 2 <= affine["passes"] <= 6
    # The affine stage fixes an affine error: the affine part of the error must shrink.
    assert affine["rms_affine_A"] < 0.7 * warm["rms_affine_A"]
    # An affine-only stage cannot create row-wise structure.
    assert affine["rms_line_A"] < 0.2 * warm["rms_affine_A"]


def test_checkpoint_resume_gives_the_same_result(small_problem, tmp_path):
    data, true = small_problem
    reference = _engine(data, true)
    run_icgd(reference, SCHEDULE, progress=False)

    checkpoint = tmp_path / "icgd.pt"
    interrupted = _engine(data, true)
    original_run = interrupted.run
    calls = {"n": 0}

    def run_then_stop(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 7:  # in the middle of the affine stage
            raise KeyboardInterrupt
        return original_run(*args, **kwargs)

    interrupted.run = run_then_stop
    with pytest.raises(KeyboardInterrupt):
        run_icgd(interrupted, SCHEDULE, checkpoint=checkpoint, progress=False)
    assert checkpoint.is_file()

    resumed = _engine(data, true)
    result = run_icgd(resumed, SCHEDULE, checkpoint=checkpoint, progress=False)
    assert resumed.iteration == reference.iteration
    np.testing.assert_allclose(resumed.positions_A, reference.positions_A, atol=1e-6)
    assert [s["passes"] for s in result.stages] == [
        b - a for a, b in zip([0, *result.boundaries[:-1]], result.boundaries)
    ]

    other = [Stage("affine", "affine", max_iterations=2, min_iterations=1)]
    with pytest.raises(ValueError, match="another schedule"):
        run_icgd(_engine(data, true), other, checkpoint=checkpoint, progress=False)


def test_stage_constraints_and_validation():
    assert stage_constraint(Stage("w", None)) is None
    assert stage_constraint(Stage("free", "none")) is None
    hook = stage_constraint(Stage("lw", {"line": 0.5, "affine": 0.3}))
    field = np.random.default_rng(0).normal(size=(20, 2))
    out = hook(field, np.random.default_rng(1).normal(size=(20, 2)), (4, 5))
    assert out.shape == (20, 2) and abs(out.mean(axis=0)).max() < 1e-12
    with pytest.raises(ValueError, match="min_iterations"):
        Stage("bad", "affine", max_iterations=2, min_iterations=3)
    with pytest.raises(ValueError, match="rel_tol"):
        Stage("bad", "affine", rel_tol=1.5)
    names = [s.name for s in default_schedule(cycles=1)]
    assert names == ["warm-up", "affine", "line", "drift", "jitter"]
    two = default_schedule()
    assert [s.name for s in two][5:7] == ["warm-up (2)", "affine (2)"]
    assert [s.restart_object for s in two] == [False] * 5 + [True] + [False] * 4
    assert sum(s.max_iterations for s in default_schedule(2.0, cycles=1)) == 2 * sum(
        s.max_iterations for s in default_schedule(cycles=1))
    with pytest.raises(ValueError, match="cycles"):
        default_schedule(cycles=0)
    with pytest.raises(ValueError, match="schedule is empty"):
        run_icgd(None, [], progress=False)


def test_restart_object_blanks_the_object_and_keeps_positions(small_problem):
    data, true = small_problem
    engine = _engine(data, true)
    run_icgd(engine, SCHEDULE[:2], progress=False)
    before = engine.positions_A.copy()
    probe = engine.state_dict()["probe"].clone()
    seen = {}
    original_run = engine.run

    def spy(*args, **kwargs):
        # The object the first pass of the restarted stage starts from.
        state = engine.state_dict()
        seen.setdefault("object", state["object"].clone())
        seen.setdefault("probe", state["probe"].clone())
        return original_run(*args, **kwargs)

    engine.run = spy
    run_icgd(engine, [Stage("warm-up (2)", None, max_iterations=1, min_iterations=1, restart_object=True)],
             progress=False)
    assert torch.equal(seen["object"], torch.ones_like(seen["object"]))
    assert torch.equal(probe, seen["probe"])  # the probe carries over
    np.testing.assert_array_equal(engine.positions_A, before)  # frozen warm-up: positions untouched


def test_noise_gate_skips_a_stage_whose_step_is_within_the_shot_noise(small_problem):
    data, true = small_problem
    # Started from the truth there is nothing to correct: every step is noise (noise-free data
    # give a zero step), so a gate of any size skips the stage and leaves the engine untouched.
    engine = _engine(data, true)
    run_icgd(engine, SCHEDULE[:1], progress=False)
    before = engine.state_dict()
    gated = Stage("jitter", "highpass", max_iterations=3, min_iterations=1, noise_gate=1e6)
    result = run_icgd(engine, [gated], progress=False)
    assert result.stages[0]["skipped"] and result.stages[0]["passes"] == 0
    assert engine.iteration == before["iteration"]
    torch.testing.assert_close(engine.state_dict()["object"], before["object"])
    # Without the gate (or with a tiny one) the same stage runs.
    ran = run_icgd(engine, [Stage("jitter", "highpass", max_iterations=2, min_iterations=2, noise_gate=1e-9)],
                   progress=False)
    assert not ran.stages[0]["skipped"] and ran.stages[0]["passes"] == 2


def test_state_dict_is_a_snapshot(small_problem):
    data, true = small_problem
    engine = _engine(data, true)
    engine.run(1, refine_positions=False, progress=False)
    state = engine.state_dict()
    frozen = state["object"].clone()
    engine.run(1, refine_positions=False, progress=False)
    torch.testing.assert_close(state["object"], frozen)
    assert not torch.equal(engine.state_dict()["object"], frozen)

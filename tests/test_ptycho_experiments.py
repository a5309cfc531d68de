"""The constraint-experiment runner: error magnitudes, the simulated data, the runs and the figures."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

from tdmctx.ptycho.experiments import (  # noqa: E402
    CONSTRAINT_FOR,
    ERROR_TYPES,
    Conditions,
    cross_check_table,
    error_model,
    experiment_dataset,
    make_constraint,
    run_constraint_experiment,
    summary_table,
)
from tdmctx.ptycho.experiment_figures import (  # noqa: E402
    cross_check_lines,
    figure_cross_check,
    figure_decompositions,
    figure_error_fields,
    figure_rms_histories,
    figure_true_error,
    plot_cross_check,
    plot_decomposition,
    plot_error_fields,
    plot_rms_history,
    result_lines,
    summary_styler,
)
from tdmctx.ptycho.scan import RasterScan  # noqa: E402
from tdmctx.ptycho.simulate import square_mos2_cell  # noqa: E402

# Small and coarse, so that one abTEM simulation takes a second or two.
SMALL = Conditions(max_angle_mrad=40.0, potential_sampling_A=0.15, margin_A=4.0)
SCAN = (4, 4)


@pytest.mark.parametrize("error", ERROR_TYPES)
def test_error_model_has_the_stated_rms_magnitude(error):
    scan = RasterScan((8, 6), step_A=0.5)
    d = error_model(error, 0.3, scan, seed=3).displacement_A(scan).reshape(-1, 2)
    d -= d.mean(axis=0)
    assert np.sqrt(np.mean(np.sum(d**2, axis=1))) == pytest.approx(0.3 * 0.5)
    assert np.allclose(error_model(error, 0.0, scan).displacement_A(scan), 0.0)


def test_error_model_refuses_bad_input():
    scan = RasterScan((4, 4), step_A=0.5)
    with pytest.raises(ValueError, match="error='wobble'"):
        error_model("wobble", 0.1, scan)
    with pytest.raises(ValueError, match="magnitude_step"):
        error_model("line", -0.1, scan)


def test_square_cell_is_square_and_unstrained():
    atoms = square_mos2_cell(20.0)
    cell = np.diag(np.asarray(atoms.cell))
    assert cell[0] == pytest.approx(cell[1]) and cell[0] >= 20.0
    mo = atoms.positions[atoms.numbers == 42]
    nearest = np.sort(np.linalg.norm(mo[:, None, :2] - mo[None, :, :2], axis=-1), axis=1)[:, 1]
    assert np.median(nearest) == pytest.approx(3.19, abs=1e-6)
    with pytest.raises(ValueError, match="min_side_A"):
        square_mos2_cell(-1.0)


def test_lowpass_constraint_uses_the_acquisition_times():
    scan = RasterScan((6, 6), step_A=0.5, flyback_s=0.02)
    c = make_constraint("lowpass", scan)
    assert c.times_s is not None
    # Drift in real time (flyback included) lies in the basis and passes unchanged.
    from tdmctx.ptycho.scan import DriftError

    drift = DriftError((1.0, 0.5), (-1.0, 1.0)).displacement_A(scan).reshape(-1, 2)
    drift -= drift.mean(axis=0)
    assert np.allclose(c(drift, scan.positions_A.reshape(-1, 2), scan.scan_shape), drift, atol=1e-10)


def test_dataset_dose_square_detector_and_shared_simulation(tmp_path, monkeypatch):
    monkeypatch.setenv("TDMCTX_CACHE", str(tmp_path))
    low, scan = experiment_dataset("jitter", 0.2, 1e3, scan_shape=SCAN, step_A=0.6, conditions=SMALL)
    high, _ = experiment_dataset("jitter", 0.2, 1e5, scan_shape=SCAN, step_A=0.6, conditions=SMALL)
    again, _ = experiment_dataset("jitter", 0.2, 1e3, scan_shape=SCAN, step_A=0.6, conditions=SMALL)
    # One noise-free simulation serves every dose; the Poisson draw is seeded.
    assert len(list(tmp_path.rglob("sim-*.npz"))) == 1
    np.testing.assert_array_equal(low.datacube, again.datacube)
    assert low.datacube.shape[-1] == low.datacube.shape[-2]
    assert low.angular_sampling_mrad[0] == pytest.approx(low.angular_sampling_mrad[1])
    assert float(high.extras["electrons_per_pattern"]) == pytest.approx(1e5 * 0.36)
    # Counts scale with the dose (the detector catches most of the beam).
    ratio = high.datacube.sum() / low.datacube.sum()
    assert ratio == pytest.approx(100.0, rel=0.05)
    assert 0.8 < high.datacube.sum(axis=(-2, -1)).mean() / 3.6e4 <= 1.0
    true = high.extras["true_positions_A"]
    err = (true - scan.positions_A).reshape(-1, 2)
    err -= err.mean(axis=0)
    assert np.sqrt(np.mean(np.sum(err**2, axis=1))) == pytest.approx(0.2 * 0.6)
    with pytest.raises(ValueError, match="dose_e_per_A2"):
        experiment_dataset("jitter", 0.2, 0.0, scan_shape=SCAN, conditions=SMALL)


@pytest.fixture(scope="module")
def small_result():
    return run_constraint_experiment("line", 0.3, 1e5, iterations=6, warmup=2, scan_shape=SCAN,
                                     methods=("nominal", "unconstrained", "constrained", "py4dstem", "floor"),
                                     py4dstem_settings=("default",), conditions=SMALL, device="cpu", progress=False)


def test_experiment_runs_every_method(small_result):
    r = small_result
    assert set(r.runs) == {"nominal", "unconstrained", "constrained", "py4dstem", "floor"}
    for run in r.runs.values():
        assert run.history_A.shape == (7, *SCAN, 2)
        assert run.rms_A.shape == (7,)
        assert np.all(np.isfinite(run.rms_A))
    # Runs from the nominal raster start at the nominal error, the floor at zero.
    for name in ("nominal", "unconstrained", "constrained", "py4dstem"):
        assert r.runs[name].rms_A[0] == pytest.approx(r.nominal_A)
    assert r.runs["floor"].rms_A[0] == pytest.approx(0.0, abs=1e-9)
    # Frozen positions stay put; the constrained step stays row-rigid.
    assert np.allclose(r.runs["nominal"].rms_A, r.nominal_A)
    moved = (r.runs["constrained"].history_A[-1] - r.nominal_positions_A)
    assert np.allclose(moved - moved.mean(axis=1, keepdims=True), 0.0, atol=1e-9)
    # The warm-up is shared: the three runs from the nominal raster agree until positions move.
    assert r.runs["unconstrained"].data_error[1] == pytest.approx(r.runs["constrained"].data_error[1])
    assert r.unreachable_A == pytest.approx(0.0, abs=1e-12)  # line data are all within line's reach
    assert r.nominal_A == pytest.approx(0.3 * 0.6)


def test_summary_row_and_targets(small_result):
    table = summary_table([small_result])
    row = table.iloc[0]
    for key in ("nominal_A", "unconstrained_A", "constrained_A", "py4dstem_best_A", "py4dstem_final_A", "floor_A",
                "reduction", "vs_floor", "target_met", "dose_e_per_A2", "magnitude_step", "seed"):
        assert key in table.columns
    assert row["reduction"] == pytest.approx(row["nominal_A"] / row["constrained_A"])
    assert row["py4dstem_best_A"] <= row["py4dstem_final_A"]
    assert row["py4dstem_setting"] == "default"
    parts = small_result.decomposition()
    assert set(parts) == {"nominal", "unconstrained", "constrained", "py4dstem", "floor"}


def test_wrong_type_cross_check_reports_what_is_out_of_reach():
    r = run_constraint_experiment("jitter", 0.3, 1e5, constraint="affine", methods=("constrained",), iterations=4,
                                  warmup=2, scan_shape=SCAN, conditions=SMALL, device="cpu", progress=False)
    table = cross_check_table([r])
    assert table.loc[0, "constraint"] == "affine" and table.loc[0, "data error"] == "jitter"
    # White jitter is almost entirely outside the 4-dimensional affine subspace.
    assert r.unreachable_A > 0.7 * r.nominal_A
    assert r.runs["constrained"].final_A >= 0.9 * r.unreachable_A


def test_bad_arguments_are_refused():
    with pytest.raises(ValueError, match="methods"):
        run_constraint_experiment("line", 0.3, 1e5, methods=("magic",))
    with pytest.raises(ValueError, match="warmup"):
        run_constraint_experiment("line", 0.3, 1e5, iterations=3, warmup=3)
    with pytest.raises(ValueError, match="py4dstem_settings"):
        run_constraint_experiment("line", 0.3, 1e5, py4dstem_settings=("best",))
    with pytest.raises(ValueError, match="error="):
        run_constraint_experiment("shake", 0.3, 1e5)
    assert CONSTRAINT_FOR["drift"] == "lowpass"


def test_figures_draw(small_result):
    fig, axes = plt.subplots(2, 5, figsize=(12, 6))
    plot_rms_history(axes[0, 0], small_result)
    plot_decomposition(axes[0, 1], small_result)
    plot_error_fields(axes[1], small_result)
    plot_cross_check(axes[0, 2], [small_result])
    assert axes[0, 0].get_yscale() == "log"
    assert len(axes[1, 0].collections) == 1  # one quiver per panel
    with pytest.raises(ValueError, match="axes"):
        plot_error_fields(axes[0, :2], small_result)
    plt.close(fig)


def test_chapter_figures_and_lines(small_result):
    figs = [figure_true_error(small_result), figure_rms_histories([small_result, small_result]),
            figure_error_fields(small_result), figure_decompositions([small_result]),
            figure_cross_check([small_result], "title")]
    assert len(figs[1].axes) == 2
    assert figs[4].axes[0].get_title() == "title"
    for fig in figs:
        plt.close(fig)
    table = summary_table([small_result])
    html = summary_styler(table).to_html()
    assert "constrained_A" in html and "py4dstem_best_iteration" in html
    lines = result_lines(table, "line")
    # Every figure in the sentence comes from the table.
    row = table.iloc[0]
    assert f"{row['constrained_A']:.4f} Å" in lines[0] and f"{row['floor_A']:.4f} Å" in lines[0]
    assert ("meets" in lines[0]) == bool(row["target_met"])
    cross = cross_check_lines([small_result], "line")
    assert f"{small_result.unreachable_A:.4f} Å" in cross[0]

"""py4DSTEM baseline: the axis mapping (both ways), position mapping, and the common interface."""

from __future__ import annotations

import numpy as np
import pytest

from tdmctx.ptycho.metrics import phase_fidelity
from tdmctx.ptycho.scan import LineJumps, RasterScan
from tdmctx.ptycho.simulate import simulate_synthetic

pytest.importorskip("py4DSTEM")
from tdmctx.ptycho.baselines import reconstruct_py4dstem  # noqa: E402

SCAN = RasterScan((10, 10), step_A=0.5, origin_A=(8.0, 8.0))


def _data(direction):
    true = LineJumps(rms_step=0.4, direction=direction, seed=2).apply(SCAN)
    return true, simulate_synthetic(SCAN, true, n_detector=32, electrons_per_pattern=None, peak_phase_rad=1.0)


def _fidelity(result, data):
    extent = SCAN.positions_A.reshape(-1, 2)
    region = (extent[:, 0].min(), extent[:, 0].max(), extent[:, 1].min(), extent[:, 1].max())
    return phase_fidelity(result.object, result.object_pixel_size_A, result.object_origin_A,
                          data.extras["true_object"], tuple(data.extras["true_object_sampling_A"]), region,
                          k_limit_per_A=1.0)


@pytest.mark.parametrize("direction, axis", [((1.0, 0.0), 0), ((0.0, 1.0), 1)])
def test_position_correction_moves_along_the_right_axis(direction, axis):
    true, data = _data(direction)
    result = reconstruct_py4dstem(data, iterations=15, position_start=4, true_positions_A=true, progress=False)
    np.testing.assert_allclose(result.position_history_A[0], SCAN.positions_A, atol=1e-4)  # mapped back exactly
    moved = (result.positions_A - SCAN.positions_A).reshape(-1, 2)
    error = (true - SCAN.positions_A).reshape(-1, 2)
    moved -= moved.mean(0)
    error -= error.mean(0)
    # The correction follows the error on the axis that has one; with x and y swapped it would not.
    assert np.corrcoef(moved[:, axis], error[:, axis])[0, 1] > 0.6
    assert moved[:, axis].std() > moved[:, 1 - axis].std()


def test_transpose_mapping_both_ways():
    """Our convention needs force_com_transpose=True; the wrong one gives a worse fit and object."""
    true, data = _data((1.0, 1.0))
    right = reconstruct_py4dstem(data, iterations=8, refine_positions=False, progress=False)
    wrong = reconstruct_py4dstem(data, iterations=8, refine_positions=False, transpose_override=False,
                                 progress=False)
    assert right.log["data_error"][-1] < 0.8 * wrong.log["data_error"][-1]
    assert _fidelity(right, data).correlation > 0.8
    assert _fidelity(right, data).correlation > _fidelity(wrong, data).correlation + 0.1


def test_interface_matches_the_engine():
    true, data = _data((1.0, 1.0))
    result = reconstruct_py4dstem(data, iterations=3, position_start=1, true_positions_A=true,
                                  max_position_update_distance_A=0.05, progress=False)
    assert result.method == "py4dstem"
    assert result.positions_A.shape == (10, 10, 2)
    assert result.object.ndim == 2 and np.iscomplexobj(result.object)
    assert result.probe.shape == data.detector_shape
    assert set(result.log) >= {"iteration", "data_error", "rms_position_error_A", "time_s"}
    assert 1 <= result.info["best_iteration"] <= 3
    # max_position_update_distance_A bounds each pass's step.
    steps = np.linalg.norm(np.diff(result.position_history_A, axis=0), axis=-1)
    assert steps.max() <= 0.05 + 1e-4
    with pytest.raises(ValueError, match="device"):
        reconstruct_py4dstem(data, iterations=1, device="tpu", progress=False)

"""Raster geometry, acquisition times and the scan-error models."""

from __future__ import annotations

import numpy as np
import pytest

from tdmctx.ptycho.scan import (
    AffineError,
    CompositeError,
    DriftError,
    FlybackError,
    JitterError,
    LineJumps,
    RasterScan,
    mixed_error,
)


def test_raster_positions_and_times():
    scan = RasterScan((3, 4), step_A=0.5, origin_A=(1.0, 2.0), dwell_s=1e-3, flyback_s=4e-3)
    pos = scan.positions_A
    assert pos.shape == (3, 4, 2)
    # Columns run along x (fast axis), rows along y.
    np.testing.assert_allclose(pos[0, :, 0], [1.0, 1.5, 2.0, 2.5])
    np.testing.assert_allclose(pos[:, 0, 1], [2.0, 2.5, 3.0])
    np.testing.assert_allclose(pos[:, :, 1].std(axis=1), 0.0)
    times = scan.times_s
    np.testing.assert_allclose(times[0], [0.0, 1e-3, 2e-3, 3e-3])
    # Next row starts after 4 dwells and the flyback.
    assert times[1, 0] == pytest.approx(8e-3)
    assert scan.duration_s == pytest.approx(2 * 8e-3 + 3e-3)
    np.testing.assert_allclose(scan.centre_A, [1.75, 2.5])


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(scan_shape=(0, 3), step_A=1.0), "scan_shape"),
        (dict(scan_shape=(2.5, 3), step_A=1.0), "scan_shape"),
        (dict(scan_shape=(2, 3), step_A=-1.0), "step_A"),
        (dict(scan_shape=(2, 3), step_A=1.0, dwell_s=0.0), "dwell_s"),
        (dict(scan_shape=(2, 3), step_A=1.0, origin_A=(1, 2, 3)), "origin_A"),
    ],
)
def test_raster_rejects_bad_input(kwargs, match):
    with pytest.raises(ValueError, match=match):
        RasterScan(**kwargs)


def test_affine_matches_its_matrix():
    scan = RasterScan((5, 6), step_A=0.4)
    err = AffineError(scale_x=0.02, scale_y=-0.01, rotation_deg=2.0, shear=0.03)
    true = err.apply(scan)
    rel = scan.positions_A - scan.centre_A
    np.testing.assert_allclose(true - scan.centre_A, rel @ err.matrix.T, atol=1e-12)
    # A pure rotation keeps every distance to the centre.
    rot = AffineError(rotation_deg=5.0).apply(scan) - scan.centre_A
    np.testing.assert_allclose(np.linalg.norm(rot, axis=-1), np.linalg.norm(rel, axis=-1), atol=1e-12)


def test_line_jumps_are_rigid_per_row_and_seeded():
    scan = RasterScan((40, 7), step_A=0.5)
    d = LineJumps(rms_step=0.2, seed=3).displacement_A(scan)
    np.testing.assert_allclose(d.std(axis=1), 0.0, atol=1e-15)  # same shift along a row
    assert np.std(d[:, 0, 0]) / scan.step_A == pytest.approx(0.2, rel=0.35)
    np.testing.assert_array_equal(d, LineJumps(rms_step=0.2, seed=3).displacement_A(scan))
    assert not np.allclose(d, LineJumps(rms_step=0.2, seed=4).displacement_A(scan))
    only_x = LineJumps(rms_step=0.2, direction=(1.0, 0.0), seed=3).displacement_A(scan)
    np.testing.assert_allclose(only_x[..., 1], 0.0)
    some = LineJumps(rms_step=0.2, fraction_rows=0.25, seed=3).displacement_A(scan)
    assert 0 < np.count_nonzero(some[:, 0, 0]) < 40


def test_flyback_decays_along_each_row():
    scan = RasterScan((3, 10), step_A=0.5)
    d = FlybackError(amplitude_step=(1.0, 0.0), decay_cols=2.0).displacement_A(scan)
    np.testing.assert_allclose(d[:, 0, 0], 0.5)
    np.testing.assert_allclose(d[0, :, 0], 0.5 * np.exp(-np.arange(10) / 2.0))
    np.testing.assert_allclose(d[..., 1], 0.0)


def test_drift_is_linear_plus_quadratic_in_time():
    scan = RasterScan((4, 4), step_A=0.5, flyback_s=0.0)
    d = DriftError(linear_step=(1.0, 0.0), quadratic_step=(0.0, 2.0)).displacement_A(scan)
    u = scan.times_s / scan.duration_s
    np.testing.assert_allclose(d[..., 0], 0.5 * u)
    np.testing.assert_allclose(d[..., 1], 1.0 * u**2)
    assert d[-1, -1, 0] == pytest.approx(0.5)  # whole drift accumulated at the end


def test_jitter_rms_and_correlation():
    scan = RasterScan((60, 60), step_A=1.0)
    white = JitterError(rms_step=0.1, seed=0).displacement_A(scan)
    assert white.std() == pytest.approx(0.1, rel=0.05)
    lag1_white = np.corrcoef(white[..., 0].ravel()[:-1], white[..., 0].ravel()[1:])[0, 1]
    assert abs(lag1_white) < 0.05
    red = JitterError(rms_step=0.1, correlation_s=5e-3, seed=0).displacement_A(scan)
    lag1_red = np.corrcoef(red[..., 0].ravel()[:-1], red[..., 0].ravel()[1:])[0, 1]
    assert lag1_red == pytest.approx(np.exp(-1e-3 / 5e-3), abs=0.05)


def test_composition_adds_displacements():
    scan = RasterScan((6, 5), step_A=0.5)
    a, b = AffineError(rotation_deg=1.0), JitterError(0.1, seed=1)
    combo = a + b + LineJumps(seed=2)
    assert isinstance(combo, CompositeError) and len(combo.models) == 3
    expected = a.displacement_A(scan) + b.displacement_A(scan) + LineJumps(seed=2).displacement_A(scan)
    np.testing.assert_allclose(combo.displacement_A(scan), expected)


def test_mixed_error_scales_with_strength_and_seed():
    scan = RasterScan((16, 16), step_A=0.5)
    small = mixed_error(0.1, seed=0).displacement_A(scan)
    large = mixed_error(0.3, seed=0).displacement_A(scan)
    # Every part is linear in strength except the rotation (sin, cos), nearly linear at 1 degree.
    np.testing.assert_allclose(large, 3 * small, atol=1e-3 * scan.step_A)
    assert not np.allclose(large, mixed_error(0.3, seed=1).displacement_A(scan))
    with pytest.raises(ValueError, match="strength_step"):
        mixed_error(-1.0)

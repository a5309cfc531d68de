"""The experiment-like MoS2 dataset: exact interpolation, detector model, files, conventions, scoring helpers."""

from __future__ import annotations

import numpy as np
import pytest

from tdmctx.ptycho import experiment_like as el
from tdmctx.ptycho import metrics, preprocess
from tdmctx.ptycho.detector import estimate_rotation
from tdmctx.ptycho.preprocess import apply_dark_gain, bright_field_disk
from tdmctx.ptycho.readers import read_4dstem
from tdmctx.ptycho.scan import AffineError, RasterScan

# A small experiment: a 22.2 A cell (7 x 4 MoS2 cells, 1.88 mrad pixels) that still fills a
# 128-pixel frame, a coarse but alias-free position grid, a 10 x 10 scan (the
# curl-based rotation estimate needs about that many positions to fix its 180 degree ambiguity).
SMALL = dict(scan_shape=(10, 10), step_A=0.5, angular_sampling_mrad=0.0417587 / 22.2 * 1e3,
             potential_sampling_A=0.1, position_grid_A=0.45, dose_e_per_A2=4e5, seed=3)


@pytest.fixture(scope="module")
def small():
    conditions = el.EmpadLikeConditions(**SMALL)
    files = el.simulate_empad_like(conditions)
    return conditions, files, el.load_truth(files.truth_path)


def _periodic_field(points, cell, harmonics):
    """A real trigonometric polynomial of probe position (the exact answer)."""
    x, y = points[..., 0], points[..., 1]
    out = np.full(x.shape, 2.0)
    for (h, k), amp, phase in harmonics:
        out = out + amp * np.cos(2 * np.pi * (h * x / cell[0] + k * y / cell[1]) + phase)
    return out


def test_interpolation_is_exact_for_band_limited_patterns():
    cell = (3.2, 5.5)
    harmonics = [((1, 0), 0.5, 0.3), ((0, 2), 0.3, -1.0), ((2, -3), 0.2, 2.0), ((-3, 1), 0.1, 0.5)]
    mx, my = 9, 11  # enough for |h| <= 3 and |k| <= 3 (odd, no Nyquist term)
    gx, gy = np.meshgrid(np.arange(mx) * cell[0] / mx, np.arange(my) * cell[1] / my, indexing="xy")
    grid_points = np.stack([gx, gy], axis=-1)
    # Two "detector pixels" with different functions of position.
    grid = np.stack([_periodic_field(grid_points, cell, harmonics),
                     _periodic_field(grid_points, cell, harmonics[:2])], axis=-1)[..., None]
    points = np.random.default_rng(0).uniform(-20, 20, size=(5, 7, 2))
    got = el.interpolate_patterns(grid, cell, points)
    assert got.shape == (5, 7, 2, 1)
    np.testing.assert_allclose(got[..., 0, 0], _periodic_field(points, cell, harmonics), atol=2e-5)
    np.testing.assert_allclose(got[..., 1, 0], _periodic_field(points, cell, harmonics[:2]), atol=2e-5)


def test_source_blur_damps_each_harmonic_by_a_gaussian():
    cell, sigma = (3.0, 3.0), 0.2
    (h, k), amp = (1, 2), 0.4
    gx, gy = np.meshgrid(np.arange(7) * 3.0 / 7, np.arange(7) * 3.0 / 7, indexing="xy")
    grid = _periodic_field(np.stack([gx, gy], -1), cell, [((h, k), amp, 0.0)])[..., None, None]
    points = np.random.default_rng(1).uniform(0, 3, size=(20, 2))
    got = el.interpolate_patterns(grid, cell, points, source_sigma_A=sigma)[:, 0, 0]
    f2 = (h / cell[0]) ** 2 + (k / cell[1]) ** 2
    damped = amp * np.exp(-2 * np.pi**2 * sigma**2 * f2)
    np.testing.assert_allclose(got, _periodic_field(points, cell, [((h, k), damped, 0.0)]), atol=2e-5)


def test_interpolation_rejects_bad_input():
    with pytest.raises(ValueError, match="odd"):
        el.interpolate_patterns(np.zeros((4, 5, 2, 2)), (1.0, 1.0), np.zeros((3, 2)))
    with pytest.raises(ValueError, match="cell_A"):
        el.interpolate_patterns(np.zeros((3, 5, 2, 2)), (1.0, -1.0), np.zeros((3, 2)))
    with pytest.raises(ValueError, match="positions_A"):
        el.interpolate_patterns(np.zeros((3, 5, 2, 2)), (1.0, 1.0), np.full((3, 2), np.nan))


def test_readout_inverts_with_dark_and_gain():
    rng = np.random.default_rng(2)
    electrons = rng.poisson(3.0, size=(4, 6, 6)).astype(np.float32)
    dark = rng.normal(50, 4, size=(6, 6)).astype(np.float32)
    gain = rng.normal(1, 0.03, size=(6, 6)).astype(np.float32)
    raw = el.empad_readout(electrons, dark_counts=dark, gain=gain, counts_per_electron=10.0, read_noise_counts=0.0,
                           rng=rng)
    np.testing.assert_allclose(apply_dark_gain(raw[None], dark, gain)[0] / 10.0, electrons, atol=1e-4)
    noisy = el.empad_readout(electrons, dark_counts=dark, gain=gain, counts_per_electron=10.0, read_noise_counts=1.0,
                             rng=rng)
    residual = noisy - dark - electrons * 10.0 / gain  # the read noise alone
    assert residual.std() == pytest.approx(1.0, rel=0.2)
    with pytest.raises(ValueError, match="detector shape"):
        el.empad_readout(electrons, dark_counts=dark[:5], gain=gain, counts_per_electron=10.0, read_noise_counts=1.0,
                         rng=rng)


def test_threshold_centre_and_bin():
    values = np.array([-0.3, 0.2, 0.49, 0.5, 1.1, 7.0], dtype=np.float32)
    np.testing.assert_array_equal(preprocess.threshold_electrons(values, 0.5), np.array([0, 0, 0, 0.5, 1.1, 7.0], np.float32))
    with pytest.raises(ValueError, match="threshold_e"):
        preprocess.threshold_electrons(values, -1.0)

    cube = np.zeros((2, 16, 16), dtype=np.float32)
    cube[:, 11, 6] = 1.0
    cube[:, 0, :] = 5.0  # an edge row that must not wrap around to the other side
    centred, shift = preprocess.centre_patterns(cube, (11.0, 6.0))
    assert shift == (-3, 2)
    assert centred[0, 8, 8] == 1.0
    assert centred[:, -3:, :].sum() == 0.0  # zero-filled, no wrap-around
    with pytest.raises(ValueError, match="central half"):
        preprocess.centre_patterns(cube, (15.0, 1.0))

    binned = preprocess.bin_patterns(np.arange(2 * 4 * 4, dtype=np.float32).reshape(2, 4, 4), 2)
    np.testing.assert_array_equal(binned[0], [[0 + 1 + 4 + 5, 2 + 3 + 6 + 7], [8 + 9 + 12 + 13, 10 + 11 + 14 + 15]])
    assert preprocess.bin_patterns(cube, 1) is cube
    with pytest.raises(ValueError, match="divisible"):
        preprocess.bin_patterns(cube, 3)


def test_affine_parameters_recover_an_affine_error():
    scan = RasterScan((12, 12), 0.5)
    error = AffineError(scale_x=0.01, scale_y=-0.008, rotation_deg=0.4, shear=0.006)
    got = metrics.affine_parameters(error.apply(scan), scan.positions_A)
    assert got["scale_x_pct"] == pytest.approx(1.0, abs=0.02)
    assert got["scale_y_pct"] == pytest.approx(-0.8, abs=0.02)
    assert got["rotation_deg"] == pytest.approx(0.4, abs=0.01)
    assert got["shear_pct"] == pytest.approx(0.6, abs=0.02)


def test_conditions_are_checked():
    with pytest.raises(ValueError, match="position_grid_A"):
        el.EmpadLikeConditions(position_grid_A=0.6)  # above lambda / (4 alpha): aliasing
    with pytest.raises(ValueError, match="scan_shape"):
        el.EmpadLikeConditions(scan_shape=(2, 8))
    with pytest.raises(ValueError, match="dose_e_per_A2"):
        el.EmpadLikeConditions(dose_e_per_A2=0.0)
    c = el.EmpadLikeConditions(dose_e_per_A2=1e5, step_A=0.5, source_fwhm_A=0.4)
    assert c.electrons_per_pattern == pytest.approx(2.5e4)
    assert c.source_sigma_A == pytest.approx(0.4 / 2.3548, rel=1e-4)
    assert c.key() != el.EmpadLikeConditions(seed=1).key()


def test_grid_interpolation_matches_direct_abtem(small):
    """The central claim: patterns at off-grid positions equal abTEM run at those positions."""
    import abtem

    conditions, _, _ = small
    grid = el.pattern_grid(conditions)
    reps, strain = el._cell_repeats(conditions)
    assert np.all(np.abs(strain) < 0.01)
    atoms = el._unit_cell(conditions) * (*reps, 1)
    gpts = grid["true_object"].shape[0] * reps[1]
    potential = abtem.Potential(atoms, gpts=gpts, projection="infinite", slice_thickness=float(atoms.cell[2, 2]) / 2)
    probe = abtem.Probe(energy=conditions.energy_eV, semiangle_cutoff=conditions.semiangle_mrad,
                        defocus=conditions.defocus_A)
    probe.grid.match(potential)
    points = np.array([[0.37, 1.91], [2.05, 4.4]])
    direct = probe.scan(potential, scan=abtem.CustomScan(points + np.asarray(grid["cell_A"]) * (np.array(reps) // 2)),
                        detectors=abtem.PixelatedDetector(max_angle="cutoff")).compute(progress_bar=False)
    got = el.interpolate_patterns(grid["patterns"], tuple(grid["cell_A"]), points)
    expected = np.asarray(direct.array)
    assert np.sqrt(np.mean((got - expected) ** 2)) < 2e-3 * expected.mean()


def test_files_truth_and_detector_conventions(small):
    conditions, files, truth = small
    meta = files.metadata
    raw = read_4dstem(files.xml_path, energy_eV=meta["energy_eV"], semiangle_mrad=meta["semiangle_mrad"],
                      angular_sampling_mrad=meta["angular_sampling_mrad"])
    assert raw.datacube.shape == (10, 10, 128, 128)
    np.testing.assert_allclose(raw.nominal_positions_A, truth["nominal_positions_A"], atol=1e-9)
    assert truth["true_positions_A"].shape == (10, 10, 2)
    assert not np.allclose(truth["true_positions_A"], truth["nominal_positions_A"])  # every error type is on
    electrons = apply_dark_gain(raw.datacube, np.load(files.dark_path), np.load(files.gain_path))
    electrons = preprocess.threshold_electrons(electrons * meta["electrons_per_count"], 0.5)
    per_pattern = electrons.sum((-2, -1)).mean()
    assert per_pattern == pytest.approx(truth["mean_detected_electrons"], rel=0.01)
    assert truth["mean_detected_electrons"] == pytest.approx(conditions.electrons_per_pattern, rel=0.02)
    disk = bright_field_disk(electrons)
    np.testing.assert_allclose(disk.centre_px, truth["disk_centre_px"], atol=0.1)
    centred, _ = preprocess.centre_patterns(electrons, disk.centre_px)
    rotation_deg, transpose = estimate_rotation(centred)
    assert transpose == bool(truth["transpose"])
    # 1-3 degrees off on so small a field; the point is the transpose and the 180 degree branch
    assert abs((rotation_deg - truth["rotation_deg"] + 180) % 360 - 180) < 5.0
    # The truth never reaches the detector file: the .xml names only the .raw and the scan.
    assert "true" not in files.xml_path.read_text()
    # A second call with the same conditions returns the cached files.
    assert el.simulate_empad_like(conditions).truth_path == files.truth_path


def test_rms_without_rotation_removes_only_a_global_rotation():
    scan = RasterScan((10, 12), 0.5)
    true = scan.positions_A + np.random.default_rng(4).normal(0, 0.02, size=(10, 12, 2))
    rotated = AffineError(rotation_deg=0.7).apply(scan) + (true - scan.positions_A) + np.array([1.0, -2.0])
    rms, angle = metrics.rms_without_rotation_A(rotated, true)
    assert angle == pytest.approx(0.7, abs=0.01)  # the noise pulls it slightly
    assert rms == pytest.approx(0.0, abs=1e-3)  # the rotation acts on the small noise as well
    rms, angle = metrics.rms_without_rotation_A(true + 0.01 * np.sign(true), true)
    assert rms > 0.005
    with pytest.raises(ValueError, match="equal shape"):
        metrics.rms_without_rotation_A(true[:5], true)


def test_a_foreign_folder_is_never_overwritten(tmp_path):
    (tmp_path / "notes.txt").write_text("keep me")
    conditions = el.EmpadLikeConditions(**SMALL)
    with pytest.raises(ValueError, match="no experiment-like dataset"):
        el.simulate_empad_like(conditions, folder=tmp_path)
    assert (tmp_path / "notes.txt").read_text() == "keep me"


def test_prepare_dataset_recovers_the_hidden_calibration(small):
    from tdmctx.ptycho.prepare import prepare_dataset

    _, files, truth = small
    meta = files.metadata
    raw = read_4dstem(files.xml_path, energy_eV=meta["energy_eV"], semiangle_mrad=meta["semiangle_mrad"],
                      angular_sampling_mrad=meta["angular_sampling_mrad"])
    data, report = prepare_dataset(raw, dark=np.load(files.dark_path), gain=np.load(files.gain_path),
                                   electrons_per_count=meta["electrons_per_count"], bin_factor=2, rotation_angles=720)
    assert data.datacube.shape == (10, 10, 64, 64)
    np.testing.assert_allclose(data.angular_sampling_mrad, 2 * np.asarray(raw.angular_sampling_mrad))
    assert report.electrons_per_pattern == pytest.approx(truth["mean_detected_electrons"], rel=0.01)
    assert data.datacube.sum((-2, -1)).mean() == pytest.approx(report.electrons_per_pattern, rel=1e-4)
    assert data.transpose == bool(truth["transpose"])
    assert abs((data.rotation_deg - truth["rotation_deg"] + 180) % 360 - 180) < 5.0
    assert np.isfinite(data.defocus_A) and report.defocus_residual_A is not None
    assert "rotation" in report.summary() and "defocus" in report.summary()
    # Given values are kept, not re-estimated.
    fixed, fixed_report = prepare_dataset(raw, rotation=(12.0, False), defocus=80.0, centre=False, threshold_e=None)
    assert (fixed.rotation_deg, fixed.transpose, fixed.defocus_A) == (12.0, False, 80.0)
    assert fixed_report.disk_radius_px is None and fixed_report.shift_px == (0, 0)
    with pytest.raises(ValueError, match="rotation="):
        prepare_dataset(raw, rotation="guess")
    with pytest.raises(ValueError, match="defocus="):
        prepare_dataset(raw, defocus="auto")

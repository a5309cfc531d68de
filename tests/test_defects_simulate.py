"""Supercells, abTEM ADF simulation (both detectors from one run), fast model, acquisition."""

from __future__ import annotations

import numpy as np
import pytest
import xarray as xr

from tdmctx.defects.acquisition import (
    ScanSettings,
    apparent_positions_px,
    blur_periodic,
    expose,
    fourier_resample,
    read_out,
    sample_positions,
    scan_positions_A,
)
from tdmctx.defects.catalog import get_system
from tdmctx.defects.conditions import DETECTORS_MRAD, get_condition
from tdmctx.defects.fastmodel import calibrate, column_integrals, compare, sample_periodic
from tdmctx.defects.simulate import MultisliceSettings, simulate_adf
from tdmctx.defects.structures import Concentrations, build_supercell, class_counts

WSE2 = get_system("WSe2:Ti")
PROBE80 = get_condition("80kV-HAADF").probe


def test_supercell_geometry_and_labels():
    cell = build_supercell(WSE2, (3, 2), Concentrations(0.0, 0.0, 0.0), seed=0)
    counts = class_counts(cell.labels)
    assert counts == {"metal": 12, "dopant": 0, "X2": 12, "V1": 0, "V2": 0}
    assert len(cell.atoms) == 12 + 24
    lx, ly = cell.extent_A
    assert lx == pytest.approx(3 * 3.282) and ly == pytest.approx(2 * 3.282 * 3**0.5)
    # nearest metal-X2 distance is a / sqrt(3)
    d = cell.points_A[:12, None, :] - cell.points_A[None, 12:, :]
    d -= np.array([lx, ly]) * np.round(d / np.array([lx, ly]))
    assert np.sqrt((d**2).sum(-1)).min() == pytest.approx(3.282 / 3**0.5, rel=1e-6)


def test_defects_change_atoms_and_respect_min_counts():
    cell = build_supercell(WSE2, (3, 2), Concentrations(0.0, 0.0, 0.0), min_counts={"dopant": 2, "V1": 3, "V2": 1}, seed=1)
    counts = class_counts(cell.labels)
    assert (counts["dopant"], counts["V1"], counts["V2"]) == (2, 3, 1)
    symbols = cell.atoms.get_chemical_symbols()
    assert symbols.count("Ti") == 2 and symbols.count("W") == 10
    assert symbols.count("Se") == 2 * 12 - 3 - 2
    same = build_supercell(WSE2, (3, 2), Concentrations(0.0, 0.0, 0.0), min_counts={"dopant": 2, "V1": 3, "V2": 1}, seed=1)
    assert (same.labels == cell.labels).all()


def test_supercell_bad_input():
    with pytest.raises(ValueError, match="repeats"):
        build_supercell(WSE2, (0, 2))
    with pytest.raises(ValueError, match="min_counts"):
        build_supercell(WSE2, (1, 1), min_counts={"V2": 5})
    with pytest.raises(ValueError, match="concentration dopant"):
        Concentrations(1.5, 0, 0)


@pytest.fixture(scope="module")
def pristine_run():
    cell = build_supercell(WSE2, (2, 1), Concentrations(0.0, 0.0, 0.0), seed=0)
    settings = MultisliceSettings(num_phonon_configs=2)
    return cell, simulate_adf(cell, 80e3, PROBE80, DETECTORS_MRAD, settings, seed=0, progress=False)


def test_both_detectors_from_one_run_show_the_contrast_reversal(pristine_run):
    cell, sim = pristine_run
    assert set(sim.data_vars) == {"HAADF", "MAADF"}
    assert sim.HAADF.dims == ("y", "x")
    ratios = {}
    for det in ("HAADF", "MAADF"):
        values = sample_periodic(sim[det], cell.points_A)
        ratios[det] = values[cell.labels == "X2"].mean() / values[cell.labels == "metal"].mean()
    # Real Ti-WSe2 data: Se2 brighter than W on the low-angle detector, W brighter on the high-angle one.
    assert ratios["MAADF"] > 1.0 > ratios["HAADF"]
    assert 0.4 < ratios["HAADF"] < 0.9


def test_simulation_rejects_bad_detectors():
    cell = build_supercell(WSE2, (1, 1), Concentrations(0, 0, 0), seed=0)
    with pytest.raises(ValueError, match="inner=90"):
        simulate_adf(cell, 80e3, PROBE80, {"bad": (90, 40)}, progress=False)
    with pytest.raises(ValueError, match="max_angle_mrad"):
        simulate_adf(cell, 80e3, PROBE80, {"wide": (70, 300)}, progress=False)
    with pytest.raises(ValueError, match="engine='bloch'"):
        simulate_adf(cell, 80e3, PROBE80, DETECTORS_MRAD, engine="bloch", progress=False)
    with pytest.raises(ValueError, match="even"):
        MultisliceSettings(num_phonon_configs=3)


def test_prism_matches_multislice():
    cell = build_supercell(WSE2, (2, 1), Concentrations(0.0, 0.0, 0.0), min_counts={"dopant": 1}, seed=2)
    settings = MultisliceSettings(num_phonon_configs=1, phonon_sigma_A=0.0, antithetic=False)
    ms = simulate_adf(cell, 60e3, get_condition("60kV-HAADF").probe, DETECTORS_MRAD, settings, progress=False)
    prism = simulate_adf(cell, 60e3, get_condition("60kV-HAADF").probe, DETECTORS_MRAD, settings, engine="prism", progress=False)
    for det in DETECTORS_MRAD:
        rel = np.abs(prism[det].values - ms[det].values).max() / ms[det].values.max()
        assert rel < 3e-3


def test_fast_model_reproduces_multislice_on_its_cell_and_a_new_one():
    cal = build_supercell(WSE2, (3, 2), Concentrations(0, 0, 0), min_counts={"dopant": 2, "V1": 2, "V2": 2}, seed=3)
    val = build_supercell(WSE2, (3, 2), Concentrations(0, 0, 0), min_counts={"dopant": 2, "V1": 2, "V2": 2}, seed=4)
    # Without phonons the reference is exact, so the error measures the model alone.
    settings = MultisliceSettings(num_phonon_configs=1, phonon_sigma_A=0.0, antithetic=False)
    sims = [simulate_adf(c, 80e3, PROBE80, {"HAADF": DETECTORS_MRAD["HAADF"]}, settings, engine="prism", progress=False) for c in (cal, val)]
    model = calibrate(sims[0].HAADF, cal.points_A, cal.labels, cal.extent_A, 80e3, PROBE80)
    intensity = model.column_intensity()
    assert intensity["metal"] > intensity["X2"] > intensity["V1"] > intensity["V2"]
    assert intensity["dopant"] < 0.3 * intensity["metal"]  # Ti (Z=22) on a W (Z=74) site
    assert abs(intensity["V2"]) < 0.05 * intensity["metal"]
    fast = model.render(val.points_A, val.labels, val.extent_A, sims[1].HAADF.shape)
    errors = compare(sims[1].HAADF, fast, val.points_A, val.labels, val.extent_A)
    assert errors["image_nrmse"] < 0.05
    assert errors["column_rmse"] < 0.03
    # a wrong model (the cell's labels shuffled) must fail the same check
    wrong = model.render(val.points_A, np.random.default_rng(0).permutation(val.labels), val.extent_A, sims[1].HAADF.shape)
    assert compare(sims[1].HAADF, wrong, val.points_A, val.labels, val.extent_A)["column_rmse"] > 0.1


def test_calibration_needs_every_class():
    cell = build_supercell(WSE2, (1, 1), Concentrations(0, 0, 0), seed=0)
    image = xr.DataArray(np.zeros((10, 10)), dims=("y", "x"), coords={"y": np.arange(10) * 0.5, "x": np.arange(10) * 0.3})
    with pytest.raises(ValueError, match="lacks class"):
        calibrate(image, cell.points_A, cell.labels, cell.extent_A, 80e3, PROBE80)


def test_fourier_tools_are_exact_on_band_limited_images():
    extent = (6.0, 5.0)
    ny, nx = 20, 24
    y, x = np.meshgrid(np.arange(ny) * extent[1] / ny, np.arange(nx) * extent[0] / nx, indexing="ij")
    image = 1 + np.cos(2 * np.pi * 2 * x / extent[0]) * np.sin(2 * np.pi * 3 * y / extent[1])
    pts = np.array([[1.234, 0.4], [5.5, 4.9]])
    truth = 1 + np.cos(2 * np.pi * 2 * pts[:, 0] / extent[0]) * np.sin(2 * np.pi * 3 * pts[:, 1] / extent[1])
    assert np.allclose(sample_periodic(image, pts, extent), truth)
    up = fourier_resample(image, (80, 96))
    assert np.allclose(up[::4, ::4], image)
    assert np.allclose(sample_positions(up, extent, pts), truth, atol=1e-3)
    # the constant 1 integrates to the disk area
    assert np.allclose(column_integrals(np.ones((ny, nx)), extent, pts, 0.8), np.pi * 0.64, rtol=0.03)
    assert np.isclose(blur_periodic(image, extent, 0.6).mean(), image.mean())


def test_scan_distortion_moves_columns_where_the_image_shows_them():
    extent = (20.0, 20.0)
    settings = ScanSettings(pixel_size_A=0.25, drift_A_per_s=50.0, line_jitter_A=0.05, margin_px=0)
    rng = np.random.default_rng(0)
    positions, offsets = scan_positions_A(extent, settings, rng)
    assert positions.shape == (80, 80, 2)
    # a single Gaussian column on a fine periodic grid
    n = 400
    g = np.arange(n) * extent[0] / n
    col = np.array([[7.3, 11.6]])
    image = np.exp(-((g[None, :] - col[0, 0]) ** 2 + (g[:, None] - col[0, 1]) ** 2) / (2 * 0.5**2))
    scanned = sample_positions(image, extent, positions)
    found = apparent_positions_px(col, offsets, settings)[0]
    yy, xx = np.indices(scanned.shape)
    w = scanned / scanned.sum()
    centroid = np.array([(w * xx).sum(), (w * yy).sum()])
    assert np.allclose(found, centroid, atol=0.3)
    nominal = col[0] / settings.pixel_size_A + settings.margin_px
    assert np.linalg.norm(found - nominal) > 0.5  # the drift did move it


def test_dose_and_read_out():
    rng = np.random.default_rng(0)
    image = np.full((200, 200), 0.05)
    counts = expose(image, 1e5, 0.4, rng)
    assert counts.mean() == pytest.approx(0.05 * 1e5 * 0.16, rel=0.01)
    assert counts.var() == pytest.approx(counts.mean(), rel=0.05)
    signal = read_out(counts, gain=2.0, dark_offset=1e5, read_noise=0.0, rng=rng)
    assert np.allclose(signal, 2 * counts + 1e5)
    with pytest.raises(ValueError, match="dose_e_per_A2"):
        expose(image, 0.0, 0.4, rng)
    with pytest.raises(ValueError, match="gain"):
        read_out(counts, 0.0, 0.0, 0.0, rng)

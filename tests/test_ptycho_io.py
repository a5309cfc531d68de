"""The input format (npz / HDF5), its validation, atomic writes, and the detector preparation."""

from __future__ import annotations

import numpy as np
import pytest

from tdmctx.ptycho.detector import (
    estimate_rotation,
    object_pixel_size_A,
    prepare_counts,
    square_detector,
    wavelength_A,
)
from tdmctx.ptycho.io import (
    ReconstructionResult,
    dataset_from_mapping,
    load_dataset,
    load_reconstruction,
    save_arrays,
    save_dataset,
)


def _mapping(rows=3, cols=4, k0=8, k1=6):
    rng = np.random.default_rng(0)
    pos = np.stack(np.meshgrid(np.arange(cols) * 0.5, np.arange(rows) * 0.5, indexing="xy"), -1)
    return {
        "datacube": rng.poisson(5.0, size=(rows, cols, k0, k1)).astype(np.float32),
        "nominal_positions_A": pos,
        "energy_eV": 80e3,
        "semiangle_mrad": 25.0,
        "angular_sampling_mrad": np.array([2.0, 2.5]),
        "defocus_A": 50.0,
        "true_positions_A": pos + 0.01,
    }


@pytest.mark.parametrize("suffix", [".npz", ".h5"])
def test_round_trip_keeps_every_key(tmp_path, suffix):
    data = dataset_from_mapping(_mapping())
    assert data.scan_shape == (3, 4) and data.detector_shape == (8, 6)
    assert data.rotation_deg is None and data.transpose is None and data.defocus_A == 50.0
    path = save_dataset(data, tmp_path / f"scan{suffix}")
    back = load_dataset(path)
    np.testing.assert_array_equal(back.datacube, data.datacube)
    np.testing.assert_array_equal(back.nominal_positions_A, data.nominal_positions_A)
    np.testing.assert_array_equal(back.extras["true_positions_A"], data.extras["true_positions_A"])
    assert back.energy_eV == 80e3 and back.defocus_A == 50.0 and back.electrons_per_count is None
    assert not list(tmp_path.glob(".*tmp"))  # no temporary file left behind


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda m: m.pop("energy_eV"), "missing key 'energy_eV'"),
        (lambda m: m.pop("datacube"), "missing key 'datacube'"),
        (lambda m: m.update(nominal_positions_A=np.zeros((4, 3, 2))), r"expected \(3, 4, 2\)"),
        (lambda m: m.update(datacube=np.zeros((3, 4, 8))), r"\(scan_rows, scan_cols, k0, k1\)"),
        (lambda m: m["datacube"].__setitem__((0, 0, 0, 0), np.nan), "NaN or infinite"),
        (lambda m: m["nominal_positions_A"].__setitem__((0, 0, 0), np.inf), "nominal_positions_A"),
        (lambda m: m.update(angular_sampling_mrad=np.array([1.0, -1.0])), "angular_sampling_mrad"),
        (lambda m: m.update(semiangle_mrad=-3.0), "semiangle_mrad"),
        (lambda m: m.update(energy_eV=np.array([1.0, 2.0])), "energy_eV"),
    ],
)
def test_bad_input_names_the_key(change, message):
    mapping = _mapping()
    change(mapping)
    with pytest.raises(ValueError, match=message):
        dataset_from_mapping(mapping)


def test_load_errors(tmp_path):
    with pytest.raises(FileNotFoundError):
        load_dataset(tmp_path / "absent.npz")
    bad = tmp_path / "bad.npz"
    np.savez(bad, datacube=np.zeros((2, 2, 4, 4)))
    with pytest.raises(ValueError, match="bad.npz: missing key 'nominal_positions_A'"):
        load_dataset(bad)
    with pytest.raises(ValueError, match="suffix"):
        save_arrays({"a": np.zeros(2)}, tmp_path / "out.txt")


def test_failed_write_leaves_previous_file(tmp_path):
    target = tmp_path / "out.npz"
    save_arrays({"a": np.arange(3)}, target)

    class Boom:
        def __array__(self, *args, **kwargs):
            raise RuntimeError("disk full")

    with pytest.raises(RuntimeError, match="disk full"):
        save_arrays({"a": Boom()}, target)
    np.testing.assert_array_equal(np.load(target)["a"], np.arange(3))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.npz"]


def test_reconstruction_round_trip(tmp_path):
    result = ReconstructionResult(
        positions_A=np.zeros((2, 3, 2)), object=np.ones((5, 6), np.complex64), object_pixel_size_A=0.3,
        object_origin_A=np.array([-1.0, -2.0]), object_rotation_deg=0.0, probe=np.ones((4, 4), np.complex64),
        log={"iteration": np.arange(1, 4), "data_error": np.array([0.3, 0.2, 0.1])}, method="gd",
        info={"device": "cpu", "masked_frames": 2},
    )
    back = load_reconstruction(result.save(tmp_path / "rec.npz"))
    assert back.method == "gd" and back.info["device"] == "cpu" and back.info["masked_frames"] == 2
    np.testing.assert_array_equal(back.log["data_error"], [0.3, 0.2, 0.1])
    assert back.object_pixel_size_A == 0.3 and back.object.dtype == np.complex64
    assert list(result.log_frame().columns) == ["iteration", "data_error"]


def test_wavelength_and_pixel_size_match_abtem():
    energy2wavelength = pytest.importorskip("abtem.core.energy").energy2wavelength
    for energy in (60e3, 80e3, 300e3):
        assert wavelength_A(energy) == pytest.approx(energy2wavelength(energy), rel=1e-6)
    assert object_pixel_size_A(80e3, 64, 2.0) == pytest.approx(wavelength_A(80e3) / (64 * 2e-3))
    with pytest.raises(ValueError, match="energy_eV"):
        wavelength_A(-1.0)


def test_counts_policy_clips_negatives_and_masks_empty_frames():
    cube = np.ones((2, 2, 3, 3), np.float32)
    cube[0, 0] = -1.0  # a dark-subtracted frame with no signal
    cube[1, 1, 0, 0] = -0.5
    electrons, mask = prepare_counts(cube, electrons_per_count=2.0)
    assert electrons.min() == 0.0
    assert electrons[0, 1, 0, 0] == 2.0
    np.testing.assert_array_equal(mask, [[False, True], [True, True]])
    with pytest.raises(ValueError, match="electrons_per_count"):
        prepare_counts(cube, electrons_per_count=0.0)


def test_square_detector_keeps_square_data_and_conserves_counts():
    cube = np.random.default_rng(1).random((2, 2, 16, 16))
    same, dk = square_detector(cube, (2.0, 2.0))
    assert same is cube and dk == 2.0
    # A smooth pattern on a 2.0 x 2.5 mrad grid, resampled onto 2.5 mrad: total counts per
    # solid angle conserved, centre kept at n // 2.
    k0 = (np.arange(40) - 20) * 2.0
    k1 = (np.arange(30) - 15) * 2.5
    pattern = np.exp(-(k0[:, None] ** 2 + k1[None, :] ** 2) / (2 * 12.0**2))
    out, dk = square_detector(pattern[None, None], (2.0, 2.5))
    assert dk == 2.5 and out.shape[-2:] == (30, 30)
    assert out.sum() == pytest.approx(pattern.sum(), rel=0.02)
    assert np.unravel_index(out[0, 0].argmax(), out.shape[-2:]) == (15, 15)


def test_rotation_is_found_from_the_centre_of_mass():
    from tdmctx.ptycho.scan import RasterScan
    from tdmctx.ptycho.simulate import simulate_synthetic

    scan = RasterScan((10, 10), step_A=0.4, origin_A=(8.0, 8.0))
    data = simulate_synthetic(scan, n_detector=24, electrons_per_pattern=None, peak_phase_rad=1.0)
    rotation, transpose = estimate_rotation(data.datacube)
    assert not transpose and min(rotation, 360 - rotation) < 3.0
    # The same data with k0 and k1 swapped must be reported as transposed.
    rotation_t, transpose_t = estimate_rotation(data.datacube.swapaxes(-1, -2))
    assert transpose_t and min(rotation_t, 360 - rotation_t) < 3.0
    with pytest.raises(ValueError, match="scan_rows>=3"):
        estimate_rotation(data.datacube[:2])

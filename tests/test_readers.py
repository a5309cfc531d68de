"""Readers for real 4D-STEM formats, tested on small files written in those formats."""

from __future__ import annotations

import h5py
import numpy as np
import pytest

from tdmctx.ptycho.detector import wavelength_A
from tdmctx.ptycho.io import PtychoDataset, save_dataset
from tdmctx.ptycho.readers import EMPAD_FRAME_SHAPE, ReaderError, read_4dstem, read_emd, read_empad, write_empad


@pytest.fixture
def cube():
    rng = np.random.default_rng(0)
    return rng.gamma(2.0, 3.0, size=(3, 5, 128, 128)).astype(np.float32)


def test_empad_round_trip_and_layout(tmp_path, cube):
    xml = write_empad(cube, tmp_path / "scan", step_A=0.4)
    raw_bytes = (tmp_path / "scan.raw").stat().st_size
    assert raw_bytes == 3 * 5 * 130 * 128 * 4
    got = read_empad(xml)
    np.testing.assert_array_equal(got.datacube, cube)
    assert got.step_A == pytest.approx((0.4, 0.4))
    # Frames are in acquisition order: frame k of the file is scan position (k // cols, k % cols).
    frames = np.fromfile(tmp_path / "scan.raw", dtype="<f4").reshape(-1, *EMPAD_FRAME_SHAPE)
    np.testing.assert_array_equal(frames[7, :128], cube[1, 2])
    # Reading through the .raw finds the .xml beside it; memmap gives the same values.
    np.testing.assert_array_equal(read_empad(tmp_path / "scan.raw", memmap=True).datacube, cube)


def test_empad_scan_resolution_tags(tmp_path, cube):
    (tmp_path / "a.raw").write_bytes(b"")
    write_empad(cube, tmp_path / "a")
    (tmp_path / "a.xml").write_text(
        '<root><raw_file filename="C:\\data\\a.raw"/><scan_parameters><scan_resolution_x>5</scan_resolution_x>'
        "<scan_resolution_y>3</scan_resolution_y></scan_parameters></root>"
    )
    assert read_empad(tmp_path / "a.xml").datacube.shape == (3, 5, 128, 128)


def test_empad_truncated_raw(tmp_path, cube):
    xml = write_empad(cube, tmp_path / "scan")
    raw = tmp_path / "scan.raw"
    raw.write_bytes(raw.read_bytes()[:-1000])
    with pytest.raises(ReaderError, match="truncated"):
        read_empad(xml)


def test_empad_xml_disagrees_with_file(tmp_path, cube):
    xml = write_empad(cube, tmp_path / "scan")
    xml.write_text(xml.read_text().replace("<pix_x>5</pix_x>", "<pix_x>6</pix_x>"))
    with pytest.raises(ReaderError, match=r"scan\.raw.*6 scan"):
        read_empad(xml)


def test_empad_missing_pieces(tmp_path, cube):
    xml = write_empad(cube, tmp_path / "scan")
    (tmp_path / "scan.raw").unlink()
    with pytest.raises(FileNotFoundError, match="scan.raw"):
        read_empad(xml)
    xml.write_text("<root><raw_file")
    with pytest.raises(ReaderError, match="not a readable EMPAD"):
        read_empad(xml)
    lonely = tmp_path / "lonely.raw"
    lonely.write_bytes(bytes(130 * 128 * 4))
    with pytest.raises(ReaderError, match="scan_shape"):
        read_empad(lonely)
    assert read_empad(lonely, scan_shape=(1, 1)).datacube.shape == (1, 1, 128, 128)


def test_emd_written_by_py4dstem(tmp_path):
    import py4DSTEM

    rng = np.random.default_rng(1)
    data = rng.random((4, 6, 10, 12)).astype(np.float32)
    dc = py4DSTEM.DataCube(data=data)
    dc.calibration.set_R_pixel_size(0.25)
    dc.calibration.set_R_pixel_units("A")
    dc.calibration.set_Q_pixel_size(0.02)
    dc.calibration.set_Q_pixel_units("A^-1")
    path = tmp_path / "cube.h5"
    py4DSTEM.save(str(path), dc, mode="o")
    got = read_emd(path, energy_eV=80e3)
    np.testing.assert_array_equal(got.datacube, data)
    assert got.step_A == pytest.approx((0.25, 0.25))
    expected_mrad = 0.02 * wavelength_A(80e3) * 1e3
    assert got.angular_sampling_mrad == pytest.approx((expected_mrad, expected_mrad))
    # Without the energy an inverse-Angstrom calibration cannot become mrad.
    assert read_emd(path).angular_sampling_mrad is None
    ds = read_4dstem(path, energy_eV=80e3, semiangle_mrad=21.0)
    assert isinstance(ds, PtychoDataset) and ds.scan_shape == (4, 6)
    np.testing.assert_allclose(ds.nominal_positions_A[2, 3], [0.75, 0.5])


def test_hdf5_without_datacube(tmp_path):
    path = tmp_path / "empty.h5"
    with h5py.File(path, "w") as h5:
        h5.attrs["emd_group_type"] = "file"
        h5.create_dataset("something", data=np.zeros(3))
    with pytest.raises(ReaderError, match="without a 4-D datacube"):
        read_emd(path)
    text = tmp_path / "text.h5"
    text.write_text("not hdf5")
    with pytest.raises(ReaderError, match="not an HDF5 file"):
        read_emd(text)


def test_read_4dstem_names_what_is_missing(tmp_path, cube):
    xml = write_empad(cube, tmp_path / "scan")
    with pytest.raises(ValueError) as info:
        read_4dstem(xml, energy_eV=80e3)
    message = str(info.value)
    assert "semiangle_mrad" in message and "angular_sampling_mrad" in message and "step_A" in message
    ds = read_4dstem(xml, energy_eV=80e3, semiangle_mrad=21.0, angular_sampling_mrad=(0.8, 0.8), step_A=0.3)
    assert ds.datacube.shape == (3, 5, 128, 128)
    np.testing.assert_allclose(ds.nominal_positions_A[1, 4], [1.2, 0.3])
    with pytest.raises(ReaderError, match="unknown 4D-STEM format"):
        read_4dstem(tmp_path / "x.tif")


def test_read_4dstem_own_format(tmp_path, cube):
    rows, cols = cube.shape[:2]
    yy, xx = np.mgrid[:rows, :cols]
    ds = PtychoDataset(
        datacube=cube[..., :20, :24], nominal_positions_A=np.stack([xx * 0.5, yy * 0.5], -1).astype(float),
        energy_eV=80e3, semiangle_mrad=21.0, angular_sampling_mrad=np.array([1.0, 1.1]), defocus_A=50.0,
    )
    for name in ("d.npz", "d.h5"):
        path = save_dataset(ds, tmp_path / name)
        back = read_4dstem(path)
        np.testing.assert_array_equal(back.datacube, ds.datacube)
        assert back.defocus_A == 50.0 and back.angular_sampling_mrad[1] == pytest.approx(1.1)
        assert read_4dstem(path, semiangle_mrad=25.0).semiangle_mrad == 25.0

"""DM reader, Ti-WSe2 loader and column refinement: real files, known answers, bad input."""

from __future__ import annotations

import numpy as np
import pytest

from tdmctx import data
from tdmctx.experimental import (
    DMReadError,
    column_intensities,
    hollow_sites,
    load_ti_wse2,
    read_dm,
    refine_columns,
)
from tdmctx.experimental.columns import check_points


def test_read_dm_returns_data_image_not_thumbnail():
    image = read_dm(data.fetch("experimental/ti-wse2/field2_adf1.dm4"))
    assert image.dims == ("y", "x")
    assert image.shape == (512, 512)
    assert image.dtype == np.uint32
    assert image.attrs["pixel_size_A"] == pytest.approx(0.3988, abs=1e-4)
    assert image.attrs["energy_eV"] == 80000.0
    assert image.attrs["signal"] == "ADF1"
    assert float(image.x[1] - image.x[0]) == pytest.approx(image.attrs["pixel_size_A"])
    assert float(image.min()) > 0


def test_read_dm_truncated(tmp_path):
    raw = data.fetch("experimental/ti-wse2/field2_adf1.dm4").read_bytes()
    broken = tmp_path / "cut.dm4"
    broken.write_bytes(raw[: len(raw) // 3])
    with pytest.raises(DMReadError, match="cut.dm4"):
        read_dm(broken)


def test_read_dm_not_dm(tmp_path):
    fake = tmp_path / "fake.dm4"
    fake.write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(100))
    with pytest.raises(DMReadError, match="not a DigitalMicrograph file"):
        read_dm(fake)
    with pytest.raises(FileNotFoundError):
        read_dm(tmp_path / "absent.dm4")


@pytest.mark.parametrize("field, counts", [(2, (3711, 141, 3851, 5)), (11, (3608, 347, 3934, 21))])
def test_load_ti_wse2(field, counts):
    ds = load_ti_wse2(field)
    assert ds.adf1.dims == ("y", "x") and ds.adf2.shape == ds.adf1.shape == (512, 512)
    assert ds.points_px.dims == ("site", "xy")
    got = tuple(int((ds.label == c).sum()) for c in ("metal", "dopant", "X2", "V1"))
    assert got == counts
    assert ds.attrs["host"] == "WSe2" and ds.attrs["dopant"] == "Ti" and ds.attrs["energy_eV"] == 80000.0
    assert ds.attrs["detector_adf1_mrad"] == "unknown"
    # Contrast reversal, in raw counts: Se2 above W in adf1, below in adf2.
    pts = ds.points_px.values
    for channel, sign in (("adf1", 1), ("adf2", -1)):
        img = ds[channel].values.astype(float)
        values = img[pts[:, 1], pts[:, 0]]
        ratio = np.median(values[ds.label.values == "X2"]) / np.median(values[ds.label.values == "metal"])
        assert sign * (ratio - 1) > 0, (channel, ratio)


def test_load_unknown_field():
    with pytest.raises(ValueError, match="field=3"):
        load_ti_wse2(3)


def test_points_outside_image():
    with pytest.raises(ValueError, match="outside"):
        check_points(np.array([[10, 10], [600, 3]]), (512, 512))
    with pytest.raises(ValueError, match=r"\(N, 2\)"):
        check_points(np.zeros((4, 3)), (512, 512))
    with pytest.raises(ValueError, match="non-finite"):
        check_points(np.array([[np.nan, 1.0]]), (512, 512))


def _lattice_image(centres: np.ndarray, shape=(64, 64), sigma=1.6, amplitude=None):
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    image = np.zeros(shape)
    amplitude = np.ones(len(centres)) if amplitude is None else amplitude
    for (x, y), a in zip(centres, amplitude):
        image += a * np.exp(-((xx - x) ** 2 + (yy - y) ** 2) / (2 * sigma**2))
    return image


def test_refine_columns_recovers_subpixel_centres():
    rng = np.random.default_rng(1)
    grid = np.stack(np.meshgrid(np.arange(8, 60, 8.0), np.arange(8, 60, 8.0)), -1).reshape(-1, 2)
    truth = grid + rng.uniform(-0.45, 0.45, grid.shape)
    image = _lattice_image(truth)
    refined = refine_columns(image, np.rint(truth), search_radius_px=2.0, smooth_sigma_px=0.0)
    err = np.abs(refined - truth)
    assert err.max() < 0.12, err.max()
    # A refinement that returned the rounded input would fail this.
    assert np.abs(np.rint(truth) - truth).max() > 0.3


def test_column_intensities_shift_invariant():
    centre = np.array([[32.0, 32.0]])
    image = _lattice_image(centre, amplitude=np.array([5.0]))
    shifted = _lattice_image(centre + 0.37, amplitude=np.array([5.0]))
    a = column_intensities(image, centre, radius_px=2.0)
    b = column_intensities(shifted, centre + 0.37, radius_px=2.0)
    assert a == pytest.approx(b, rel=1e-2)
    assert column_intensities(image, centre, radius_px=2.0, offset=1.0) == pytest.approx(a - 1.0)


def test_hollow_sites_of_honeycomb():
    # Triangular lattice with three sub-lattices: metal (0), chalcogen (+d), hollow (-d).
    a = 6.0
    a1, a2 = np.array([a, 0.0]), np.array([a / 2, a * np.sqrt(3) / 2])
    d = (a1 + a2) / 3
    # Enough cells to cover the whole image; keep() then crops every sub-lattice to it.
    cells = np.array([i * a1 + j * a2 for i in range(-12, 20) for j in range(-4, 18)]) + [10.0, 10.0]
    metal, chalc, hollow = cells, cells + d, cells - d
    shape = (70, 90)
    keep = lambda p: p[(p[:, 0] >= 0) & (p[:, 0] <= shape[1] - 1) & (p[:, 1] >= 0) & (p[:, 1] <= shape[0] - 1)]
    found = hollow_sites(keep(metal), keep(chalc), shape)
    expected = keep(hollow)
    # Every found site is a true hollow site, and interior hollow sites are all found.
    dist = np.min(np.linalg.norm(found[:, None] - expected[None], axis=-1), axis=1)
    assert dist.max() < 1e-9
    interior = expected[(expected[:, 0] > a) & (expected[:, 0] < shape[1] - a) & (expected[:, 1] > a) & (expected[:, 1] < shape[0] - a)]
    dist_back = np.min(np.linalg.norm(interior[:, None] - found[None], axis=-1), axis=1)
    assert dist_back.max() < 1e-9
    assert len(found) == len(np.unique(np.round(found, 6), axis=0))

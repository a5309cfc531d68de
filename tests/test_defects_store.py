"""Dataset store: atomic per-case writes, resume after interruption, bad paths, xarray view."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest

import tdmctx.defects.store as store_mod
from tdmctx.defects.config import BuildConfig, profile_config
from tdmctx.defects.simulate import MultisliceSettings
from tdmctx.defects.store import StoreError, build_dataset, completed_cases, open_case, open_dataset, planned_cases

TINY = BuildConfig(
    systems=("WSe2:Ti",),
    conditions=("60kV-HAADF", "80kV-HAADF", "80kV-MAADF"),
    images_per_case=2,
    field_repeats=(4, 3),
    calibration_repeats=(2, 1),
    multislice=MultisliceSettings(num_phonon_configs=2),
)


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    path = tmp_path_factory.mktemp("store") / "tiny"
    calls = []
    original = store_mod.simulate_run

    def counting(*args, **kwargs):
        calls.append(args[:2])
        if len(calls) == 2:
            raise KeyboardInterrupt("simulated interruption")
        return original(*args, **kwargs)

    store_mod.simulate_run = counting
    try:
        with pytest.raises(KeyboardInterrupt):
            build_dataset(path, config=TINY, scheduler="synchronous", progress=False)
        partial = completed_cases(path)
        store_mod.simulate_run = counting_after = _counter(original)
        ds = build_dataset(path, config=TINY, scheduler="synchronous", progress=False)
    finally:
        store_mod.simulate_run = original
    return path, ds, partial, counting_after.calls


def _counter(fn):
    def wrapper(*args, **kwargs):
        wrapper.calls.append(args[:2])
        return fn(*args, **kwargs)

    wrapper.calls = []
    return wrapper


def test_interrupted_build_resumes_and_skips_finished_cases(built):
    path, ds, partial, resumed_calls = built
    # The first run (60 kV) finished before the interruption; only the 80 kV run was redone.
    assert partial == ["WSe2-Ti_60kV-HAADF"]
    assert resumed_calls == [("WSe2:Ti", 80e3)]
    assert completed_cases(path) == sorted(planned_cases(TINY))
    again = _counter(store_mod.simulate_run)
    store_mod.simulate_run, original = again, store_mod.simulate_run
    try:
        build_dataset(path, config=TINY, scheduler="synchronous", progress=False)
    finally:
        store_mod.simulate_run = original
    assert again.calls == []


def test_dataset_view_has_images_sites_and_full_context(built):
    _, ds, _, _ = built
    assert ds.intensity.dims == ("image", "y", "x")
    assert set(np.unique(ds.site_label.values)) == {"metal", "dopant", "X2", "V1", "V2"}
    assert int(ds.site_image.max()) == ds.sizes["image"] - 1
    assert set(ds.condition.values) == {"60kV-HAADF", "80kV-HAADF", "80kV-MAADF"}
    assert (ds.host_metal.values == "W").all() and (ds.dopant.values == "Ti").all()
    assert set(ds.energy_eV.values) == {60e3, 80e3}
    assert ds.sizes["case"] == 3 and set(ds.case_engine.values) <= {"fast", "prism"}
    # the two detectors of one energy image the same structures when they use the same engine
    engines = dict(zip(ds.case.values, ds.case_engine.values))
    h = ds.structure.values[ds.condition.values == "80kV-HAADF"]
    m = ds.structure.values[ds.condition.values == "80kV-MAADF"]
    if engines["WSe2-Ti_80kV-HAADF"] == engines["WSe2-Ti_80kV-MAADF"]:
        assert set(h) == set(m)
    else:
        assert not set(h) & set(m)
    assert float(ds.intensity.max()) > 0
    # every labelled site lies inside its image
    sizes = np.array([ds.sizes["x"], ds.sizes["y"]])
    xy = np.stack([ds.site_x_px.values, ds.site_y_px.values], axis=1)
    assert (xy > 0).all() and (xy < sizes).all()


def test_case_keeps_validation_images_and_errors(built):
    path, _, _, _ = built
    case = open_case(path, "WSe2-Ti_80kV-HAADF")
    assert case.validation_reference.shape == case.validation_fast.shape
    assert 0 <= case.attrs["fast_column_rmse"] < 1
    error = case.attrs.get("fast_column_excess", case.attrs["fast_column_rmse"])
    assert case.attrs["engine"] == ("fast" if error <= TINY.fast_tolerance else "prism")
    with pytest.raises(FileNotFoundError, match="not finished"):
        open_case(path, "WSe2-Ti_200kV-HAADF")


def test_half_written_case_is_invisible_and_cleaned(built, tmp_path):
    path, _, _, _ = built
    copy = tmp_path / "copy"
    shutil.copytree(path, copy)
    shutil.rmtree(copy / "cases" / "WSe2-Ti_60kV-HAADF")
    original = store_mod._write_zarr

    def crash(target, dataset):
        original(target, dataset)
        raise KeyboardInterrupt("killed between writing and renaming")

    store_mod._write_zarr = crash
    try:
        with pytest.raises(KeyboardInterrupt):
            build_dataset(copy, config=TINY, scheduler="synchronous", progress=False)
    finally:
        store_mod._write_zarr = original
    assert any(p.name.startswith(".tmp-") for p in (copy / "cases").iterdir())
    assert "WSe2-Ti_60kV-HAADF" not in completed_cases(copy)
    assert "WSe2-Ti_60kV-HAADF" not in set(open_dataset(copy).case_id.values)
    build_dataset(copy, config=TINY, scheduler="synchronous", progress=False)
    assert completed_cases(copy) == sorted(planned_cases(TINY))
    assert not any(p.name.startswith(".tmp-") for p in (copy / "cases").iterdir())


def test_store_path_holding_something_else_is_refused(tmp_path, built):
    path, _, _, _ = built
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    with pytest.raises(StoreError, match="holds other files"):
        build_dataset(foreign, config=TINY, scheduler="synchronous")
    assert (foreign / "notes.txt").read_text() == "mine"
    a_file = tmp_path / "file.zarr"
    a_file.write_text("x")
    with pytest.raises(StoreError, match="is a file"):
        build_dataset(a_file, config=TINY, scheduler="synchronous")
    with pytest.raises(StoreError, match="other settings"):
        build_dataset(path, config=TINY.with_overrides(images_per_case=3), scheduler="synchronous")
    with pytest.raises(FileNotFoundError, match="not a tdmctx dataset store"):
        open_dataset(foreign)


def test_config_round_trip_and_profiles():
    assert BuildConfig.from_json(TINY.to_json()) == TINY
    quick = profile_config("quick")
    assert len(planned_cases(quick)) == 6 and quick.systems == ("WSe2:Ti",)
    assert len(planned_cases(profile_config("paper"))) == 576
    with pytest.raises(ValueError, match="profile='huge'"):
        profile_config("huge")
    with pytest.raises(ValueError, match="unknown BuildConfig field"):
        profile_config("quick", imgs=3)
    with pytest.raises(ValueError, match="dopant='Mo'"):
        BuildConfig(systems=("MoS2:Mo",))


@pytest.mark.slow
def test_killed_dask_build_resumes(tmp_path):
    """A real LocalCluster build killed with SIGKILL mid-way, then finished by a rerun."""
    path = tmp_path / "killed"
    script = textwrap.dedent(
        f"""
        from tdmctx.defects.store import build_dataset
        from tdmctx.defects.config import BuildConfig
        cfg = BuildConfig.from_json({TINY.to_json()!r})
        build_dataset({str(path)!r}, config=cfg, n_workers=1, progress=False)
        """
    )
    proc = subprocess.Popen([sys.executable, "-c", script], start_new_session=True)
    deadline = time.time() + 240
    while time.time() < deadline and not completed_cases(path):
        time.sleep(0.5)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    first = completed_cases(path)
    assert 0 < len(first) < 3
    ds = build_dataset(path, config=TINY, n_workers=2, progress=False)
    assert completed_cases(path) == sorted(planned_cases(TINY))
    assert ds.sizes["case"] == 3


def test_dataset_cli_reports_a_store(built, capsys):
    import argparse

    from tdmctx.defects.cli import register

    parser = argparse.ArgumentParser()
    register(parser.add_subparsers(dest="command", required=True))
    path, _, _, _ = built
    args = parser.parse_args(["dataset", "info", str(path)])
    assert args.handler(args) == 0
    out = capsys.readouterr().out
    assert "3 of 3 cases finished" in out and "WSe2-Ti_80kV-MAADF" in out
    args = parser.parse_args(["dataset", "export", str(path), str(path.parent / "tiny-copy"), "--float16"])
    assert args.handler(args) == 0
    assert "tiny-copy.npz" in capsys.readouterr().out
    assert open_dataset(path.parent / "tiny-copy.npz").sizes == open_dataset(path).sizes
    with pytest.raises(SystemExit):
        parser.parse_args(["dataset", "build", "--profile", "huge"])


def test_portable_export_round_trips_exactly_and_keeps_the_store_key(built, tmp_path, monkeypatch):
    import tdmctx.defects.portable as portable
    from tdmctx.defects.ablation import store_key
    from tdmctx.defects.portable import export_dataset

    monkeypatch.setattr(portable, "_SHUFFLE_MIN_BYTES", 0)  # the tiny store's images take the shuffled path too
    path, _, _, _ = built
    original = open_dataset(path).load()
    file = export_dataset(original, tmp_path / "copy")  # suffix added
    assert file.name == "copy.npz" and file.is_file()
    back = open_dataset(file)
    assert set(back.variables) == set(original.variables)
    for name, var in original.variables.items():
        assert back[name].dims == var.dims, name
        np.testing.assert_array_equal(back[name].values, var.values, err_msg=name)  # NaN padding included
    assert back.attrs["pixel_size_A"] == original.attrs["pixel_size_A"]
    # The profile and build seed travel too: a model card written from the copy names them.
    assert original.attrs["profile"] and back.attrs["profile"] == original.attrs["profile"]
    assert back.attrs["build_seed"] == original.attrs["build_seed"]
    # Models trained on the copy land in the same cache folder as those of the original.
    assert store_key(back) == store_key(original)


def test_portable_float16_export_is_within_half_precision_and_reads_back_as_float32(built, tmp_path, monkeypatch):
    import tdmctx.defects.portable as portable
    from tdmctx.defects.portable import export_dataset

    monkeypatch.setattr(portable, "_SHUFFLE_MIN_BYTES", 0)
    path, _, _, _ = built
    original = open_dataset(path).load()
    exact = export_dataset(original, tmp_path / "exact.npz")
    half = export_dataset(original, tmp_path / "half.npz", float_dtype="float16")
    assert half.stat().st_size < 0.8 * exact.stat().st_size
    back = open_dataset(half)
    ref, got = original["intensity"].values, back["intensity"].values
    assert got.dtype == ref.dtype
    np.testing.assert_array_equal(np.isnan(got), np.isnan(ref))  # padding survives
    scale = np.nanmax(np.abs(ref))
    err = np.nanmax(np.abs(got - ref))
    assert 0 < err <= 2.0**-11 * scale  # lossy, but only by float16 rounding of the scaled values
    np.testing.assert_array_equal(back["site_label"].values, original["site_label"].values)  # non-floats exact
    with pytest.raises(ValueError, match="float_dtype='int8' is not supported"):
        export_dataset(original, tmp_path / "bad.npz", float_dtype="int8")
    broken = original.copy(deep=True)
    broken["intensity"].values[0, 0, 0] = np.inf
    with pytest.raises(ValueError, match="'intensity'.*inf"):
        export_dataset(broken, tmp_path / "inf.npz", float_dtype="float16")


def test_portable_rejects_truncated_foreign_and_missing_files(built, tmp_path):
    from tdmctx.defects.portable import export_dataset, open_exported

    path, _, _, _ = built
    file = export_dataset(open_dataset(path), tmp_path / "ok.npz")
    truncated = tmp_path / "cut.npz"
    truncated.write_bytes(file.read_bytes()[: file.stat().st_size // 2])
    with pytest.raises(ValueError, match="unreadable or truncated"):
        open_exported(truncated)
    foreign = tmp_path / "foreign.npz"
    np.savez(foreign, a=np.zeros(3))
    with pytest.raises(ValueError, match="without tdmctx metadata"):
        open_exported(foreign)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        open_dataset(tmp_path / "missing.npz")
    assert not list(tmp_path.glob(".*.tmp"))  # no partial file left by the exports


def test_portable_shuffle_is_lossless_for_large_float_arrays():
    from tdmctx.defects.portable import _shuffled, _unshuffled

    rng = np.random.default_rng(0)
    for dtype in (np.float32, np.float64):
        values = rng.normal(size=(3, 5, 7)).astype(dtype)
        values[0, 0, 0] = np.nan
        back = _unshuffled(_shuffled(values), values.dtype, values.shape)
        np.testing.assert_array_equal(back, values)
        assert back.dtype == dtype

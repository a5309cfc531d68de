"""``tdmctx ptycho reconstruct`` end to end on a small simulated file, both methods."""

from __future__ import annotations

import argparse

import numpy as np
import pytest

from tdmctx.ptycho.cli import main, register
from tdmctx.ptycho.io import load_reconstruction, save_dataset
from tdmctx.ptycho.scan import RasterScan, mixed_error
from tdmctx.ptycho.simulate import simulate_synthetic


@pytest.fixture(scope="module")
def input_file(tmp_path_factory):
    scan = RasterScan((8, 8), step_A=0.5, origin_A=(8.0, 8.0))
    data = simulate_synthetic(scan, mixed_error(0.3, seed=0).apply(scan), n_detector=24,
                              electrons_per_pattern=2e4, peak_phase_rad=1.0)
    return save_dataset(data, tmp_path_factory.mktemp("in") / "scan.npz")


@pytest.mark.parametrize("method, extra", [("gd", ["--constraint", "affine", "--constraint", "line"]),
                                           ("py4dstem", []), ("gd", [])])
def test_reconstruct_writes_the_documented_keys(input_file, tmp_path, capsys, method, extra):
    out = tmp_path / "rec.npz"
    code = main(["ptycho", "reconstruct", str(input_file), "--method", method, "--iterations", "4",
                 "--position-start", "2", "--device", "cpu", "--output", str(out), "--quiet", *extra])
    assert code == 0
    assert "RMS position error" in capsys.readouterr().out
    result = load_reconstruction(out)
    assert result.method == method
    assert result.positions_A.shape == (8, 8, 2)
    assert np.iscomplexobj(result.object) and np.iscomplexobj(result.probe)
    assert result.object_pixel_size_A > 0
    assert len(result.log["data_error"]) == 4 and np.all(np.isfinite(result.log["rms_position_error_A"]))
    with np.load(out) as raw:
        assert {"positions_A", "object", "object_pixel_size_A", "probe", "log_data_error"} <= set(raw.files)


def test_constrained_steps_stay_in_the_constraint(input_file, tmp_path):
    out = tmp_path / "affine.npz"
    main(["ptycho", "reconstruct", str(input_file), "--constraint", "affine", "--iterations", "4",
          "--position-start", "1", "--device", "cpu", "--output", str(out), "--quiet"])
    history = load_reconstruction(out).position_history_A
    from tdmctx.ptycho.constraints import fit_affine

    change = (history[-1] - history[0]).reshape(-1, 2)
    matrix, shift = fit_affine(change, history[0].reshape(-1, 2))
    fitted = (history[0].reshape(-1, 2) - history[0].reshape(-1, 2).mean(0)) @ matrix.T + shift
    assert np.abs(change).max() > 1e-4
    np.testing.assert_allclose(change, fitted, atol=1e-6)  # every applied step was affine


def test_errors_are_reported(input_file, tmp_path):
    with pytest.raises(SystemExit, match="not known"):
        main(["ptycho", "reconstruct", str(input_file), "--constraint", "wobble", "--output", str(tmp_path / "a.npz"),
              "--quiet"])
    with pytest.raises(SystemExit, match="only --constraint affine"):
        main(["ptycho", "reconstruct", str(input_file), "--method", "py4dstem", "--constraint", "line",
              "--output", str(tmp_path / "b.npz"), "--quiet"])
    bad = tmp_path / "bad.npz"
    np.savez(bad, datacube=np.zeros((2, 2, 4, 4)))
    with pytest.raises(SystemExit, match="nominal_positions_A"):
        main(["ptycho", "reconstruct", str(bad), "--output", str(tmp_path / "c.npz"), "--quiet"])
    assert not (tmp_path / "c.npz").exists()


def test_register_adds_the_subcommand():
    parser = argparse.ArgumentParser()
    register(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["ptycho", "reconstruct", "in.npz", "--output", "o.npz", "--iterations", "7"])
    assert args.iterations == 7 and args.method == "gd" and callable(args.handler)


def test_icgd_method_end_to_end_and_resumes(input_file, tmp_path, capsys):
    out = tmp_path / "icgd.npz"
    checkpoint = tmp_path / "icgd.pt"
    args = ["ptycho", "reconstruct", str(input_file), "--method", "icgd", "--iterations", "12", "--device", "cpu",
            "--output", str(out), "--checkpoint", str(checkpoint), "--quiet"]
    assert main(args) == 0
    result = load_reconstruction(out)
    assert result.method == "icgd" and result.positions_A.shape == (8, 8, 2)
    import json

    stages = json.loads(str(result.info["icgd_stages"]))
    assert [s["stage"] for s in stages] == [f"{name} ({cycle})" for cycle in (1, 2)
                                            for name in ("warm-up", "affine", "line", "drift", "jitter")]
    assert len(result.log["data_error"]) == sum(s["passes"] for s in stages)
    # A second call finds the finished checkpoint and only rewrites the output.
    assert main(args) == 0
    np.testing.assert_allclose(load_reconstruction(out).positions_A, result.positions_A)
    with pytest.raises(SystemExit, match="drop --constraint"):
        main([*args[:-3], "--constraint", "affine", "--output", str(tmp_path / "x.npz"), "--quiet"])


def test_reads_detector_files_with_metadata_flags(input_file, tmp_path):
    from tdmctx.ptycho.io import load_dataset
    from tdmctx.ptycho.readers import write_empad

    data = load_dataset(input_file)
    cube = np.zeros((8, 8, 128, 128), dtype=np.float32)
    cube[:, :, 52:76, 52:76] = data.datacube  # the 24 x 24 patterns in the middle of an EMPAD frame
    xml = write_empad(cube, tmp_path / "scan", step_A=0.5)
    out = tmp_path / "empad.npz"
    with pytest.raises(SystemExit, match="semiangle_mrad"):
        main(["ptycho", "reconstruct", str(xml), "--energy-kV", "80", "--output", str(out), "--quiet"])
    code = main(["ptycho", "reconstruct", str(xml), "--energy-kV", "80", "--semiangle-mrad", "25",
                 "--sampling-mrad", str(float(data.angular_sampling_mrad[0])), "--iterations", "2",
                 "--no-positions", "--device", "cpu", "--output", str(out), "--quiet"])
    assert code == 0 and load_reconstruction(out).positions_A.shape == (8, 8, 2)


def test_raw_detector_data_are_prepared(input_file, tmp_path, capsys):
    from tdmctx.ptycho.io import load_dataset
    from tdmctx.ptycho.readers import write_empad

    data = load_dataset(input_file)
    dark = np.full((128, 128), 40.0, dtype=np.float32)
    cube = np.zeros((8, 8, 128, 128), dtype=np.float32) + dark
    cube[:, :, 50:74, 53:77] += 2.0 * data.datacube  # off-centre patterns, 2 counts per electron
    xml = write_empad(cube, tmp_path / "raw", step_A=0.5)
    np.save(tmp_path / "dark.npy", dark)
    out = tmp_path / "prepared.npz"
    code = main(["ptycho", "reconstruct", str(xml), "--energy-kV", "80", "--semiangle-mrad", "25",
                 "--sampling-mrad", str(float(data.angular_sampling_mrad[0])), "--defocus-A", "50",
                 "--dark", str(tmp_path / "dark.npy"), "--electrons-per-count", "0.5", "--bin", "2",
                 "--iterations", "2", "--no-positions", "--device", "cpu",
                 "--output", str(out)])
    printed = capsys.readouterr().out
    assert code == 0
    # The dark offset and gain are undone: the electrons per pattern are the simulation's.
    reported = float(printed.split("electrons per pattern: ")[1].split()[0])
    assert reported == pytest.approx(float(data.datacube.sum((-2, -1)).mean()), rel=0.01)
    assert "shifted by (2, -1) px" in printed and "defocus 50.0 A" in printed
    with pytest.raises(SystemExit, match="has shape"):
        np.save(tmp_path / "bad.npy", np.zeros((4, 4)))
        main(["ptycho", "reconstruct", str(xml), "--energy-kV", "80", "--semiangle-mrad", "25", "--sampling-mrad",
              "1.0", "--dark", str(tmp_path / "bad.npy"), "--output", str(out), "--quiet"])

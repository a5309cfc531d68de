"""The torch ptychography engine: position gradient, convergence, the hook, noise stability."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tdmctx.ptycho.engine import GDPtychography, initial_probe, reconstruct
from tdmctx.ptycho.metrics import rms_error_A
from tdmctx.ptycho.scan import JitterError, LineJumps, RasterScan
from tdmctx.ptycho.simulate import simulate_synthetic


@pytest.fixture(scope="module")
def small_data():
    scan = RasterScan((6, 6), step_A=0.6, origin_A=(8.0, 8.0))
    true = (LineJumps(rms_step=0.3, seed=1) + JitterError(0.1, seed=2)).apply(scan)
    data = simulate_synthetic(scan, true, n_detector=24, electrons_per_pattern=None, peak_phase_rad=1.0)
    return scan, true, data


def test_position_gradient_matches_finite_differences(small_data):
    scan, true, data = small_data
    engine = GDPtychography(data, initial_positions_A=true, precision="double", batch_size=16, device="cpu")
    engine.run(4, refine_positions=False, progress=False)
    probe_at = true + np.random.default_rng(0).normal(scale=0.05, size=true.shape)
    loss, grad = engine.evaluate(probe_at, exact="manual")
    loss_auto, grad_auto = engine.evaluate(probe_at, exact="autograd")
    assert np.abs(grad).max() > 0
    assert loss == pytest.approx(loss_auto, rel=1e-12)
    np.testing.assert_allclose(grad, grad_auto, rtol=1e-8, atol=1e-10 * np.abs(grad).max())
    h = 1e-5
    for r, c, axis in [(0, 0, 0), (2, 3, 1), (5, 5, 0), (3, 1, 1), (4, 2, 0)]:
        plus, minus = probe_at.copy(), probe_at.copy()
        plus[r, c, axis] += h
        minus[r, c, axis] -= h
        fd = (engine.evaluate(plus)[0] - engine.evaluate(minus)[0]) / (2 * h)
        assert grad[r, c, axis] == pytest.approx(fd, rel=1e-5, abs=1e-6 * abs(loss))


@pytest.mark.parametrize("loss", ["poisson", "amplitude"])
def test_manual_adjoint_matches_autograd_for_object_and_probe(small_data, loss):
    _, true, data = small_data
    engine = GDPtychography(data, initial_positions_A=true, precision="double", loss=loss, probe_modes=2,
                            device="cpu")
    engine.run(3, refine_positions=False, progress=False)
    batch = torch.arange(0, 20)
    args = (engine.object, engine.probe, engine.positions_px[batch] + 0.3, engine.target[batch], engine.weight[batch])
    manual = engine.model.gradients(*args, exact="manual")
    auto = engine.model.gradients(*args, exact="autograd")
    for a, b in [(manual.object, auto.object), (manual.probe, auto.probe), (manual.positions, auto.positions)]:
        scale = b.abs().max()
        assert scale > 0
        torch.testing.assert_close(a, b, rtol=0, atol=1e-9 * scale)


def test_position_gradient_is_rotation_covariant(small_data):
    """With a detector rotated by theta the real-space gradient must rotate with the frame."""
    scan, true, data = small_data
    from dataclasses import replace

    # Rotation 90 deg: k0 points along +y and k1 along -x, so new[i, j] = old[-j, i] about the
    # pattern centre at n // 2 (np.rot90 would pivot about (n - 1) / 2, half a pixel off).
    n = data.datacube.shape[-1]
    negate = (n - np.arange(n)) % n
    rotated = replace(data, rotation_deg=90.0,
                      datacube=np.ascontiguousarray(data.datacube[:, :, negate, :].swapaxes(-1, -2)))
    base = GDPtychography(data, initial_positions_A=true, precision="double", device="cpu")
    turned = GDPtychography(rotated, initial_positions_A=true, precision="double", device="cpu")
    for engine in (base, turned):
        engine.run(6, refine_positions=False, progress=False)
    at = true + 0.05
    _, g0 = base.evaluate(at)
    _, g1 = turned.evaluate(at)
    # Same physics, so the same real-space gradient up to the object's reconstruction noise.
    cos = np.sum(g0 * g1) / np.sqrt(np.sum(g0**2) * np.sum(g1**2))
    assert cos > 0.9


def test_reconstruction_lowers_data_and_position_error(small_data):
    scan, true, data = small_data
    result = reconstruct(data, iterations=25, position_start=5, true_positions_A=true, seed=0,
                         progress=False, device="cpu")
    log = result.log
    assert log["data_error"][-1] < 0.5 * log["data_error"][0]
    start = rms_error_A(scan.positions_A, true)
    assert log["rms_position_error_A"][-1] < 0.5 * start
    assert result.positions_A.shape == (6, 6, 2)
    assert result.object.ndim == 2 and np.iscomplexobj(result.object)
    assert result.position_history_A.shape == (26, 6, 6, 2)
    assert np.all(np.isfinite(log["crb_rms_A"][5:]))


def test_hook_receives_the_whole_step_and_is_applied(small_data):
    scan, true, data = small_data
    calls = []

    def freeze_but_shift(delta_A, positions_A, scan_shape):
        calls.append((delta_A.shape, positions_A.shape, scan_shape, float(np.abs(delta_A).max())))
        return np.tile([0.01, -0.02], (len(delta_A), 1))

    engine = GDPtychography(data, device="cpu")
    before = engine.positions_A
    engine.run(3, position_step=freeze_but_shift, progress=False)
    assert len(calls) == 3  # once per full pass
    assert calls[0][:3] == ((36, 2), (36, 2), (6, 6))
    assert calls[0][3] > 0  # a real (non-zero) step was proposed
    np.testing.assert_allclose(engine.positions_A - before, np.broadcast_to([0.03, -0.06], before.shape), atol=1e-9)

    with pytest.raises(ValueError, match="position_step hook"):
        engine.run(1, position_step=lambda d, p, s: d[:5], progress=False)


def test_state_dict_resume_repeats_an_uninterrupted_run(small_data):
    _, true, data = small_data
    straight = GDPtychography(data, seed=4, device="cpu")
    straight.run(3, refine_positions=False, progress=False)
    straight.run(6, fisher_every=4, progress=False)
    first = GDPtychography(data, seed=4, device="cpu")
    first.run(3, refine_positions=False, progress=False)
    first.run(3, fisher_every=4, progress=False)  # stops while a Fisher matrix is cached
    resumed = GDPtychography(data, seed=4, device="cpu")
    resumed.load_state_dict(first.state_dict())
    resumed.run(3, fisher_every=4, progress=False)
    np.testing.assert_array_equal(resumed.positions_A, straight.positions_A)
    np.testing.assert_array_equal(resumed.result().object, straight.result().object)
    with pytest.raises(ValueError, match="missing"):
        resumed.load_state_dict({"object": None})


def test_truth_is_stable_under_shot_noise():
    """Issue 5: started from the truth at ~2.5e4 electrons per pattern, RMS stays < 5 % of the step."""
    scan = RasterScan((12, 12), step_A=0.5, origin_A=(8.0, 8.0))
    true = scan.positions_A
    data = simulate_synthetic(scan, true, n_detector=32, electrons_per_pattern=2.5e4, peak_phase_rad=1.5, seed=3)
    engine = GDPtychography(data, initial_positions_A=true, true_positions_A=true, seed=0, device="cpu")
    engine.run(10, refine_positions=False, progress=False)
    engine.run(50, refine_positions=True, progress=False)
    rms = np.asarray(engine.log["rms_position_error_A"][10:])
    assert rms.max() < 0.05 * scan.step_A, rms.max()
    # ... and the floor is of the order of the Cramer-Rao bound, not far below or above it.
    crb = engine.log["crb_rms_A"][-1]
    assert 0.3 * crb < rms[-1] < 3 * crb


def test_initial_probe_matches_abtem_convention():
    abtem = pytest.importorskip("abtem")
    n, dx = 64, 0.2
    ours = initial_probe(n, dx, 80e3, 25.0, defocus_A=60.0)[0]
    theirs = abtem.Probe(energy=80e3, semiangle_cutoff=25.0, defocus=60.0, gpts=n, sampling=dx)
    wave = theirs.build(scan=(n // 2 * dx, n // 2 * dx), lazy=False).array
    wave = np.swapaxes(np.asarray(wave), -1, -2)  # abTEM (x, y) -> (y, x)
    overlap = np.abs(np.vdot(ours, wave)) / (np.linalg.norm(ours) * np.linalg.norm(wave))
    assert overlap > 0.999
    flipped = initial_probe(n, dx, 80e3, 25.0, defocus_A=-60.0)[0]
    assert np.abs(np.vdot(flipped, wave)) / (np.linalg.norm(flipped) * np.linalg.norm(wave)) < 0.5


def test_multislice_and_mixed_state_run(small_data):
    scan, true, data = small_data
    result = reconstruct(data, iterations=4, position_start=2, slices=2, slice_thickness_A=2.0, probe_modes=2,
                         progress=False, device="cpu")
    assert result.object.shape[0] == 2 and result.probe.shape[0] == 2
    assert result.log["data_error"][-1] < result.log["data_error"][0]


def test_bad_arguments_are_named(small_data):
    _, _, data = small_data
    with pytest.raises(ValueError, match="loss"):
        GDPtychography(data, loss="gaussian")
    with pytest.raises(ValueError, match="batch_size"):
        GDPtychography(data, batch_size=0)
    with pytest.raises(ValueError, match="slice_thickness_A"):
        GDPtychography(data, slices=3)
    with pytest.raises(ValueError, match="initial_positions_A"):
        GDPtychography(data, initial_positions_A=np.zeros((2, 2, 2)))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_cpu(small_data):
    _, true, data = small_data
    out = [reconstruct(data, iterations=6, position_start=3, seed=1, progress=False, device=d).positions_A
           for d in ("cpu", "cuda")]
    np.testing.assert_allclose(out[0], out[1], atol=2e-3)

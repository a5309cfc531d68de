"""py4DSTEM 0.14.16 single-slice ptychography with its own position correction, behind our interface.

The wrapper owns every convention mismatch, so the caller sees the same inputs and outputs
as :func:`tdmctx.ptycho.engine.reconstruct`:

* axes: our data are ``(scan_rows, scan_cols, k0, k1)`` with k0 parallel to x at rotation 0;
  py4DSTEM indexes positions and object as (row, col) = (y, x), and needs
  ``force_com_rotation=0, force_com_transpose=True`` for that mapping (with the transpose,
  py4DSTEM flips the positions, so its internal object is (x, y) and is transposed back here);
* a detector rotation other than 0 is handled as in our engine: positions are rotated into
  the detector frame before py4DSTEM sees them and rotated back after;
* py4DSTEM's ``DataCube`` has one reciprocal pixel size: non-square detectors are resampled
  (:func:`tdmctx.ptycho.detector.square_detector`), recorded in ``info["detector_resampled"]``;
* the pattern centre is pinned at pixel ``n // 2`` (``force_com_shifts``), so no sub-pixel
  re-centring interpolates the counts;
* positions are mapped back to our frame through the offset py4DSTEM adds (padding, centring).

The reconstruction is run one pass at a time, so that the log (data error, RMS position error
when the truth is given) has one row per pass and both the best and the final iteration are
reported (py4DSTEM's free position correction often gets worse after 10-20 passes).
"""

from __future__ import annotations

import contextlib
import io
import time

import numpy as np

from tdmctx.ptycho.detector import estimate_rotation, prepare_counts, square_detector
from tdmctx.ptycho.io import PtychoDataset, ReconstructionResult

__all__ = ["reconstruct_py4dstem"]


def _rotation(deg: float) -> np.ndarray:
    t = np.deg2rad(deg)
    return np.array([[np.cos(t), -np.sin(t)], [np.sin(t), np.cos(t)]])


def reconstruct_py4dstem(
    dataset: PtychoDataset,
    *,
    iterations: int = 30,
    position_start: int = 5,
    refine_positions: bool = True,
    initial_positions_A: np.ndarray | None = None,
    true_positions_A: np.ndarray | None = None,
    batch_size: int = 64,
    step_size: float = 0.5,
    positions_step_size: float = 0.5,
    max_position_update_distance_A: float | None = None,
    max_position_total_distance_A: float | None = None,
    global_affine_transformation: bool = False,
    transpose_override: bool | None = None,
    seed: int = 0,
    device: str | None = None,
    progress: bool = True,
) -> ReconstructionResult:
    """Reconstruct with py4DSTEM's ``SingleslicePtychography`` (gradient descent).

    Parameters
    ----------
    dataset
        Validated input; the same counts policy as our engine (clip negatives, mask empty frames).
    iterations, position_start, refine_positions
        Passes in total; positions are refined from pass ``position_start`` on.
    initial_positions_A, true_positions_A
        Start positions (nominal by default) and optional truth for the log.
    batch_size, step_size, positions_step_size
        py4DSTEM's ``max_batch_size``, object/probe ``step_size`` and ``positions_step_size``.
    max_position_update_distance_A, max_position_total_distance_A
        py4DSTEM's limits on the per-pass and the total position change, Angstrom.
    global_affine_transformation
        Let py4DSTEM project the position update onto a global affine transform.
    transpose_override
        Force py4DSTEM's ``force_com_transpose`` (for testing the axis mapping); by default the
        correct value for our convention is used.
    seed
        Seed of py4DSTEM's minibatch shuffling.
    device
        ``"cpu"`` or ``"gpu"`` (py4DSTEM's names; ``"cuda"`` is accepted for ``"gpu"``). ``None``:
        the GPU when cupy sees one, else the CPU.
    progress
        Show a tqdm bar over passes.

    Returns
    -------
    ReconstructionResult
        ``method="py4dstem"``; ``info`` holds ``best_iteration`` and ``best_rms_position_error_A``
        (when the truth is given), the settings, and the detector resampling.
    """
    import py4DSTEM
    from tqdm.auto import tqdm

    if iterations < 1:
        raise ValueError(f"iterations={iterations!r} must be >= 1")
    py_device = _py4dstem_device(device)
    electrons, frame_mask = prepare_counts(dataset.datacube, dataset.electrons_per_count)
    rotation_deg, transpose = dataset.rotation_deg, dataset.transpose
    if rotation_deg is None:
        rotation_deg, found = estimate_rotation(electrons)
        transpose = found if transpose is None else transpose
    if transpose:
        electrons = electrons.swapaxes(-1, -2)
        sampling = dataset.angular_sampling_mrad[::-1]
    else:
        sampling = dataset.angular_sampling_mrad
    electrons, dk_mrad = square_detector(electrons, sampling)
    n = electrons.shape[-1]
    rot = _rotation(rotation_deg)
    start = dataset.nominal_positions_A if initial_positions_A is None else np.asarray(initial_positions_A)
    frame_A = start.reshape(-1, 2) @ rot  # R(-theta) p, as row vectors

    cube = py4DSTEM.DataCube(data=np.ascontiguousarray(electrons, dtype=np.float32))
    cube.calibration.set_Q_pixel_size(dk_mrad)
    cube.calibration.set_Q_pixel_units("mrad")
    cube.calibration.set_R_pixel_size(float(dataset.extras.get("step_A", 1.0)))
    cube.calibration.set_R_pixel_units("A")
    kwargs = {} if dataset.defocus_A is None else {"defocus": float(dataset.defocus_A)}
    quiet = contextlib.redirect_stdout(io.StringIO())
    with quiet:
        ptycho = py4DSTEM.process.phase.SingleslicePtychography(
            energy=dataset.energy_eV,
            datacube=cube,
            semiangle_cutoff=dataset.semiangle_mrad,
            initial_scan_positions=frame_A[:, ::-1].copy(),  # py4DSTEM wants (row, col) = (y, x)
            positions_mask=frame_mask if not frame_mask.all() else None,
            verbose=False,
            device=py_device,
            **kwargs,
        ).preprocess(
            force_com_rotation=0.0,
            force_com_transpose=True if transpose_override is None else transpose_override,
            force_com_shifts=(np.full(dataset.scan_shape, n // 2, float), np.full(dataset.scan_shape, n // 2, float)),
            plot_center_of_mass=False,
            plot_rotation=False,
            plot_probe_overlaps=False,
            fit_function="plane",
        )
    keep = frame_mask.reshape(-1)
    # With the transpose py4DSTEM flips our (y, x) positions back to (x, y) internally.
    flipped = bool(ptycho._rotation_best_transpose)

    def internal_order(points: np.ndarray) -> np.ndarray:
        """Frame (x, y) -> py4DSTEM's internal order; its own inverse."""
        return points if flipped else points[:, ::-1]

    # py4DSTEM shifts all positions by one offset (padding, centring in the field of view).
    offset = np.mean(np.asarray(ptycho.positions, dtype=np.float64) - internal_order(frame_A[keep]), axis=0)

    def positions_now() -> np.ndarray:
        frame = internal_order(np.asarray(ptycho.positions, dtype=np.float64) - offset)
        full = frame_A.copy()
        full[keep] = frame
        return (full @ rot.T).reshape(*dataset.scan_shape, 2)

    from tdmctx.ptycho.metrics import rms_error_A

    log: dict[str, list[float]] = {"iteration": [], "data_error": [], "time_s": []}
    if true_positions_A is not None:
        log["rms_position_error_A"] = []
    history = [positions_now()]
    elapsed = 0.0
    np.random.seed(seed)  # py4DSTEM shuffles minibatches with the global numpy generator
    for it in tqdm(range(iterations), desc="py4DSTEM ptychography", disable=not progress, leave=False):
        free = refine_positions and it >= position_start
        t0 = time.perf_counter()
        with quiet:
            ptycho.reconstruct(
                num_iter=1,
                reconstruction_method="gradient-descent",
                max_batch_size=batch_size,
                step_size=step_size,
                fix_positions=not free,
                positions_step_size=positions_step_size,
                max_position_update_distance=max_position_update_distance_A,
                max_position_total_distance=max_position_total_distance_A,
                global_affine_transformation=global_affine_transformation,
                progress_bar=False,
                reset=it == 0,
            )
        elapsed += time.perf_counter() - t0
        history.append(positions_now())
        log["iteration"].append(it + 1)
        log["data_error"].append(float(ptycho.error))
        log["time_s"].append(elapsed)
        if true_positions_A is not None:
            log["rms_position_error_A"].append(rms_error_A(history[-1], true_positions_A))

    obj = np.asarray(ptycho.object)
    probe = np.asarray(ptycho.probe_centered)
    if flipped:
        # Internal arrays are (x, y); ours are (y, x).
        obj, probe = obj.T, probe.T
    sampling_A = float(np.mean(ptycho.sampling))
    # Internal object pixel p sits at internal position p * sampling, i.e. at frame position
    # internal_order(p * sampling - offset): pixel (0, 0) is at -offset.
    origin = internal_order(-offset[None, :])[0]
    info: dict[str, object] = {
        "detector_resampled": bool(electrons.shape[-2:] != dataset.detector_shape or sampling[0] != sampling[1]),
        "device": py_device,
        "global_affine_transformation": global_affine_transformation,
        "max_position_update_distance_A": np.nan if max_position_update_distance_A is None
        else max_position_update_distance_A,
        "max_position_total_distance_A": np.nan if max_position_total_distance_A is None
        else max_position_total_distance_A,
        "positions_step_size": positions_step_size,
        "transpose": bool(transpose),
    }
    if true_positions_A is not None:
        best = int(np.argmin(log["rms_position_error_A"]))
        info["best_iteration"] = best + 1
        info["best_rms_position_error_A"] = log["rms_position_error_A"][best]
    return ReconstructionResult(
        positions_A=history[-1],
        object=obj,
        object_pixel_size_A=sampling_A,
        object_origin_A=np.asarray(origin, dtype=np.float64),
        object_rotation_deg=float(rotation_deg),
        probe=probe,
        log={k: np.asarray(v) for k, v in log.items()},
        method="py4dstem",
        position_history_A=np.stack(history),
        info=info,
    )


def _py4dstem_device(device: str | None) -> str:
    """Map our device names onto py4DSTEM's ('cpu' / 'gpu')."""
    if device is None:
        try:
            import cupy  # noqa: F401

            return "gpu" if cupy.cuda.runtime.getDeviceCount() > 0 else "cpu"
        except Exception:
            return "cpu"
    name = str(device).split(":")[0]
    if name in ("cuda", "gpu"):
        return "gpu"
    if name == "cpu":
        return "cpu"
    raise ValueError(f"device={device!r}; expected 'cpu', 'cuda' / 'gpu', or None")

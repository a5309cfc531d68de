"""Gradient-descent ptychography in torch: object, probe and scan positions.

The forward model and its exact gradients live in :mod:`tdmctx.ptycho.model` (Fourier-shifted
probe, single slice or multislice, mixed-state probe, Poisson or amplitude likelihood). This
module is the optimiser:

* object and probe take preconditioned gradient steps per minibatch (the step divided by the
  local illumination, as in ePIE / rPIE);
* positions take one step per full pass: the gradients of all minibatches are accumulated,
  each position's step is a damped Gauss-Newton step ``-H^-1 g`` whose 2 x 2 curvature ``H``
  is the Fisher information of that pattern about its position, and the whole step ``delta_A``
  goes through the optional hook ``position_step(delta_A, positions_A, scan_shape)`` (a
  constraint) before it is applied.

Why this keeps the truth a stable fixed point under shot noise: the Poisson likelihood is the
right one for counts (the amplitude loss is biased at a few counts per pixel, which shows up
as a slow global expansion of the scan), and a pattern with little information about its
position moves little. Started from the truth, the positions then settle near the Cramer-Rao
bound of a single pattern, which the log reports (``crb_rms_A``).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Literal

import numpy as np
import torch
from tqdm.auto import tqdm

from tdmctx.devices import resolve_device
from tdmctx.ptycho.detector import (
    estimate_rotation,
    object_pixel_size_A,
    prepare_counts,
    square_detector,
    wavelength_A,
)
from tdmctx.ptycho.io import PtychoDataset, ReconstructionResult
from tdmctx.ptycho.model import FarFieldModel

__all__ = ["GDPtychography", "reconstruct", "initial_probe", "PositionHook"]

#: Signature of the position hook: ``(delta_A (N, 2), positions_A (N, 2), scan_shape) -> (N, 2)``.
PositionHook = Callable[[np.ndarray, np.ndarray, tuple[int, int]], np.ndarray]

_LOSSES = ("amplitude", "poisson")


def initial_probe(
    n: int,
    pixel_size_A: float,
    energy_eV: float,
    semiangle_mrad: float,
    defocus_A: float = 0.0,
    *,
    modes: int = 1,
) -> np.ndarray:
    """Aberration-free probe with defocus, centred at pixel ``n // 2``, unit total intensity.

    Uses abTEM's conventions: ``defocus_A = -C10`` and the wave ``A(k) exp(-i chi(k))`` with
    ``chi = pi * lambda * k^2 * C10``. Extra modes of a mixed-state probe are the first
    Hermite-like modes (the probe times x, y, xy), each carrying 5 % of the power.

    Returns
    -------
    ndarray, complex64, ``(modes, n, n)`` as (mode, y, x).
    """
    lam = wavelength_A(energy_eV)
    k = np.fft.fftfreq(n, d=pixel_size_A)
    kx, ky = np.meshgrid(k, k, indexing="xy")
    k2 = kx**2 + ky**2
    k_cut = semiangle_mrad * 1e-3 / lam
    dk = 1.0 / (n * pixel_size_A)
    # A one-pixel soft edge avoids ringing of the sharp aperture in real space.
    aperture = np.clip((k_cut - np.sqrt(k2)) / dk + 0.5, 0.0, 1.0)
    chi = np.pi * lam * k2 * (-defocus_A)
    probe = np.fft.fftshift(np.fft.ifft2(aperture * np.exp(-1j * chi)))
    probe /= np.sqrt(np.sum(np.abs(probe) ** 2))
    out = [probe]
    y, x = (np.indices((n, n)) - n // 2).astype(np.float64)
    weight = np.abs(probe) ** 2
    sigma = np.sqrt(np.sum(weight * (x**2 + y**2)) / 2.0) + 1e-12
    for factor in (x / sigma, y / sigma, x * y / sigma**2)[: max(modes - 1, 0)]:
        mode = probe * factor
        out.append(mode * np.sqrt(0.05 / np.sum(np.abs(mode) ** 2)))
    if modes > 4:
        raise ValueError(f"modes={modes!r}: at most 4 probe modes are supported")
    stack = np.stack(out)
    return (stack / np.sqrt(np.sum(np.abs(stack) ** 2))).astype(np.complex64)


def _rotation(deg: float) -> np.ndarray:
    t = np.deg2rad(deg)
    return np.array([[np.cos(t), -np.sin(t)], [np.sin(t), np.cos(t)]])


class GDPtychography:
    """Gradient-descent ptychography with probe retrieval and scan-position refinement.

    Build it once, then call :meth:`run` as many times as a schedule needs (each call
    continues from the current object, probe and positions), and :meth:`result` at the end.

    Parameters
    ----------
    dataset
        Validated input (:class:`tdmctx.ptycho.io.PtychoDataset`). Counts are converted to
        electrons, negative pixels clipped and zero-dose frames masked
        (:func:`tdmctx.ptycho.detector.prepare_counts`); a non-square detector is resampled.
    batch_size
        Positions per minibatch.
    loss
        ``"amplitude"`` or ``"poisson"``.
    slices, slice_thickness_A
        Number of object slices and their spacing (multislice when ``slices > 1``).
    probe_modes
        Modes of a mixed-state probe (1 to 4).
    initial_positions_A
        Start positions (x, y), Angstrom, ``(scan_rows, scan_cols, 2)``; nominal ones by default.
    true_positions_A
        Optional truth, used only for the log (``rms_position_error_A``, translation removed).
    padding_px
        Object pixels added around the scanned field, room for positions to move.
    precision
        ``"single"`` (complex64 FFTs, the default) or ``"double"`` (for gradient checks).
    seed
        Seed of the minibatch order.
    device
        Torch device (``None``: CUDA when available, else CPU). Results come back as numpy.
    """

    def __init__(
        self,
        dataset: PtychoDataset,
        *,
        batch_size: int = 64,
        loss: Literal["amplitude", "poisson"] = "poisson",
        slices: int = 1,
        slice_thickness_A: float | None = None,
        probe_modes: int = 1,
        initial_positions_A: np.ndarray | None = None,
        true_positions_A: np.ndarray | None = None,
        padding_px: int | None = None,
        precision: Literal["single", "double"] = "single",
        seed: int = 0,
        device: str | torch.device | None = None,
    ) -> None:
        if precision not in ("single", "double"):
            raise ValueError(f"precision={precision!r}; expected 'single' (complex64) or 'double' (complex128)")
        real = torch.float32 if precision == "single" else torch.float64
        cplx = torch.complex64 if precision == "single" else torch.complex128
        self.real_dtype = real
        if loss not in _LOSSES:
            raise ValueError(f"loss={loss!r}; expected one of {_LOSSES}")
        if batch_size < 1:
            raise ValueError(f"batch_size={batch_size!r} must be a positive integer")
        if slices < 1 or (slices > 1 and not (slice_thickness_A and slice_thickness_A > 0)):
            raise ValueError(f"slices={slices!r}, slice_thickness_A={slice_thickness_A!r}: need slices >= 1 "
                             "and a positive slice_thickness_A for multislice")
        self.device = resolve_device(device)
        self.loss = loss
        self.batch_size = int(batch_size)
        self.scan_shape = dataset.scan_shape
        self.rng = np.random.default_rng(seed)
        self.info: dict[str, object] = {"loss": loss, "device": str(self.device), "slices": slices,
                                        "probe_modes": probe_modes, "threads": torch.get_num_threads()}

        electrons, frame_mask = prepare_counts(dataset.datacube, dataset.electrons_per_count)
        self.info["masked_frames"] = int((~frame_mask).sum())
        rotation_deg, transpose = dataset.rotation_deg, dataset.transpose
        if rotation_deg is None:
            rotation_deg, found_transpose = estimate_rotation(electrons)
            transpose = found_transpose if transpose is None else transpose
            self.info["rotation_estimated"] = True
        self.rotation_deg = float(rotation_deg)
        self.info["transpose"] = bool(transpose)
        if transpose:
            electrons = electrons.swapaxes(-1, -2)
            sampling = dataset.angular_sampling_mrad[::-1]
        else:
            sampling = dataset.angular_sampling_mrad
        electrons, dk_mrad = square_detector(electrons, sampling)
        self.info["detector_resampled"] = electrons.shape[-2:] != dataset.detector_shape or not np.isclose(
            sampling[0], sampling[1])
        n = electrons.shape[-1]
        self.n = n
        self.pixel_size_A = object_pixel_size_A(dataset.energy_eV, n, dk_mrad)
        self.wavelength_A = wavelength_A(dataset.energy_eV)

        # Frame axes: x' along k0, y' along k1. The model's FFT arrays are (k_y', k_x'),
        # hence the swap, and DC goes to the corner where torch.fft puts it.
        patterns = np.fft.ifftshift(electrons.reshape(-1, n, n).swapaxes(-1, -2), axes=(-2, -1))
        dev = self.device
        target = np.sqrt(patterns) if loss == "amplitude" else patterns
        self.target = torch.as_tensor(np.ascontiguousarray(target), dtype=real, device=dev)
        self.weight = torch.as_tensor(frame_mask.reshape(-1), dtype=real, device=dev)
        self.mean_electrons = float(patterns.reshape(len(patterns), -1).sum(1)[frame_mask.reshape(-1)].mean())

        start = dataset.nominal_positions_A if initial_positions_A is None else initial_positions_A
        start = np.asarray(start, dtype=np.float64)
        if start.shape != (*self.scan_shape, 2):
            raise ValueError(f"initial_positions_A has shape {start.shape}; expected {(*self.scan_shape, 2)}")
        self.true_positions_A = None if true_positions_A is None else np.asarray(true_positions_A, np.float64)
        if self.true_positions_A is not None and self.true_positions_A.shape != start.shape:
            raise ValueError(f"true_positions_A has shape {self.true_positions_A.shape}; expected {start.shape}")

        frame_A = start.reshape(-1, 2) @ _rotation(-self.rotation_deg).T
        pad = max(4, n // 8) if padding_px is None else int(padding_px)
        # Object pixel (0, 0) sits so that every window, moved by up to `pad` pixels, fits.
        low = frame_A.min(axis=0) / self.pixel_size_A - n // 2 - pad
        self.origin_A = np.floor(low) * self.pixel_size_A
        span = frame_A.max(axis=0) / self.pixel_size_A - np.floor(low) + n + pad
        self.object_shape = (int(np.ceil(span[1])) + 1, int(np.ceil(span[0])) + 1)
        self.positions_px = torch.as_tensor(
            (frame_A - self.origin_A) / self.pixel_size_A, dtype=torch.float64, device=dev)

        self.object = torch.ones((slices, *self.object_shape), dtype=cplx, device=dev)
        defocus = 0.0 if dataset.defocus_A is None else dataset.defocus_A
        probe = initial_probe(n, self.pixel_size_A, dataset.energy_eV, dataset.semiangle_mrad, defocus,
                              modes=probe_modes) * np.sqrt(self.mean_electrons)
        self.probe = torch.as_tensor(probe, dtype=cplx, device=dev)
        self.model = FarFieldModel(n, self.object_shape, self.pixel_size_A, self.wavelength_A,
                                   slice_thickness_A if slices > 1 else None, loss, dev, real)
        self.fisher: torch.Tensor | None = None
        self._norm: float | None = None
        self.position_passes = 0
        self.log: dict[str, list[float]] = {"iteration": [], "data_error": [], "rms_step_A": [], "time_s": [],
                                          "crb_rms_A": []}
        if self.true_positions_A is not None:
            self.log["rms_position_error_A"] = []
        self.history: list[np.ndarray] = [self.positions_A.copy()]
        self.iteration = 0
        self.elapsed_s = 0.0

    # ------------------------------------------------------------------ geometry

    @property
    def positions_A(self) -> np.ndarray:
        """Current positions (x, y) in real space, Angstrom, ``(scan_rows, scan_cols, 2)``."""
        frame_A = self.positions_px.cpu().numpy() * self.pixel_size_A + self.origin_A
        return (frame_A @ _rotation(self.rotation_deg).T).reshape(*self.scan_shape, 2)

    def evaluate(self, positions_A: np.ndarray | None = None, *, exact: str = "auto") -> tuple[float, np.ndarray]:
        """Negative log-likelihood of all the data and its gradient with respect to the positions.

        Uses the current object and probe; nothing is updated.

        Parameters
        ----------
        positions_A
            ``(scan_rows, scan_cols, 2)`` positions (x, y), Angstrom; the current ones by default.
        exact
            ``"manual"`` (hand-written adjoint, single slice), ``"autograd"``, or ``"auto"``.

        Returns
        -------
        loss : float
        gradient_per_A : ndarray, ``(scan_rows, scan_cols, 2)``, d loss / d position (x, y), 1/Angstrom.
        """
        if positions_A is None:
            pos_px = self.positions_px.clone()
        else:
            positions_A = np.asarray(positions_A, dtype=np.float64)
            if positions_A.shape != (*self.scan_shape, 2):
                raise ValueError(f"positions_A has shape {positions_A.shape}; expected {(*self.scan_shape, 2)}")
            frame_A = positions_A.reshape(-1, 2) @ _rotation(-self.rotation_deg).T
            pos_px = torch.as_tensor((frame_A - self.origin_A) / self.pixel_size_A, device=self.device)
        total, grads = 0.0, []
        for batch in torch.split(torch.arange(len(pos_px), device=self.device), self.batch_size):
            g = self.model.gradients(self.object, self.probe, pos_px[batch], self.target[batch], self.weight[batch],
                                     want_probe=False, exact=exact)
            total += g.loss
            grads.append(g.positions)
        grad_A = torch.cat(grads).double().cpu().numpy() / self.pixel_size_A @ _rotation(self.rotation_deg).T
        return total, grad_A.reshape(*self.scan_shape, 2)

    # ------------------------------------------------------------------ iterations

    def run(
        self,
        iterations: int,
        *,
        object_step: float = 0.5,
        probe_step: float = 0.5,
        refine_probe: bool = True,
        refine_positions: bool = True,
        position_damping: float = 0.5,
        max_position_step_A: float | None = None,
        position_step: PositionHook | None = None,
        fisher_every: int = 4,
        object_amplitude_max: float | None = None,
        illumination_floor: float = 0.1,
        progress: bool = True,
    ) -> GDPtychography:
        """Run full passes over the data, continuing from the current state.

        Parameters
        ----------
        iterations
            Number of full passes.
        object_step, probe_step
            Preconditioned step sizes (1 is the ePIE full step; 0 freezes).
        refine_probe, refine_positions
            What to update besides the object.
        position_damping
            Fraction of the Gauss-Newton position step taken per pass.
        max_position_step_A
            Largest step of one position per pass, Angstrom (default: one object pixel).
        position_step
            Hook ``(delta_A, positions_A, scan_shape) -> delta_A`` applied to the whole step
            before it is applied (a constraint, e.g. from :mod:`tdmctx.ptycho.constraints`).
        fisher_every
            Recompute the per-position Fisher information every this many position passes
            (it changes slowly; each refresh costs four FFTs per pattern).
        object_amplitude_max
            Clip the object modulus at this value after each update (``1.0``: no gain).
        illumination_floor
            Fraction of the largest illumination (object step) or object intensity (probe
            step) added to the preconditioner, so that faintly lit pixels do not take huge steps.
        progress
            Show a tqdm bar.
        """
        if iterations < 0:
            raise ValueError(f"iterations={iterations!r} must be >= 0")
        if fisher_every < 1:
            raise ValueError(f"fisher_every={fisher_every!r} must be a positive integer")
        max_step_px = 1.0 if max_position_step_A is None else max_position_step_A / self.pixel_size_A
        n_pos = self.positions_px.shape[0]
        bar = tqdm(range(iterations), desc="gd ptychography", disable=not progress, leave=False)
        for _ in bar:
            t0 = time.perf_counter()
            refresh = refine_positions and (self.fisher is None or self.position_passes % fisher_every == 0)
            if refresh:
                self.fisher = torch.zeros((n_pos, 2, 2), dtype=torch.float64, device=self.device)
            grad_pos = torch.zeros((n_pos, 2), dtype=torch.float64, device=self.device)
            misfit_sum = 0.0
            for batch in np.array_split(self.rng.permutation(n_pos), max(1, -(-n_pos // self.batch_size))):
                b = torch.as_tensor(batch, device=self.device)
                g = self.model.gradients(self.object, self.probe, self.positions_px[b], self.target[b],
                                         self.weight[b], want_probe=refine_probe, want_positions=refine_positions,
                                         want_loss=False)
                misfit_sum += g.misfit
                if refine_positions:
                    grad_pos[b] = g.positions.double()
                    if refresh:
                        self.fisher[b] = self.model.fisher(g, self.weight[b]).double()
                self._update_object(g, object_step, object_amplitude_max, illumination_floor)
                if refine_probe:
                    self._update_probe(g, probe_step, illumination_floor)
            if refine_positions:
                # Hessian of the loss = Fisher (Poisson) or Fisher / 2 (amplitude loss).
                hessian = self.fisher if self.loss == "poisson" else 0.5 * self.fisher
                step_A = self._position_step(grad_pos, hessian, position_damping, max_step_px, position_step)
                crb_A = self._crb_rms_A(self.fisher)
                self.position_passes += 1
            else:
                step_A, crb_A = np.zeros((n_pos, 2)), float("nan")
            if self.device.type == "cuda":
                torch.cuda.synchronize(self.device)  # honest timings: wait for queued kernels
            self.elapsed_s += time.perf_counter() - t0
            self._record(misfit_sum, step_A, crb_A)
            bar.set_postfix(error=f"{self.log['data_error'][-1]:.4f}")
        return self

    def _update_object(self, g, step, amplitude_max, floor) -> None:
        illumination = torch.zeros(self.object_shape[0] * self.object_shape[1], dtype=self.real_dtype,
                                   device=self.device)
        illumination.index_add_(0, g.index.reshape(-1), (g.shifted.real**2 + g.shifted.imag**2).sum(1).reshape(-1))
        denom = illumination + floor * illumination.max()
        self.object -= step * g.object / denom.reshape(self.object_shape)
        if amplitude_max is not None:
            modulus = self.object.abs()
            self.object *= torch.clamp(amplitude_max / (modulus + 1e-12), max=1.0)

    def _update_probe(self, g, step, floor) -> None:
        weight = (g.patches[0].real ** 2 + g.patches[0].imag ** 2).sum(0)
        self.probe -= step * g.probe / (weight + floor * weight.max())

    def _position_step(self, grad, hessian, damping, max_step_px, hook) -> np.ndarray:
        """Damped Gauss-Newton step for every position, through the hook, applied; returns it in Angstrom."""
        trace = hessian[:, 0, 0] + hessian[:, 1, 1]
        # Levenberg-Marquardt floor: a pattern with little information moves little, not wildly.
        floor = 0.05 * torch.median(trace[trace > 0]) / 2 if bool((trace > 0).any()) else torch.tensor(1.0)
        eye = torch.eye(2, dtype=hessian.dtype, device=hessian.device)
        step = -damping * torch.linalg.solve(hessian + floor * eye, grad[..., None])[..., 0]
        length = torch.linalg.norm(step, dim=1, keepdim=True)
        step = step * torch.clamp(max_step_px / (length + 1e-12), max=1.0)
        rot = _rotation(self.rotation_deg)
        delta_A = step.cpu().numpy() * self.pixel_size_A @ rot.T
        if hook is not None:
            current_A = self.positions_A.reshape(-1, 2)
            delta_A = np.asarray(hook(delta_A, current_A, self.scan_shape), dtype=np.float64).reshape(-1, 2)
            if delta_A.shape != (len(current_A), 2) or not np.all(np.isfinite(delta_A)):
                raise ValueError(f"position_step hook returned shape {delta_A.shape} or non-finite values; "
                                 f"expected finite ({len(current_A)}, 2)")
        self.positions_px += torch.as_tensor(delta_A @ rot / self.pixel_size_A, device=self.device)
        return delta_A

    def _crb_rms_A(self, fisher: torch.Tensor) -> float:
        """RMS Cramer-Rao bound of the positions for the current object and probe, Angstrom.

        ``sqrt(mean trace(F^-1))``: the smallest RMS error any unbiased estimator of a single
        position could reach from its own pattern; masked frames are left out.
        """
        keep = self.weight > 0
        trace = torch.diagonal(torch.linalg.pinv(fisher[keep]), dim1=-2, dim2=-1).sum(-1)
        return float(torch.sqrt(trace.mean())) * self.pixel_size_A

    def _record(self, misfit_sum: float, step_A: np.ndarray, crb_A: float) -> None:
        self.iteration += 1
        positions = self.positions_A
        self.history.append(positions.copy())
        if self._norm is None:
            self._norm = float((self.weight[:, None, None] * self._measured_amplitude() ** 2).sum())
        norm = self._norm
        self.log["iteration"].append(self.iteration)
        self.log["data_error"].append(misfit_sum / norm)
        self.log["rms_step_A"].append(float(np.sqrt(np.mean(np.sum(step_A**2, axis=1)))))
        self.log["time_s"].append(self.elapsed_s)
        self.log["crb_rms_A"].append(crb_A)
        if self.true_positions_A is not None:
            from tdmctx.ptycho.metrics import rms_error_A

            self.log["rms_position_error_A"].append(rms_error_A(positions, self.true_positions_A))

    def _measured_amplitude(self) -> torch.Tensor:
        return self.target if self.loss == "amplitude" else torch.sqrt(self.target)

    # ------------------------------------------------------------------ checkpoints

    def state_dict(self) -> dict:
        """A snapshot of everything :meth:`run` depends on, on the CPU (``torch.save``-able).

        Besides object, probe and positions this includes the cached Fisher information and
        the pass counters, so that a resumed run repeats an uninterrupted one exactly.
        """
        # Copies: on the CPU .cpu() returns the live tensor, which later passes update in place,
        # and a state taken to roll back to must not follow them.
        return {
            "object": self.object.detach().cpu().clone(),
            "probe": self.probe.detach().cpu().clone(),
            "positions_px": self.positions_px.detach().cpu().clone(),
            "fisher": None if self.fisher is None else self.fisher.detach().cpu().clone(),
            "position_passes": self.position_passes,
            "iteration": self.iteration,
            "elapsed_s": self.elapsed_s,
            "log": {k: list(v) for k, v in self.log.items()},
            "history": [h.copy() for h in self.history],
            "rng": self.rng.bit_generator.state,
        }

    def load_state_dict(self, state: dict) -> None:
        """Restore a :meth:`state_dict` (onto this engine's device)."""
        missing = {"object", "probe", "positions_px", "iteration", "log", "history", "rng"} - set(state)
        if missing:
            raise ValueError(f"state is missing {sorted(missing)}; expected a GDPtychography.state_dict()")
        dev = self.device
        self.object = state["object"].to(dev)
        self.probe = state["probe"].to(dev)
        self.positions_px = state["positions_px"].to(dev)
        fisher = state.get("fisher")
        self.fisher = None if fisher is None else fisher.to(dev)
        self.position_passes = int(state.get("position_passes", 0))
        self.iteration = int(state["iteration"])
        self.elapsed_s = float(state.get("elapsed_s", 0.0))
        self.log = {k: list(v) for k, v in state["log"].items()}
        self.history = [np.asarray(h) for h in state["history"]]
        self.rng.bit_generator.state = state["rng"]

    # ------------------------------------------------------------------ output

    def result(self) -> ReconstructionResult:
        """Current state as numpy arrays on the CPU."""
        obj = self.object.detach().cpu().numpy()
        probe = self.probe.detach().cpu().numpy()
        log = {k: np.asarray(v) for k, v in self.log.items()}
        return ReconstructionResult(
            positions_A=self.positions_A,
            object=obj[0] if obj.shape[0] == 1 else obj,
            object_pixel_size_A=self.pixel_size_A,
            object_origin_A=self.origin_A.copy(),
            object_rotation_deg=self.rotation_deg,
            probe=probe[0] if probe.shape[0] == 1 else probe,
            log=log,
            method="gd",
            position_history_A=np.stack(self.history),
            info=dict(self.info),
        )


def reconstruct(
    dataset: PtychoDataset,
    *,
    iterations: int = 30,
    position_start: int = 5,
    position_step: PositionHook | None = None,
    refine_positions: bool = True,
    initial_positions_A: np.ndarray | None = None,
    true_positions_A: np.ndarray | None = None,
    batch_size: int = 64,
    loss: Literal["amplitude", "poisson"] = "poisson",
    object_step: float = 0.5,
    probe_step: float = 0.5,
    position_damping: float = 0.5,
    slices: int = 1,
    slice_thickness_A: float | None = None,
    probe_modes: int = 1,
    seed: int = 0,
    device: str | torch.device | None = None,
    progress: bool = True,
) -> ReconstructionResult:
    """Reconstruct object, probe and (optionally) positions by gradient descent.

    The first ``position_start`` passes refine object and probe only, so that the position
    gradient is taken against an object that already exists. See :class:`GDPtychography`
    for the parameters.

    Returns
    -------
    ReconstructionResult
        Numpy arrays on the CPU; ``log`` has one row per pass.
    """
    engine = GDPtychography(
        dataset, batch_size=batch_size, loss=loss, slices=slices, slice_thickness_A=slice_thickness_A,
        probe_modes=probe_modes, initial_positions_A=initial_positions_A, true_positions_A=true_positions_A,
        seed=seed, device=device,
    )
    first = min(iterations, position_start) if refine_positions else iterations
    common = dict(object_step=object_step, probe_step=probe_step, progress=progress)
    engine.run(first, refine_positions=False, **common)
    engine.run(iterations - first, refine_positions=True, position_damping=position_damping,
               position_step=position_step, **common)
    return engine.result()

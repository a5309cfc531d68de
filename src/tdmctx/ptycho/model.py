"""The ptychographic forward model in torch, its negative log-likelihoods and their exact gradients.

For the probe at position ``r`` (object pixels, (x, y))::

    P_r  = IFFT[ FFT[P] * exp(-2 pi i k . f) ]         f = r - n//2 - corner, |f| <= 1/2 (Fourier shift)
    psi  = P_r * O[window at corner]                    multislice: propagate between slices
    I    = sum_modes |FFT[psi]|^2                       orthonormal FFTs; counts in electrons

Two ways to get gradients, which a test checks against each other and against finite
differences:

* :meth:`FarFieldModel.gradients` with ``exact="manual"`` writes the adjoint out by hand for a
  single slice (any number of probe modes). It is the fast path: half the elementwise work of
  autograd and no graph.
* ``exact="autograd"`` differentiates :meth:`FarFieldModel.forward` with torch autograd; it also
  covers multislice objects.

Both return Wirtinger gradients ``dL/dO*`` and ``dL/dP*`` (so that ``-conj(P) (psi - psi')`` is
the ePIE object step) and the real gradient ``dL/ds`` for the positions, in pixels^-1.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch

__all__ = ["FarFieldModel", "BatchGradients"]


@dataclass
class BatchGradients:
    """What one minibatch contributes: loss, misfit and gradients, plus tensors the updates reuse."""

    loss: float
    misfit: float
    object: torch.Tensor  # dL/dO*, full object shape (slices, rows, cols)
    probe: torch.Tensor | None  # dL/dP*, (modes, n, n)
    positions: torch.Tensor | None  # dL/ds, (B, 2) in pixels^-1, (x, y)
    shifted: torch.Tensor  # P_r, (B, modes, n, n)
    patches: torch.Tensor  # object windows, (slices, B, n, n)
    farfield: torch.Tensor  # Psi, (B, modes, n, n)
    probe_k: torch.Tensor  # FFT[P] * ramp, (B, modes, n, n)
    index: torch.Tensor  # flat object indices of the windows, (B, n * n)


class FarFieldModel:
    """Geometry and physics of the far-field forward model on one object grid.

    Parameters
    ----------
    n
        Window (and detector) size in pixels.
    object_shape
        ``(rows, cols)`` of each object slice.
    pixel_size_A, wavelength_A
        Object pixel and electron wavelength, Angstrom.
    slice_thickness_A
        Distance between slices for a multislice object; ``None`` for a single slice.
    loss
        ``"poisson"`` (``sum I - d log I``) or ``"amplitude"`` (``sum (sqrt I - sqrt d)^2``).
    device, real_dtype
        Where and in which precision to compute.
    """

    def __init__(
        self,
        n: int,
        object_shape: tuple[int, int],
        pixel_size_A: float,
        wavelength_A: float,
        slice_thickness_A: float | None,
        loss: Literal["poisson", "amplitude"],
        device: torch.device,
        real_dtype: torch.dtype,
    ) -> None:
        self.n, self.object_shape, self.loss, self.device = n, tuple(object_shape), loss, device
        self.real_dtype = real_dtype
        freq = torch.fft.fftfreq(n, device=device, dtype=real_dtype)
        self.kx, self.ky = freq[None, None, :], freq[None, :, None]
        window = torch.arange(n, device=device)
        self.window_offsets = (window[:, None] * self.object_shape[1] + window[None, :]).reshape(-1)
        self.limit = torch.tensor([self.object_shape[1] - n, self.object_shape[0] - n], device=device)
        if slice_thickness_A:
            k2 = (self.kx**2 + self.ky**2)[0] / pixel_size_A**2
            phase = -np.pi * wavelength_A * slice_thickness_A * k2
            self.propagator = torch.polar(torch.ones_like(phase), phase)
        else:
            self.propagator = None

    # ------------------------------------------------------------------ forward

    def windows(self, pos_px: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Flat object indices of each window and the sub-pixel remainder (x, y), pixels."""
        corner = torch.round(pos_px.detach() - self.n // 2)
        corner = torch.minimum(torch.clamp(corner, min=0), self.limit)
        frac = (pos_px - self.n // 2 - corner).to(self.real_dtype)
        flat = (corner[:, 1] * self.object_shape[1] + corner[:, 0]).long()
        return flat[:, None] + self.window_offsets[None, :], frac

    def ramp(self, frac: torch.Tensor) -> torch.Tensor:
        """Fourier-shift phase ramps, (B, 1, n, n); separable, so only 2 n trigonometric values per position."""
        ax = -2 * np.pi * self.kx * frac[:, 0, None, None]
        ay = -2 * np.pi * self.ky * frac[:, 1, None, None]
        rx = torch.complex(torch.cos(ax), torch.sin(ax))
        ry = torch.complex(torch.cos(ay), torch.sin(ay))
        return (ry * rx)[:, None]

    def through_object(self, wave: torch.Tensor, patches: torch.Tensor) -> torch.Tensor:
        """Exit wave of ``wave`` (B, modes, n, n) through object windows (slices, B, n, n)."""
        for s in range(patches.shape[0]):
            if s > 0:
                wave = torch.fft.ifft2(torch.fft.fft2(wave) * self.propagator)
            wave = wave * patches[s][:, None]
        return wave

    def forward(self, obj: torch.Tensor, probe: torch.Tensor, pos_px: torch.Tensor):
        """Model intensities (B, n, n) and the intermediates; differentiable by autograd."""
        index, frac = self.windows(pos_px)
        probe_k = torch.fft.fft2(probe, norm="ortho")[None] * self.ramp(frac)
        shifted = torch.fft.ifft2(probe_k, norm="ortho")
        patches = obj.reshape(obj.shape[0], -1)[:, index].reshape(obj.shape[0], -1, self.n, self.n)
        farfield = torch.fft.fft2(self.through_object(shifted, patches), norm="ortho")
        intensity = (farfield.real**2 + farfield.imag**2).sum(1)
        return intensity, farfield, probe_k, shifted, patches, index

    def nll(self, intensity: torch.Tensor, target: torch.Tensor, weight: torch.Tensor):
        """Negative log-likelihood of a batch and its squared amplitude misfit (for the log).

        ``target`` holds amplitudes ``sqrt(d)`` for the amplitude loss and counts ``d`` for Poisson.
        """
        w = weight[:, None, None]
        amplitude = torch.sqrt(intensity + 1e-6)
        measured = target if self.loss == "amplitude" else torch.sqrt(target)
        misfit = (w * (amplitude.detach() - measured) ** 2).sum()
        if self.loss == "amplitude":
            return (w * (amplitude - target) ** 2).sum(), misfit
        return (w * (intensity - target * torch.log(intensity + 1e-6))).sum(), misfit

    # ------------------------------------------------------------------ gradients

    def gradients(
        self,
        obj: torch.Tensor,
        probe: torch.Tensor,
        pos_px: torch.Tensor,
        target: torch.Tensor,
        weight: torch.Tensor,
        *,
        want_probe: bool = True,
        want_positions: bool = True,
        want_loss: bool = True,
        exact: Literal["auto", "manual", "autograd"] = "auto",
    ) -> BatchGradients:
        """Loss of one minibatch and its gradients with respect to object, probe and positions.

        ``want_loss=False`` skips the likelihood value (NaN) on the manual path; the optimiser
        only needs its gradients and the misfit.
        """
        manual = exact == "manual" or (exact == "auto" and obj.shape[0] == 1)
        if manual and obj.shape[0] != 1:
            raise ValueError("exact='manual' covers single-slice objects only; use 'autograd' for multislice")
        return self._manual(obj, probe, pos_px, target, weight, want_probe, want_positions, want_loss) if manual \
            else self._autograd(obj, probe, pos_px, target, weight, want_probe, want_positions)

    def _autograd(self, obj, probe, pos_px, target, weight, want_probe, want_positions) -> BatchGradients:
        with torch.enable_grad():
            obj = obj.detach().requires_grad_(True)
            probe = probe.detach().requires_grad_(want_probe)
            pos = pos_px.detach().clone().requires_grad_(want_positions)
            intensity, farfield, probe_k, shifted, patches, index = self.forward(obj, probe, pos)
            loss, misfit = self.nll(intensity, target, weight)
            wrt = [obj] + ([probe] if want_probe else []) + ([pos] if want_positions else [])
            grads = torch.autograd.grad(loss, wrt)
        # torch returns 2 dL/dz* for a real loss of complex z.
        return BatchGradients(
            loss=float(loss.detach()), misfit=float(misfit),
            object=grads[0] / 2, probe=grads[1] / 2 if want_probe else None,
            positions=grads[-1].to(self.real_dtype) if want_positions else None,
            shifted=shifted.detach(), patches=patches.detach(), farfield=farfield.detach(),
            probe_k=probe_k.detach(), index=index,
        )

    def _manual(self, obj, probe, pos_px, target, weight, want_probe, want_positions,
                want_loss) -> BatchGradients:
        n = self.n
        with torch.no_grad():
            index, frac = self.windows(pos_px)
            ramp = self.ramp(frac)
            probe_k = torch.fft.fft2(probe, norm="ortho")[None] * ramp
            shifted = torch.fft.ifft2(probe_k, norm="ortho")
            patch = obj.reshape(-1)[index].reshape(-1, n, n)
            farfield = torch.fft.fft2(shifted * patch[:, None], norm="ortho")
            intensity = (farfield.real**2 + farfield.imag**2).sum(1)
            loss = self.nll(intensity, target, weight)[0] if want_loss else torch.tensor(float("nan"))
            # dL/dPsi* = w (1 - d / I) Psi (Poisson) or w (1 - sqrt(d) / sqrt(I)) Psi (amplitude).
            w = weight[:, None, None]
            amplitude = torch.sqrt(intensity + 1e-6)
            measured = target if self.loss == "amplitude" else torch.sqrt(target)
            misfit = (w * (amplitude - measured) ** 2).sum()
            if self.loss == "poisson":
                factor = w * (1 - target / (intensity + 1e-6))
            else:
                factor = w * (1 - target / amplitude)
            chi = torch.fft.ifft2(farfield * factor[:, None], norm="ortho")  # dL/dpsi*, adjoint of FFT
            grad_patch = (shifted.conj() * chi).sum(1)
            grad_obj = torch.zeros(obj.numel(), dtype=obj.dtype, device=obj.device)
            grad_obj.index_add_(0, index.reshape(-1), grad_patch.reshape(-1))
            grad_probe = grad_pos = None
            if want_probe or want_positions:
                grad_shifted_k = torch.fft.fft2(patch.conj()[:, None] * chi, norm="ortho")  # dL/d(FFT[P] ramp)*
                if want_probe:
                    grad_probe = torch.fft.ifft2((grad_shifted_k * ramp.conj()).sum(0), norm="ortho")
                if want_positions:
                    # dL/ds = 2 Re sum conj(dL/dz*) dz/ds with dz/ds = z (-2 pi i k): 4 pi sum k Im(conj(G) z).
                    h = (grad_shifted_k.conj() * probe_k).imag.sum(1)
                    grad_pos = 4 * np.pi * torch.stack(
                        [(h.sum(1) * self.kx[0, 0]).sum(-1), (h.sum(2) * self.ky[0, :, 0]).sum(-1)], dim=1)
        return BatchGradients(
            loss=float(loss), misfit=float(misfit), object=grad_obj.reshape(obj.shape), probe=grad_probe,
            positions=grad_pos, shifted=shifted, patches=patch[None], farfield=farfield, probe_k=probe_k,
            index=index,
        )

    # ------------------------------------------------------------------ curvature

    def fisher(self, g: BatchGradients, weight: torch.Tensor) -> torch.Tensor:
        """Fisher information of each pattern about its position (x, y), (B, 2, 2), pixels^-2.

        For Poisson counts it is ``sum_k (dI_k/ds)^2 / I_k = 4 sum_k (d sqrt(I_k)/ds)^2``, which is
        also the Gauss-Newton Hessian of the Poisson loss and twice that of the amplitude loss.
        """
        with torch.no_grad():
            farfield = g.farfield
            amplitude = torch.sqrt((farfield.real**2 + farfield.imag**2).sum(1)) + 1e-6
            jac = []
            for k in (self.kx, self.ky):
                # d/ds of P(r - s) is the inverse FFT of FFT[P] * (-2 pi i k).
                dprobe = torch.fft.ifft2(g.probe_k * (-2j * np.pi * k), norm="ortho")
                dfar = torch.fft.fft2(self.through_object(dprobe, g.patches), norm="ortho")
                jac.append((farfield.real * dfar.real + farfield.imag * dfar.imag).sum(1) / amplitude)
            w = weight[:, None, None]
            hxx = (w * jac[0] ** 2).sum((-2, -1))
            hyy = (w * jac[1] ** 2).sum((-2, -1))
            hxy = (w * jac[0] * jac[1]).sum((-2, -1))
            return 4.0 * torch.stack([torch.stack([hxx, hxy], -1), torch.stack([hxy, hyy], -1)], -2)

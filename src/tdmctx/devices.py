"""Torch device selection shared by every compute function.

Every function that computes takes ``device=None`` and resolves it here, so that the
rule (CUDA when available, else CPU) lives in one place.
"""

from __future__ import annotations

import torch

__all__ = ["resolve_device"]


def resolve_device(device: str | torch.device | None = None) -> torch.device:
    """Return the torch device to compute on.

    Parameters
    ----------
    device
        ``None`` picks CUDA when available, else the CPU. A string such as ``"cpu"``,
        ``"cuda"`` or ``"cuda:1"``, or a :class:`torch.device`, is taken as given.

    Returns
    -------
    torch.device

    Raises
    ------
    ValueError
        If CUDA is asked for and is not available, or the string names no device.
    """
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise ValueError(f"device={device!r} is not a torch device; expected 'cpu', 'cuda' or 'cuda:N'") from exc
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device={device!r} asked for CUDA, but torch sees no CUDA device here; use 'cpu' or None")
    return dev

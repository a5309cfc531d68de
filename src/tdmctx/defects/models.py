"""Column classifiers: a small residual CNN, image-only or conditioned on the imaging context.

Three variants share one backbone (so that an ablation changes what the network is told,
not how big it is):

``"image-only"``
    The patch alone.
``"film"``
    A context embedding modulates every residual block with a per-channel scale and shift
    (FiLM, Perez et al. 2018): ``h -> h * (1 + gamma(c)) + beta(c)``. The modulation starts
    at the identity (zero-initialised), so training begins from the image-only network.
``"late"``
    The context embedding is concatenated with the pooled image features before the head.

Context encoding
----------------
:func:`encode_contexts` turns :class:`~tdmctx.defects.context.Context` objects into one
float tensor of fixed layout, :data:`CONTEXT_DIM` columns, one block per field of
:data:`~tdmctx.defects.context.CONTEXT_FIELDS`, each block starting with a *known* bit:

==============================  ===================================================
field                           columns
==============================  ===================================================
host_metal, chalcogen, dopant   known, Z / 100
energy_eV                       known, E / 300 keV, relativistic wavelength / 0.05 A
detector_inner_mrad             known, angle / 100 mrad
detector_outer_mrad             known, angle / 200 mrad
==============================  ===================================================

An unknown field is all zeros (known bit 0, value 0), never a default value. The scales
keep every entry of order one over the study's range (60-300 kV, 20-250 mrad). The
element blocks also index a small learned embedding by Z (index 0 = unknown).

A model only sees the fields it was built with (``fields``): the others are zeroed inside
the model, exactly as if they were unknown. The ablations (image + composition, + energy,
+ detector, full context) are therefore the same network with a different ``fields``;
:data:`FIELD_SETS` names them. Context dropout (:func:`drop_context_fields`) zeroes whole
fields at random during training, which is what teaches the model to accept ``None``.
"""

from __future__ import annotations

import contextlib
import math
import os
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from tdmctx.defects.context import CLASS_NAMES, CONTEXT_FIELDS, Context
from tdmctx.devices import resolve_device

__all__ = [
    "VARIANTS",
    "FIELD_SETS",
    "CONTEXT_DIM",
    "context_columns",
    "encode_contexts",
    "drop_context_fields",
    "hide_context_fields",
    "ContextClassifier",
]

#: Model variants (see the module docstring).
VARIANTS: tuple[str, ...] = ("image-only", "film", "late")

#: Context fields seen by the models of each ablation.
FIELD_SETS: dict[str, tuple[str, ...]] = {
    "image-only": (),
    "composition": ("host_metal", "chalcogen", "dopant"),
    "energy": ("energy_eV",),
    "detector": ("detector_inner_mrad", "detector_outer_mrad"),
    "full": CONTEXT_FIELDS,
}

_ELEMENT_FIELDS = ("host_metal", "chalcogen", "dopant")
_WIDTHS = {
    "host_metal": 2,
    "chalcogen": 2,
    "dopant": 2,
    "energy_eV": 3,
    "detector_inner_mrad": 2,
    "detector_outer_mrad": 2,
}
_Z_SCALE = 100.0
_ENERGY_SCALE_EV = 300e3
_WAVELENGTH_SCALE_A = 0.05
_INNER_SCALE_MRAD = 100.0
_OUTER_SCALE_MRAD = 200.0
_MAX_Z = 118

#: Width of the encoded context (all six fields).
CONTEXT_DIM: int = sum(_WIDTHS.values())

_FORMAT = "tdmctx-context-classifier"
_FORMAT_VERSION = 1


def _column_slices() -> dict[str, slice]:
    slices, start = {}, 0
    for name in CONTEXT_FIELDS:
        slices[name] = slice(start, start + _WIDTHS[name])
        start += _WIDTHS[name]
    return slices


_SLICES = _column_slices()


def context_columns(field: str) -> slice:
    """Columns of ``field`` in the encoded context (the known bit is the first).

    Raises
    ------
    ValueError
        If ``field`` is not one of :data:`~tdmctx.defects.context.CONTEXT_FIELDS`.
    """
    if field not in _SLICES:
        raise ValueError(f"field={field!r} is not a context field; expected one of {CONTEXT_FIELDS}")
    return _SLICES[field]


def _check_fields(fields: Sequence[str] | None, name: str = "fields") -> tuple[str, ...]:
    if fields is None:
        return CONTEXT_FIELDS
    if isinstance(fields, str):
        raise ValueError(f"{name}={fields!r} is a string; expected a sequence of field names such as ('dopant',)")
    bad = [f for f in fields if f not in CONTEXT_FIELDS]
    if bad:
        raise ValueError(f"{name} holds unknown field(s) {bad}; expected a subset of {CONTEXT_FIELDS}")
    # Canonical order, so that configs compare equal however the subset was written.
    return tuple(f for f in CONTEXT_FIELDS if f in set(fields))


def _wavelength_A(energy_eV: float) -> float:
    # Relativistic de Broglie wavelength, lambda = h c / sqrt(E (E + 2 m c^2)); computed here
    # rather than through abTEM so that inference does not need the simulation stack.
    hc_eV_A = 12398.419843320026
    mc2_eV = 510998.95
    return hc_eV_A / math.sqrt(energy_eV * (energy_eV + 2.0 * mc2_eV))


def _field_mask(fields: Sequence[str]) -> torch.Tensor:
    mask = torch.zeros(CONTEXT_DIM)
    for name in fields:
        mask[context_columns(name)] = 1.0
    return mask


def encode_contexts(contexts: Sequence[Context], fields: Sequence[str] | None = None) -> torch.Tensor:
    """Encode contexts as a float tensor of the layout in the module docstring.

    Parameters
    ----------
    contexts
        One :class:`~tdmctx.defects.context.Context` per sample.
    fields
        Fields to encode; the others are written as unknown (zeros). ``None`` means all.

    Returns
    -------
    torch.Tensor
        (B, :data:`CONTEXT_DIM`) float32 on the CPU.

    Raises
    ------
    ValueError
        If an item is not a ``Context`` or ``fields`` names an unknown field.
    """
    keep = _check_fields(fields)
    if isinstance(contexts, Context):
        raise ValueError("contexts is a single Context; expected a sequence with one Context per sample")
    rows = np.zeros((len(contexts), CONTEXT_DIM), dtype=np.float32)
    for i, ctx in enumerate(contexts):
        if not isinstance(ctx, Context):
            raise ValueError(f"contexts[{i}] is a {type(ctx).__name__}; expected a tdmctx.defects.Context")
        for name in keep:
            value = getattr(ctx, name)
            if value is None:
                continue
            cols = context_columns(name)
            if name in _ELEMENT_FIELDS:
                block = [1.0, getattr(ctx, f"{name}_Z") / _Z_SCALE]
            elif name == "energy_eV":
                block = [1.0, value / _ENERGY_SCALE_EV, _wavelength_A(value) / _WAVELENGTH_SCALE_A]
            elif name == "detector_inner_mrad":
                block = [1.0, value / _INNER_SCALE_MRAD]
            else:
                block = [1.0, value / _OUTER_SCALE_MRAD]
            rows[i, cols] = block
    return torch.from_numpy(rows)


def drop_context_fields(
    context: torch.Tensor, p: float, *, generator: torch.Generator | None = None
) -> torch.Tensor:
    """Context dropout: mark each field of each sample unknown with probability ``p``.

    A dropped field is zeroed entirely (known bit and values), which is exactly how an
    unknown field is encoded, so the model learns one meaning for "unknown".

    Parameters
    ----------
    context
        (B, :data:`CONTEXT_DIM`) encoded contexts.
    p
        Drop probability per field and sample, in [0, 1].
    generator
        CPU generator for the draws (seeded by the training loop).

    Returns
    -------
    torch.Tensor
        A new tensor; the input is not modified.
    """
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"p={p!r} must be a probability in [0, 1]")
    if context.ndim != 2 or context.shape[1] != CONTEXT_DIM:
        raise ValueError(f"context must have shape (B, {CONTEXT_DIM}); got {tuple(context.shape)}")
    if p == 0.0:
        return context
    keep = (torch.rand(context.shape[0], len(CONTEXT_FIELDS), generator=generator) >= p).to(context.dtype)
    widths = torch.tensor([_WIDTHS[f] for f in CONTEXT_FIELDS])
    return context * keep.repeat_interleave(widths, dim=1).to(context.device)


def hide_context_fields(context: torch.Tensor, fields: Sequence[str]) -> torch.Tensor:
    """Mark the named fields unknown in every sample, as if they had never been given.

    The deterministic sibling of :func:`drop_context_fields`: the same encoding of
    "unknown" (known bit and values zeroed), for asking a trained model what it predicts
    without, say, the dopant.

    Parameters
    ----------
    context
        (B, :data:`CONTEXT_DIM`) encoded contexts.
    fields
        Context field names to hide (may be empty).

    Returns
    -------
    torch.Tensor
        A new tensor; the input is not modified.
    """
    if context.ndim != 2 or context.shape[1] != CONTEXT_DIM:
        raise ValueError(f"context must have shape (B, {CONTEXT_DIM}); got {tuple(context.shape)}")
    hidden = _check_fields(fields)
    return context * (1.0 - _field_mask(hidden)).to(device=context.device, dtype=context.dtype)


# -- network ------------------------------------------------------------------------


def _norm(channels: int) -> nn.GroupNorm:
    # GroupNorm, not BatchNorm: predictions must not depend on what else is in the batch
    # (one experimental field is classified in arbitrary chunks), and DDP needs no sync.
    return nn.GroupNorm(math.gcd(8, channels), channels)


class _ResBlock(nn.Module):
    def __init__(self, c_in: int, c_out: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False)
        self.norm1 = _norm(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, padding=1, bias=False)
        self.norm2 = _norm(c_out)
        self.skip = (
            nn.Identity()
            if stride == 1 and c_in == c_out
            else nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride=stride, bias=False), _norm(c_out))
        )
        self.channels = c_out

    def forward(self, x: torch.Tensor, film: torch.Tensor | None = None) -> torch.Tensor:
        h = F.relu(self.norm1(self.conv1(x)))
        h = self.norm2(self.conv2(h))
        if film is not None:
            gamma, beta = film.chunk(2, dim=1)
            h = h * (1.0 + gamma[:, :, None, None]) + beta[:, :, None, None]
        return F.relu(h + self.skip(x))


class ContextClassifier(nn.Module):
    """Residual CNN column classifier, image-only or context-conditioned.

    Parameters
    ----------
    variant
        ``"image-only"``, ``"film"`` or ``"late"`` (see the module docstring).
    in_channels
        1, or 2 for two simultaneously recorded detectors stacked as channels.
    fields
        Context fields the model may see; ``None`` means all six for the context variants
        and none for ``"image-only"`` (which accepts no other value but ``()``).
    width
        Channels of the first stage; the stages have ``width``, ``2 width``, ``4 width``.
    blocks_per_stage
        Residual blocks per stage (three stages, the last two downsample by 2).
    context_hidden
        Width of the context embedding, features.
    embedding_dim
        Width of the learned element embedding (indexed by Z), features.
    dropout
        Dropout before the last layer of the head.
    seed
        Seed for the weight initialisation; ``None`` uses torch's global generator.

    Notes
    -----
    Features are pooled twice: over the whole patch and at its centre (where the column
    to classify sits), and the two are concatenated, so that the head knows which of the
    columns in the patch it is asked about. Patches of any size >= 8 pixels are accepted.
    """

    def __init__(
        self,
        variant: str = "film",
        *,
        in_channels: int = 1,
        fields: Sequence[str] | None = None,
        width: int = 32,
        blocks_per_stage: int = 1,
        context_hidden: int = 64,
        embedding_dim: int = 4,
        dropout: float = 0.1,
        seed: int | None = None,
    ) -> None:
        super().__init__()
        if variant not in VARIANTS:
            raise ValueError(f"variant={variant!r} is not a model variant; expected one of {VARIANTS}")
        if in_channels not in (1, 2):
            raise ValueError(f"in_channels={in_channels!r}; expected 1 (one detector) or 2 (two detectors)")
        if variant == "image-only":
            if fields:
                raise ValueError(f"fields={tuple(fields)!r} given to an image-only model; expected None or ()")
            fields = ()
        fields = _check_fields(fields)
        for name, value in (("width", width), ("blocks_per_stage", blocks_per_stage),
                            ("context_hidden", context_hidden), ("embedding_dim", embedding_dim)):
            if not (isinstance(value, int) and value >= 1):
                raise ValueError(f"{name}={value!r} must be a positive integer")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout={dropout!r} must be in [0, 1)")
        self._config: dict[str, Any] = {
            "variant": variant,
            "in_channels": in_channels,
            "fields": list(fields),
            "width": width,
            "blocks_per_stage": blocks_per_stage,
            "context_hidden": context_hidden,
            "embedding_dim": embedding_dim,
            "dropout": dropout,
        }
        #: Model card (plain data) read from a saved file; empty for a new model.
        self.card: dict[str, Any] = {}
        rng = torch.random.fork_rng(devices=[]) if seed is not None else contextlib.nullcontext()
        with rng:
            if seed is not None:
                torch.manual_seed(seed)
            self._build()

    def _build(self) -> None:
        cfg = self._config
        w, n = cfg["width"], cfg["blocks_per_stage"]
        self.stem = nn.Sequential(nn.Conv2d(cfg["in_channels"], w, 3, padding=1, bias=False), _norm(w), nn.ReLU())
        blocks: list[_ResBlock] = []
        c_in = w
        for stage, c_out in enumerate((w, 2 * w, 4 * w)):
            for j in range(n):
                blocks.append(_ResBlock(c_in, c_out, stride=2 if (stage > 0 and j == 0) else 1))
                c_in = c_out
        self.blocks = nn.ModuleList(blocks)
        pooled = 2 * c_in
        hidden = cfg["context_hidden"]
        self.uses_context = cfg["variant"] != "image-only"
        self.register_buffer("field_mask", _field_mask(cfg["fields"]), persistent=False)
        if self.uses_context:
            self.element_embedding = nn.Embedding(_MAX_Z + 1, cfg["embedding_dim"])
            self.context_net = nn.Sequential(
                nn.Linear(CONTEXT_DIM + len(_ELEMENT_FIELDS) * cfg["embedding_dim"], hidden),
                nn.ReLU(),
                nn.Linear(hidden, hidden),
                nn.ReLU(),
            )
        if cfg["variant"] == "film":
            self.film = nn.ModuleList(nn.Linear(hidden, 2 * b.channels) for b in self.blocks)
            for layer in self.film:
                # Identity modulation at start: the network begins as its image-only twin.
                nn.init.zeros_(layer.weight)
                nn.init.zeros_(layer.bias)
        head_in = pooled + (hidden if cfg["variant"] == "late" else 0)
        self.head = nn.Sequential(
            nn.Linear(head_in, 128), nn.ReLU(), nn.Dropout(cfg["dropout"]), nn.Linear(128, len(CLASS_NAMES))
        )

    # -- config -------------------------------------------------------------------
    @property
    def config(self) -> dict[str, Any]:
        """Constructor arguments (JSON-serialisable); ``from_config(config)`` rebuilds the model."""
        return {k: (list(v) if isinstance(v, list) else v) for k, v in self._config.items()}

    @property
    def variant(self) -> str:
        """``"image-only"``, ``"film"`` or ``"late"``."""
        return self._config["variant"]

    @property
    def fields(self) -> tuple[str, ...]:
        """Context fields the model sees."""
        return tuple(self._config["fields"])

    @property
    def in_channels(self) -> int:
        """Image channels expected (1 or 2)."""
        return self._config["in_channels"]

    @classmethod
    def from_config(cls, config: Mapping[str, Any], *, seed: int | None = None) -> ContextClassifier:
        """Build an (untrained) model from :attr:`config`.

        Raises
        ------
        ValueError
            If ``config`` holds keys the constructor does not take.
        """
        allowed = {"variant", "in_channels", "fields", "width", "blocks_per_stage",
                   "context_hidden", "embedding_dim", "dropout"}
        unknown = set(config) - allowed
        if unknown:
            raise ValueError(f"config holds unknown key(s) {sorted(unknown)}; expected a subset of {sorted(allowed)}")
        return cls(**dict(config), seed=seed)

    # -- forward ------------------------------------------------------------------
    def embed_context(self, context: torch.Tensor) -> torch.Tensor:
        """Context embedding (B, ``context_hidden``) of encoded contexts, after the field mask."""
        if context.ndim != 2 or context.shape[1] != CONTEXT_DIM:
            raise ValueError(f"context must have shape (B, {CONTEXT_DIM}) from encode_contexts; got {tuple(context.shape)}")
        context = context * self.field_mask
        z = torch.stack(
            [torch.round(context[:, context_columns(f)][:, 1] * _Z_SCALE) for f in _ELEMENT_FIELDS], dim=1
        ).long().clamp(0, _MAX_Z)
        emb = self.element_embedding(z).flatten(1)
        return self.context_net(torch.cat([context, emb], dim=1))

    def forward(self, image: torch.Tensor, context: torch.Tensor | None = None) -> torch.Tensor:
        """Class logits.

        Parameters
        ----------
        image
            (B, C, H, W) normalised patches.
        context
            (B, :data:`CONTEXT_DIM`) encoded contexts (:func:`encode_contexts`); required
            by the context variants, ignored by ``"image-only"``.

        Returns
        -------
        torch.Tensor
            (B, 5) logits in the class order of :data:`~tdmctx.defects.context.CLASS_NAMES`.
        """
        if image.ndim != 4 or image.shape[1] != self.in_channels:
            raise ValueError(f"image must have shape (B, {self.in_channels}, H, W); got {tuple(image.shape)}")
        if min(image.shape[-2:]) < 8:
            raise ValueError(f"patches of {tuple(image.shape[-2:])} pixels are too small; expected at least 8 x 8")
        emb = None
        if self.uses_context:
            if context is None:
                raise ValueError(f"a {self.variant!r} model needs a context tensor; got None")
            if context.shape[0] != image.shape[0]:
                raise ValueError(f"context has {context.shape[0]} rows for {image.shape[0]} images; expected one per image")
            emb = self.embed_context(context.to(image.dtype))
        h = self.stem(image)
        for i, block in enumerate(self.blocks):
            film = self.film[i](emb) if self.variant == "film" else None
            h = block(h, film)
        ny, nx = h.shape[-2:]
        centre = h[..., (ny - 1) // 2 : ny // 2 + 1, (nx - 1) // 2 : nx // 2 + 1].mean(dim=(-2, -1))
        feats = torch.cat([h.mean(dim=(-2, -1)), centre], dim=1)
        if self.variant == "late":
            feats = torch.cat([feats, emb], dim=1)
        return self.head(feats)

    # -- inference ----------------------------------------------------------------
    def _context_tensor(self, contexts: Any, n: int) -> torch.Tensor | None:
        if not self.uses_context:
            return None
        if contexts is None:
            raise ValueError(f"a {self.variant!r} model needs contexts; got None (use Context() for all-unknown)")
        if isinstance(contexts, Context):
            return encode_contexts([contexts]).expand(n, CONTEXT_DIM)
        if isinstance(contexts, torch.Tensor):
            tensor = contexts.float()
        else:
            tensor = encode_contexts(list(contexts))
        if tensor.shape != (n, CONTEXT_DIM):
            raise ValueError(f"contexts give shape {tuple(tensor.shape)}; expected ({n}, {CONTEXT_DIM}) or one Context")
        return tensor

    @torch.no_grad()
    def predict_logits(
        self,
        patches: np.ndarray | torch.Tensor,
        contexts: Context | Sequence[Context] | torch.Tensor | None = None,
        *,
        batch_size: int = 512,
        device: str | torch.device | None = None,
    ) -> np.ndarray:
        """Logits for a stack of patches, in eval mode, in batches.

        Parameters
        ----------
        patches
            (N, H, W) for one channel or (N, C, H, W), normalised as the training patches.
        contexts
            One :class:`Context` for all patches, one per patch, or an encoded tensor.
            Ignored by image-only models.
        batch_size
            Patches per forward pass.
        device
            ``None`` picks CUDA when available; the model is moved there.

        Returns
        -------
        numpy.ndarray
            (N, 5) float32 logits.
        """
        x = torch.as_tensor(np.asarray(patches) if not isinstance(patches, torch.Tensor) else patches).float()
        if x.ndim == 3 and self.in_channels == 1:
            x = x[:, None]
        if x.ndim != 4 or x.shape[1] != self.in_channels:
            raise ValueError(
                f"patches have shape {tuple(x.shape)}; expected (N, H, W) or (N, {self.in_channels}, H, W)"
            )
        if batch_size < 1:
            raise ValueError(f"batch_size={batch_size!r} must be positive")
        ctx = self._context_tensor(contexts, x.shape[0])
        dev = resolve_device(device)
        was_training = self.training
        self.eval()
        self.to(dev)
        out = []
        try:
            for start in range(0, x.shape[0], batch_size):
                stop = start + batch_size
                c = None if ctx is None else ctx[start:stop].to(dev)
                out.append(self(x[start:stop].to(dev), c).float().cpu())
        finally:
            self.train(was_training)
        return torch.cat(out).numpy() if out else np.zeros((0, len(CLASS_NAMES)), np.float32)

    def predict_proba(
        self,
        patches: np.ndarray | torch.Tensor,
        contexts: Context | Sequence[Context] | torch.Tensor | None = None,
        *,
        temperature: float = 1.0,
        batch_size: int = 512,
        device: str | torch.device | None = None,
    ) -> np.ndarray:
        """Class probabilities ``softmax(logits / temperature)``, (N, 5), rows summing to 1.

        See :meth:`predict_logits` for the arguments; ``temperature`` comes from
        :func:`tdmctx.defects.evaluate.fit_temperature` on a validation split.
        """
        if not (temperature > 0 and math.isfinite(temperature)):
            raise ValueError(f"temperature={temperature!r} must be a positive finite number")
        logits = self.predict_logits(patches, contexts, batch_size=batch_size, device=device)
        return torch.softmax(torch.from_numpy(logits).double() / temperature, dim=1).numpy()

    # -- persistence --------------------------------------------------------------
    def save(self, path: str | os.PathLike, *, card: Mapping[str, Any] | None = None) -> Path:
        """Write weights, config and an optional model card to one file, atomically.

        Parameters
        ----------
        path
            Destination (conventionally ``.pt``); written to a temporary name and renamed.
        card
            Plain data (str, numbers, lists, dicts) describing data, profile, metrics,
            hardware; returned by :meth:`load` as ``model.card``.
        """
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        payload = {
            "format": _FORMAT,
            "version": _FORMAT_VERSION,
            "config": self.config,
            "state_dict": {k: v.detach().cpu() for k, v in self.state_dict().items()},
            "card": dict(card or {}),
        }
        _atomic_save(payload, path)
        return path

    @classmethod
    def load(cls, path: str | os.PathLike, *, device: str | torch.device | None = None) -> ContextClassifier:
        """Load a model written by :meth:`save` (in eval mode, with ``model.card`` set).

        Parameters
        ----------
        path
            File written by :meth:`save`.
        device
            Where to put the model; ``None``: CUDA when available, else the CPU.

        Raises
        ------
        FileNotFoundError
            If ``path`` does not exist.
        ValueError
            If the file is not a saved classifier.
        """
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"no model file at {path}")
        try:
            payload = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:  # torch raises several types for a foreign or corrupt file
            raise ValueError(f"{path} is not a readable torch file: {exc}") from exc
        if not isinstance(payload, dict) or payload.get("format") != _FORMAT:
            raise ValueError(f"{path} is not a saved ContextClassifier (format {_FORMAT!r} expected)")
        model = cls.from_config(payload["config"])
        model.load_state_dict(payload["state_dict"])
        model.card = payload.get("card", {})
        model.eval()
        return model.to(resolve_device(device))


def _atomic_save(obj: Any, path: Path) -> None:
    """``torch.save`` to a temporary file in the same folder, then rename into place."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        torch.save(obj, tmp)
        # mkstemp creates the file readable by its owner only; a model file (shipped weights
        # above all) gets the permissions of an ordinary file under the user's umask.
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise

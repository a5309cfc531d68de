"""The user-facing column classifier: the package's shipped models, from image to table.

:class:`Classifier` wraps a trained :class:`~tdmctx.defects.models.ContextClassifier`
(the network stays a plain ``torch.nn.Module``; this class owns what a user needs on top:
finding the shipped weights, the model card, contexts given as mappings, and one call from
an image and its column centres to a table)::

    from tdmctx.defects import Classifier, Context

    clf = Classifier.load()                          # shipped context-aware model
    table = clf.classify_sites(image, points_px, pixel_size_A=0.4,
                               context=Context("W", "Se", "Ti", energy_eV=80e3))

Shipped weights live in ``tdmctx/defects/weights/`` (``context.pt``, ``image-only.pt``),
written by :meth:`ContextClassifier.save` with a model card, and are read through
:mod:`importlib.resources`, so that a non-editable install finds them. When the card holds
a ``temperature`` (fitted on a validation split, :func:`tdmctx.defects.evaluate.fit_temperature`),
probabilities are temperature scaled with it.

Class priors: the models are trained on class-balanced patches (the card's
``training.train_priors``, uniform when absent), while a real field is nearly all metal
and X2 with a few percent of defects. :meth:`Classifier.classify_sites` therefore adapts
the posteriors of one image to its own class priors, estimated from the unlabelled
posteriors by EM (:func:`tdmctx.defects.evaluate.em_priors`, Saerens et al. 2002), as the
experimental chapter does; ``priors="none"`` keeps the training priors.

Compositions the model never saw: a context model told a dopant it was not trained on is
*less* certain than the image-only model and worse calibrated, while the same model with
that dopant declared unknown is the most accurate of all (chapter 02, H200 ablation on a held-out
dopant: 98.3 % against 96.9 % told the dopant and 96.5 % image only). So by default
(``unseen="unknown"``) composition fields outside the card's training systems are marked
unknown, with a warning that names them; ``unseen="keep"`` passes them as given and
``unseen="error"`` refuses them.
"""

from __future__ import annotations

import dataclasses
import math
import os
import warnings
from collections.abc import Mapping
from importlib import resources
from typing import Any

import numpy as np
import pandas as pd
import torch
import xarray as xr

from tdmctx.defects.context import CLASS_NAMES, Context
from tdmctx.defects.evaluate import em_priors, entropy, restrict_to_sublattice
from tdmctx.defects.models import ContextClassifier
from tdmctx.defects.patches import PATCH, PatchSpec, extract_patches
from tdmctx.defects.sites import as_image, metal_group_from_proba, pixel_size_of
from tdmctx.experimental.columns import check_points, refine_columns

__all__ = [
    "SHIPPED_MODELS", "PROBA_COLUMNS", "PRIOR_METHODS", "UNSEEN_POLICIES", "Classifier", "shipped_models", "as_context",
]

#: Names of the shipped models (file ``weights/<name>.pt``).
SHIPPED_MODELS: tuple[str, ...] = ("context", "image-only")

#: Class-prior handling of :meth:`Classifier.classify_sites`.
PRIOR_METHODS: tuple[str, ...] = ("EM", "none")

#: What :meth:`Classifier.predict_proba` does with a composition outside the training systems.
UNSEEN_POLICIES: tuple[str, ...] = ("unknown", "keep", "error")

#: Probability columns of :meth:`Classifier.classify_sites`, in class order.
PROBA_COLUMNS: tuple[str, ...] = tuple(f"p_{name}" for name in CLASS_NAMES)

# Centres move at most this far when refined, Angstrom: a whole-pixel label is within
# 0.7 px of its column, and a third of the shortest TMD bond (1.8 A) keeps a dim column
# from being pulled onto its neighbour. Smoothing as in tdmctx.defects.sites.
_REFINE_RADIUS_A = 0.6
_SMOOTH_A = 0.4


def _weights_folder():
    """The package's weights folder (a Traversable; a Path for ordinary installs)."""
    return resources.files("tdmctx.defects") / "weights"


def shipped_models() -> tuple[str, ...]:
    """Names of the shipped models whose weight files are present in this installation."""
    folder = _weights_folder()
    return tuple(name for name in SHIPPED_MODELS if (folder / f"{name}.pt").is_file())


def as_context(context: Context | Mapping[str, Any] | None) -> Context:
    """A :class:`Context` from a Context, a mapping of its fields, or ``None`` (all unknown).

    Raises
    ------
    ValueError
        For keys that are not context fields, invalid values, or another type.
    """
    if context is None:
        return Context()
    if isinstance(context, Context):
        return context
    if isinstance(context, Mapping):
        return Context.from_dict(dict(context))
    raise ValueError(f"context is a {type(context).__name__}; expected a Context, a mapping of its fields, or None")


def _check_sublattice(sublattice: np.ndarray | None, metal_group: int | None, n: int) -> np.ndarray | None:
    """The (N,) int sublattice ids, checked; ``None`` when no sublattice is given."""
    if metal_group is not None and metal_group not in (0, 1):
        raise ValueError(f"metal_group={metal_group!r}; expected 0, 1 or None")
    if sublattice is None:
        if metal_group is not None:
            raise ValueError("metal_group was given without sublattice; pass the (N,) sublattice ids too")
        return None
    groups = np.asarray(sublattice)
    if groups.shape != (n,) or not np.isin(groups, (0, 1)).all():
        raise ValueError(f"sublattice must be one id, 0 or 1, per point ({n},); got shape {groups.shape}"
                         + ("" if groups.shape != (n,) else f" with values {sorted(set(groups.tolist()))[:5]}"))
    return groups.astype(np.int64)


def _warn_if_unresolvable(ctx: Context) -> None:
    from tdmctx.defects.catalog import MIN_RESOLVABLE_CONTRAST, z_contrast

    if ctx.host_metal is None or ctx.dopant is None:
        return
    contrast = z_contrast(ctx.dopant, ctx.host_metal)
    if abs(contrast) < MIN_RESOLVABLE_CONTRAST:
        warnings.warn(f"dopant {ctx.dopant} scatters within {abs(contrast):.1%} of the host metal {ctx.host_metal} "
                      f"(Z contrast below {MIN_RESOLVABLE_CONTRAST:.0%}): ADF images do not tell its columns from "
                      "metal columns reliably; expect most dopants to be called metal", UserWarning, stacklevel=4)


class Classifier:
    """A trained column classifier with its model card.

    Parameters
    ----------
    model
        The network.
    device
        ``None``: CUDA when available, else the CPU.
    spec
        The patch definition the model was trained on (the package's one definition).

    Attributes
    ----------
    model
        The wrapped :class:`~tdmctx.defects.models.ContextClassifier` (eval mode).
    spec
        The patch definition the model takes (:data:`~tdmctx.defects.patches.PATCH`).
    """

    def __init__(
        self, model: ContextClassifier, *, device: str | torch.device | None = None, spec: PatchSpec = PATCH
    ) -> None:
        if not isinstance(model, ContextClassifier):
            raise ValueError(f"model is a {type(model).__name__}; expected a tdmctx.defects.ContextClassifier")
        self.model = model.eval()
        self.device = device
        self.spec = spec

    # -- loading ----------------------------------------------------------------------
    @classmethod
    def load(
        cls, path: str | os.PathLike | None = None, *, model: str = "context", device: str | torch.device | None = None
    ) -> Classifier:
        """Load the shipped model ``model``, or the model file ``path``.

        Parameters
        ----------
        path
            A file written by :meth:`ContextClassifier.save`; ``None`` loads the shipped
            weights named by ``model``.
        model
            ``"context"`` (context-aware) or ``"image-only"``; used when ``path`` is ``None``.
        device
            ``None``: CUDA when available, else the CPU.

        Raises
        ------
        FileNotFoundError
            If ``path`` does not exist, or the shipped weights are not in this installation.
        ValueError
            For an unknown ``model`` name or a file that is not a saved classifier.
        """
        if path is not None:
            return cls(ContextClassifier.load(path, device=device), device=device)
        if model not in SHIPPED_MODELS:
            raise ValueError(f"model={model!r} is not a shipped model; expected one of {SHIPPED_MODELS}")
        resource = _weights_folder() / f"{model}.pt"
        if not resource.is_file():
            raise FileNotFoundError(
                f"the shipped {model!r} weights (tdmctx/defects/weights/{model}.pt) are not in this installation; "
                "they are written by the training of the defect chapter. Pass a model file with path=... "
                "(or --weights PATH on the command line)"
            )
        with resources.as_file(resource) as file:
            return cls(ContextClassifier.load(file, device=device), device=device)

    @property
    def card(self) -> dict[str, Any]:
        """The model card (data, profile, metrics, hardware) saved with the weights."""
        return self.model.card

    @property
    def train_priors(self) -> np.ndarray:
        """(5,) class frequencies of training, from the card (uniform when it gives none)."""
        value = self.card.get("train_priors", self.card.get("training", {}).get("train_priors"))
        uniform = np.full(len(CLASS_NAMES), 1.0 / len(CLASS_NAMES))
        if value is None:
            return uniform
        priors = np.asarray(value, dtype=np.float64)
        if priors.shape != uniform.shape or np.any(priors < 0) or not np.isclose(priors.sum(), 1.0):
            raise ValueError(f"the model card's train_priors {value!r} are not {len(CLASS_NAMES)} frequencies summing to 1")
        return priors

    @property
    def temperature(self) -> float:
        """Softmax temperature from the card (``1.0`` when the card gives none)."""
        value = self.card.get("temperature", 1.0)
        try:
            t = float(value)
        except (TypeError, ValueError):
            t = float("nan")
        if not (math.isfinite(t) and t > 0):
            raise ValueError(f"the model card's temperature {value!r} is not a positive number")
        return t

    @property
    def training_systems(self) -> tuple[str, ...]:
        """Systems (``"WSe2:Ti"``) the model was trained on, from the card; empty when it names none."""
        data = self.card.get("data")
        return tuple(data.get("systems", ()) or ()) if isinstance(data, Mapping) else ()

    def checked_context(self, context: Context | Mapping[str, Any] | None, unseen: str = "unknown") -> Context:
        """The context the network is given: composition fields it never saw handled by ``unseen``.

        Whatever the model, a dopant whose Z contrast against the host metal is below
        :data:`~tdmctx.defects.catalog.MIN_RESOLVABLE_CONTRAST` (Nb in MoS2, Re or Pt in
        WSe2, ...) raises a :class:`UserWarning`: no ADF classifier tells those dopant columns
        from metal columns reliably. A dopant outside the training systems, or a host (metal
        and chalcogen) outside them, is marked unknown (``"unknown"``, with a :class:`UserWarning`), passed as
        given (``"keep"``) or refused (``"error"``, :class:`ValueError`). Models whose card
        names no systems, and image-only models, get the context unchanged.
        """
        if unseen not in UNSEEN_POLICIES:
            raise ValueError(f"unseen={unseen!r} is unknown; expected one of {UNSEEN_POLICIES}")
        ctx = as_context(context)
        _warn_if_unresolvable(ctx)
        if unseen == "keep" or self.model.variant == "image-only" or not self.training_systems:
            return ctx
        from tdmctx.defects.catalog import get_system

        systems = [get_system(name) for name in self.training_systems]
        hosts = {(s.host.metal, s.host.chalcogen) for s in systems}
        blank = []
        if ctx.dopant is not None and ctx.dopant not in {s.dopant for s in systems}:
            blank.append("dopant")
        if (ctx.host_metal, ctx.chalcogen) != (None, None) and (ctx.host_metal, ctx.chalcogen) not in hosts:
            blank += [f for f in ("host_metal", "chalcogen") if getattr(ctx, f) is not None]
        if not blank:
            return ctx
        given = ", ".join(f"{f}={getattr(ctx, f)!r}" for f in blank)
        if unseen == "error":
            raise ValueError(f"{given}: not among the model's training systems {list(self.training_systems)}; "
                             "pass unseen='unknown' to classify with those fields unknown")
        warnings.warn(f"{given} not among the model's training systems {list(self.training_systems)}: classified "
                      "with those fields unknown (a context model told an unseen composition is worse calibrated; "
                      "unseen='keep' overrides)", UserWarning, stacklevel=3)
        return dataclasses.replace(ctx, **{f: None for f in blank})

    def __repr__(self) -> str:
        return f"Classifier(variant={self.model.variant!r}, fields={self.model.fields!r}, card keys={sorted(self.card)})"

    # -- prediction -------------------------------------------------------------------
    def predict_proba(
        self,
        patches: np.ndarray | torch.Tensor,
        context: Context | Mapping[str, Any] | None = None,
        *,
        batch_size: int = 512,
        unseen: str = "unknown",
    ) -> np.ndarray:
        """Class probabilities for normalised patches, (N, 5) in class order, rows summing to 1.

        Parameters
        ----------
        patches
            (N, H, W) patches cut by :func:`~tdmctx.defects.patches.extract_patches`.
        context
            One context for every patch: a :class:`Context`, a mapping of its fields
            (``host_metal``, ``chalcogen``, ``dopant``, ``energy_eV``,
            ``detector_inner_mrad``, ``detector_outer_mrad``; absent or ``None`` = unknown)
            or ``None`` (all unknown). Ignored by image-only models.
        batch_size
            Patches per forward pass.
        unseen
            Composition outside the training systems: ``"unknown"`` (default), ``"keep"``
            or ``"error"`` (:meth:`checked_context`).
        """
        return self._predict(patches, self.checked_context(context, unseen), batch_size)

    def _predict(self, patches: np.ndarray | torch.Tensor, ctx: Context, batch_size: int = 512) -> np.ndarray:
        # The network call for a context already checked (the public methods check it once).
        return self.model.predict_proba(
            patches, ctx, temperature=self.temperature, batch_size=batch_size, device=self.device
        )

    def classify_sites(
        self,
        image: np.ndarray | xr.DataArray,
        points_px: np.ndarray,
        *,
        pixel_size_A: float | None = None,
        context: Context | Mapping[str, Any] | None = None,
        refine: bool = True,
        priors: str = "EM",
        unseen: str = "unknown",
        sublattice: np.ndarray | None = None,
        metal_group: int | None = None,
    ) -> pd.DataFrame:
        """Classify the columns at given centres of one image.

        Parameters
        ----------
        image
            (y, x) image, any units (a DataArray may carry ``pixel_size_A``).
        points_px
            (N, 2) (x, y) column centres, pixels.
        pixel_size_A
            Image pixel, Angstrom; read from ``image.attrs`` when ``None``.
        context
            As in :meth:`predict_proba`.
        refine
            Move each centre to the sub-pixel column maximum nearby (at most 0.6 A) first;
            pass ``False`` for centres that are already refined or lattice positions of
            possibly empty sites (:func:`tdmctx.defects.sites.find_sites`).
        priors
            ``"EM"``: adapt the posteriors to this image's class priors, estimated without
            labels (module docstring; needs many sites, a whole field); ``"none"``: keep
            the training priors.
        unseen
            As in :meth:`predict_proba`.
        sublattice
            (N,) geometric sublattice of each point, 0 or 1 (:attr:`~tdmctx.defects.sites.Sites.group`,
            :func:`~tdmctx.defects.baseline.split_sublattices`), or ``None``. When given,
            each site is restricted to the classes of its sublattice (metal, dopant on the
            metal one; X2, V1, V2 on the other) before the prior correction: one patch
            cannot always tell a metal column from a chalcogen pair (their contrast depends
            on the detector), the lattice can. On the real Ti-WSe2 fields this lifts kappa
            from about 0-0.4 to 0.85-0.95 (chapter 03).
        metal_group
            Which ``sublattice`` id holds the metal; ``None``: the model's vote (the group
            with more metal-like posteriors, :func:`~tdmctx.defects.sites.metal_group_from_proba`).

        Returns
        -------
        pandas.DataFrame
            One row per point, in input order: ``x_px``, ``y_px`` (the centres used),
            ``class``, ``p_metal`` ... ``p_V2`` and ``entropy`` (nats). With ``sublattice``,
            ``table.attrs["metal_group"]`` holds the metal group used.

        Raises
        ------
        ValueError
            For an image that is not 2-D and finite, a missing pixel size, points that are
            not (N, 2) or lie outside the image, an invalid context or ``priors``, a
            ``sublattice`` that is not one 0/1 id per point, or a ``metal_group`` other than 0 or 1.
        """
        if priors not in PRIOR_METHODS:
            raise ValueError(f"priors={priors!r} is unknown; expected one of {PRIOR_METHODS}")
        values = as_image(image)
        px = pixel_size_of(image, pixel_size_A)
        if self.model.in_channels != 1:
            raise ValueError(f"this model takes {self.model.in_channels} detector channels; classify_sites handles one image")
        ctx = self.checked_context(context, unseen)
        points = check_points(points_px, values.shape)
        groups = _check_sublattice(sublattice, metal_group, len(points))
        if len(points) == 0:
            return pd.DataFrame({name: [] for name in ("x_px", "y_px", "class", *PROBA_COLUMNS, "entropy")})
        if refine:
            points = refine_columns(
                values, points, search_radius_px=max(1.0, _REFINE_RADIUS_A / px), smooth_sigma_px=_SMOOTH_A / px
            )
        patches = extract_patches(values, points, source_pixel_A=px, spec=self.spec, device=self.device)
        proba = self._predict(patches, ctx)
        if groups is not None:
            metal_group = metal_group_from_proba(groups, proba) if metal_group is None else int(metal_group)
            proba = restrict_to_sublattice(proba, groups == metal_group)
        if priors == "EM":
            _, proba = em_priors(proba, self.train_priors)
        table = pd.DataFrame({"x_px": points[:, 0], "y_px": points[:, 1]})
        if groups is not None:
            table.attrs["metal_group"] = metal_group
        table["class"] = np.asarray(CLASS_NAMES, dtype=object)[np.argmax(proba, axis=1)]
        for name, column in zip(PROBA_COLUMNS, proba.T):
            table[name] = column
        table["entropy"] = entropy(proba)
        return table

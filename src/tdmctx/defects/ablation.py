"""The context ablation study: what each piece of context adds to the column classifier.

One backbone, several models that differ only in what they are told (:data:`GRID`), each
trained with several seeds through :func:`~tdmctx.defects.train.train` on one
:class:`~tdmctx.defects.splits.Split`, then scored on the *same* fixed test patches so that
every comparison is paired::

    split = make_split(ds, "image", seed=0)
    result = run_ablation(ds, split, specs=("image-only", "film", "shuffled"), seeds=(0, 1))
    table = ablation_table(summarise(result))

Trained models are cached under the tdmctx cache folder (``ablations/<store>/<split>/
<model>-<settings>/seed<N>``), with the checkpoints of :func:`train`: a rerun resumes
from them and a finished model is not trained again.

All scores are computed after temperature scaling (one ``T`` per model and seed, fitted on
the validation images), so that an overconfident model cannot fake an entropy reduction.

Class priors: the models are trained on class-balanced batches, but the held-out images
carry the natural class frequencies (many more metal and X2 columns than vacancies). By
default (``prior_correction=True``) the posteriors are moved to the class frequencies of
the *training* images by Bayes' rule, ``p(c|x) ∝ softmax(z/T)_c * pi_train(c) / pi_balanced(c)``
(as :func:`~tdmctx.defects.evaluate.prior_shift`; no test label is used), and ``T`` is fitted
with that correction in place.

The metrics themselves live in :mod:`tdmctx.defects.evaluate`; :mod:`tdmctx.defects.
ablation_metrics` resamples them by structure for the intervals.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
import xarray as xr
from tqdm.auto import tqdm

from tdmctx.data import cache_dir
from tdmctx.defects.evaluate import softmax
from tdmctx.defects.models import FIELD_SETS, ContextClassifier
from tdmctx.defects.patches import PATCH, Augmentation, PatchSampler, PatchSpec
from tdmctx.defects.splits import Split
from tdmctx.defects.train import predict_loader, train
from tdmctx.devices import resolve_device

__all__ = [
    "AblationSpec",
    "GRID",
    "TrainSettings",
    "fixed_patches",
    "store_key",
    "ModelRun",
    "AblationResult",
    "run_ablation",
]


@dataclass(frozen=True)
class AblationSpec:
    """One model of the grid.

    Attributes
    ----------
    name
        Key in :data:`GRID` (also the cache folder name).
    variant
        ``"image-only"``, ``"film"`` or ``"late"``.
    fields
        Context fields the model sees.
    shuffle_context
        Train with the contexts permuted across each batch (the control).
    label
        Readable name for tables and figures.
    """

    name: str
    variant: str
    fields: tuple[str, ...]
    shuffle_context: bool = False
    label: str = ""


#: The ablation grid, in the order of the tables.
GRID: dict[str, AblationSpec] = {
    s.name: s
    for s in (
        AblationSpec("image-only", "image-only", (), label="image only"),
        AblationSpec("composition", "film", FIELD_SETS["composition"], label="+ composition"),
        AblationSpec("energy", "film", FIELD_SETS["energy"], label="+ energy"),
        AblationSpec("detector", "film", FIELD_SETS["detector"], label="+ detector"),
        AblationSpec("film", "film", FIELD_SETS["full"], label="full context (FiLM)"),
        AblationSpec("shuffled", "film", FIELD_SETS["full"], shuffle_context=True, label="full, shuffled (control)"),
        AblationSpec("late", "late", FIELD_SETS["full"], label="full context (late fusion)"),
    )
}


@dataclass(frozen=True)
class TrainSettings:
    """Model size and training schedule shared by every model of an ablation.

    Attributes
    ----------
    width, blocks_per_stage
        Backbone size (:class:`~tdmctx.defects.models.ContextClassifier`).
    epochs, batches_per_epoch, batch_size
        Schedule: patches drawn per model = epochs x batches_per_epoch x batch_size (at
        most; early stopping may end sooner).
    lr, patience, context_dropout
        Passed to :func:`~tdmctx.defects.train.train`.
    val_patches
        Fixed validation patches (early stopping, temperature), drawn from the
        validation images.
    test_patches
        Fixed test patches; ``None``: every usable site of the test images once.
    """

    width: int = 16
    blocks_per_stage: int = 1
    epochs: int = 10
    batches_per_epoch: int = 100
    batch_size: int = 256
    lr: float = 2e-3
    patience: int | None = 4
    context_dropout: float = 0.15
    val_patches: int = 4000
    test_patches: int | None = None

    def __post_init__(self) -> None:
        for name in ("width", "blocks_per_stage", "epochs", "batches_per_epoch", "batch_size", "val_patches"):
            value = getattr(self, name)
            if not (isinstance(value, int) and value >= 1):
                raise ValueError(f"{name}={value!r} must be a positive integer")
        if self.test_patches is not None and not (isinstance(self.test_patches, int) and self.test_patches >= 1):
            raise ValueError(f"test_patches={self.test_patches!r} must be a positive integer or None (all sites)")


def fixed_patches(
    dataset: xr.Dataset,
    images: Sequence[int],
    *,
    max_patches: int | None = None,
    seed: int = 0,
    spec: PatchSpec = PATCH,
    augmentation: Augmentation = Augmentation(),
    chunk: int = 2048,
    device: str | torch.device | None = None,
) -> dict[str, torch.Tensor]:
    """Fixed, seeded patches of the given images: each usable site at most once.

    The patches go through the training read-out (dose, noise, rotation, jitter) once,
    with a seeded generator, so that every model is scored on identical inputs.

    Parameters
    ----------
    dataset
        The store (:func:`~tdmctx.defects.store.open_dataset`).
    images
        Indices along ``image`` (a split part).
    max_patches
        Draw this many sites at random (without replacement); ``None``: all.
    seed
        Seed of the site draw and the read-out.
    spec, augmentation
        Patch definition and read-out (the training defaults).
    chunk
        Patches cut per vectorised call.
    device
        Where to cut; the result is on the CPU.

    Returns
    -------
    dict
        ``image`` (N, 1, n, n), ``context`` (N, CONTEXT_DIM), ``label``, ``image_index``,
        ``site_index`` (N,), sorted by site.
    """
    if len(images) == 0:
        raise ValueError("images is empty; expected the indices of at least one image")
    sampler = PatchSampler(dataset, spec, augmentation, images=images, batch_size=1, seed=seed, device=device)
    sites = sampler.usable_sites
    rng = np.random.default_rng(seed)
    if max_patches is not None and max_patches < len(sites):
        sites = np.sort(rng.choice(sites, max_patches, replace=False))
    parts = []
    for start in range(0, len(sites), chunk):
        parts.append({k: v.cpu() for k, v in sampler.batch(rng, sites[start : start + chunk]).items()})
    return {k: torch.cat([p[k] for p in parts]) for k in parts[0]}


def _batches(patches: dict[str, torch.Tensor], size: int = 1024) -> list[dict[str, torch.Tensor]]:
    n = len(patches["label"])
    return [{k: v[i : i + size] for k, v in patches.items()} for i in range(0, n, size)]


def _hash(obj: Any, n: int = 10) -> str:
    return hashlib.sha1(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:n]


def store_key(dataset: xr.Dataset) -> str:
    """A short key of a store's content: its build settings and finished cases when on disk.

    A dataset read from a portable export keeps the key of the store it came from; one built
    in memory (tests) is keyed by a hash of its arrays instead.
    """
    if dataset.attrs.get("store_key"):
        return str(dataset.attrs["store_key"])
    store = dataset.attrs.get("store")
    if store and (Path(store) / "tdmctx-dataset.json").is_file():
        from tdmctx.defects.store import completed_cases

        text = (Path(store) / "tdmctx-dataset.json").read_text()
        return f"{Path(store).name}-{_hash([text, completed_cases(store)])}"
    digest = hashlib.sha1()
    for name in ("intensity", "site_image", "site_x_px", "site_y_px", "site_label"):
        digest.update(np.ascontiguousarray(dataset[name].values).tobytes())
    return f"memory-{digest.hexdigest()[:10]}"


@dataclass
class ModelRun:
    """One trained model of the grid and its outputs on the fixed patches.

    Attributes
    ----------
    spec, seed
        Grid entry and training seed.
    temperature
        ``T`` fitted on the validation patches.
    val_logits, test_logits
        (N, 5) raw logits.
    log_prior_ratio
        (5,) ``log(pi_train / pi_balanced)`` added to ``logits / T`` (zeros without prior
        correction).
    history
        What :func:`~tdmctx.defects.train.train` returned.
    checkpoint_dir
        Cache folder of the run (``last.pt``, ``best.pt``).
    call_s
        Wall time of the ``train`` call in this session (near zero when resumed finished).
    """

    spec: AblationSpec
    seed: int
    temperature: float
    val_logits: np.ndarray
    test_logits: np.ndarray
    log_prior_ratio: np.ndarray
    history: dict[str, Any]
    checkpoint_dir: Path
    call_s: float

    @property
    def test_probs(self) -> np.ndarray:
        """Temperature-scaled test probabilities, (N, 5)."""
        return softmax(self.test_logits / self.temperature + self.log_prior_ratio)


@dataclass
class AblationResult:
    """Outputs of :func:`run_ablation`.

    Attributes
    ----------
    split
        The split used.
    specs
        Models, in grid order.
    seeds
        Training seeds (the same for every model, so seeds pair up).
    settings
        Training settings.
    labels
        (N,) true classes of the test patches.
    image_index
        (N,) store image of each test patch.
    groups
        (N,) structure of each test patch: the unit of the bootstrap.
    condition
        (N,) imaging condition of each test patch.
    runs
        ``(spec name, seed) -> ModelRun``.
    """

    split: Split
    specs: tuple[AblationSpec, ...]
    seeds: tuple[int, ...]
    settings: TrainSettings
    labels: np.ndarray
    image_index: np.ndarray
    groups: np.ndarray
    condition: np.ndarray
    runs: dict[tuple[str, int], ModelRun] = field(default_factory=dict)

    def probs(self, spec: str, seed: int | None = None) -> np.ndarray:
        """Calibrated test probabilities of one model and seed; ``seed=None`` stacks all seeds."""
        self.check_spec(spec)
        seeds = self.seeds if seed is None else (seed,)
        return np.concatenate([self.runs[(spec, s)].test_probs for s in seeds])

    def stacked(self, values: np.ndarray, seed: int | None = None) -> np.ndarray:
        """Repeat a per-patch array once per seed, to line up with :meth:`probs` (``seed=None``)."""
        return np.tile(values, len(self.seeds) if seed is None else 1)

    def check_spec(self, spec: str) -> None:
        """Raise ``ValueError`` if ``spec`` is not a model of this ablation."""
        if spec not in {s.name for s in self.specs}:
            raise ValueError(f"spec={spec!r} is not in this ablation; expected one of {[s.name for s in self.specs]}")

    def subset(self, mask: np.ndarray) -> AblationResult:
        """The same models scored on a subset of the test patches (e.g. some systems only).

        Parameters
        ----------
        mask
            (N,) boolean over the test patches (``labels``); at least one must be kept.

        Returns
        -------
        AblationResult
            A copy whose per-patch arrays and test logits keep the masked patches; the
            validation logits and temperatures are unchanged (they were fitted on the
            validation images, not on the test patches).
        """
        mask = np.asarray(mask)
        if mask.dtype != bool or mask.shape != self.labels.shape:
            raise ValueError(f"mask must be a boolean array of shape {self.labels.shape}; got {mask.dtype} {mask.shape}")
        if not mask.any():
            raise ValueError("mask keeps no test patch")
        runs = {key: replace(run, test_logits=run.test_logits[mask]) for key, run in self.runs.items()}
        return replace(self, labels=self.labels[mask], image_index=self.image_index[mask], groups=self.groups[mask],
                       condition=self.condition[mask], runs=runs)

    def training_table(self) -> pd.DataFrame:
        """One row per model and seed: temperature, epochs, best epoch, val NLL, patches/s, time."""
        rows = []
        for (name, seed), run in self.runs.items():
            h = run.history
            rows.append({
                "model": name, "seed": seed, "temperature": run.temperature, "epochs": len(h["epoch"]),
                "best_epoch": h["best_epoch"], "best_val_nll": h["best_val_nll"],
                "patches_per_s": float(np.mean(h["patches_per_s"])), "train_s": float(np.sum(h["seconds"])),
                "this_call_s": run.call_s, "device": h.get("device"),
            })
        return pd.DataFrame(rows).set_index(["model", "seed"])


def _specs(specs: Sequence[str | AblationSpec]) -> tuple[AblationSpec, ...]:
    out = []
    for s in specs:
        if isinstance(s, AblationSpec):
            out.append(s)
        elif s in GRID:
            out.append(GRID[s])
        else:
            raise ValueError(f"spec {s!r} is not in the ablation grid; expected one of {list(GRID)} or an AblationSpec")
    names = [s.name for s in out]
    if len(set(names)) != len(names):
        raise ValueError(f"specs {names} repeat a name; each model of the grid must be named once")
    return tuple(out)


def _log_prior_ratio(sampler: PatchSampler, correct: bool) -> np.ndarray:
    """``log(pi_train / pi_balanced)`` per class from the usable training sites (zeros when off)."""
    counts = np.array(list(sampler.class_counts.values()), dtype=np.float64)
    if not correct:
        return np.zeros(len(counts))
    present = counts > 0
    balanced = np.where(present, 1.0 / present.sum(), 0.0)
    with np.errstate(divide="ignore"):
        # A class absent from training gets -inf: probability 0, as the sampler never drew it.
        return np.where(present, np.log(counts / counts.sum()) - np.log(np.where(present, balanced, 1.0)), -np.inf)


def _per_image(dataset: xr.Dataset, name: str, fallback: str) -> np.ndarray:
    if name in dataset:
        return np.asarray(dataset[name].values).astype(str)
    return np.array([f"{fallback}{i}" if fallback == "image" else fallback for i in range(dataset.sizes["image"])])


def run_ablation(
    dataset: xr.Dataset,
    split: Split,
    specs: Sequence[str | AblationSpec] = ("image-only", "film", "shuffled", "late"),
    seeds: Sequence[int] = (0,),
    settings: TrainSettings = TrainSettings(),
    *,
    eval_seed: int = 0,
    prior_correction: bool = True,
    cache: str | Path | None = None,
    device: str | torch.device | None = None,
    progress: bool = True,
) -> AblationResult:
    """Train (or load) every model of the grid with every seed and score it on fixed patches.

    Parameters
    ----------
    dataset
        The store (:func:`~tdmctx.defects.store.open_dataset`), preferably loaded into
        memory (``.load()``).
    split
        Which images train, validate and test (:func:`~tdmctx.defects.splits.make_split`).
    specs
        Names in :data:`GRID` or :class:`AblationSpec` objects.
    seeds
        Training seeds (model initialisation, batches, dropout).
    settings
        Model size and schedule.
    eval_seed
        Seed of the fixed validation and test patches.
    prior_correction
        Move the posteriors from the balanced training batches to the class frequencies
        of the training images (see the module docstring).
    cache
        Root of the model cache; default ``cache_dir("ablations")``.
    device
        ``None``: CUDA when available, else CPU.
    progress
        A progress bar over the models.

    Returns
    -------
    AblationResult
    """
    from tdmctx.defects.ablation_metrics import fit_temperature_with_offset

    specs = _specs(specs)
    seeds = tuple(int(s) for s in seeds)
    if not seeds or len(set(seeds)) != len(seeds):
        raise ValueError(f"seeds={seeds!r} must be a non-empty sequence of distinct integers")
    if len(split.train) == 0 or len(split.val) == 0 or len(split.test) == 0:
        raise ValueError(f"split {split.name!r} has an empty part (train {len(split.train)}, val {len(split.val)}, "
                         f"test {len(split.test)} images)")
    dev = resolve_device(device)
    root = Path(cache) if cache is not None else cache_dir("ablations")
    val = fixed_patches(dataset, split.val, max_patches=settings.val_patches, seed=eval_seed + 1, device=dev)
    test = fixed_patches(dataset, split.test, max_patches=settings.test_patches, seed=eval_seed, device=dev)
    val_batches, test_batches = _batches(val), _batches(test)
    image_index = test["image_index"].numpy()
    result = AblationResult(
        split=split, specs=specs, seeds=seeds, settings=settings,
        labels=test["label"].numpy(), image_index=image_index,
        groups=_per_image(dataset, "structure", "image")[image_index],
        condition=_per_image(dataset, "condition", "all")[image_index],
    )
    folder = root / store_key(dataset) / split.key
    evaluation = {"eval_seed": eval_seed, "val": settings.val_patches, "test": settings.test_patches}
    bar = tqdm(total=len(specs) * len(seeds), desc="ablation models", disable=not progress)
    for seed in seeds:
        # One sampler per seed, shared by every model: the same batches in the same order.
        sampler = PatchSampler(dataset, images=split.train, batch_size=settings.batch_size,
                               batches_per_epoch=settings.batches_per_epoch, seed=seed, device=dev)
        log_prior = _log_prior_ratio(sampler, prior_correction)
        for spec in specs:
            bar.set_postfix(model=spec.name, seed=seed)
            model = ContextClassifier(spec.variant, fields=spec.fields, width=settings.width,
                                      blocks_per_stage=settings.blocks_per_stage, seed=seed)
            key = _hash([asdict(spec), model.config, asdict(settings), evaluation])
            ckdir = folder / f"{spec.name}-{key}" / f"seed{seed}"
            start = time.perf_counter()
            history = train(model, sampler, val_batches, epochs=settings.epochs, lr=settings.lr, seed=seed,
                            device=dev, checkpoint_dir=ckdir, resume=True, patience=settings.patience,
                            context_dropout=settings.context_dropout if spec.variant != "image-only" else 0.0,
                            shuffle_context=spec.shuffle_context, progress=False)
            call_s = time.perf_counter() - start
            val_logits, val_labels = predict_loader(model, val_batches, device=dev)
            test_logits, _ = predict_loader(model, test_batches, device=dev)
            result.runs[(spec.name, seed)] = ModelRun(
                spec=spec, seed=seed, temperature=fit_temperature_with_offset(val_logits, val_labels, log_prior),
                val_logits=val_logits, test_logits=test_logits, log_prior_ratio=log_prior, history=history, checkpoint_dir=ckdir, call_s=call_s,
            )
            bar.update()
    bar.close()
    return result

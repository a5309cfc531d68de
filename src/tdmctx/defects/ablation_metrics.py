"""Scores of an ablation with intervals resampled by structure, and the tables built from them.

The bootstrap resamples whole structures (both detector images of one simulated field
together), the honest unit: patches of one image share its noise-free signal. It is
vectorised: every metric of :func:`tdmctx.defects.evaluate.classification_summary` used
here (accuracy, macro-F1, per-class recall, NLL, ECE, mean entropy) is a function of
per-structure sums (counts, confusion matrix, calibration bins), so a replicate is a
weighted sum of those, with weights = how often each structure was drawn. One
(n_boot, n_groups) weight matrix serves every model, which makes every comparison
paired. The point estimates equal the :mod:`~tdmctx.defects.evaluate` functions (tested).

:func:`fit_temperature_with_offset` is the temperature fit of the ablation: that of
:func:`~tdmctx.defects.evaluate.fit_temperature` with the class-prior correction in place.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from tdmctx.defects.context import CLASS_NAMES
from tdmctx.defects.evaluate import as_class_ids, entropy, fit_temperature, softmax

if TYPE_CHECKING:
    from tdmctx.defects.ablation import AblationResult

__all__ = [
    "METRICS",
    "fit_temperature_with_offset",
    "bootstrap_weights",
    "group_scores",
    "paired_entropy_reduction",
    "summarise",
    "ablation_table",
    "per_condition_table",
    "per_system_table",
    "resolvable_mask",
    "patch_systems",
]

_K = len(CLASS_NAMES)
#: Metrics of one model, in table order (``recall_<class>`` per class).
METRICS: tuple[str, ...] = ("accuracy", "macro_f1", *(f"recall_{c}" for c in CLASS_NAMES), "nll", "ece",
                            "mean_entropy_nats")
_PAIRED = ("accuracy_gain", "entropy_reduction")


def fit_temperature_with_offset(logits: np.ndarray, labels: np.ndarray, offset: np.ndarray) -> float:
    """Temperature ``T`` minimising the NLL of ``softmax(logits / T + offset)``.

    :func:`~tdmctx.defects.evaluate.fit_temperature` with a fixed per-class offset (the log
    prior ratio); a bounded search over ``log T`` in [-5, 5].
    """
    from scipy.optimize import minimize_scalar

    z, b = np.asarray(logits, np.float64), np.asarray(offset, np.float64)
    t = np.asarray(labels, np.int64)
    if not np.any(np.isinf(b)) and not np.any(b):
        return fit_temperature(z, t)

    def nll(log_t: float) -> float:
        p = softmax(z / np.exp(log_t) + b)
        return float(-np.mean(np.log(np.clip(p[np.arange(len(t)), t], 1e-300, None))))

    return float(np.exp(minimize_scalar(nll, bounds=(-5.0, 5.0), method="bounded", options={"xatol": 1e-5}).x))


def bootstrap_weights(n_groups: int, n_boot: int, seed: int) -> np.ndarray:
    """(n_boot + 1, n_groups) draw counts of a group bootstrap; row 0 is the full data (all ones)."""
    if not (isinstance(n_boot, int) and n_boot >= 10):
        raise ValueError(f"n_boot={n_boot!r} must be an integer >= 10")
    rng = np.random.default_rng(seed)
    draws = rng.multinomial(n_groups, np.full(n_groups, 1.0 / n_groups), size=n_boot).astype(np.float64)
    return np.vstack([np.ones((1, n_groups)), draws])


def _stats(probs: np.ndarray, labels: np.ndarray, group_ids: np.ndarray, n_groups: int, n_bins: int) -> np.ndarray:
    """(n_groups, D) per-group sums from which every metric follows."""
    p = np.asarray(probs, dtype=np.float64)
    t = as_class_ids(labels, name="labels", num_classes=p.shape[1])
    pred, conf = p.argmax(1), p.max(1)
    correct = (pred == t).astype(np.float64)
    per_sample = np.stack([np.ones(len(t)), correct, -np.log(np.clip(p[np.arange(len(t)), t], 1e-12, None)),
                           entropy(p)], axis=1)
    scalars = np.zeros((n_groups, 4))
    np.add.at(scalars, group_ids, per_sample)
    confusion = np.bincount(group_ids * _K * _K + t * _K + pred, minlength=n_groups * _K * _K).reshape(n_groups, -1)
    # The bins of tdmctx.defects.evaluate.reliability.
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    b = np.clip(np.searchsorted(edges, conf, side="right") - 1, 0, n_bins - 1)
    bins = np.zeros((n_groups, 2 * n_bins))
    np.add.at(bins, (group_ids, b), conf)
    np.add.at(bins, (group_ids, n_bins + b), correct)
    return np.hstack([scalars, confusion, bins])


def _metrics(agg: np.ndarray, n_bins: int) -> dict[str, np.ndarray]:
    """Metrics from summed statistics (..., D)."""
    n = agg[..., 0]
    cm = agg[..., 4 : 4 + _K * _K].reshape(*agg.shape[:-1], _K, _K)
    tp = np.diagonal(cm, axis1=-2, axis2=-1)
    support, predicted = cm.sum(-1), cm.sum(-2)
    with np.errstate(divide="ignore", invalid="ignore"):
        recall = np.where(support > 0, tp / support, np.nan)
        f1 = np.where(support + predicted > 0, 2 * tp / (support + predicted), np.nan)
        bins = agg[..., 4 + _K * _K :]
        out = {
            "accuracy": agg[..., 1] / n,
            "macro_f1": np.nanmean(f1, axis=-1) if np.isfinite(f1).any() else np.full(n.shape, np.nan),
            "nll": agg[..., 2] / n,
            "ece": np.abs(bins[..., n_bins:] - bins[..., :n_bins]).sum(-1) / n,
            "mean_entropy_nats": agg[..., 3] / n,
        }
    for k, c in enumerate(CLASS_NAMES):
        out[f"recall_{c}"] = recall[..., k]
    return out


def _group_ids(groups: np.ndarray) -> tuple[np.ndarray, int]:
    uniq, ids = np.unique(np.asarray(groups).astype(str), return_inverse=True)
    return ids, len(uniq)


def group_scores(
    probs: np.ndarray, labels: np.ndarray, groups: np.ndarray, *, weights: np.ndarray | None = None,
    n_boot: int = 1000, seed: int = 0, n_bins: int = 15,
) -> dict[str, np.ndarray]:
    """Every metric of :data:`METRICS` on the full data (index 0) and each bootstrap replicate.

    Parameters
    ----------
    probs
        (N, 5) calibrated probabilities.
    labels
        (N,) true classes.
    groups
        (N,) resampling unit of each sample (structure or image id).
    weights
        (n_boot + 1, n_groups) from :func:`bootstrap_weights` (to share between models);
        drawn with ``n_boot`` and ``seed`` when ``None``.
    n_bins
        Calibration bins (ECE).

    Returns
    -------
    dict
        ``metric -> (n_boot + 1,)`` values.
    """
    ids, g = _group_ids(groups)
    w = bootstrap_weights(g, n_boot, seed) if weights is None else weights
    if w.shape[1] != g:
        raise ValueError(f"weights cover {w.shape[1]} groups; the data have {g}")
    return _metrics(w @ _stats(probs, labels, ids, g, n_bins), n_bins)


def _interval(values: np.ndarray, confidence: float) -> tuple[float, float]:
    reps = values[1:][np.isfinite(values[1:])]
    if reps.size == 0:
        return float("nan"), float("nan")
    alpha = (1 - confidence) / 2
    low, high = np.quantile(reps, [alpha, 1 - alpha])
    return float(low), float(high)


def paired_entropy_reduction(
    probs_reference: np.ndarray, probs_context: np.ndarray, groups: np.ndarray, *,
    n_boot: int = 1000, confidence: float = 0.95, seed: int = 0,
) -> dict[str, float]:
    """``(H_reference - H_context) / H_reference`` with a paired group-bootstrap interval.

    Both models' mean entropies are taken on the same resampled groups in every replicate.

    Returns
    -------
    dict
        ``estimate``, ``low``, ``high``.
    """
    pr, pc = np.asarray(probs_reference, np.float64), np.asarray(probs_context, np.float64)
    if pr.shape != pc.shape or pr.shape[0] != len(groups):
        raise ValueError(f"probs_reference {pr.shape}, probs_context {pc.shape} and groups ({len(groups)},) "
                         "must cover the same samples")
    ids, g = _group_ids(groups)
    w = bootstrap_weights(g, n_boot, seed)
    h = np.zeros((g, 2))
    np.add.at(h, ids, np.stack([entropy(pr), entropy(pc)], axis=1))
    sums = w @ h
    with np.errstate(divide="ignore", invalid="ignore"):
        red = 1.0 - sums[:, 1] / sums[:, 0]
    low, high = _interval(red, confidence)
    return {"estimate": float(red[0]), "low": low, "high": high}


def summarise(
    result: AblationResult, *, reference: str = "image-only", n_boot: int = 1000, confidence: float = 0.95,
    seed: int = 0, n_bins: int = 15, per_seed: bool = True,
) -> pd.DataFrame:
    """Tidy table of every metric of every model, pooled over seeds and per seed.

    Parameters
    ----------
    result
        :func:`~tdmctx.defects.ablation.run_ablation` output.
    reference
        Model the paired comparisons are made against (``accuracy_gain`` = accuracy minus
        the reference's; ``entropy_reduction`` = ``(H_ref - H) / H_ref``); skipped when it
        is not in the grid.
    n_boot, confidence, seed
        Bootstrap replicates, coverage, seed (structures are resampled; every model and
        seed sees the same replicates).
    per_seed
        Add one block per seed (besides the pooled one) when there are several seeds.

    Returns
    -------
    pandas.DataFrame
        Columns ``model``, ``label``, ``seed`` (``"pooled"`` or the seed), ``metric``,
        ``estimate``, ``low``, ``high``. Pooled estimates score the stacked predictions
        of all seeds (resampling a structure takes its patches from every seed).
        ``temperature`` rows give the fitted T (pooled: the mean over seeds, with the
        smallest and largest as ``low`` and ``high``, not an interval).
    """
    ids, g = _group_ids(result.groups)
    weights = bootstrap_weights(g, n_boot, seed)
    names = [s.name for s in result.specs]
    blocks: list[tuple[str | int, tuple[int, ...]]] = [("pooled", result.seeds)]
    if per_seed and len(result.seeds) > 1:
        blocks += [(s, (s,)) for s in result.seeds]
    rows = []
    for block, seeds in blocks:
        stats = {}
        for spec in result.specs:
            stats[spec.name] = sum(_stats(result.runs[(spec.name, s)].test_probs, result.labels, ids, g, n_bins)
                                   for s in seeds)
        for spec in result.specs:
            agg = weights @ stats[spec.name]
            values = _metrics(agg, n_bins)
            if reference in names and spec.name != reference:
                ref = weights @ stats[reference]
                with np.errstate(divide="ignore", invalid="ignore"):
                    values["accuracy_gain"] = agg[:, 1] / agg[:, 0] - ref[:, 1] / ref[:, 0]
                    values["entropy_reduction"] = 1.0 - agg[:, 3] / ref[:, 3]
            base = {"model": spec.name, "label": spec.label, "seed": block}
            temps = [result.runs[(spec.name, s)].temperature for s in seeds]
            rows.append({**base, "metric": "temperature", "estimate": float(np.mean(temps)),
                         "low": float(np.min(temps)), "high": float(np.max(temps))})
            for metric in (*METRICS, *_PAIRED):
                if metric in values:
                    low, high = _interval(values[metric], confidence)
                    rows.append({**base, "metric": metric, "estimate": float(values[metric][0]), "low": low,
                                 "high": high})
    return pd.DataFrame(rows)


def ablation_table(tidy: pd.DataFrame, *, seed: str | int = "pooled", intervals: bool = True) -> pd.DataFrame:
    """Wide table of :func:`summarise`: one row per model, ``metric``, ``metric_low``, ``metric_high``.

    Parameters
    ----------
    tidy
        :func:`summarise` output.
    seed
        ``"pooled"`` or one seed.
    intervals
        Keep the ``_low``/``_high`` columns.
    """
    sub = tidy[tidy["seed"].astype(str) == str(seed)]
    if sub.empty:
        raise ValueError(f"seed={seed!r} is not in the table; expected 'pooled' or one of "
                         f"{sorted(set(tidy['seed'].astype(str)))}")
    order = list(dict.fromkeys(sub["model"]))
    metrics = list(dict.fromkeys(sub["metric"]))
    wide = sub.pivot(index="model", columns="metric", values=["estimate", "low", "high"])
    cols = {}
    for m in metrics:
        cols[m] = wide[("estimate", m)]
        if intervals and m != "temperature":
            cols[f"{m}_low"], cols[f"{m}_high"] = wide[("low", m)], wide[("high", m)]
    out = pd.DataFrame(cols).loc[order]
    out.insert(0, "label", sub.drop_duplicates("model").set_index("model")["label"].loc[order])
    return out


def per_condition_table(
    result: AblationResult, specs: Sequence[str] | None = None, *, n_boot: int = 1000, confidence: float = 0.95,
    seed: int = 0,
) -> pd.DataFrame:
    """Accuracy per imaging condition and model (seeds pooled), with structure-bootstrap intervals.

    Returns
    -------
    pandas.DataFrame
        Columns ``condition``, ``model``, ``label``, ``patches``, ``accuracy``, ``low``, ``high``.
    """
    names = [s.name for s in result.specs] if specs is None else list(specs)
    labels = {s.name: s.label for s in result.specs}
    rows = []
    for cond in sorted(set(result.condition)):
        here = result.condition == cond
        groups = result.stacked(result.groups[here])
        ids, g = _group_ids(groups)
        w = bootstrap_weights(g, n_boot, seed)
        for name in names:
            probs = np.concatenate([result.runs[(name, s)].test_probs[here] for s in result.seeds])
            acc = _metrics(w @ _stats(probs, result.stacked(result.labels[here]), ids, g, 15), 15)["accuracy"]
            low, high = _interval(acc, confidence)
            rows.append({"condition": cond, "model": name, "label": labels.get(name, name), "patches": int(here.sum()),
                         "accuracy": float(acc[0]), "low": low, "high": high})
    return pd.DataFrame(rows)


def patch_systems(result: AblationResult, dataset) -> np.ndarray:
    """(N,) system name (``"MoS2:Nb"``) of each test patch, read from the store's ``system`` variable."""
    if "system" not in dataset:
        raise ValueError("dataset has no 'system' variable; expected the store of tdmctx.defects.open_dataset")
    return np.asarray(dataset["system"].values).astype(str)[result.image_index]


def resolvable_mask(result: AblationResult, dataset) -> np.ndarray:
    """(N,) True for test patches of systems whose dopant is resolvable by Z contrast.

    See :attr:`tdmctx.defects.catalog.System.z_contrast_resolvable`: in systems such as Nb in
    MoS2 or Re in WSe2 (Z contrast of a few %) a dopant column looks like a metal column to any ADF
    classifier, which caps accuracy and entropy reduction on every metal-lattice site of
    those images. Scoring with and without them separates that physical limit from the
    classifier's own errors.
    """
    from tdmctx.defects.catalog import get_system

    systems = patch_systems(result, dataset)
    ok = {name: get_system(name).z_contrast_resolvable for name in set(systems)}
    return np.array([ok[name] for name in systems], dtype=bool)


def per_system_table(result: AblationResult, dataset, specs: Sequence[str] | None = None) -> pd.DataFrame:
    """Accuracy and dopant recall per system and model (seeds pooled), with ``delta_Z`` and ``z_contrast``.

    Returns
    -------
    pandas.DataFrame
        Columns ``system``, ``delta_Z``, ``z_contrast``, ``resolvable``, ``model``, ``patches``,
        ``accuracy``, ``dopant_sites``, ``dopant_recall``, ``dopant_called_metal``.
    """
    from tdmctx.defects.catalog import get_system

    names = [s.name for s in result.specs] if specs is None else list(specs)
    systems = result.stacked(patch_systems(result, dataset))
    labels = result.stacked(result.labels)
    dopant, metal = CLASS_NAMES.index("dopant"), CLASS_NAMES.index("metal")
    rows = []
    for name in names:
        pred = result.probs(name).argmax(1)
        for system in sorted(set(systems)):
            here = systems == system
            dop = here & (labels == dopant)
            info = get_system(system)
            rows.append({
                "system": system, "delta_Z": info.delta_Z, "z_contrast": info.z_contrast, "resolvable": info.z_contrast_resolvable, "model": name,
                "patches": int(here.sum()), "accuracy": float(np.mean(pred[here] == labels[here])),
                "dopant_sites": int(dop.sum()),
                "dopant_recall": float(np.mean(pred[dop] == dopant)) if dop.any() else np.nan,
                "dopant_called_metal": float(np.mean(pred[dop] == metal)) if dop.any() else np.nan,
            })
    return pd.DataFrame(rows)

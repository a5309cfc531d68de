"""Metrics for the column classifiers: scores, calibration, entropy, bootstrap, prior shift.

Conventions
-----------
- Labels are integer ids or class names in the order of
  :data:`~tdmctx.defects.context.CLASS_NAMES` (``metal``, ``dopant``, ``X2``, ``V1``,
  ``V2``); every table and confusion matrix uses that order, rows = true class, columns =
  predicted class.
- Probabilities are (N, K) arrays whose rows sum to one; logits are (N, K) arrays.
- Entropies are in **nats** (natural logarithm) unless ``base=2`` is asked for (bits).
- A score that is undefined (0 / 0: precision of a class never predicted, recall of a class
  absent from the labels) is ``nan``, never silently 0; macro averages skip ``nan``.
- Every resampling takes a ``seed``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch

from tdmctx.defects.context import CLASS_IDS, CLASS_NAMES

__all__ = [
    "as_class_ids",
    "softmax",
    "accuracy",
    "confusion_matrix",
    "per_class_scores",
    "macro_f1",
    "cohen_kappa",
    "nll",
    "entropy",
    "mean_entropy",
    "entropy_reduction",
    "reliability",
    "expected_calibration_error",
    "fit_temperature",
    "bootstrap_ci",
    "paired_bootstrap",
    "prior_shift",
    "em_priors",
    "restrict_to_sublattice",
    "classification_summary",
]

_K = len(CLASS_NAMES)


# -- inputs -------------------------------------------------------------------------------


def as_class_ids(labels: Sequence[int | str] | np.ndarray, *, name: str = "labels", num_classes: int = _K) -> np.ndarray:
    """Class ids (int64) from ids or class names.

    Raises
    ------
    ValueError
        For an unknown class name or an id outside ``0 .. num_classes - 1``.
    """
    arr = np.asarray(labels)
    if arr.ndim != 1:
        raise ValueError(f"{name} must be 1-D; got shape {arr.shape}")
    if arr.dtype.kind in "USO":
        unknown = sorted(set(arr.tolist()) - set(CLASS_IDS))
        if unknown:
            raise ValueError(f"{name} holds unknown class name(s) {unknown[:5]}; expected {CLASS_NAMES}")
        return np.array([CLASS_IDS[v] for v in arr.tolist()], dtype=np.int64)
    if arr.size and (arr.dtype.kind not in "iu" or arr.min() < 0 or arr.max() >= num_classes):
        raise ValueError(f"{name} must hold class ids 0-{num_classes - 1} or class names; got {arr.dtype} "
                         f"in [{arr.min()}, {arr.max()}]")
    return arr.astype(np.int64)


def _probs(probs: np.ndarray, name: str = "probs") -> np.ndarray:
    p = np.asarray(probs, dtype=np.float64)
    if p.ndim != 2:
        raise ValueError(f"{name} must be (N, K) probabilities; got shape {p.shape}")
    if not (np.all(np.isfinite(p)) and p.min() >= 0 and np.allclose(p.sum(axis=1), 1.0, atol=1e-4)):
        raise ValueError(f"{name} rows must be non-negative and sum to 1 (softmax output); pass probabilities, not logits")
    return p


def _pair(y_true: Any, y_pred: Any, num_classes: int) -> tuple[np.ndarray, np.ndarray]:
    t = as_class_ids(y_true, name="y_true", num_classes=num_classes)
    p = as_class_ids(y_pred, name="y_pred", num_classes=num_classes)
    if t.shape != p.shape:
        raise ValueError(f"y_true has {t.shape[0]} labels and y_pred {p.shape[0]}; expected the same number")
    if t.size == 0:
        raise ValueError("y_true is empty; expected at least one sample")
    return t, p


def softmax(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    """Row-wise ``softmax(logits / temperature)`` in float64."""
    if not temperature > 0:
        raise ValueError(f"temperature={temperature!r} must be positive")
    z = np.asarray(logits, dtype=np.float64) / temperature
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


# -- hard-label scores ----------------------------------------------------------------------


def accuracy(y_true: Any, y_pred: Any) -> float:
    """Fraction of correct predictions."""
    t, p = _pair(y_true, y_pred, _K)
    return float(np.mean(t == p))


def confusion_matrix(y_true: Any, y_pred: Any, *, num_classes: int = _K) -> np.ndarray:
    """(K, K) counts, rows = true class, columns = predicted class, in the design's order."""
    t, p = _pair(y_true, y_pred, num_classes)
    return np.bincount(t * num_classes + p, minlength=num_classes**2).reshape(num_classes, num_classes)


def per_class_scores(y_true: Any, y_pred: Any, *, num_classes: int = _K) -> dict[str, np.ndarray]:
    """Precision, recall, F1 and support per class.

    ``F1 = 2 TP / (2 TP + FP + FN)``, which is defined whenever the class occurs in the
    labels or the predictions (a class with support but never predicted has F1 = 0 and
    precision ``nan``).

    Returns
    -------
    dict
        ``precision``, ``recall``, ``f1`` (float, (K,)) and ``support`` (int, (K,)).
    """
    cm = confusion_matrix(y_true, y_pred, num_classes=num_classes)
    tp = np.diag(cm).astype(np.float64)
    predicted = cm.sum(axis=0)
    support = cm.sum(axis=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        precision = np.where(predicted > 0, tp / predicted, np.nan)
        recall = np.where(support > 0, tp / support, np.nan)
        denom = 2 * tp + (predicted - tp) + (support - tp)
        f1 = np.where(denom > 0, 2 * tp / denom, np.nan)
    return {"precision": precision, "recall": recall, "f1": f1, "support": support}


def macro_f1(y_true: Any, y_pred: Any, *, num_classes: int = _K) -> float:
    """Unweighted mean F1 over the classes present in the labels or the predictions."""
    return float(np.nanmean(per_class_scores(y_true, y_pred, num_classes=num_classes)["f1"]))


def cohen_kappa(y_true: Any, y_pred: Any, *, num_classes: int = _K) -> float:
    """Cohen's kappa, ``(p_o - p_e) / (1 - p_e)``, agreement beyond chance.

    Returns ``nan`` when chance agreement is already 1 (a single class everywhere).
    """
    cm = confusion_matrix(y_true, y_pred, num_classes=num_classes).astype(np.float64)
    n = cm.sum()
    p_o = np.trace(cm) / n
    p_e = float(cm.sum(axis=1) @ cm.sum(axis=0)) / n**2
    return float((p_o - p_e) / (1 - p_e)) if p_e < 1 else float("nan")


# -- probabilistic scores -------------------------------------------------------------------


def nll(probs: np.ndarray, y_true: Any, *, eps: float = 1e-12) -> float:
    """Mean negative log-likelihood of the true class, nats per sample."""
    p = _probs(probs)
    t = as_class_ids(y_true, name="y_true", num_classes=p.shape[1])
    if t.shape[0] != p.shape[0]:
        raise ValueError(f"probs has {p.shape[0]} rows and y_true {t.shape[0]} labels; expected the same number")
    return float(-np.mean(np.log(np.clip(p[np.arange(len(t)), t], eps, None))))


def entropy(probs: np.ndarray, *, base: float = np.e) -> np.ndarray:
    """Shannon entropy of each row, ``-sum p log p``: nats by default, bits with ``base=2``."""
    p = _probs(probs)
    with np.errstate(divide="ignore", invalid="ignore"):
        h = -np.sum(np.where(p > 0, p * np.log(p), 0.0), axis=1)
    return h / np.log(base)


def mean_entropy(probs: np.ndarray, *, base: float = np.e) -> float:
    """Mean posterior entropy, nats by default (bits with ``base=2``)."""
    return float(np.mean(entropy(probs, base=base)))


def entropy_reduction(probs_image: np.ndarray, probs_context: np.ndarray) -> float:
    """Relative drop of the mean entropy, ``(H_image - H_context) / H_image``.

    Both sets of probabilities must be on the same samples and should be temperature
    scaled first (:func:`fit_temperature`) so that overconfidence cannot fake a reduction.
    The ratio does not depend on the logarithm base.
    """
    pi, pc = _probs(probs_image, "probs_image"), _probs(probs_context, "probs_context")
    if pi.shape != pc.shape:
        raise ValueError(f"probs_image {pi.shape} and probs_context {pc.shape} must cover the same samples")
    h_img = mean_entropy(pi)
    if h_img == 0:
        raise ValueError("the image-only model has zero mean entropy; the reduction is undefined")
    return float((h_img - mean_entropy(pc)) / h_img)


def reliability(probs: np.ndarray, y_true: Any, *, n_bins: int = 15) -> dict[str, np.ndarray]:
    """Reliability-diagram data: accuracy against confidence in equal-width bins.

    Parameters
    ----------
    probs
        (N, K) probabilities; the confidence is the largest one.
    y_true
        (N,) true classes.
    n_bins
        Bins over [0, 1]; a confidence of exactly 1 falls in the last bin.

    Returns
    -------
    dict
        ``edges`` (n_bins + 1,), ``confidence`` and ``accuracy`` (mean per bin, ``nan``
        where empty) and ``count`` (n_bins,).
    """
    p = _probs(probs)
    t = as_class_ids(y_true, name="y_true", num_classes=p.shape[1])
    if t.shape[0] != p.shape[0]:
        raise ValueError(f"probs has {p.shape[0]} rows and y_true {t.shape[0]} labels; expected the same number")
    if not (isinstance(n_bins, int) and n_bins >= 1):
        raise ValueError(f"n_bins={n_bins!r} must be a positive integer")
    conf = p.max(axis=1)
    correct = (p.argmax(axis=1) == t).astype(np.float64)
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    idx = np.clip(np.searchsorted(edges, conf, side="right") - 1, 0, n_bins - 1)
    count = np.bincount(idx, minlength=n_bins)
    with np.errstate(divide="ignore", invalid="ignore"):
        mean_conf = np.bincount(idx, conf, minlength=n_bins) / count
        mean_acc = np.bincount(idx, correct, minlength=n_bins) / count
    return {"edges": edges, "confidence": mean_conf, "accuracy": mean_acc, "count": count}


def expected_calibration_error(probs: np.ndarray, y_true: Any, *, n_bins: int = 15) -> float:
    """ECE: count-weighted mean ``|accuracy - confidence|`` over the bins of :func:`reliability`."""
    r = reliability(probs, y_true, n_bins=n_bins)
    full = r["count"] > 0
    gap = np.abs(r["accuracy"][full] - r["confidence"][full])
    return float(np.sum(gap * r["count"][full]) / r["count"].sum())


def fit_temperature(logits: np.ndarray, y_true: Any, *, max_iter: int = 200) -> float:
    """Temperature ``T`` minimising the NLL of ``softmax(logits / T)`` (Guo et al. 2017).

    Fitted on a validation split with L-BFGS over ``log T`` (which keeps ``T`` positive and
    makes the problem better conditioned), in float64 on the CPU.

    Returns
    -------
    float
        The temperature; ``T > 1`` softens an overconfident model.
    """
    z = torch.as_tensor(np.asarray(logits, dtype=np.float64))
    if z.ndim != 2:
        raise ValueError(f"logits must be (N, K); got shape {tuple(z.shape)}")
    t = torch.as_tensor(as_class_ids(y_true, name="y_true", num_classes=z.shape[1]))
    if t.shape[0] != z.shape[0]:
        raise ValueError(f"logits has {z.shape[0]} rows and y_true {t.shape[0]} labels; expected the same number")
    log_t = torch.zeros((), dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([log_t], lr=0.5, max_iter=max_iter, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(z / log_t.exp(), t)
        loss.backward()
        return loss

    opt.step(closure)
    return float(log_t.detach().exp())


# -- resampling -----------------------------------------------------------------------------


def _resample_index(n: int, groups: np.ndarray | None, rng: np.random.Generator) -> np.ndarray:
    if groups is None:
        return rng.integers(0, n, n)
    # Cluster bootstrap: draw whole groups (e.g. simulated images), keep all their samples.
    uniq, inverse = np.unique(groups, return_inverse=True)
    members = np.split(np.argsort(inverse, kind="stable"), np.cumsum(np.bincount(inverse))[:-1])
    chosen = rng.integers(0, len(uniq), len(uniq))
    return np.concatenate([members[g] for g in chosen])


def _check_resampling(n: int, n_boot: int, confidence: float, groups: Any) -> np.ndarray | None:
    if not (isinstance(n_boot, int) and n_boot >= 10):
        raise ValueError(f"n_boot={n_boot!r} must be an integer >= 10")
    if not 0 < confidence < 1:
        raise ValueError(f"confidence={confidence!r} must be in (0, 1)")
    if groups is None:
        return None
    g = np.asarray(groups)
    if g.shape != (n,):
        raise ValueError(f"groups has shape {g.shape}; expected ({n},), one group per sample")
    return g


def bootstrap_ci(
    metric: Callable[..., float],
    *arrays: np.ndarray,
    n_boot: int = 1000,
    confidence: float = 0.95,
    seed: int = 0,
    groups: np.ndarray | None = None,
) -> dict[str, float]:
    """Percentile bootstrap confidence interval of ``metric(*arrays)``.

    Parameters
    ----------
    metric
        Function of the arrays, resampled together along their first axis, e.g.
        ``lambda t, p: cohen_kappa(t, p)``.
    arrays
        Arrays with the same first dimension (samples).
    n_boot
        Bootstrap replicates.
    confidence
        Coverage of the interval.
    seed
        Seed of the resampling.
    groups
        Optional (N,) group labels (image ids): whole groups are resampled, the honest
        choice when samples of one image are correlated.

    Returns
    -------
    dict
        ``estimate`` (on the full data), ``low``, ``high``, ``std`` (bootstrap standard
        error). Replicates where the metric is ``nan`` are skipped.
    """
    if not arrays:
        raise ValueError("bootstrap_ci needs at least one array to resample")
    arrs = [np.asarray(a) for a in arrays]
    n = arrs[0].shape[0]
    if any(a.shape[0] != n for a in arrs):
        raise ValueError(f"arrays have first dimensions {[a.shape[0] for a in arrs]}; expected all equal")
    g = _check_resampling(n, n_boot, confidence, groups)
    rng = np.random.default_rng(seed)
    reps = np.array([metric(*(a[idx] for a in arrs)) for idx in (_resample_index(n, g, rng) for _ in range(n_boot))],
                    dtype=np.float64)
    reps = reps[np.isfinite(reps)]
    alpha = (1 - confidence) / 2
    low, high = (np.quantile(reps, [alpha, 1 - alpha]) if reps.size else (np.nan, np.nan))
    return {"estimate": float(metric(*arrs)), "low": float(low), "high": float(high),
            "std": float(reps.std(ddof=1)) if reps.size > 1 else float("nan")}


def paired_bootstrap(
    metric: Callable[..., float],
    y_true: np.ndarray,
    pred_a: np.ndarray,
    pred_b: np.ndarray,
    *,
    n_boot: int = 1000,
    confidence: float = 0.95,
    seed: int = 0,
    groups: np.ndarray | None = None,
) -> dict[str, float]:
    """Paired bootstrap of ``metric(y, a) - metric(y, b)`` for two models on the same samples.

    Both models are scored on the same resampled indices, so the shared difficulty of the
    samples cancels and the interval is much narrower than from two separate bootstraps.

    Parameters
    ----------
    metric
        ``metric(y_true, pred)`` (predicted ids or probabilities, whatever it takes).
    y_true, pred_a, pred_b
        Labels and the two models' outputs, first axis = samples.

    Returns
    -------
    dict
        ``difference`` (a - b on the full data), ``low``, ``high``, and ``p_value``: a
        two-sided bootstrap p-value for "no difference", twice the smaller fraction of
        replicates on either side of zero (bounded below by ``1 / n_boot``).
    """
    t, a, b = np.asarray(y_true), np.asarray(pred_a), np.asarray(pred_b)
    n = t.shape[0]
    if a.shape[0] != n or b.shape[0] != n:
        raise ValueError(f"y_true, pred_a, pred_b have {n}, {a.shape[0]}, {b.shape[0]} samples; expected the same")
    g = _check_resampling(n, n_boot, confidence, groups)
    rng = np.random.default_rng(seed)
    diffs = []
    for _ in range(n_boot):
        idx = _resample_index(n, g, rng)
        diffs.append(metric(t[idx], a[idx]) - metric(t[idx], b[idx]))
    d = np.asarray(diffs, dtype=np.float64)
    d = d[np.isfinite(d)]
    alpha = (1 - confidence) / 2
    low, high = np.quantile(d, [alpha, 1 - alpha])
    p = 2 * min(np.mean(d <= 0), np.mean(d >= 0))
    return {"difference": float(metric(t, a) - metric(t, b)), "low": float(low), "high": float(high),
            "p_value": float(min(1.0, max(p, 1.0 / n_boot)))}


# -- prior shift ----------------------------------------------------------------------------


def _priors(priors: Any, k: int, name: str) -> np.ndarray:
    p = np.asarray(priors, dtype=np.float64)
    if p.shape != (k,) or np.any(p < 0) or not np.isclose(p.sum(), 1.0, atol=1e-6):
        raise ValueError(f"{name} must be {k} non-negative class frequencies summing to 1; got {np.round(p, 4)}")
    return p


def prior_shift(probs: np.ndarray, source_priors: Any, target_priors: Any) -> np.ndarray:
    """Adapt posteriors to new class priors (Bayes' rule, likelihoods unchanged).

    ``p_t(c | x) ∝ p_s(c | x) * pi_t(c) / pi_s(c)``, renormalised per row. ``source_priors``
    are the class frequencies the model was trained on; ``target_priors`` those of the data
    it is applied to (known, or estimated with :func:`em_priors`). A class with source
    prior 0 keeps probability 0.
    """
    p = _probs(probs)
    ps = _priors(source_priors, p.shape[1], "source_priors")
    pt = _priors(target_priors, p.shape[1], "target_priors")
    with np.errstate(divide="ignore", invalid="ignore"):
        w = np.where(ps > 0, pt / ps, 0.0)
    q = p * w
    total = q.sum(axis=1, keepdims=True)
    if np.any(total <= 0):
        raise ValueError("target_priors give zero weight to every class some sample may belong to")
    return q / total


def em_priors(
    probs: np.ndarray, source_priors: Any, *, tol: float = 1e-8, max_iter: int = 1000
) -> tuple[np.ndarray, np.ndarray]:
    """Estimate the target class priors without labels (EM of Saerens et al. 2002).

    Alternates :func:`prior_shift` of the posteriors to the current prior estimate and
    re-estimating the priors as the mean adapted posterior, from the source priors until
    the priors change by less than ``tol``. The model should be calibrated (temperature
    scaled) first; EM trusts its posteriors.

    Returns
    -------
    priors, adapted
        (K,) estimated target priors and the (N, K) posteriors adapted to them.
    """
    p = _probs(probs)
    ps = _priors(source_priors, p.shape[1], "source_priors")
    prior = ps.copy()
    for _ in range(max_iter):
        adapted = prior_shift(p, ps, prior)
        new = adapted.mean(axis=0)
        new = new / new.sum()
        if np.max(np.abs(new - prior)) < tol:
            prior = new
            break
        prior = new
    return prior, prior_shift(p, ps, prior)


def restrict_to_sublattice(probs: np.ndarray, metal_site: np.ndarray) -> np.ndarray:
    """Posteriors conditioned on each site's sublattice.

    ``p(c | x, s) ∝ p(c | x) 1[c on s]``: metal and dopant on metal sites, X2, V1, V2 on
    chalcogen sites; a row with no mass on its sublattice becomes uniform over it.

    Parameters
    ----------
    probs
        (N, 5) posteriors.
    metal_site
        (N,) bool, True on the metal sublattice.
    """
    p = np.asarray(probs, dtype=np.float64)
    mask = np.asarray(metal_site, dtype=bool)
    if mask.shape != (p.shape[0],):
        raise ValueError(f"metal_site has shape {mask.shape}; expected ({p.shape[0]},), one flag per site")
    on_metal = np.isin(np.asarray(CLASS_NAMES), ("metal", "dopant"))
    allowed = np.where(mask[:, None], on_metal[None], ~on_metal[None]).astype(np.float64)
    q = p * allowed
    total = q.sum(1, keepdims=True)
    q = np.where(total > 0, q / np.where(total > 0, total, 1.0), allowed / allowed.sum(1, keepdims=True))
    return q


# -- summary --------------------------------------------------------------------------------


def classification_summary(y_true: Any, probs: np.ndarray, *, n_bins: int = 15) -> dict[str, Any]:
    """All point metrics of one model on one set, from its (calibrated) probabilities.

    Returns
    -------
    dict
        ``accuracy``, ``macro_f1``, ``kappa``, ``nll`` (nats), ``ece``,
        ``mean_entropy_nats``, ``confusion`` ((K, K) counts), and per-class arrays
        ``precision``, ``recall``, ``f1``, ``support`` in the design's class order.
    """
    p = _probs(probs)
    t = as_class_ids(y_true, name="y_true", num_classes=p.shape[1])
    pred = p.argmax(axis=1)
    scores = per_class_scores(t, pred, num_classes=p.shape[1])
    return {
        "accuracy": accuracy(t, pred),
        "macro_f1": float(np.nanmean(scores["f1"])),
        "kappa": cohen_kappa(t, pred, num_classes=p.shape[1]),
        "nll": nll(p, t),
        "ece": expected_calibration_error(p, t, n_bins=n_bins),
        "mean_entropy_nats": mean_entropy(p),
        "confusion": confusion_matrix(t, pred, num_classes=p.shape[1]),
        **scores,
    }

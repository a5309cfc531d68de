"""How well a classifier *ranks* the metal sites of a labelled field, apart from its threshold.

A network can lose to a one-dimensional intensity threshold for two different reasons: its
decision threshold (priors, calibration) is off, or its scores order the sites worse than
the column intensity does. The two call for different fixes. :func:`dopant_ranking`
separates them on the metal sublattice, where the only choice is metal or dopant: the
area under the ROC curve of the network's log-odds ``log p(metal) - log p(dopant)``, and the
dopant F1 that the *best* threshold on that score reaches, tuned on the labels exactly as the
oracle intensity baseline (:func:`tdmctx.defects.baseline.oracle_baseline`) tunes its
threshold. Both are invariant to any class-prior correction and to the sublattice
restriction, which rescale the two posteriors of a metal site by common factors.

The labels enter on purpose: this is a diagnostic upper bound, like the oracle baseline,
not a method.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from scipy.stats import rankdata

from tdmctx.defects.baseline import oracle_threshold
from tdmctx.defects.context import CLASS_IDS, CLASS_NAMES
from tdmctx.defects.evaluate import per_class_scores

__all__ = ["dopant_ranking", "roc_auc"]


def roc_auc(score: np.ndarray, positive: np.ndarray) -> float:
    """Area under the ROC curve of ``score`` for ``positive`` (higher score: more positive).

    The Mann-Whitney statistic with mid-ranks for ties; ``nan`` when one class is absent.
    """
    s = np.asarray(score, dtype=np.float64)
    y = np.asarray(positive, dtype=bool)
    if s.ndim != 1 or y.shape != s.shape:
        raise ValueError(f"score {s.shape} and positive {y.shape} must be 1-D of the same length")
    n_pos, n_neg = int(y.sum()), int((~y).sum())
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    ranks = rankdata(s)
    return float((ranks[y].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def dopant_ranking(
    probs: np.ndarray, labels: Sequence[str] | np.ndarray, metal_site: np.ndarray
) -> dict[str, Any]:
    """Ranking quality of a classifier's dopant calls on the metal sublattice.

    Parameters
    ----------
    probs
        (N, 5) posteriors of every site (any prior correction: the ranking ignores it).
    labels
        (N,) human labels (class names).
    metal_site
        (N,) bool, True on the metal sublattice (label-free, e.g.
        :func:`~tdmctx.defects.baseline.metal_sites_two_channels`).

    Returns
    -------
    dict
        ``auc`` (dopant against metal labels on the metal sublattice), ``oracle_dopant_f1``,
        ``oracle_dopant_precision``, ``oracle_dopant_recall`` (the whole field scored, dopants
        called on the metal sublattice wherever the log-odds is below the label-tuned
        threshold), ``n_metal_sites``.
    """
    p = np.asarray(probs, dtype=np.float64)
    names = np.asarray(labels).astype(str)
    mask = np.asarray(metal_site, dtype=bool)
    n = len(names)
    if p.shape != (n, len(CLASS_NAMES)) or mask.shape != (n,):
        raise ValueError(f"probs {p.shape}, labels {names.shape} and metal_site {mask.shape} must describe the same "
                         f"{n} sites, with {len(CLASS_NAMES)} class columns")
    if not np.all(np.isfinite(p)):
        raise ValueError("probs holds NaN or inf")
    tiny = np.finfo(np.float64).tiny
    metalness = np.log(p[:, CLASS_IDS["metal"]] + tiny) - np.log(p[:, CLASS_IDS["dopant"]] + tiny)
    scored = mask & np.isin(names, ("metal", "dopant"))
    is_dopant = names[scored] == "dopant"
    threshold = oracle_threshold(metalness[scored], is_dopant)
    predicted = np.where(mask, "metal", "X2").astype("<U6")
    predicted[mask & (metalness < threshold)] = "dopant"
    s = per_class_scores(names, predicted)
    k = CLASS_IDS["dopant"]
    return {
        "auc": roc_auc(-metalness[scored], is_dopant),
        "oracle_dopant_f1": float(s["f1"][k]),
        "oracle_dopant_precision": float(s["precision"][k]),
        "oracle_dopant_recall": float(s["recall"][k]),
        "n_metal_sites": int(scored.sum()),
    }

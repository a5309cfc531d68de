"""Figures of the ablation study, one call each: entropy, reliability, confusion, per condition.

Every figure shows temperature-scaled predictions on the fixed test patches, seeds
pooled, in the book's style (:mod:`tdmctx.plotting`).
"""

from __future__ import annotations

from collections.abc import Sequence

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from tdmctx.defects.ablation import AblationResult
from tdmctx.defects.context import CLASS_NAMES
from tdmctx.defects.evaluate import confusion_matrix, entropy, reliability
from tdmctx.plotting import IMAGE_CMAP, PALETTE

__all__ = ["plot_entropy", "plot_reliability", "plot_confusions", "plot_per_condition", "plot_dopant_recall"]


def _names(result: AblationResult, specs: Sequence[str] | None) -> list[str]:
    names = [s.name for s in result.specs] if specs is None else list(specs)
    for n in names:
        result.check_spec(n)
    return names


def _label(result: AblationResult, name: str) -> str:
    return next(s.label or s.name for s in result.specs if s.name == name)


def plot_entropy(result: AblationResult, specs: Sequence[str] | None = None, *, bins: int = 40) -> Figure:
    """Histograms of the per-patch posterior entropy (bits) of each model, log counts."""
    names = _names(result, specs)
    fig, ax = plt.subplots(figsize=(6.5, 3.6))
    edges = np.linspace(0.0, np.log2(len(CLASS_NAMES)), bins + 1)
    for i, name in enumerate(names):
        h = entropy(result.probs(name), base=2)
        ax.hist(h, bins=edges, histtype="step", lw=1.6, color=PALETTE[i % len(PALETTE)],
                label=f"{_label(result, name)} (mean {h.mean():.3f} bit)")
    ax.set_yscale("log")
    ax.set_xlabel("posterior entropy after temperature scaling (bit)")
    ax.set_ylabel("test patches (all seeds)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def plot_reliability(result: AblationResult, specs: Sequence[str] | None = None, *, n_bins: int = 10) -> Figure:
    """Reliability diagrams (accuracy against confidence) with the share of patches per bin, one panel per model."""
    names = _names(result, specs)
    fig, axes = plt.subplots(1, len(names), figsize=(3.2 * len(names), 3.4), squeeze=False, sharey=True)
    for ax, name in zip(axes[0], names):
        probs, labels = result.probs(name), result.stacked(result.labels)
        r = reliability(probs, labels, n_bins=n_bins)
        centres = (r["edges"][:-1] + r["edges"][1:]) / 2
        width = r["edges"][1] - r["edges"][0]
        ax.bar(centres, np.nan_to_num(r["accuracy"]), width=width * 0.9, color=PALETTE[0], label="accuracy")
        ax.plot([0, 1], [0, 1], color="black", ls="--", lw=1, label="perfect calibration")
        ax.plot(centres, r["count"] / r["count"].sum(), "o-", color=PALETTE[1], ms=3, lw=1,
                label="share of patches")
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1)
        ax.set_xlabel("confidence (max probability)")
        ax.set_title(_label(result, name), fontsize=9)
    axes[0, 0].set_ylabel("accuracy in bin / share of patches")
    axes[0, 0].legend(fontsize=7, loc="upper left")
    fig.tight_layout()
    return fig


def plot_confusions(result: AblationResult, specs: Sequence[str] | None = None) -> Figure:
    """Confusion matrices normalised per true class (colour, %), annotated with counts; seeds pooled."""
    names = _names(result, specs)
    k = len(CLASS_NAMES)
    fig, axes = plt.subplots(1, len(names), figsize=(3.3 * len(names), 3.5), squeeze=False)
    for ax, name in zip(axes[0], names):
        pred = result.probs(name).argmax(1)
        cm = confusion_matrix(result.stacked(result.labels), pred)
        with np.errstate(divide="ignore", invalid="ignore"):
            frac = cm / cm.sum(axis=1, keepdims=True)
        im = ax.imshow(frac, cmap=IMAGE_CMAP, vmin=0, vmax=1)
        for i in range(k):
            for j in range(k):
                ax.text(j, i, f"{cm[i, j]}", ha="center", va="center", fontsize=7,
                        color="black" if np.nan_to_num(frac[i, j]) > 0.6 else "white")
        ax.set_xticks(range(k), CLASS_NAMES, rotation=45, fontsize=8)
        ax.set_yticks(range(k), CLASS_NAMES, fontsize=8)
        ax.set_xlabel("predicted class")
        ax.set_title(_label(result, name), fontsize=9)
    axes[0, 0].set_ylabel("true class")
    fig.colorbar(im, ax=axes[0].tolist(), fraction=0.02, pad=0.02, label="fraction of the true class")
    return fig


def plot_per_condition(table: pd.DataFrame) -> Figure:
    """Grouped bars of :func:`~tdmctx.defects.ablation_metrics.per_condition_table` with intervals."""
    conditions = list(dict.fromkeys(table["condition"]))
    models = list(dict.fromkeys(table["model"]))
    fig, ax = plt.subplots(figsize=(max(6.0, 1.3 * len(conditions) + 2), 3.6))
    width = 0.8 / len(models)
    x = np.arange(len(conditions))
    for i, model in enumerate(models):
        sub = table[table["model"] == model].set_index("condition").loc[conditions]
        err = np.vstack([sub["accuracy"] - sub["low"], sub["high"] - sub["accuracy"]]).clip(min=0)
        ax.bar(x + (i - (len(models) - 1) / 2) * width, 100 * sub["accuracy"], width=width, yerr=100 * err,
               capsize=2, color=PALETTE[i % len(PALETTE)], label=sub["label"].iloc[0])
    ax.set_xticks(x, conditions, rotation=20)
    ax.set_xlabel("imaging condition of the test images")
    ax.set_ylabel("accuracy (%)")
    lo = 100 * np.nanmin(table["low"].to_numpy()) if table["low"].notna().any() else 0.0
    ax.set_ylim(max(0.0, lo - 5), 100)
    ax.legend(fontsize=7, ncol=min(4, len(models)), loc="lower center", bbox_to_anchor=(0.5, 1.0))
    fig.tight_layout()
    return fig


def plot_dopant_recall(table: pd.DataFrame) -> Figure:
    """Dopant recall of each system against its Z contrast, one marker per model.

    The x axis is :attr:`~tdmctx.defects.catalog.System.z_contrast`, the relative ADF
    intensity difference between a dopant and a host-metal column, in %; the shaded band is
    below :data:`~tdmctx.defects.catalog.MIN_RESOLVABLE_CONTRAST`.

    Parameters
    ----------
    table
        :func:`~tdmctx.defects.ablation_metrics.per_system_table` (columns ``system``,
        ``model``, ``dopant_recall``, ``dopant_sites``).
    """
    from tdmctx.defects.catalog import MIN_RESOLVABLE_CONTRAST, get_system

    contrast = {name: 100 * abs(get_system(name).z_contrast) for name in set(table["system"])}
    fig, ax = plt.subplots(figsize=(6.5, 3.8))
    models = list(dict.fromkeys(table["model"]))
    markers = "osD^v<>"
    for i, model in enumerate(models):
        sub = table[(table["model"] == model) & table["dopant_sites"].gt(0)]
        x = sub["system"].map(contrast).to_numpy(float) * 10 ** ((i - (len(models) - 1) / 2) * 0.02)
        ax.scatter(x, 100 * sub["dopant_recall"], s=28, marker=markers[i % len(markers)],
                   color=PALETTE[i % len(PALETTE)], label=model, zorder=3)
    low = table[(table["model"] == models[-1]) & (table["system"].map(contrast) < 100 * MIN_RESOLVABLE_CONTRAST)]
    for c, group in low.groupby(low["system"].map(contrast)):
        ax.annotate(", ".join(group["system"]), (c, 100 * group["dopant_recall"].max()), xytext=(6, 6),
                    textcoords="offset points", fontsize=7)
    lo = min(min(contrast.values()), 100 * MIN_RESOLVABLE_CONTRAST) / 1.5
    ax.axvspan(lo, 100 * MIN_RESOLVABLE_CONTRAST, color="0.9", zorder=0,
               label=f"< {100 * MIN_RESOLVABLE_CONTRAST:.0f} %: taken as unresolvable")
    ax.set_xscale("log")
    ax.set_xlim(lo, None)
    ax.set_xlabel("Z contrast of the dopant, |(Z_dopant / Z_metal)^1.7 - 1| (%)")
    ax.set_ylabel("dopant recall (%)")
    ax.set_ylim(-3, 103)
    ax.legend(fontsize=8, loc="center right")
    fig.tight_layout()
    return fig

"""Figures and report lines of the constraint experiments (:mod:`tdmctx.ptycho.experiments`).

Axis-level ``plot_*`` functions draw into given axes; ``figure_*`` functions make the figures
that the constraint chapters (05-08) show, so that each chapter only chooses what to show.
``result_lines`` and ``cross_check_lines`` turn the measured tables into the sentences of a
chapter's "What it found", so that the numbers in the prose always come from the run.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import matplotlib.pyplot as plt
import numpy as np

from tdmctx.ptycho.experiments import METHODS, PARTS, ExperimentResult

__all__ = [
    "METHOD_COLORS",
    "SUMMARY_COLUMNS",
    "plot_rms_history",
    "plot_error_fields",
    "plot_decomposition",
    "plot_cross_check",
    "figure_true_error",
    "figure_rms_histories",
    "figure_error_fields",
    "figure_decompositions",
    "figure_cross_check",
    "summary_styler",
    "result_lines",
    "cross_check_lines",
]

#: One colour per method (Paul Tol's bright scheme, colour-blind safe).
METHOD_COLORS: dict[str, str] = {"nominal": "#BBBBBB", "unconstrained": "#EE6677", "constrained": "#4477AA",
                                 "py4dstem": "#CCBB44", "floor": "#228833"}
#: Columns of :func:`tdmctx.ptycho.experiments.summary_table` that the chapters show, in order.
SUMMARY_COLUMNS: tuple[str, ...] = (
    "magnitude_step", "dose_e_per_A2", "electrons_per_pattern", "seed", "nominal_A", "unconstrained_A",
    "constrained_A", "py4dstem_best_A", "py4dstem_best_iteration", "py4dstem_final_A", "py4dstem_setting",
    "floor_A", "reduction", "vs_floor", "target_met",
)


_LABELS = {"nominal": "nominal positions", "unconstrained": "unconstrained", "constrained": "constrained",
           "py4dstem": "py4DSTEM", "floor": "floor (from truth)"}


def plot_rms_history(ax, result: ExperimentResult, methods: Sequence[str] | None = None) -> None:
    """RMS position error vs pass for each method (log scale); py4DSTEM's best pass is marked."""
    methods = [m for m in (methods or METHODS) if m in result.runs or m == "nominal"]
    for m in methods:
        rms = result.runs[m].rms_A if m in result.runs else np.full(result.iterations + 1, result.nominal_A)
        ax.plot(np.arange(len(rms)), rms, color=METHOD_COLORS[m], label=_LABELS[m],
                ls="--" if m in ("nominal", "floor") else "-")
        if m == "py4dstem":
            run = result.runs[m]
            ax.plot(run.best_iteration, run.best_A, "o", color=METHOD_COLORS[m], ms=5)
    ax.axvline(result.warmup, color="0.6", lw=0.8, ls=":")
    ax.set_yscale("log")
    # The floor starts at exactly zero; show the range where the runs end, not rounding noise.
    lowest = min(run.rms_A[result.warmup + 1:].min() for run in result.runs.values())
    ax.set_ylim(bottom=0.5 * max(lowest, 1e-4 * result.nominal_A))
    ax.set_xlabel("pass")
    ax.set_ylabel("RMS position error (Å)")
    ax.set_title(f"{result.error}, {result.magnitude_step:g} step, {result.dose_e_per_A2:.0e} e/Å²")


def plot_error_fields(axes, result: ExperimentResult, methods: Sequence[str] | None = None,
                      shared_scale: bool = False) -> None:
    """Final error vectors (mean removed) at the nominal positions, one panel per method.

    Each panel's arrows are scaled so that its largest error spans 0.9 scan steps (with
    ``shared_scale``, the largest nominal error sets one scale for all); the key above each panel
    gives the arrow length in Angstrom, the title the RMS.
    """
    methods = [m for m in (methods or METHODS) if m in result.runs or m == "nominal"]
    axes = np.atleast_1d(axes).ravel()
    if len(axes) < len(methods):
        raise ValueError(f"got {len(axes)} axes for {len(methods)} methods")
    xy = result.nominal_positions_A.reshape(-1, 2)
    nominal_max = float(np.max(np.linalg.norm(result.error_field_A("nominal").reshape(-1, 2), axis=1)))
    for ax, m in zip(axes, methods):
        e = result.error_field_A(m).reshape(-1, 2)
        largest = nominal_max if shared_scale else float(np.max(np.linalg.norm(e, axis=1))) or 1e-12
        q = ax.quiver(xy[:, 0], xy[:, 1], e[:, 0], e[:, 1], color=METHOD_COLORS[m], angles="xy",
                      scale_units="xy", scale=largest / (0.9 * result.step_A), width=0.008)
        rms = float(np.sqrt(np.mean(np.sum(e**2, axis=1))))
        ax.set_title(f"{_LABELS[m]}\nRMS {rms:.3f} Å", fontsize=9, loc="left")
        key_A = float(f"{largest / 2:.1g}")
        ax.quiverkey(q, 0.72, 1.04, key_A, f"{key_A:g} Å", labelpos="E", coordinates="axes",
                     fontproperties={"size": 8})
        ax.set_aspect("equal")
        ax.invert_yaxis()  # rows grow downwards, as in the images
        ax.set_xlabel("x (Å)")
    axes[0].set_ylabel("y (Å)")
    for ax in axes[len(methods):]:
        ax.set_visible(False)


def plot_decomposition(ax, result: ExperimentResult) -> None:
    """Grouped bars: RMS of the affine, line, low-pass and high-pass parts of each final error."""
    parts = result.decomposition()
    names = list(parts)
    width = 0.8 / len(PARTS)
    colors = ("#4477AA", "#EE6677", "#228833", "#CCBB44")
    for i, (part, color) in enumerate(zip(PARTS, colors)):
        ax.bar(np.arange(len(names)) + (i - 1.5) * width, [parts[n][part] for n in names], width,
               color=color, label=part)
    ax.set_xticks(np.arange(len(names)), [_LABELS[n] for n in names], rotation=20, ha="right")
    ax.set_ylabel("RMS of the part (Å)")
    ax.set_yscale("log")
    ax.set_ylim(bottom=1e-4)  # below 0.1 pm is rounding, not error
    ax.legend(title="part of the error", fontsize=8, loc="upper left", bbox_to_anchor=(1.0, 1.0))


def plot_cross_check(ax, results: Sequence[ExperimentResult]) -> None:
    """For a constraint run on other error types: nominal, final and unreachable RMS error."""
    labels = [r.error for r in results]
    x = np.arange(len(results))
    bars = (("nominal", [r.nominal_A for r in results], METHOD_COLORS["nominal"]),
            (f"{results[0].constraint} constraint", [r.runs["constrained"].final_A for r in results],
             METHOD_COLORS["constrained"]),
            ("out of its reach", [r.unreachable_A for r in results], "#AA3377"))
    for i, (label, values, color) in enumerate(bars):
        ax.bar(x + (i - 1) * 0.27, values, 0.27, color=color, label=label)
    ax.set_xticks(x, [f"{name} data" for name in labels])
    ax.set_ylabel("RMS position error (Å)")
    ax.legend(fontsize=8)


def _label(result: ExperimentResult) -> str:
    return f"{result.magnitude_step:g} step, {result.dose_e_per_A2:.0e} e/Å²"


def figure_true_error(result: ExperimentResult):
    """The true scan error of one experiment as vectors at the nominal positions."""
    fig, ax = plt.subplots(figsize=(4.2, 4.2), constrained_layout=True)
    plot_error_fields(ax, result, ["nominal"])
    ax.set_title(f"true error, RMS {result.nominal_A:.3f} Å ({result.magnitude_step:g} step)")
    return fig


def figure_rms_histories(results: Sequence[ExperimentResult]):
    """RMS position error vs pass, one panel per experiment."""
    fig, axes = plt.subplots(1, len(results), figsize=(5.2 * len(results), 4), squeeze=False,
                             constrained_layout=True)
    for ax, result in zip(axes[0], results):
        plot_rms_history(ax, result)
    axes[0, 0].legend(fontsize=8)
    return fig


def figure_error_fields(result: ExperimentResult):
    """The final error field of every method of one experiment, side by side."""
    fig, axes = plt.subplots(1, len(METHODS), figsize=(3 * len(METHODS), 3.6), constrained_layout=True)
    plot_error_fields(axes, result)
    fig.suptitle(_label(result))
    return fig


def figure_decompositions(results: Sequence[ExperimentResult]):
    """The final errors split into affine, line, low-pass and high-pass parts, one panel per experiment."""
    fig, axes = plt.subplots(1, len(results), figsize=(5.5 * len(results), 3.8), squeeze=False,
                             constrained_layout=True)
    for ax, result in zip(axes[0], results):
        plot_decomposition(ax, result)
        ax.set_title(_label(result))
    return fig


def figure_cross_check(results: Sequence[ExperimentResult], title: str):
    """A constraint on other error types: nominal, final and out-of-reach RMS error."""
    fig, ax = plt.subplots(figsize=(1.6 + 2.2 * len(results), 3.5), constrained_layout=True)
    plot_cross_check(ax, results)
    ax.set_title(title)
    return fig


def summary_styler(table: Any):
    """The chapters' summary table (:data:`SUMMARY_COLUMNS`) formatted for display."""
    return (table[list(SUMMARY_COLUMNS)].style.format(precision=4)
            .format({"dose_e_per_A2": "{:.0e}", "electrons_per_pattern": "{:.0f}"}))


def result_lines(table: Any, name: str) -> list[str]:
    """One Markdown bullet per experiment of a summary table: every figure against the target.

    Parameters
    ----------
    table
        :func:`tdmctx.ptycho.experiments.summary_table` of the experiments.
    name
        How the prose names the constraint (``"affine"``, ``"low-pass"``).
    """
    lines = []
    for _, row in table.iterrows():
        verdict = "meets" if row["target_met"] else "misses"
        lines.append(
            f"- {row['magnitude_step']:g} step ({row['nominal_A']:.3f} Å), {row['dose_e_per_A2']:.0e} e/Å² "
            f"({row['electrons_per_pattern']:.0f} e per pattern), seed {row['seed']}: the {name} constraint ends at "
            f"{row['constrained_A']:.4f} Å, {row['reduction']:.1f}x below nominal and {row['vs_floor']:.2f}x the floor "
            f"({row['floor_A']:.4f} Å); unconstrained {row['unconstrained_A']:.4f} Å; py4DSTEM "
            f"({row['py4dstem_setting']}) best {row['py4dstem_best_A']:.4f} Å at pass "
            f"{row['py4dstem_best_iteration']}, final {row['py4dstem_final_A']:.4f} Å. It {verdict} the target.")
        if row["nominal_A"] / row["floor_A"] < 10:
            lines.append(f"  At this dose the floor itself is only {row['nominal_A'] / row['floor_A']:.1f}x below "
                         f"nominal: 10x would mean beating the floor, so the floor criterion is the one that applies.")
    return lines


def cross_check_lines(results: Sequence[ExperimentResult], name: str) -> list[str]:
    """One Markdown bullet per cross-check run: what the constraint left and what it could not reach."""
    return [f"- On {r.error} data the {name} constraint leaves {r.runs['constrained'].final_A:.4f} Å of "
            f"{r.nominal_A:.4f} Å; {r.unreachable_A:.4f} Å of it is outside the {name} subspace." for r in results]

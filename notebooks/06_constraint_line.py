# ---
# jupyter:
#   jupytext:
#     formats: ipynb,py:percent
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # The line constraint on line-to-line jumps
#
# A scan whose only error is a rigid shift of every scan row (line-to-line jumps, from beam or stage
# instabilities or mains pick-up) is corrected five ways on simulated MoS2 4D-STEM data: with the nominal
# positions (no correction), with unconstrained position descent, with the position step projected onto one
# rigid shift per row (the `line` constraint: the row mean of the step), with py4DSTEM's own position
# correction, and from the true positions (the floor: what the same refinement reaches when there is nothing
# to correct). The chapter shows the RMS position error per pass, the final error fields, their split into
# affine, line, low-pass and high-pass parts, the row shifts recovered against the true ones, the table of
# final errors against the targets (10x below nominal, or within 1.5x of the floor; better than
# unconstrained and py4DSTEM), and the line constraint on data it was not made for.
#
# Rerun it with other settings, e.g. the paper's two magnitudes and two doses:
# `tdmctx notebooks run --only 06_constraint_line -p magnitudes_step "[0.15, 0.3]" -p doses_e_per_A2 "[10000.0, 100000.0]"`
#
# In the quick profile (what CI runs) the chapter uses one magnitude, one dose, a 10 x 10 scan and fewer
# cross-checks and py4DSTEM settings than the paper profile, which runs two magnitudes and two doses on a
# larger scan (`notebooks/profiles.yml`); the printed settings below say which ran.
#
# Units: magnitudes are the RMS length of the error vectors after removing their mean (the global shift
# ptychography cannot see), as a fraction of the scan step; doses are electrons per square Angstrom, and each
# pattern gets dose x step^2 electrons. The data are abTEM multislice simulations (80 kV, 25 mrad, 50 Å
# defocus, detector to 50 mrad), not the engine's own forward model.

# %% tags=["parameters"]
profile = "quick"
seed = 0
magnitudes_step = [0.3]  # RMS scan error (translation removed), fraction of the scan step
doses_e_per_A2 = [1e5]  # electron dose, e/A^2
scan_rows = 10
scan_cols = 10
step_A = 0.6
iterations = 60  # full passes per reconstruction, warm-up included
warmup = 5  # passes with frozen positions first (object only)
position_damping = 1.0  # fraction of the Gauss-Newton position step per pass
py4dstem_settings = ["default", "limited"]  # presets tried; the best is kept
wrong_types = ["drift"]  # data with other error types, for the cross-check
device = None

# %%
import time

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import torch
from IPython.display import Markdown, display

from tdmctx.devices import resolve_device
from tdmctx.plotting import apply_style
from tdmctx.ptycho.experiments import (
    CONSTRAINT_FOR,
    PY4DSTEM_PRESETS,
    cross_check_table,
    run_cross_check,
    run_sweep,
    summary_table,
)
from tdmctx.ptycho.experiment_figures import (
    METHOD_COLORS,
    cross_check_lines,
    figure_cross_check,
    figure_decompositions,
    figure_error_fields,
    figure_rms_histories,
    figure_true_error,
    result_lines,
    summary_styler,
)

apply_style()
ERROR = "line"
common = dict(scan_shape=(scan_rows, scan_cols), step_A=step_A, iterations=iterations, warmup=warmup,
              position_damping=position_damping, seed=seed, device=device, progress=False)
print(f"profile {profile}: {len(magnitudes_step)} magnitude(s) x {len(doses_e_per_A2)} dose(s), "
      f"{scan_rows} x {scan_cols} scan, step {step_A} Å, {iterations} passes, seed {seed}")

# %% [markdown]
# ## The experiments
# One noise-free abTEM simulation per magnitude (cached), Poisson noise drawn per dose, and five
# reconstructions each. All tdmctx runs share the schedule (warm-up with frozen positions, then position
# passes), the Poisson likelihood, the same step size and a fixed, known probe; py4DSTEM refines its probe
# (its wrapper has no switch for that) and is run with each preset below, the best kept. The MoS2 cell is
# square, so that abTEM's detector has one angular sampling and needs no resampling: interpolating a
# non-square detector onto a square grid is a model error large enough to bias the positions.

# %%
start = time.perf_counter()
results = run_sweep(ERROR, magnitudes_step, doses_e_per_A2, py4dstem_settings=py4dstem_settings, **common)
sweep_s = time.perf_counter() - start
first = results[0]
print(f"{len(results)} experiment(s) in {sweep_s:.0f} s; py4DSTEM presets: "
      + "; ".join(f"{name} = {PY4DSTEM_PRESETS[name]}" for name in py4dstem_settings))

# %% [markdown]
# ## The error
# The true error of the first experiment, drawn as vectors at the nominal positions (mean removed): every
# row is shifted as a whole, by an independent random amount. Its decomposition puts part of it in the
# affine slot (a random set of row shifts has a component linear in the row index, which is a shear or a
# y-scale), the rest in the line slot; all of it lies in the line subspace.

# %%
figure_true_error(first)
plt.show()
display(pd.DataFrame(first.decomposition()).T.loc[["nominal"]].style.format(precision=4))

# %% [markdown]
# ## RMS position error per pass
# Dashed: the nominal error (positions never move) and the floor. The dot marks py4DSTEM's best pass; the
# dotted line is the end of the warm-up.

# %%
figure_rms_histories(results)
plt.show()

# %% [markdown]
# ## Final error fields
# What each method leaves, for each experiment. Every panel has its own arrow scale (the key above it, in Å)
# so that the pattern of what is left stays visible; the titles give the RMS.

# %%
for result in results:
    figure_error_fields(result)
    plt.show()

# %% [markdown]
# ## What is left, per error type
# Each final error split by the package's decomposition (affine first, then per-row rigid, then smooth in
# time, then the rest).

# %%
figure_decompositions(results)
plt.show()

# %% [markdown]
# ## The row shifts, true and recovered
# The mean error of each row (x and y), for the nominal positions (the true jumps, sign reversed) and for
# what the refinements leave.

# %%
fig, axes = plt.subplots(1, 2, figsize=(10, 3.4), constrained_layout=True, sharey=True)
rows = np.arange(first.scan_shape[0])
for method in ("nominal", "unconstrained", "constrained", "floor"):
    per_row = first.error_field_A(method).mean(axis=1)
    for axis, ax in enumerate(axes):
        ax.plot(rows, per_row[:, axis], "o-", ms=3, label=method,
                color=METHOD_COLORS[method])
for axis, ax in enumerate(axes):
    ax.axhline(0, color="0.7", lw=0.8)
    ax.set_xlabel("scan row")
    ax.set_title(f"row mean of the error, {'xy'[axis]}")
axes[0].set_ylabel("error (Å)")
axes[1].legend(fontsize=8)
plt.show()

# %% [markdown]
# ## The table
# Final RMS position errors in Å (translation removed); py4DSTEM's best pass and its last pass;
# `reduction` = nominal / constrained; `vs_floor` = constrained / floor.

# %%
table = summary_table(results)
display(summary_styler(table))
display(Markdown("py4DSTEM presets tried (first experiment):"))
display(pd.DataFrame(first.py4dstem_trials).style.format(precision=4))

# %% [markdown]
# ## Diagnosis: how close to the floor, and what sets it
# The line constraint estimates two numbers per row from that row's patterns, so its floor is the shot noise
# of a row's worth of patterns plus whatever bias the estimator has. Where the floor is above a tenth of the
# nominal error, 10x is out of reach at that dose and the floor criterion is the one that applies.

# %%
conv = first.convergence("constrained")
print(f"constrained: the error changes by a factor {conv['rate']:.4f} per pass over the last 10 passes; at that "
      f"rate, passes still needed for 10x: {conv['passes_to_10x']:.0f}, for 1.5x the floor: {conv['passes_to_floor']:.0f}")
possible = pd.DataFrame([{"magnitude_step": r.magnitude_step, "dose_e_per_A2": r.dose_e_per_A2,
                          "nominal / floor": r.nominal_A / r.runs["floor"].final_A,
                          "nominal / constrained": r.nominal_A / r.runs["constrained"].final_A} for r in results])
display(possible.style.format(precision=3).format({"dose_e_per_A2": "{:.0e}"}))

# %% [markdown]
# ## The line constraint on other error types
# The same constraint on data whose error is of another type: it can only shift whole rows, so whatever part
# of the error is not a per-row rigid shift (`out of its reach`, the RMS of the error minus its line
# projection) stays. Slow drift is nearly constant along a row, so much of it is within reach.

# %%
cross = run_cross_check(CONSTRAINT_FOR[ERROR], wrong_types, magnitudes_step[0], doses_e_per_A2[0], **common) if wrong_types else []
if cross:
    display(cross_check_table(cross).style.format(precision=4))
    figure_cross_check(cross, "line constraint on other error types")
    plt.show()

# %% [markdown]
# ## What it found

# %%
lines = result_lines(table, "line")
if conv["passes_to_floor"] == 0:
    lines.append(f"- The first experiment's constrained error has settled ({conv['rate']:.4f} per pass over the last "
                 f"10 passes): more passes would not lower it.")
else:
    lines.append(f"- The first experiment's constrained error still shrinks by {conv['rate']:.4f} per pass and needs "
                 f"about {conv['passes_to_floor']:.0f} more passes to reach 1.5x the floor: the stage is too short.")
unc = first.decomposition()["unconstrained"]
con = first.decomposition()["constrained"]
lines.append(f"- Unconstrained descent leaves {unc['total']:.4f} Å, of which {unc['highpass']:.4f} Å is high-pass "
             f"(position noise that is no row pattern); the line constraint never lets that in "
             f"({con['highpass']:.4f} Å high-pass left).")
row_c = first.error_field_A("constrained").mean(axis=1)
row_f = first.error_field_A("floor").mean(axis=1)
lines.append(f"- The row shifts left after the constrained run follow those the floor drifts to (correlation "
             f"{np.corrcoef(row_c.ravel(), row_f.ravel())[0, 1]:.2f}; RMS {np.sqrt(np.mean(np.sum(row_c**2, 1))):.4f} "
             f"vs {np.sqrt(np.mean(np.sum(row_f**2, 1))):.4f} Å): what is left is the estimator's own row bias, "
             f"largest in the first and last rows, not jumps the constraint missed.")
floors = table.groupby("dose_e_per_A2")["floor_A"].mean()
if len(floors) > 1:
    lines.append("- Floor by dose: " + ", ".join(f"{f:.4f} Å at {d:.0e} e/Å²" for d, f in floors.items()) + ".")
lines += cross_check_lines(cross, "line")
lines.append(f"- The sweep took {sweep_s:.0f} s on {resolve_device(device)} (torch threads: {torch.get_num_threads()}; "
             f"the thread count changes the order of floating-point sums, so repeated runs differ slightly).")
display(Markdown("\n".join(lines)))

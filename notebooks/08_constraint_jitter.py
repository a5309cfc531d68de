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
# # The high-pass constraint on fast jitter
#
# A scan whose only error is fast random jitter is corrected five ways on simulated MoS2 4D-STEM data: with the nominal positions (no correction), with unconstrained
# position descent, with the position step minus its part that is smooth in acquisition time (the `highpass`
# constraint, the complement of `lowpass`), with py4DSTEM's own position correction, and from the true
# positions (the floor: what the same refinement reaches when there is nothing to correct). The chapter shows
# the RMS position error per pass, the final error fields, their split into affine, line, low-pass and
# high-pass parts, the table of final errors against the targets (10x below nominal, or within 1.5x
# of the floor where the dose makes 10x impossible, as expected for jitter; better than unconstrained and
# py4DSTEM), the high-pass constraint on data it was not made for, and on white jitter.
#
# What "only jitter" means: a white-noise draw (independent at every position) has a small part that happens
# to be smooth in acquisition time, and that part is drift, the low-pass chapter's error type. The jitter of
# the main experiment is a white draw without that part (its high-pass projection, rescaled to the stated
# magnitude). The raw white draw is run as well, at the end, to show what the constraint does with the part
# that is not its own.
#
# Rerun it with other settings, e.g. the paper's two magnitudes and two doses:
# `tdmctx notebooks run --only 08_constraint_jitter -p magnitudes_step "[0.15, 0.3]" -p doses_e_per_A2 "[10000.0, 100000.0]"`
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
wrong_types = ["affine"]  # data with other error types, for the cross-check
white_jitter_check = True  # also run the five methods on raw white jitter (first magnitude and dose)
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
ERROR = "jitter"
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
# The true error of the first experiment, drawn as vectors at the nominal positions (mean removed): random
# from one position to the next, with nothing smooth in time left in it, so all of it is within the high-pass
# constraint's reach (the printed remainder is rounding).

# %%
figure_true_error(first)
plt.show()
display(pd.DataFrame(first.decomposition()).T.loc[["nominal"]].style.format(precision=4))
print(f"part of the true error outside the high-pass subspace (out of the constraint's reach): "
      f"{first.unreachable_A:.4f} Å")

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
# ## The table
# Final RMS position errors in Å (translation removed); py4DSTEM's best pass and its last pass;
# `reduction` = nominal / constrained; `vs_floor` = constrained / floor.

# %%
table = summary_table(results)
display(summary_styler(table))
display(Markdown("py4DSTEM presets tried (first experiment):"))
display(pd.DataFrame(first.py4dstem_trials).style.format(precision=4))

# %% [markdown]
# ## White jitter: the part that is not the constraint's own
# The same five methods on the raw white draw (first magnitude and dose). Two numbers should explain the
# constrained result: the floor, which at these doses sits near the Cramér-Rao bound of a single pattern's
# position (shot noise: nothing does better per position), and the part of the white draw that is smooth in
# time, which the high-pass constraint never moves. If both act independently the constrained error is close
# to the root sum of their squares. In iCGD that smooth part is the low-pass stage's job, which runs first.

# %%
white = (run_sweep("white_jitter", magnitudes_step[:1], doses_e_per_A2[:1], py4dstem_settings=py4dstem_settings,
                   **common) if white_jitter_check else [])
diag = pd.DataFrame([{
    "data": r.error, "magnitude_step": r.magnitude_step, "dose_e_per_A2": r.dose_e_per_A2,
    "floor_A": r.runs["floor"].final_A, "crb_A": r.runs["floor"].crb_A, "unreachable_A": r.unreachable_A,
    "predicted_A": float(np.hypot(r.runs["floor"].final_A, r.unreachable_A)),
    "constrained_A": r.runs["constrained"].final_A, "unconstrained_A": r.runs["unconstrained"].final_A,
} for r in results + white])
display(diag.style.format(precision=4).format({"dose_e_per_A2": "{:.0e}"}))
if white:
    display(summary_styler(summary_table(white)))
    figure_rms_histories(white)
    plt.show()
conv = first.convergence("constrained")
print(f"constrained (jitter): the error changes by a factor {conv['rate']:.4f} per pass over the last 10 passes")

# %% [markdown]
# ## The high-pass constraint on other error types
# The same constraint on data whose error is of another type: it removes the smooth-in-time part of every
# step, so whatever part of the error is smooth in time (`out of its reach`) stays. An affine error is smooth
# along y (row by row) but a saw-tooth along x (each row restarts), so part of it is within reach.

# %%
cross = run_cross_check(CONSTRAINT_FOR[ERROR], wrong_types, magnitudes_step[0], doses_e_per_A2[0], **common) if wrong_types else []
if cross:
    display(cross_check_table(cross).style.format(precision=4))
    figure_cross_check(cross, "high-pass constraint on other error types")
    plt.show()

# %% [markdown]
# ## What it found

# %%
lines = result_lines(table, "high-pass")
for _, d in diag.iterrows():
    lines.append(
        f"- {d['data'].replace('_', ' ')} at {d['dose_e_per_A2']:.0e} e/Å²: the floor is {d['floor_A']:.4f} Å against a single-pattern Cramér-Rao "
        f"bound of {d['crb_A']:.4f} Å ({d['floor_A'] / d['crb_A']:.1f}x); the smooth part of the error that the "
        f"constraint cannot reach is {d['unreachable_A']:.4f} Å; together they predict {d['predicted_A']:.4f} Å, "
        f"measured {d['constrained_A']:.4f} Å (unconstrained {d['unconstrained_A']:.4f} Å).")
    if d["constrained_A"] >= d["unconstrained_A"]:
        lines.append(
            f"  Unconstrained descent ({d['unconstrained_A']:.4f} Å) does better here because it may also move "
            f"along the smooth part; on white jitter the high-pass constraint removes freedom that the error "
            f"needs. Its use is as the last iCGD stage, after the low-pass stage has taken the smooth part.")
lines.append(f"- The constrained error has settled: it changes by a factor {conv['rate']:.4f} per pass over the last "
             f"10 passes of the first experiment, so more passes would not help.")
lines += cross_check_lines(cross, "high-pass")
lines.append(f"- The sweep took {sweep_s:.0f} s on {resolve_device(device)} (torch threads: {torch.get_num_threads()}; "
             f"the thread count changes the order of floating-point sums, so repeated runs differ slightly).")
display(Markdown("\n".join(lines)))

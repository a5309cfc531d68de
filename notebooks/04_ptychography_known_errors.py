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
# # Ptychography with known scan errors
#
# This chapter builds the test bench for scan-position correction. It draws each type of scan error on
# the scan grid, simulates monolayer MoS2 4D-STEM data with abTEM at known, distorted probe positions
# (with Poisson shot noise), and reconstructs it four ways:
#
# 1. with the nominal positions kept fixed (the damage the errors do),
# 2. with free position correction in the `tdmctx` torch engine,
# 3. with free correction started from the true positions (the floor: how far shot noise alone pushes
#    the positions), compared with the Cramér-Rao bound of a single pattern,
# 4. with py4DSTEM's own position correction (best and final iteration).
#
# Each is scored against the truth: RMS position error after removing the global translation, split
# into affine, line, low-pass and high-pass parts, and the object phase compared with the true
# transmission function within the information limit.
#
# Rerun with, for example:
# `tdmctx notebooks run --only 04_ptychography_known_errors -p electrons_per_pattern 1e5`

# %% tags=["parameters"]
profile = "quick"
seed = 0
scan_rows = 16
scan_cols = 16
step_A = 0.5
cell_repeats = [5, 3]
error_strength_step = 0.8
electrons_per_pattern = 2.5e4
energy_eV = 80e3
semiangle_mrad = 25.0
defocus_A = 50.0
max_angle_mrad = 55.0
potential_sampling_A = 0.1
iterations = 40
position_start = 8
batch_size = 64
py4dstem_step_sizes = [0.5]
device = None
# One CPU thread for every method: py4DSTEM's numpy FFTs use one, so the comparison is at equal
# threads, and on a shared two-core machine OpenMP threads fighting for cores slow torch down 4x.
cpu_threads = 1

# %%
import time

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import torch
from IPython.display import Markdown, display

from tdmctx.plotting import DIVERGING_CMAP, PALETTE, apply_style, show_image
from tdmctx.ptycho import metrics
from tdmctx.ptycho.baselines import reconstruct_py4dstem
from tdmctx.ptycho.engine import GDPtychography
from tdmctx.ptycho.scan import (
    AffineError,
    DriftError,
    FlybackError,
    JitterError,
    LineJumps,
    RasterScan,
    mixed_error,
)
from tdmctx.ptycho.simulate import centred_scan, mos2_cell, simulate_4dstem

apply_style()
torch.set_num_threads(cpu_threads)
rng_seeds = np.random.SeedSequence(seed).generate_state(3)

# %% [markdown]
# ## The error types on the scan grid
#
# Every model returns a displacement field over the raster; magnitudes are in units of the scan step
# and the models add. Arrows are drawn 3x longer than the displacements so that they are visible.

# %%
demo = RasterScan((16, 16), step_A=step_A)
models = {
    "affine (scale, rotation, shear)": AffineError(scale_x=0.03, scale_y=-0.02, rotation_deg=1.5, shear=0.02),
    "line jumps": LineJumps(rms_step=0.3, fraction_rows=0.3, seed=int(rng_seeds[0])),
    "flyback settling": FlybackError(amplitude_step=(0.6, 0.1), decay_cols=2.0),
    "drift (linear + quadratic)": DriftError(linear_step=(0.6, 0.3), quadratic_step=(-0.3, 0.3)),
    "jitter": JitterError(rms_step=0.1, seed=int(rng_seeds[1])),
    f"mixed, strength {error_strength_step} step": mixed_error(error_strength_step, seed=seed),
}
fig, axes = plt.subplots(2, 3, figsize=(11, 7.4), sharex=True, sharey=True)
nominal = demo.positions_A
for ax, (title, model) in zip(axes.flat, models.items()):
    d = model.displacement_A(demo)
    rms = np.sqrt(np.mean(np.sum(d**2, -1)))
    ax.plot(nominal[..., 0].ravel(), nominal[..., 1].ravel(), ".", color=PALETTE[6], ms=2)
    ax.quiver(nominal[..., 0], nominal[..., 1], d[..., 0], d[..., 1], color=PALETTE[0],
              angles="xy", scale_units="xy", scale=1 / 3, width=0.004)
    ax.set_title(f"{title}\nRMS {rms / step_A:.2f} step", fontsize=9)
    ax.set_aspect("equal")
axes[0, 0].invert_yaxis()  # rows run down the image, as in a scan (the y axis is shared: invert once)
for ax in axes[-1]:
    ax.set_xlabel("x (Å)")
for ax in axes[:, 0]:
    ax.set_ylabel("y (Å)")
fig.tight_layout()

# %% [markdown]
# ## Simulated MoS2 data with a mixed error
#
# abTEM scans the probe over the true positions (`CustomScan`); the file keeps the nominal positions, the
# true ones and the true transmission function. The result is cached, so reruns are fast.

# %%
atoms = mos2_cell(tuple(cell_repeats))
scan = centred_scan(atoms, (scan_rows, scan_cols), step_A)
error = mixed_error(error_strength_step, seed=seed)
t0 = time.perf_counter()
data = simulate_4dstem(atoms, scan=scan, error=error, energy_eV=energy_eV, semiangle_mrad=semiangle_mrad,
                       defocus_A=defocus_A, max_angle_mrad=max_angle_mrad,
                       potential_sampling_A=potential_sampling_A, electrons_per_pattern=electrons_per_pattern,
                       seed=seed, progress=False)
simulate_s = time.perf_counter() - t0
true_A = data.extras["true_positions_A"]
start_rms_A = metrics.rms_error_A(data.nominal_positions_A, true_A)
print(f"datacube {data.datacube.shape}, detector sampling {data.angular_sampling_mrad[0]:.3f} mrad, "
      f"{data.datacube.sum((2, 3)).mean():.3g} electrons per pattern; simulated/loaded in {simulate_s:.1f} s")
print(f"scan error RMS (translation removed): {start_rms_A:.3f} Å = {start_rms_A / step_A:.2f} step")

# %% [markdown]
# ## Reconstructions
#
# All runs see the same data and the same number of passes. Position refinement starts after
# `position_start` passes, once an object exists to align against. The `tdmctx` engine uses the Poisson
# likelihood and one damped Gauss-Newton position step per full pass, scaled by each pattern's Fisher
# information about its position; its log also reports the Cramér-Rao bound (CRB) of a single pattern.

# %%
def run_gd(initial, refine):
    engine = GDPtychography(data, initial_positions_A=initial, true_positions_A=true_A, batch_size=batch_size,
                            seed=seed, device=device)
    engine.run(position_start if refine else iterations, refine_positions=False, progress=False)
    if refine:
        engine.run(iterations - position_start, refine_positions=True, progress=False)
    return engine.result()


results = {
    "nominal, fixed": run_gd(None, refine=False),
    "tdmctx, free": run_gd(None, refine=True),
    "tdmctx, from truth": run_gd(true_A, refine=True),
}
py4d_runs = {}
for size in py4dstem_step_sizes:
    for affine in (False, True):
        label = f"py4DSTEM, step {size}" + (", global affine" if affine else "")
        py4d_runs[label] = reconstruct_py4dstem(
            data, iterations=iterations, position_start=position_start, true_positions_A=true_A,
            batch_size=batch_size, positions_step_size=size, global_affine_transformation=affine,
            seed=seed, device=device, progress=False)
# The best py4DSTEM setting is the one with the lowest final error; its best iteration is reported too.
best_py4d = min(py4d_runs, key=lambda k: py4d_runs[k].log["rms_position_error_A"][-1])
results[best_py4d] = py4d_runs[best_py4d]

scores = pd.DataFrame({name: metrics.score(res, data) for name, res in {**results, **py4d_runs}.items()}).T
scores.insert(0, "CRB_A", [float(r.log["crb_rms_A"][-1]) if "crb_rms_A" in r.log else np.nan
                           for r in {**results, **py4d_runs}.values()])
scores.round(4)

# %% [markdown]
# ## Object phase, position errors and their evolution
#
# Top: the reconstructed phase (scale bars in Å) beside the true phase, low-passed to the information
# limit. Middle: the final position error of each run (arrows 5x), translation removed. Bottom: RMS
# error per pass for every run, and the decomposition of the free `tdmctx` run.

# %%
names = list(results)
fig, axes = plt.subplots(3, len(names) + 1, figsize=(3.2 * (len(names) + 1), 10))
margin_A = 1.0
lo, hi = true_A.reshape(-1, 2).min(0) - margin_A, true_A.reshape(-1, 2).max(0) + margin_A


def scanned(image, res):
    """The part of a (y, x) image on the reconstruction grid of `res` that covers the scanned field."""
    c0, r0 = np.floor((lo - res.object_origin_A) / res.object_pixel_size_A).astype(int)
    c1, r1 = np.ceil((hi - res.object_origin_A) / res.object_pixel_size_A).astype(int)
    return image[max(r0, 0):r1, max(c0, 0):c1]


reference = results["tdmctx, free"]
pixel = reference.object_pixel_size_A
k_limit = metrics.information_limit_per_A(energy_eV, semiangle_mrad, pixel)
truth_phase = metrics.truth_on_grid(data.extras["true_object"], tuple(data.extras["true_object_sampling_A"]),
                                    reference.object.shape, pixel, reference.object_origin_A, 0.0, k_limit)
show_image(axes[0, 0], scanned(truth_phase, reference), pixel, title="true phase (band-limited)",
           colorbar_label="phase (rad)")
for ax, name in zip(axes[0, 1:], names):
    res = results[name]
    show_image(ax, scanned(np.angle(res.object), res), res.object_pixel_size_A, title=name,
               colorbar_label="phase (rad)")
axes[1, 0].axis("off")
for ax, name in zip(axes[1, 1:], names):
    err = results[name].positions_A - true_A
    err = err - err.reshape(-1, 2).mean(0)
    ax.quiver(true_A[..., 0], true_A[..., 1], err[..., 0], err[..., 1], color=PALETTE[1], angles="xy",
              scale_units="xy", scale=1 / 5, width=0.005)
    ax.set_title(f"{name}\nRMS {metrics.rms_error_A(results[name].positions_A, true_A):.3f} Å", fontsize=9)
    ax.set_aspect("equal")
    ax.invert_yaxis()
    ax.set_xlabel("x (Å)")
axes[1, 1].set_ylabel("y (Å)")
ax = axes[2, 0]
for i, (name, res) in enumerate({**results, **py4d_runs}.items()):
    rms = np.concatenate([[start_rms_A if "truth" not in name else 0.0], res.log["rms_position_error_A"]])
    ax.plot(np.arange(len(rms)), rms, color=PALETTE[i % len(PALETTE)], label=name,
            ls="-" if name in results else ":")
ax.axhline(0.05 * step_A, color="k", lw=0.8, ls="--", label="5 % of step")
ax.set_xlabel("pass")
ax.set_ylabel("RMS position error (Å)")
axes[2, 3].legend(*ax.get_legend_handles_labels(), loc="center left", fontsize=8, title="RMS position error")
parts = metrics.decomposition_history(results["tdmctx, free"].position_history_A, true_A)
ax = axes[2, 1]
for i, key in enumerate(["total", "affine", "line", "lowpass", "highpass"]):
    ax.plot(parts[key], color=PALETTE[i], label=key)
ax.set_xlabel("pass")
ax.set_ylabel("RMS (Å)")
ax.set_title("tdmctx, free: decomposition", fontsize=9)
ax.legend(fontsize=7)
crb = results["tdmctx, from truth"].log["crb_rms_A"]
ax = axes[2, 2]
ax.plot(results["tdmctx, from truth"].log["rms_position_error_A"], color=PALETTE[2], label="from truth")
ax.plot(crb, color=PALETTE[3], ls="--", label="CRB of one pattern")
ax.set_xlabel("pass")
ax.set_ylabel("RMS (Å)")
ax.set_title("the floor under shot noise", fontsize=9)
ax.legend(fontsize=7)
for ax in axes[2, 3:]:
    ax.axis("off")
fig.tight_layout()

# %% [markdown]
# ## What it found

# %%
free, floor, fixed = scores.loc["tdmctx, free"], scores.loc["tdmctx, from truth"], scores.loc["nominal, fixed"]
py4d = scores.loc[best_py4d]
gd_pass = free["seconds_per_pass"]
lines = [
    f"- Scan error to correct: **{start_rms_A:.3f} Å** RMS ({start_rms_A / step_A:.2f} of the {step_A} Å step), "
    f"{data.datacube.sum((2, 3)).mean():.3g} electrons per pattern, {scan_rows} x {scan_cols} positions.",
    f"- Nominal positions kept fixed: object phase correlation **{fixed['phase_correlation']:.3f}** "
    f"(FRC {fixed['frc_mean']:.3f}).",
    f"- `tdmctx`, free correction: **{free['rms_A']:.3f} Å** after {iterations} passes "
    f"(affine {free['affine_A']:.3f}, line {free['line_A']:.3f}, low-pass {free['lowpass_A']:.3f}, "
    f"high-pass {free['highpass_A']:.3f} Å); phase correlation {free['phase_correlation']:.3f}, "
    f"FRC {free['frc_mean']:.3f}; {gd_pass:.2f} s per pass.",
    f"- Floor (started from the truth): **{floor['rms_A']:.3f} Å** = {100 * floor['rms_A'] / step_A:.1f} % of "
    f"the step (maximum over the passes {np.max(results['tdmctx, from truth'].log['rms_position_error_A']):.3f} Å); "
    f"the single-pattern Cramér-Rao bound is {floor['CRB_A']:.3f} Å.",
    f"- Best py4DSTEM setting ({best_py4d}): final **{py4d['rms_A']:.3f} Å**, best {py4d['best_rms_A']:.3f} Å "
    f"at pass {int(py4d['best_iteration'])}; phase correlation {py4d['phase_correlation']:.3f}; "
    f"{py4d['seconds_per_pass']:.2f} s per pass.",
]
display(Markdown("\n".join(lines)))

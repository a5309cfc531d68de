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
# # iCGD on an experiment-like MoS2 dataset
#
# The last ptychography chapter runs the whole chain on a 4D-STEM file as it comes off a detector: read it,
# preprocess it (dark offset and gain, bright-field disk, detector rotation and transpose, defocus), then
# reconstruct it with the nominal positions, with unconstrained position descent, with py4DSTEM's position
# correction, and with iCGD, the staged constrained descent of `tdmctx.ptycho.icgd` (affine, then line and
# flyback, then low-pass drift, then high-pass jitter). Each is scored against the floor: the same iCGD run
# started from the true positions.
#
# **The data are simulated.** No real MoS2 4D-STEM dataset ships with the package yet, so by default the
# chapter reads an *experiment-like* dataset that `tdmctx.ptycho.experiment_like` simulates with the conditions
# of a typical EMPAD experiment on monolayer MoS2 (80 kV, 21.4 mrad, 128 x 128 EMPAD frames, partial spatial
# coherence, dark offset, read noise and gain, every scan-error type at once) and writes as an EMPAD
# `.raw`/`.xml` pair. Its truth sits in a separate file that no reconstruction reads; it is used only to score.
#
# **Real data.** Give the file and what the file does not record, for example an EMPAD scan with a dark
# reference (an EMD 1.0 file from py4DSTEM works the same way):
#
# `tdmctx notebooks run --only 09_icgd_mos2 -p data_path /data/mos2/scan_x128_y128.xml -p energy_eV 80000 -p semiangle_mrad 21.4 -p angular_sampling_mrad 0.94 -p dark_path /data/mos2/dark.npy -p electrons_per_count 0.1`
#
# Without a truth file every comparison with the truth is skipped and the data error is shown instead.
#
# Rerun this chapter with other settings, e.g. a higher dose:
# `tdmctx notebooks run --only 09_icgd_mos2 -p dose_e_per_A2 500000`
#
# The quick profile (what CI runs) uses a 16 x 16 scan, the detector binned 2 x 2, two short iCGD cycles and two
# py4DSTEM presets; the paper profile (`notebooks/profiles.yml`) a 64 x 64 scan on the full 128 x 128 detector,
# longer stages, a two-mode probe for the partial coherence and four py4DSTEM presets. The printed settings say
# which ran. Errors are RMS position errors in Ångström after removing the global translation (the one freedom
# ptychography cannot see); because the detector rotation is estimated from the same data, the table also gives the
# error with the global rotation removed (see the preprocessing section).

# %% tags=["parameters"]
profile = "quick"
seed = 0
# The data: None = the simulated EMPAD-like MoS2 dataset; else an EMPAD .xml/.raw, EMD 1.0 .emd/.h5 or tdmctx .npz.
data_path = None
truth_path = None  # optional truth .npz for scoring (simulated data only)
dark_path = None  # .npy dark reference, counts, (k0, k1)
gain_path = None  # .npy flat-field gain map, (k0, k1)
energy_eV = None  # beam energy, eV (None: the simulation's, 80 kV)
semiangle_mrad = None  # convergence semi-angle, mrad (None: the simulation's, 21.4 mrad)
angular_sampling_mrad = None  # detector pixel, mrad (camera-length calibration; None: the simulation's)
step_A = None  # scan step, Angstrom (None: from the file)
electrons_per_count = None  # detector gain, electrons per count (None: the simulation's, or 1)
# The simulated experiment (used when data_path is None).
scan_rows = 16
scan_cols = 16
sim_step_A = 0.5
dose_e_per_A2 = 1e5
source_fwhm_A = 0.4
error_strength_step = 0.5
sim_defocus_A = 80.0
detector_rotation_deg = 15.0
# Preprocessing.
threshold_e = 0.5  # pixels below this many electrons are read noise
rotation_angles = 3600  # trial angles over 180 degrees for the rotation from the centre of mass
defocus_field = 32  # the defocus is estimated on at most this many central positions per axis
defocus_max_fraction = 0.5  # ... from pixels within this fraction of the disk radius
bin_factor = 2  # detector binning for the reconstruction (1 = the full 128 x 128)
# Reconstruction: iCGD stage lengths (most passes per stage), cycles, damping; every other method gets as many passes.
icgd_cycles = 2  # coarse-to-fine cycles; the object restarts from a blank slate between them
stage_passes = {"warm-up": 5, "affine": 15, "line": 10, "drift": 5, "jitter": 5}
affine_rel_tol = 0.05
position_damping = 1.0
probe_modes = 1
batch_size = 64
py4dstem_presets = {"default": {}, "small step": {"positions_step_size": 0.2}}
device = None
# One CPU thread for every method: py4DSTEM's numpy FFTs use one, so the comparison is at equal threads.
cpu_threads = 1

# %%
import dataclasses
import hashlib
import time
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import torch
from IPython.display import Markdown, display

from tdmctx.data import cache_dir
from tdmctx.plotting import DIVERGING_CMAP, PALETTE, apply_style, show_image
from tdmctx.ptycho import experiment_like as el
from tdmctx.ptycho import metrics
from tdmctx.ptycho.baselines import reconstruct_py4dstem
from tdmctx.ptycho.detector import estimate_rotation
from tdmctx.ptycho.engine import GDPtychography
from tdmctx.ptycho.icgd import default_schedule, run_icgd
from tdmctx.ptycho.io import dataset_from_mapping, save_dataset
from tdmctx.ptycho.preprocess import (
    angular_sampling_from_disk,
    apply_dark_gain,
    bin_patterns,
    bright_field_disk,
    central_field,
    centre_patterns,
    estimate_defocus,
    threshold_electrons,
)
from tdmctx.ptycho.readers import read_4dstem

apply_style()
torch.set_num_threads(cpu_threads)
started = time.perf_counter()

# %% [markdown]
# ## The data
#
# By default the package simulates the experiment (cached, so reruns are fast) and this chapter then treats the
# files as it would treat real ones: it knows only what a microscope log would say (beam energy, convergence
# angle, the camera-length calibration, the detector gain) and reads the frames through `read_4dstem`.

# %%
truth = None
conditions = None
if data_path is None:
    conditions = el.EmpadLikeConditions(
        scan_shape=(scan_rows, scan_cols), step_A=sim_step_A, dose_e_per_A2=dose_e_per_A2,
        source_fwhm_A=source_fwhm_A, error_strength_step=error_strength_step, defocus_A=sim_defocus_A,
        detector_rotation_deg=detector_rotation_deg, seed=seed)
    files = el.simulate_empad_like(conditions)
    data_path, dark_path, gain_path, truth_path = files.xml_path, files.dark_path, files.gain_path, files.truth_path
    log = files.metadata
    energy_eV = log["energy_eV"] if energy_eV is None else energy_eV
    semiangle_mrad = log["semiangle_mrad"] if semiangle_mrad is None else semiangle_mrad
    angular_sampling_mrad = log["angular_sampling_mrad"] if angular_sampling_mrad is None else angular_sampling_mrad
    electrons_per_count = log["electrons_per_count"] if electrons_per_count is None else electrons_per_count
if truth_path is not None:
    truth = el.load_truth(truth_path)
raw = read_4dstem(data_path, energy_eV=None if energy_eV is None else float(energy_eV), semiangle_mrad=semiangle_mrad,
                  angular_sampling_mrad=angular_sampling_mrad, step_A=step_A)
dark = None if dark_path is None else np.load(dark_path)
gain = None if gain_path is None else np.load(gain_path)
gain_e = 1.0 if electrons_per_count is None else float(electrons_per_count)
step = float(np.hypot(*(raw.nominal_positions_A[0, 1] - raw.nominal_positions_A[0, 0])))
print(f"{data_path}: {raw.datacube.shape[0]} x {raw.datacube.shape[1]} positions, "
      f"{raw.datacube.shape[2]} x {raw.datacube.shape[3]} detector pixels, {step:.3f} Å step")
if conditions is not None:
    c = conditions
    print(f"simulated: {c.energy_eV / 1e3:.0f} kV, {c.semiangle_mrad} mrad, defocus {c.defocus_A} Å, detector "
          f"{c.angular_sampling_mrad} mrad/px; dose {c.dose_e_per_A2:.3g} e/Å² = {c.electrons_per_pattern:.3g} e per "
          f"pattern; source FWHM {c.source_fwhm_A} Å; mixed scan error of strength {c.error_strength_step} step; "
          f"{c.counts_per_electron} counts/e, dark {c.dark_level_counts} ± {c.dark_spread_counts} counts, read noise "
          f"{c.read_noise_counts} counts, gain spread {100 * c.gain_spread:.0f} %; seed {c.seed}")

fig, axes = plt.subplots(1, 4, figsize=(15, 3.6))
frame = raw.datacube[raw.scan_shape[0] // 2, raw.scan_shape[1] // 2]
im = axes[0].imshow(frame, cmap="cividis")
axes[0].set_title("one raw frame (counts)")
plt.colorbar(im, ax=axes[0], fraction=0.046)
im = axes[1].imshow(np.log10(np.clip(raw.datacube.mean((0, 1)) - (0 if dark is None else dark), 1e-2, None)),
                    cmap="cividis")
axes[1].set_title("mean frame − dark, log10 counts")
plt.colorbar(im, ax=axes[1], fraction=0.046)
for ax, ref, title in ((axes[2], dark, "dark reference (counts)"), (axes[3], gain, "flat-field gain")):
    if ref is None:
        ax.axis("off")
        ax.set_title(f"{title}: none given")
        continue
    im = ax.imshow(ref, cmap="cividis")
    ax.set_title(title)
    plt.colorbar(im, ax=ax, fraction=0.046)
for ax in axes:
    ax.set_xlabel("k1 (px)")
    ax.set_ylabel("k0 (px)")
fig.tight_layout()

# %% [markdown]
# ## Preprocessing
#
# **Dark offset, gain, read noise.** `apply_dark_gain` subtracts the dark reference and multiplies by the
# flat-field map; the detector gain turns counts into electrons. Most dark-field pixels receive no electron, so
# their read noise would, once negative values are clipped, add a positive background that no object explains;
# pixels below `threshold_e` electrons are set to zero. The histogram shows the read-noise peak at zero and
# single electrons at one.

# %%
counts = apply_dark_gain(raw.datacube, dark, gain)
electrons_raw = counts * np.float32(gain_e)
electrons = threshold_electrons(electrons_raw, threshold_e)
fig, ax = plt.subplots(figsize=(6, 3.4))
sample = electrons_raw[..., :16, :16].ravel()  # a detector corner: dark field only
ax.hist(sample, bins=np.linspace(-1, 4, 126), color=PALETTE[0])
ax.axvline(threshold_e, color=PALETTE[1], ls="--", label=f"threshold {threshold_e} e")
ax.set_yscale("log")
ax.set_xlabel("electrons per pixel (dark-field corner)")
ax.set_ylabel("pixels")
ax.legend()
fig.tight_layout()
per_pattern = electrons.sum((-2, -1)).mean()
print(f"electrons per pattern: {electrons_raw.sum((-2, -1)).mean():.0f} after dark and gain, {per_pattern:.0f} after "
      f"the threshold" + ("" if truth is None else f"; truth {truth['mean_detected_electrons']:.0f}"))

# %% [markdown]
# **Bright-field disk.** Its centre is where the reconstruction puts the zero of scattering angle; the pattern is
# shifted by whole pixels to put it at the detector's middle. Its radius with the known convergence angle gives
# an independent check of the detector sampling.

# %%
disk = bright_field_disk(electrons)
electrons, shift_px = centre_patterns(electrons, disk.centre_px)
sampling_from_disk = angular_sampling_from_disk(disk, raw.semiangle_mrad)
sampling = float(raw.angular_sampling_mrad[0])  # the calibration; the disk is the check
fig, ax = plt.subplots(figsize=(4.6, 4.2))
mean_pattern = electrons_raw.mean((0, 1))
ax.imshow(np.log10(np.clip(mean_pattern, 1e-3, None)), cmap="cividis")
ax.add_patch(plt.Circle(disk.centre_px[::-1], disk.radius_px, fill=False, color=PALETTE[3], lw=1.5))
ax.plot(*disk.centre_px[::-1], "+", color=PALETTE[3], ms=12)
if truth is not None:
    ax.plot(*truth["disk_centre_px"][::-1], "x", color=PALETTE[1], ms=10, label="true centre")
    ax.legend(loc="lower right", fontsize=8)
ax.set_title("mean pattern (log), BF disk found")
ax.set_xlabel("k1 (px)")
ax.set_ylabel("k0 (px)")
fig.tight_layout()
disk_rows = {"centre k0 (px)": [disk.centre_px[0]], "centre k1 (px)": [disk.centre_px[1]],
             "radius (px)": [disk.radius_px], "sampling (mrad/px)": [sampling_from_disk]}
if truth is not None:
    disk_rows = {k: v + [t] for (k, v), t in zip(disk_rows.items(), [
        *truth["disk_centre_px"], raw.semiangle_mrad / truth["angular_sampling_mrad"][0],
        truth["angular_sampling_mrad"][0]])}
display(pd.DataFrame(disk_rows, index=["measured", "truth"][: len(disk_rows["radius (px)"])]).round(4))
print(f"patterns shifted by {shift_px} px; the reconstruction uses the calibration, {sampling:.4f} mrad/px")

# %% [markdown]
# **Detector rotation and transpose.** The centre-of-mass shift of a thin specimen is the gradient of its
# projected potential, so once rotated into the scan frame it has no curl: the (rotation, transpose) pair with the
# least curl is kept (`estimate_rotation`), and the sign is fixed by the atoms pulling the beam in. Shown: the
# centre-of-mass field in the scan frame with that rotation. What this measures is the angle between the detector
# and the scan *as it really ran*: a scan that is itself rotated (a scan-coil error) shifts the estimate by its own
# rotation, and no later step can tell the two apart, since the data only fix the scan relative to the detector.

# %%
rotation_deg, transpose = estimate_rotation(electrons, n_angles=rotation_angles)
com = electrons.sum(-1) @ np.arange(electrons.shape[-2]), electrons.sum(-2) @ np.arange(electrons.shape[-1])
com = np.stack(com, -1) / electrons.sum((-2, -1))[..., None]
com -= com.reshape(-1, 2).mean(0)
field = com[..., ::-1] if transpose else com
t = np.deg2rad(rotation_deg)
gx = np.cos(t) * field[..., 0] - np.sin(t) * field[..., 1]
gy = np.sin(t) * field[..., 0] + np.cos(t) * field[..., 1]
fig, axes = plt.subplots(1, 2, figsize=(9, 3.8))
for ax, comp, name in zip(axes, (gx, gy), ("x", "y")):
    im = ax.imshow(comp, cmap=DIVERGING_CMAP, vmin=-np.abs(comp).max(), vmax=np.abs(comp).max())
    ax.set_title(f"centre of mass, {name} component (px)")
    ax.set_xlabel("scan column")
    ax.set_ylabel("scan row")
    plt.colorbar(im, ax=ax, fraction=0.046)
fig.tight_layout()
rotation_truth = ""
if truth is not None:
    scan_rotation = metrics.affine_parameters(truth["true_positions_A"], raw.nominal_positions_A)["rotation_deg"]
    rotation_truth = (f"; truth {truth['rotation_deg']:.2f}°, transpose {bool(truth['transpose'])}; the scan's own "
                      f"rotation (affine fit of truth − nominal) is {scan_rotation:.2f}°")
print(f"detector rotation {rotation_deg:.2f}°, transpose {transpose}{rotation_truth}")

# %% [markdown]
# **Defocus from parallax.** The bright-field image seen through one part of the disk is displaced in proportion
# to its scattering angle, by the defocus (`estimate_defocus`); the slope of displacement against angle is the
# defocus. A small field of view biases the estimate low (the correlations are periodic); the reconstruction
# refines the probe anyway, so the estimate only has to be close. On a crystal the opposite also fails: on a large
# field the correlation of two periodic images has a peak at every lattice vector and the wrong one can win (on the
# 64 x 64 scan of this dataset the full field gives a negative defocus with a 2 Å fit residual), and the largest
# parallax shifts, from the disk edge, come close to half a lattice period. So the estimate uses a central field of
# at most `defocus_field` positions and the inner `defocus_max_fraction` of the disk; the fit residual says whether
# it worked.

# %%
central = central_field(electrons, defocus_field)
defocus = estimate_defocus(central, step, sampling, rotation_deg=rotation_deg, transpose=transpose,
                           disk=bright_field_disk(electrons), max_fraction=defocus_max_fraction)
fig, ax = plt.subplots(figsize=(5.4, 3.8))
for i, name in enumerate("xy"):
    ax.plot(defocus.angles_mrad[:, i], defocus.shifts_A[:, i], "o", ms=3, color=PALETTE[i], label=f"{name} shift")
line = np.linspace(defocus.angles_mrad.min(), defocus.angles_mrad.max(), 2)
ax.plot(line, defocus.defocus_A * line * 1e-3, "k-", lw=1, label=f"fit: {defocus.defocus_A:.1f} Å")
if truth is not None:
    ax.plot(line, truth["defocus_A"] * line * 1e-3, "k:", lw=1, label=f"truth: {truth['defocus_A']:.1f} Å")
ax.set_xlabel("scattering angle (mrad)")
ax.set_ylabel("image displacement (Å)")
ax.legend(fontsize=8)
fig.tight_layout()
print(f"defocus {defocus.defocus_A:.1f} Å from {central.shape[0]} x {central.shape[1]} positions "
      f"(fit residual {defocus.residual_A:.3f} Å)"
      + ("" if truth is None else f"; truth {truth['defocus_A']:.1f} Å"))

# %% [markdown]
# **The dataset the reconstructions see.** The estimates above become the calibration (it is not refined with
# the positions: a wrong rotation or sampling shows up as an affine position error). In the quick profile the
# detector is binned (`bin_factor`): the real-space pixel stays the same, the probe window shrinks and each pass
# gets about `bin_factor**2` times cheaper; the summed pixels are a slight blur that the forward model ignores.

# %%
data = dataset_from_mapping({
    "datacube": bin_patterns(electrons, bin_factor),
    "nominal_positions_A": raw.nominal_positions_A,
    "energy_eV": raw.energy_eV,
    "semiangle_mrad": raw.semiangle_mrad,
    "angular_sampling_mrad": np.full(2, sampling * bin_factor),
    "defocus_A": defocus.defocus_A,
    "rotation_deg": rotation_deg,
    "transpose": transpose,
})
true_A = None if truth is None else truth["true_positions_A"]
nominal_A = data.nominal_positions_A
# The preprocessed data in the package's own format (no truth in it), so the shell can run the same reconstruction.
settings = f"{data_path}|{threshold_e}|{bin_factor}|{rotation_angles}|{defocus_field}|{defocus_max_fraction}"
tag = hashlib.sha256(settings.encode()).hexdigest()[:12]
prepared = save_dataset(data, cache_dir("ptycho") / f"prepared-{Path(data_path).stem}-{tag}.npz")
print(f"from the shell: tdmctx ptycho reconstruct {prepared} --method icgd --output icgd.npz "
      "(the default iCGD schedule: two cycles, 80 passes)")
print(f"reconstruction input: {data.datacube.shape}, {data.angular_sampling_mrad[0]:.3f} mrad/px, "
      f"{per_pattern:.3g} electrons per pattern; preprocessing took {time.perf_counter() - started:.1f} s so far")
if truth is not None:
    start = metrics.error_decomposition(nominal_A, true_A)
    print(f"scan error to correct (translation removed): {start['total']:.4f} Å = {start['total'] / step:.3f} step "
          f"(affine {start['affine']:.4f}, line {start['line']:.4f}, low-pass {start['lowpass']:.4f}, "
          f"high-pass {start['highpass']:.4f} Å)")

# %% [markdown]
# ## Reconstructions
#
# iCGD runs the default coarse-to-fine schedule of `tdmctx.ptycho.icgd` with the stage lengths, the affine
# tolerance and the damping of this chapter's parameters, `icgd_cycles` times: between cycles the object restarts
# from a blank slate at the refined positions, because during the first cycle the object absorbs part of the
# global (affine) distortion that it was built on, and a distorted object holds the positions in place. Every
# other method gets as many passes in total: the nominal positions kept fixed, unconstrained position descent
# (the same Gauss-Newton step without a projection) after the same warm-up, and py4DSTEM's position correction
# with each preset (best and final iteration reported). The floor is the same iCGD run started from the true
# positions. The tdmctx runs share `probe_modes`; py4DSTEM's wrapper runs its single-mode
# `SingleslicePtychography`, so with `probe_modes` > 1 only the tdmctx runs model the partial coherence.

# %%
def stage_length(stage):
    """This chapter's pass bound for a stage of the default schedule (the same in every cycle)."""
    n = int(stage_passes[stage.name.split(" (")[0]])
    return dataclasses.replace(stage, max_iterations=n, min_iterations=min(stage.min_iterations, n),
                               rel_tol=affine_rel_tol if stage.constraint == "affine" else stage.rel_tol)


schedule = [stage_length(s) for s in default_schedule(cycles=icgd_cycles)]
warmup = int(stage_passes["warm-up"])
common = dict(batch_size=batch_size, probe_modes=probe_modes, seed=seed, device=device)


def run_protocol(initial):
    """The iCGD schedule from `initial` positions; returns the engine and the per-stage log."""
    engine = GDPtychography(data, initial_positions_A=initial, true_positions_A=true_A, **common)
    out = run_icgd(engine, schedule, position_damping=position_damping, progress=False)
    log = pd.DataFrame(out.stages)
    log.insert(0, "cycle", [int(name.split("(")[1].rstrip(")")) if "(" in name else 1 for name in log["stage"]])
    log["stage"] = [name.split(" (")[0] for name in log["stage"]]
    return engine, log, out.boundaries


t0 = time.perf_counter()
icgd_engine, icgd_log, icgd_boundaries = run_protocol(None)
passes = icgd_engine.iteration
runs = {"iCGD": icgd_engine.result()}
runs["iCGD"].method = "icgd"
timing = {"iCGD": time.perf_counter() - t0}

t0 = time.perf_counter()
fixed = GDPtychography(data, true_positions_A=true_A, **common)
fixed.run(passes, refine_positions=False, progress=False)
runs["nominal"], timing["nominal"] = fixed.result(), time.perf_counter() - t0

t0 = time.perf_counter()
free = GDPtychography(data, true_positions_A=true_A, **common)
free.run(warmup, refine_positions=False, progress=False)
free.run(passes - warmup, position_damping=position_damping, progress=False)
runs["unconstrained"], timing["unconstrained"] = free.result(), time.perf_counter() - t0

py4d_runs = {}
for name, settings in py4dstem_presets.items():
    t0 = time.perf_counter()
    py4d_runs[name] = reconstruct_py4dstem(data, iterations=passes, position_start=warmup, true_positions_A=true_A,
                                           batch_size=batch_size, seed=seed, device=device, progress=False,
                                           **settings)
    timing[f"py4DSTEM, {name}"] = time.perf_counter() - t0
# The preset with the lowest final error is "py4DSTEM at its best settings" (without the truth: the last one's
# data error decides); its best iteration is reported too.
if truth is not None:
    best_preset = min(py4d_runs, key=lambda k: py4d_runs[k].log["rms_position_error_A"][-1])
else:
    best_preset = min(py4d_runs, key=lambda k: py4d_runs[k].log["data_error"][-1])
runs[f"py4DSTEM ({best_preset})"] = py4d_runs[best_preset]
py4d_name = f"py4DSTEM ({best_preset})"
timing[py4d_name] = timing[f"py4DSTEM, {best_preset}"]

if truth is not None:
    t0 = time.perf_counter()
    floor_engine, floor_log, _ = run_protocol(true_A)
    runs["floor (iCGD from truth)"], timing["floor (iCGD from truth)"] = floor_engine.result(), time.perf_counter() - t0
print(f"{passes} passes per method; wall time per run (s): " + ", ".join(f"{k} {v:.1f}" for k, v in timing.items()))

# %% [markdown]
# ### The iCGD stages
#
# One row per stage: passes run, whether the position step converged (the stage's documented criterion) or the
# stage hit its pass limit, whether the high-pass stage was skipped by its noise gate (its first step was within
# the shot noise of a single pattern, so it would have added about as much noise as it removed), the data error,
# how far the positions moved, and, with the truth, the RMS position error and its split into affine, line,
# low-pass and high-pass parts at the end of the stage.

# %%
columns = ["cycle", "stage", "passes", "converged", "skipped", "data_error", "position_change_A"]
if truth is not None:
    columns += ["rms_error_A", "rms_affine_A", "rms_line_A", "rms_lowpass_A", "rms_highpass_A"]
display(icgd_log[columns].round(5))

# %% [markdown]
# The error field (estimate minus truth, translation removed; arrows 10x) at the start and after every position
# stage, in the scan frame. Without a truth, the field shown is the position change from the nominal raster.

# %%
history = icgd_engine.history
ends = [(f"{r.stage} (cycle {r.cycle})", b) for r, b in zip(icgd_log.itertuples(), icgd_boundaries)
        if r.stage != "warm-up"]
panels = [("start", 0), *ends]
cols = 4
n_rows = int(np.ceil(len(panels) / cols))
fig, axes = plt.subplots(n_rows, cols, figsize=(3.3 * cols, 3.4 * n_rows), squeeze=False)
reference = nominal_A if truth is None else true_A
for ax, (title, index) in zip(axes.flat, panels):
    err = history[index] - reference
    err = err - err.reshape(-1, 2).mean(0)
    ax.quiver(reference[..., 0], reference[..., 1], err[..., 0], err[..., 1], color=PALETTE[0], angles="xy",
              scale_units="xy", scale=0.1, width=0.006)
    rms = np.sqrt(np.mean(np.sum(err**2, -1)))
    ax.set_title(f"{title}\nRMS {rms:.4f} Å", fontsize=9)
    ax.set_aspect("equal")
    ax.invert_yaxis()
    ax.set_xlabel("x (Å)")
    ax.set_ylabel("y (Å)")
for ax in list(axes.flat)[len(panels):]:
    ax.axis("off")
fig.tight_layout()

# %% [markdown]
# ## Comparison
#
# RMS position error per pass for every method (the iCGD stage boundaries dotted, cycle boundaries dashed), and
# the split of each final error into affine, line, low-pass and high-pass parts.

# %%
colors = {"nominal": PALETTE[6], "unconstrained": PALETTE[1], py4d_name: PALETTE[3], "iCGD": PALETTE[0],
          "floor (iCGD from truth)": PALETTE[2]}
fig, axes = plt.subplots(1, 2, figsize=(13, 4.2))
ax = axes[0]
key = "rms_position_error_A" if truth is not None else "data_error"
for name, res in runs.items():
    values = np.asarray(res.log[key])
    if truth is not None:
        first = 0.0 if name.startswith("floor") else start["total"]
        values = np.concatenate([[first], values])
    ax.plot(np.arange(len(values)), values, color=colors[name], label=name)
for name, res in py4d_runs.items():
    if f"py4DSTEM ({name})" not in runs:
        values = np.asarray(res.log[key])
        ax.plot(np.arange(1, len(values) + 1), values, color=PALETTE[3], ls=":", lw=1, label=f"py4DSTEM ({name})")
for (_, r), b in zip(icgd_log.iterrows(), icgd_boundaries):
    ax.axvline(b, color="k", lw=0.6, ls="--" if r.stage == schedule[-1].name else ":")
ax.set_xlabel("pass")
ax.set_ylabel("RMS position error (Å)" if truth is not None else "data error")
ax.set_ylim(0, 1.4 * ax.get_ylim()[1])  # room for the legend above the curves
ax.legend(fontsize=7, ncol=3, loc="upper center")
ax = axes[1]
if truth is not None:
    parts = ["affine", "line", "lowpass", "highpass"]
    finals = {"start": start, **{n: metrics.error_decomposition(r.positions_A, true_A) for n, r in runs.items()}}
    width = 0.8 / len(finals)
    for i, (name, d) in enumerate(finals.items()):
        ax.bar(np.arange(len(parts)) + i * width, [d[p] for p in parts], width,
               color=colors.get(name, PALETTE[6]), label=name, hatch="//" if name == "start" else None,
               edgecolor="k" if name == "start" else None)
    ax.set_xticks(np.arange(len(parts)) + 0.4 - width / 2, parts)
    ax.set_ylabel("RMS of the part (Å)")
    ax.set_title("final error by type", fontsize=10)
    ax.legend(fontsize=8)
else:
    ax.axis("off")
fig.tight_layout()

# %% [markdown]
# The iCGD run's error split per pass (with the truth).

# %%
if truth is not None:
    split = metrics.decomposition_history(icgd_engine.history, true_A)
    fig, ax = plt.subplots(figsize=(7, 3.6))
    for i, name in enumerate(["total", "affine", "line", "lowpass", "highpass"]):
        ax.plot(split[name], color=PALETTE[i], label=name)
    for b in icgd_boundaries:
        ax.axvline(b, color="k", lw=0.6, ls=":")
    ax.set_yscale("log")
    ax.set_xlabel("pass")
    ax.set_ylabel("RMS (Å)")
    ax.legend(fontsize=8, ncol=5)
    fig.tight_layout()

# %% [markdown]
# **Object phase.** The reconstructed phase with the nominal positions, with py4DSTEM's correction and with iCGD,
# beside the true phase band-limited to the information limit (the truth is periodic and stored in the detector
# frame; it is sampled on iCGD's grid).

# %%
shown = ["nominal", py4d_name, "iCGD"]
fig, axes = plt.subplots(1, len(shown) + (truth is not None), figsize=(3.9 * (len(shown) + 1), 3.8))
margin_A = 1.0
frame_A = (reference.reshape(-1, 2) @ np.array([[np.cos(t), -np.sin(t)], [np.sin(t), np.cos(t)]]))
lo, hi = frame_A.min(0) - margin_A, frame_A.max(0) + margin_A


def scanned(image, res):
    """The part of an image on the grid of `res` that covers the scanned field."""
    c0, r0 = np.floor((lo - res.object_origin_A) / res.object_pixel_size_A).astype(int)
    c1, r1 = np.ceil((hi - res.object_origin_A) / res.object_pixel_size_A).astype(int)
    return image[max(r0, 0):r1, max(c0, 0):c1]


for ax, name in zip(axes, shown):
    res = runs[name]
    show_image(ax, scanned(np.angle(res.object), res), res.object_pixel_size_A, title=name,
               colorbar_label="phase (rad)")
if truth is not None:
    res = runs["iCGD"]
    k_limit = metrics.information_limit_per_A(data.energy_eV, data.semiangle_mrad, res.object_pixel_size_A)
    phase_true = metrics.truth_on_grid(truth["true_object"], tuple(truth["true_object_sampling_A"]), res.object.shape,
                                       res.object_pixel_size_A, res.object_origin_A,
                                       res.object_rotation_deg - truth["true_object_frame_deg"], k_limit)
    show_image(axes[-1], scanned(phase_true, res), res.object_pixel_size_A, title="truth (band-limited)",
               colorbar_label="phase (rad)")
fig.tight_layout()

# %% [markdown]
# **Recovered affine distortion.** The global affine part of the scan distortion (scale per axis, rotation,
# shear; linear drift is affine in a raster, so it is included), from the least-squares affine fit of
# (positions − nominal), against the same fit of (truth − nominal). A detector rotation or sampling that is off
# shows up here as well: the calibration, not the positions, owns the global rotation and scale.

# %%
affine_rows = {name: metrics.affine_parameters(res.positions_A, nominal_A) for name, res in runs.items()
               if not name.startswith("floor")}
if truth is not None:
    affine_rows = {"truth": metrics.affine_parameters(true_A, nominal_A), **affine_rows}
display(pd.DataFrame(affine_rows).T.round(3))

# %% [markdown]
# **The table.** Final RMS position error (translation removed) and its parts, the same error with the best global
# rotation also removed (`rms_no_rotation_A`, and the rotation that took: the gauge shared with the detector
# rotation estimate), the best pass of each run, the object phase against the truth (Pearson correlation and mean
# Fourier ring correlation within the information limit), and seconds per pass on this machine. Without a truth the
# table has each method's own data error instead (py4DSTEM and tdmctx define it differently: compare within a method).

# %%
if truth is not None:
    rows = {name: el.score_against_truth(res, truth, energy_eV=data.energy_eV, semiangle_mrad=data.semiangle_mrad)
            for name, res in runs.items()}
    table = pd.DataFrame(rows).T
    table.insert(0, "passes", [len(r.log["data_error"]) for r in runs.values()])
    # The same error with the global rotation removed: the part the detector-rotation estimate shares with the scan.
    gauge = {name: metrics.rms_without_rotation_A(res.positions_A, true_A) for name, res in runs.items()}
    table.insert(2, "rms_no_rotation_A", [g[0] for g in gauge.values()])
    table.insert(3, "rotation_removed_deg", [g[1] for g in gauge.values()])
else:
    table = pd.DataFrame({name: {"passes": len(r.log["data_error"]), "data_error": r.log["data_error"][-1],
                                 "seconds_per_pass": r.log["time_s"][-1] / len(r.log["time_s"])}
                          for name, r in runs.items()}).T
display(table.round(4))

# %% [markdown]
# ## What it found

# %%
lines = [f"- Data: {'simulated EMPAD-like MoS2 (truth known)' if conditions is not None else data_path}; "
         f"{data.scan_shape[0]} x {data.scan_shape[1]} positions at {step:.2f} Å, {per_pattern:.3g} electrons per "
         f"pattern" + ("" if conditions is None else f" ({conditions.dose_e_per_A2:.3g} e/Å²), source FWHM "
                       f"{conditions.source_fwhm_A} Å, seed {conditions.seed}") + "."]
lines.append(f"- Preprocessing: rotation {rotation_deg:.2f}° transpose {transpose}, "
             f"defocus {defocus.defocus_A:.1f} Å, disk radius {disk.radius_px:.2f} px" + ("" if truth is None else
             f" (truth {truth['rotation_deg']:.2f}°, {bool(truth['transpose'])}, {truth['defocus_A']:.1f} Å, "
             f"{raw.semiangle_mrad / truth['angular_sampling_mrad'][0]:.2f} px)") + ".")
if truth is not None:
    floor_name = "floor (iCGD from truth)"
    names = {"nominal": "nominal", "unconstrained": "unconstrained", py4d_name: py4d_name, "iCGD": "iCGD",
             floor_name: "floor"}

    def each(column, digits=4):
        """One column of the table for every method, as text."""
        return ", ".join(f"{label} {table.loc[name, column]:.{digits}f}" for name, label in names.items())

    def verdict(column):
        """The issue's targets on one error measure."""
        nom, got = table.loc["nominal", column], table.loc["iCGD", column]
        flo, py = table.loc[floor_name, column], table.loc[py4d_name, column]
        first = "met" if nom / got >= 20 or got <= 1.5 * flo else "missed"
        return (f"{nom / got:.1f}x below nominal and {got / flo:.2f}x the floor (20x or 1.5x: {first}), "
                f"{py / got:.2f}x below py4DSTEM's final (3x: {'met' if py / got >= 3 else 'missed'})")

    crb_A = float(np.nanmedian(icgd_engine.log["crb_rms_A"][-10:]))
    last = schedule[-1].name.split(" (")[0]
    cycle_affine = icgd_log.loc[icgd_log.stage == last, "rms_affine_A"].tolist()

    def gate(log):
        """Cycles in which the high-pass stage ran / was skipped by its noise gate."""
        rows = log[log.stage == last]
        return [int(c) for c in rows.loc[~rows.skipped, "cycle"]], [int(c) for c in rows.loc[rows.skipped, "cycle"]]

    lines += [
        f"- Scan error {start['total']:.4f} Å ({start['total'] / step:.2f} step; mixed error of strength "
        f"{error_strength_step} step). Final RMS error after {passes} passes (Å): {each('rms_A')}; py4DSTEM's best "
        f"pass {table.loc[py4d_name, 'best_rms_A']:.4f} Å (pass {int(table.loc[py4d_name, 'best_iteration'])}).",
        f"- The same with the global rotation removed (the detector-rotation estimate absorbs the scan's own "
        f"rotation, and the data cannot tell the two apart): {each('rms_no_rotation_A')}.",
        f"- Targets, iCGD: {verdict('rms_A')}; with the rotation removed: {verdict('rms_no_rotation_A')}.",
        f"- Left in iCGD's error (Å): affine {table.loc['iCGD', 'affine_A']:.4f}, "
        f"line {table.loc['iCGD', 'line_A']:.4f}, low-pass {table.loc['iCGD', 'lowpass_A']:.4f}, "
        f"high-pass {table.loc['iCGD', 'highpass_A']:.4f}; floor: "
        f"affine {table.loc[floor_name, 'affine_A']:.4f}, high-pass {table.loc[floor_name, 'highpass_A']:.4f}.",
        f"- Why not 20x: the scan error holds white jitter ({start['highpass']:.4f} Å high-pass part at the start) "
        f"and the single-pattern Cramér-Rao bound at this dose is {crb_A:.4f} Å, so nominal / 20 = "
        f"{start['total'] / 20:.4f} Å is out of reach of any per-position estimate. A high-pass pass moves the "
        f"positions by about that bound even where they are right, so the stage runs only when its first step is "
        f"above sqrt(2) times the bound (the noise gate of `tdmctx.ptycho.icgd`): iCGD ran it in cycle(s) "
        f"{gate(icgd_log)[0]} and skipped it in {gate(icgd_log)[1]}; started from the truth it ran in "
        f"{gate(floor_log)[0]} and was skipped in {gate(floor_log)[1]}.",
        f"- The affine part converges slowly (the object, built on the distorted scan, absorbs a global "
        f"distortion): at the end of each cycle it is " + ", ".join(f"{v:.4f}" for v in cycle_affine) + " Å; the "
        f"floor's {table.loc[floor_name, 'affine_A']:.4f} Å includes the detector-rotation estimate's error.",
        f"- Object phase correlation with the truth: {each('phase_correlation', 3)}.",
    ]
lines.append(f"- Wall time of the chapter: {time.perf_counter() - started:.0f} s ({profile} profile, {cpu_threads} "
             f"CPU thread(s), device {runs['iCGD'].info.get('device')}).")
display(Markdown("\n".join(lines)))

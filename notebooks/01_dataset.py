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
# # The TMD defect dataset
#
# This chapter builds the simulated dataset that the classifiers learn from: a catalog of
# 96 doped monolayers (four 1H hosts x 24 metal-site dopants) imaged under six conditions
# (60, 80 and 200 kV x a high-angle and a medium-angle annular detector). abTEM simulates a
# calibration and a validation cell per system and energy (frozen phonons, both detectors
# from one run); a calibrated incoherent model renders large fields wherever it stays within
# a stated tolerance of abTEM on the held-out cell; a scan with drift and line jitter, source
# blur, dose and detector read-out make the images look acquired. Patches are cut on the fly.
#
# It shows the catalog, one system under all six conditions (and the detector contrast
# reversal of the real data), a gallery of the five column classes, the class balance, the
# fast engine's error maps, and the simulated against the experimental Ti-WSe2 intensity
# ratios.
#
# Rerun: `tdmctx notebooks run --only 01_dataset -p profile quick` (the store is cached
# under the tdmctx cache folder and reused when present).

# %% tags=["parameters"]
profile = "quick"
seed = 0
n_workers = 2
loader_batches = 40
loader_batch_size = 512

# %%
import time

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from tdmctx.data import cache_dir
from tdmctx.defects import (
    CLASS_NAMES,
    FAST_TOLERANCE,
    PATCH,
    Augmentation,
    PatchSampler,
    build_dataset,
    catalog,
    imaging_conditions,
    open_case,
    profile_config,
)
from tdmctx.defects.ratios import experimental_ratios, simulated_ratios
from tdmctx.plotting import CLASS_COLORS, DIVERGING_CMAP, PALETTE, add_scalebar, apply_style, show_image

apply_style()
pd.set_option("display.precision", 3)

# %% [markdown]
# ## The catalog and the imaging conditions
#
# Lattice constants and thicknesses come from the bulk 2H X-ray structures (sources in
# `tdmctx.defects.catalog`); each host takes the same 23 dopants plus the other host metal.

# %%
systems = pd.DataFrame(
    [
        {
            "system": s.name,
            "host": s.host.formula,
            "dopant": s.dopant,
            "dopant Z": s.dopant_Z,
            "a (Å)": s.host.a_A,
            "thickness (Å)": round(s.host.thickness_A, 3),
            "source": s.host.source,
        }
        for s in catalog()
    ]
)
print(f"{len(systems)} systems; dopants per host:", systems.groupby("host").size().to_dict())
systems.groupby("host").agg({"a (Å)": "first", "thickness (Å)": "first", "dopant": lambda d: ", ".join(d), "source": "first"})

# %%
conditions = pd.DataFrame(
    [
        {
            "condition": c.name,
            "energy (kV)": c.energy_eV / 1e3,
            "detector (mrad)": f"{c.detector_inner_mrad:g}-{c.detector_outer_mrad:g}",
            "probe semi-angle (mrad)": c.probe.semiangle_mrad,
            "focal spread (Å)": c.probe.focal_spread_A,
            "source FWHM (Å)": c.probe.source_size_fwhm_A,
            "C30 (µm)": c.probe.aberrations_A["C30"] / 1e4,
        }
        for c in imaging_conditions()
    ]
)
print(f"{len(conditions)} conditions x {len(systems)} systems = {len(conditions) * len(systems)} cases")
conditions

# %% [markdown]
# ## Build (or reuse) the store
#
# One dask task per system and energy; each case is written atomically and a rerun skips
# finished cases.

# %%
config = profile_config(profile, seed=seed)
store = cache_dir("defects", f"{profile}-seed{seed}")
start = time.perf_counter()
ds = build_dataset(store, config=config, n_workers=n_workers)
build_s = time.perf_counter() - start
ds = ds.load()
print(f"store {store}: {ds.sizes['case']} cases, {ds.sizes['image']} images, {ds.sizes['site']} sites; {build_s:.0f} s")
case_table = pd.DataFrame(
    {
        "engine": ds.case_engine.values,
        "column rmse": ds.case_fast_column_rmse.values,
        "reference phonon noise": ds.case_fast_column_noise.values,
        "column error beyond noise": ds.case_fast_column_excess.values,
        "image nrmse": ds.case_fast_image_nrmse.values,
    },
    index=ds.case.values,
)
case_table

# %% [markdown]
# ## One system under all six conditions
#
# The same Ti-WSe2 structure per energy, seen by both detectors. On the medium-angle
# detector the Se2 columns outshine the W columns at 60-80 kV, on the high-angle one W wins:
# the contrast reversal between the two channels of the real data.

# %%
system = config.system_names()[0]
fig, axes = plt.subplots(2, 3, figsize=(11, 7.5))
for col, energy in enumerate(sorted({c.energy_eV for c in imaging_conditions()})):
    for row, det in enumerate(("HAADF", "MAADF")):
        name = f"{energy / 1e3:g}kV-{det}"
        idx = np.where((ds.condition.values == name) & (ds.system.values == system))[0][0]
        # a 20 A corner of the field, so that single columns are visible
        img = ds.intensity[idx].sel(x=slice(0, 20), y=slice(0, 20)).values
        show_image(axes[row, col], img, ds.attrs["pixel_size_A"], title=f"{name} ({ds.engine.values[idx]})", colorbar_label="fraction of beam")
fig.suptitle(f"{system}: clean simulated images (before dose noise)")
fig.tight_layout()

# %%
reversal = pd.DataFrame({c.name: simulated_ratios(ds, c.name, system) for c in imaging_conditions()}).T
reversal[["X2/metal", "dopant/metal", "V1/metal", "raw X2/metal"]]

# %% [markdown]
# ## The five column classes
#
# Patches as the classifier sees them (24 x 24 px at 0.4 Å, normalised per patch): clean,
# then with a new dose, read-out and rotation drawn for every patch.

# %%
plain = Augmentation(rotate=False, mirror=False, jitter_px=0.0, dose_e_per_A2=None, dark_offset=(0, 0), read_noise=(0, 0), gamma=(1, 1))
clean = next(iter(PatchSampler(ds, augmentation=plain, batch_size=400, batches_per_epoch=1, seed=seed)))
noisy = next(iter(PatchSampler(ds, batch_size=400, batches_per_epoch=1, seed=seed)))
fig, axes = plt.subplots(2, 5, figsize=(11, 4.8))
for k, name in enumerate(CLASS_NAMES):
    for row, (batch, kind) in enumerate(((clean, "clean"), (noisy, "augmented"))):
        i = int(np.where(batch["label"].numpy() == k)[0][0])
        ax = axes[row, k]
        ax.imshow(batch["image"][i, 0].numpy(), cmap="cividis")
        ax.set_xticks([]), ax.set_yticks([])
        ax.set_title(f"{name} ({kind})", color=CLASS_COLORS[name], fontsize=9)
        add_scalebar(ax, PATCH.pixel_size_A, 2.0)
fig.tight_layout()

# %% [markdown]
# ## Class balance
#
# Enriched concentrations in the quick profile (20 % dopants, 15 % V1, 10 % V2); sites count
# once per image, so each structure counts once per detector.

# %%
site_condition = ds.condition.values[ds.site_image.values]
balance = pd.crosstab(
    pd.Series(site_condition, name="condition"), pd.Series(ds.site_label.values, name="class")
).reindex(columns=list(CLASS_NAMES), fill_value=0)
fig, ax = plt.subplots(figsize=(8, 3.5))
bottom = np.zeros(len(balance))
for name in CLASS_NAMES:
    ax.bar(balance.index, balance[name], bottom=bottom, color=CLASS_COLORS[name], label=name)
    bottom += balance[name].values
ax.set_ylabel("labelled sites")
ax.set_xlabel("imaging condition")
ax.legend(ncol=5, loc="upper center", bbox_to_anchor=(0.5, 1.18))
ax.tick_params(axis="x", rotation=30)
balance

# %% [markdown]
# ## Fast engine against abTEM, per detector
#
# Each case's fast model, calibrated on one abTEM cell, renders the held-out validation cell;
# the difference with abTEM shows where the incoherent picture fails. The model is used for
# a case only when the column-intensity error stays under the tolerance.

# %%
cases = [c for c in ds.case.values]
fig, axes = plt.subplots(len(cases), 3, figsize=(9, 2.6 * len(cases)))
for r, name in enumerate(cases):
    case = open_case(store, name)
    ref = case.validation_reference.values
    fast = case.validation_fast.values
    pixel = float(case.vx[1] - case.vx[0])
    show_image(axes[r, 0], ref, pixel, title=f"{name}: abTEM")
    show_image(axes[r, 1], fast, pixel, title="fast model")
    scale = np.abs(ref - fast).max()
    im = axes[r, 2].imshow(ref - fast, cmap=DIVERGING_CMAP, vmin=-scale, vmax=scale)
    axes[r, 2].set_xticks([]), axes[r, 2].set_yticks([])
    axes[r, 2].set_title(f"difference: column error {case.attrs['fast_column_rmse']:.3f}\n({case.attrs['fast_column_excess']:.3f} beyond phonon noise)", fontsize=9)
    add_scalebar(axes[r, 2], pixel, color="black")
    plt.colorbar(im, ax=axes[r, 2], fraction=0.046, pad=0.04, label="fraction of beam")
fig.tight_layout()

# %%
fig, ax = plt.subplots(figsize=(7, 3))
colors = [PALETTE[0] if e == "fast" else PALETTE[1] for e in ds.case_engine.values]
ax.bar(ds.case.values, ds.case_fast_column_excess.values * 100, color=colors)
ax.axhline(FAST_TOLERANCE * 100, color="black", ls="--", label=f"tolerance {FAST_TOLERANCE:.0%}")
ax.set_ylabel("column error beyond\nreference noise (%)")
ax.set_xlabel("case (blue: fast engine used, red: abTEM images kept)")
ax.tick_params(axis="x", rotation=30)
ax.legend()

# %% [markdown]
# ## Simulated against experimental Ti-WSe2 ratios
#
# Column intensities are disc means around sub-pixel centres, referenced to the empty
# hexagon (hollow) sites: this removes the unknown dark offset of the real frames and keeps
# the probe tails on both sides. The experimental detector angles are not recorded; the
# lower-angle channel (`adf1`) is compared with the simulated MAADF, the higher-angle one
# (`adf2`) with HAADF, at 80 kV.

# %%
rows = []
for field in (2, 11):
    for channel, det in (("adf1", "MAADF"), ("adf2", "HAADF")):
        rows.append({"source": f"experiment field {field} {channel}", "detector": det, **experimental_ratios(field, channel)})
for det in ("MAADF", "HAADF"):
    rows.append({"source": f"simulation 80kV-{det}", "detector": det, **simulated_ratios(ds, f"80kV-{det}", "WSe2:Ti")})
ratios = pd.DataFrame(rows).set_index("source")[["detector", "dopant/metal", "X2/metal", "V1/metal", "raw X2/metal"]]
ratios

# %%
fig, axes = plt.subplots(1, 2, figsize=(9, 3.2), sharey=True)
for ax, det in zip(axes, ("MAADF", "HAADF")):
    sub = ratios[ratios.detector == det]
    x = np.arange(3)
    for j, (label, row) in enumerate(sub.iterrows()):
        ax.bar(x + 0.25 * j - 0.25, row[["dopant/metal", "X2/metal", "V1/metal"]].astype(float), width=0.24, label=label, color=PALETTE[j])
    ax.set_xticks(x, ["dopant/metal", "X2/metal", "V1/metal"])
    ax.axhline(1, color="grey", lw=0.8)
    ax.set_title(f"{det} (experiment: {'adf1' if det == 'MAADF' else 'adf2'})")
    ax.legend(fontsize=7)
axes[0].set_ylabel("hollow-referenced intensity ratio")
fig.tight_layout()

# %% [markdown]
# ## Serving patches

# %%
sampler = PatchSampler(ds, batch_size=loader_batch_size, batches_per_epoch=loader_batches, seed=seed)
start = time.perf_counter()
served = sum(len(b["label"]) for b in sampler)
rate = served / (time.perf_counter() - start)
print(f"{served} augmented patches in {served / rate:.1f} s: {rate:,.0f} patches/s on the CPU")
print("usable sites per class:", sampler.class_counts)

# %% [markdown]
# ## What it found

# %%
fast_cases = case_table[case_table.engine == "fast"]
summary = pd.DataFrame(
    {
        "value": [
            len(systems),
            len(conditions),
            ds.sizes["case"],
            ds.sizes["image"],
            ds.sizes["site"],
            int(balance.values.min()),
            f"{len(fast_cases)} of {len(case_table)}",
            case_table["column rmse"].max(),
            case_table["column error beyond noise"].max(),
            ratios.loc["simulation 80kV-MAADF", "X2/metal"],
            ratios.loc[[i for i in ratios.index if "adf1" in i], "X2/metal"].mean(),
            ratios.loc["simulation 80kV-HAADF", "X2/metal"],
            ratios.loc[[i for i in ratios.index if "adf2" in i], "X2/metal"].mean(),
            ratios.loc["simulation 80kV-HAADF", "dopant/metal"],
            ratios.loc[[i for i in ratios.index if "adf2" in i], "dopant/metal"].mean(),
            rate,
            build_s,
        ]
    },
    index=[
        "systems in the catalog",
        "imaging conditions",
        "cases built",
        "images",
        "labelled sites",
        "fewest sites of one class in one condition",
        "cases rendered by the fast engine",
        "largest fast-engine column error (fraction of metal)",
        "largest fast-engine error beyond the reference's phonon noise",
        "X2/metal, simulated 80 kV MAADF",
        "X2/metal, experiment adf1 (mean of fields)",
        "X2/metal, simulated 80 kV HAADF",
        "X2/metal, experiment adf2 (mean of fields)",
        "dopant/metal, simulated 80 kV HAADF",
        "dopant/metal, experiment adf2 (mean of fields)",
        "patches served per second (CPU)",
        "build or reuse time (s)",
    ],
)
summary

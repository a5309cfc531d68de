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
# # Experimental validation on Ti-doped WSe2
#
# This chapter puts the package's shipped classifiers (`tdmctx/defects/weights`: a context-aware FiLM model
# and its image-only twin, trained on simulations only) on the two labelled Ti-WSe2 fields, both detector
# channels, and scores them against the human labels beside the intensity baselines. Nothing here trains or
# tunes on the real images: the labelled sites are refined to sub-pixel centres, cut into the same patches as
# the simulation (0.4 Å, percentile-normalised), and classified with the context WSe2 host, Ti dopant, 80 kV.
# The detector angles were not recorded: the chapter infers a plausible range per channel without labels, from
# the Se2/W column ratio against an abTEM simulation, runs with the angles unknown and with the inferred ones,
# and shows how the result moves with the assumed angles. The class priors of a real field (a few % Ti, < 1 %
# vacancies, no V2) differ from the balanced training set; they are estimated without labels (EM) and the
# posteriors corrected. One patch cannot tell a bright W column in a high-angle image from a bright Se2 column
# in a low-angle one; the whole field can: the sublattices come from the lattice geometry and the two channels
# (no labels, as for the intensity baselines), and the `sublattice` corrections restrict each site to the classes
# of its sublattice. Every correction is reported beside the raw networks. It shows maps of predicted classes and posterior entropy, confusion matrices, the
# comparison table, the angle inference and the sensitivity sweep.
#
# Rerun: `tdmctx notebooks run --only 03_experimental_validation -p n_boot 1000`
#
# The weights and their model card are written by `python -m tdmctx.defects.release` (see
# `tdmctx/defects/weights/MODEL_CARD.md`).

# %% tags=["parameters"]
profile = "quick"
seed = 0
fields = [2, 11]
n_boot = 200  # bootstrap replicates of the intervals (over sites)
tolerance = 0.10  # relative X2/metal mismatch accepted by the angle inference
sweep_fields = [2]  # fields of the detector-angle sensitivity sweep
sweep_mrad = [[35, 80], [60, 200], [90, 200]]  # (inner, outer) angles assumed in the sweep, mrad
map_field = 2  # field shown in the maps
map_zoom_px = 160  # side of the mapped region, pixels (top-left corner of the field)
correction = "sublattice+EM"  # posterior correction of the maps, confusion matrices and sweep
cpu_threads = 2  # torch threads (CI has two cores)
weights_dir = None  # folder with context.pt and image-only.pt; None: the package's shipped weights

# %%
import time
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import torch
from IPython.display import display

from tdmctx.defects import CLASS_NAMES, ContextClassifier
from tdmctx.defects import realdata as rd
from tdmctx.defects.detector_angles import detector_ratio_curve
from tdmctx.defects.baseline import baseline_table
from tdmctx.defects.release import default_weights_dir
from tdmctx.plotting import CLASS_COLORS, PALETTE, apply_style, show_image

apply_style()
pd.set_option("display.precision", 3)
torch.set_num_threads(cpu_threads)
start = time.perf_counter()
weights = default_weights_dir() if weights_dir is None else Path(weights_dir)
models = {name: ContextClassifier.load(weights / f"{name}.pt", device="cpu") for name in ("image-only", "context")}
pd.DataFrame(
    {
        name: {
            "variant": m.variant,
            "trained on": ", ".join(m.card["data"]["systems"]) + f" ({len(m.card['data']['conditions'])} conditions)",
            "steps": m.card["training"]["steps_run"],
            "simulated test accuracy": m.card["simulated_test"]["accuracy"],
            "temperature": m.card["temperature"],
        }
        for name, m in models.items()
    }
)

# %% [markdown]
# The weights were trained with a simulation-to-experiment bridge (model card, `tdmctx.defects.release`): the
# real patches hold far more signal between the columns than the simulated ones. The label-free check the
# release recipe recorded, the median pixel of the normalised patches of all sites:

# %%
pd.Series(models["context"].card.get("bridge_check", {}), name="median normalised patch level").to_frame()

# %% [markdown]
# ## Scoring every field and channel
# One pass per model, field, channel and assumed detector; both prior corrections from the same posteriors.

# %%
curve = detector_ratio_curve()
results, details = rd.evaluate_fields(models, fields=fields, curve=curve, tolerance=tolerance, n_boot=n_boot,
                                      seed=seed, progress=False, return_details=True)
baselines = baseline_table(fields, local_radii_px=(15.0,), methods=("mixture",))
eval_s = time.perf_counter() - start
print(f"evaluated {len(results)} rows in {eval_s:.0f} s")

# %% [markdown]
# ## Detector angles from the Se2/W ratio, without labels
# The sublattices come from the geometry and the two channels (no labels); the ratio of the median Se2 to the
# median W column, both above the hollow-site level, is compared with one abTEM simulation of pristine WSe2 at
# 80 kV integrated over many annular detectors. Every (inner, outer) pair within the tolerance is plausible;
# the inferred runs assume the pair nearest the middle of that set.

# %%
inference = pd.DataFrame(
    [
        {"field": f, "channel": c, "measured X2/metal": inf["ratio"],
         "inner range (mrad)": "{:.0f}-{:.0f}".format(*inf["inner_range_mrad"]),
         "outer range (mrad)": "{:.0f}-{:.0f}".format(*inf["outer_range_mrad"]),
         "assumed (inner, outer) mrad": inf["assumed"], "pairs accepted": len(inf["plausible"])}
        for (f, c), inf in details["inference"].items()
    ]
)
display(inference)

fig, axes = plt.subplots(1, 2, figsize=(11, 4), sharey=True)
for ax, channel in zip(axes, rd.CHANNELS):
    for k, (outer, group) in enumerate(curve.groupby("outer_mrad")):
        ax.plot(group["inner_mrad"], group["ratio"], color=PALETTE[k % len(PALETTE)], label=f"outer {outer:.0f} mrad")
    for (f, c), inf in details["inference"].items():
        if c == channel:
            r = inf["ratio"]
            ax.axhspan(r * (1 - tolerance), r * (1 + tolerance), color="0.85", zorder=0)
            ax.axhline(r, color="k", lw=1, ls="--" if f == fields[0] else ":", label=f"field {f} (±{tolerance:.0%})")
    ax.set_xlabel("inner detector angle (mrad)")
    ax.set_title(f"{channel}")
axes[0].set_ylabel("X2/metal above hollow level")
axes[1].legend(fontsize=8, ncol=2)
fig.tight_layout()

# %% [markdown]
# ## Networks against the intensity baselines
# Posteriors temperature scaled and prior-corrected (EM). The label-free intensity baseline fits one threshold
# per sublattice without labels; the oracle tunes it on the labels (an upper bound for intensity alone, not a
# method). Goal: dopant F1 above the oracle's and at least 0.9, with kappa at least 0.98.

# %%
table = rd.comparison_table(results, baselines, corrections=("EM", "sublattice+EM"))
wide = table.pivot_table(index=["field", "channel"], columns="method", values=["kappa", "dopant_f1"], sort=False)
display(wide)

fig, axes = plt.subplots(1, 2, figsize=(12, 4))
methods = list(dict.fromkeys(table["method"]))
groups = list(dict.fromkeys(zip(table["field"], table["channel"])))
width = 0.8 / len(methods)
for ax, metric, goal in ((axes[0], "dopant_f1", 0.9), (axes[1], "kappa", 0.98)):
    for j, method in enumerate(methods):
        sub = table[table["method"] == method].set_index(["field", "channel"])
        vals = [sub.loc[g, metric] if g in sub.index else np.nan for g in groups]
        ax.bar(np.arange(len(groups)) + j * width, vals, width, color=PALETTE[j % len(PALETTE)], label=method)
    ax.axhline(goal, color="k", ls="--", lw=1)
    ax.set_xticks(np.arange(len(groups)) + 0.4 - width / 2, [f"field {f}\n{c}" for f, c in groups])
    ax.set_ylabel(metric.replace("_", " "))
    ax.set_ylim(0, 1.02)
axes[0].legend(fontsize=8)
fig.tight_layout()

# %% [markdown]
# ## The effect of the prior and sublattice corrections
# The models were trained on class-balanced patches (20 % each). EM estimates the field's priors from the
# unlabelled posteriors; the label frequencies are printed beside them for comparison only. `sublattice`
# restricts each site to the classes of its geometric sublattice before EM.

# %%
prior_cols = ["model", "field", "channel", "detector", "correction", "kappa", "dopant_precision", "dopant_recall",
              "dopant_f1", "V1_f1", "n_pred_V2", "prior_dopant", "prior_V1", "prior_V2"]
display(results[prior_cols])
label_freq = pd.DataFrame(
    {f"field {f}": pd.Series(details["data"][(f, "adf1")].labels).value_counts(normalize=True)
     .reindex(CLASS_NAMES, fill_value=0.0) for f in fields}
)
display(label_freq.T.rename(columns=lambda c: f"label share {c}"))

# %% [markdown]
# ## Maps of predicted classes and posterior entropy
# The context-aware model with the inferred angles and the chapter's correction (parameter `correction`) on a
# corner of one field; crosses mark sites where the prediction and the human label differ (counts in the legend
# are for the region shown).

# %%
fig, axes = plt.subplots(2, 2, figsize=(12, 12))
for row, channel in enumerate(rd.CHANNELS):
    data = details["data"][(map_field, channel)]
    pred = details["predictions"][("context", map_field, channel, "inferred", correction)]
    inside = np.all(data.points_px < map_zoom_px - 0.5, axis=1)
    pts, crop = data.points_px[inside], data.image[:map_zoom_px, :map_zoom_px]
    predicted, wrong = pred.predicted[inside], (pred.predicted != data.labels)[inside]
    ax = axes[row, 0]
    show_image(ax, crop, data.pixel_size_A, title=f"field {map_field} {channel}: predicted class")
    for c in CLASS_NAMES:
        sel = predicted == c
        if sel.any():
            ax.scatter(*pts[sel].T, s=14, color=CLASS_COLORS[c], label=f"{c} ({sel.sum()})")
    ax.scatter(*pts[wrong].T, s=60, marker="x", color="k", lw=1.0, label=f"≠ label ({wrong.sum()})")
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    ax = axes[row, 1]
    show_image(ax, crop, data.pixel_size_A, title=f"field {map_field} {channel}: posterior entropy")
    sc = ax.scatter(*pts.T, s=14, c=pred.entropy_nats[inside], cmap="magma", vmin=0, vmax=np.log(5))
    plt.colorbar(sc, ax=ax, fraction=0.046, pad=0.04, label="entropy (nats)")
fig.tight_layout()

# %% [markdown]
# ## Confusion against the human labels
# Rows are the labels, columns the predictions (the chapter's correction); a V2 column counts as an error everywhere.

# %%
panels = [("image-only", "unknown"), ("context", "unknown"), ("context", "inferred")]
jobs = [(f, c) for f in fields for c in rd.CHANNELS]
fig, axes = plt.subplots(len(panels), len(jobs), figsize=(3.2 * len(jobs), 3.1 * len(panels)))
for i, (name, detector) in enumerate(panels):
    for j, (f, c) in enumerate(jobs):
        data = details["data"][(f, c)]
        pred = details["predictions"][(name, f, c, detector, correction)]
        cm = rd.score_sites(data.labels, pred.predicted, n_boot=0)["confusion"]
        ax = axes[i, j]
        ax.imshow(np.log10(cm + 1), cmap="Blues")
        for (r, k), v in np.ndenumerate(cm):
            if v:
                ax.text(k, r, str(v), ha="center", va="center", fontsize=7)
        ax.set_xticks(range(5), CLASS_NAMES, rotation=45, fontsize=7)
        ax.set_yticks(range(5), CLASS_NAMES, fontsize=7)
        ax.set_title(f"{name} ({detector})\nfield {f} {c}", fontsize=8)
        if j == 0:
            ax.set_ylabel("label")
        if i == len(panels) - 1:
            ax.set_xlabel("predicted")
fig.tight_layout()

# %% [markdown]
# ## Sensitivity to the assumed detector angles
# The context model run with each assumed (inner, outer) pair, raw (EM only) and with the chapter's correction;
# the unknown-angle result is the dashed line.

# %%
sweep = rd.detector_sweep(models["context"], [details["data"][(f, c)] for f in sweep_fields for c in rd.CHANNELS],
                          [tuple(a) for a in sweep_mrad], correction=correction, progress=False)
display(sweep)
fig, axes = plt.subplots(1, 2, figsize=(11, 4))
for k, ((f, c), group) in enumerate(sweep.groupby(["field", "channel"])):
    labels = [f"{i:.0f}-{o:.0f}" for i, o in zip(group["inner_mrad"], group["outer_mrad"])]
    unknown = results[(results["model"] == "context") & (results["field"] == f) & (results["channel"] == c)
                      & (results["detector"] == "unknown") & (results["correction"] == correction)].iloc[0]
    for ax, metric in zip(axes, ("dopant_f1", "kappa")):
        ax.plot(labels, group[metric], "o-", color=PALETTE[k], label=f"field {f} {c}")
        ax.axhline(unknown[metric], color=PALETTE[k], ls="--", lw=1)
for ax, metric in zip(axes, ("dopant F1", "kappa")):
    ax.set_xlabel("assumed detector (inner-outer, mrad)")
    ax.set_ylabel(metric)
axes[0].legend(fontsize=8)
fig.tight_layout()

# %% [markdown]
# ## Single vacancies: tiny counts, wide intervals
# V1 F1 and recall with 95 % bootstrap intervals over sites (EM priors, with and without the sublattice).

# %%
v1_cols = ["model", "field", "channel", "detector", "n_V1", "n_pred_V1", "V1_recall", "V1_recall_low", "V1_recall_high",
           "V1_f1", "V1_f1_low", "V1_f1_high"]
display(results[results["correction"].isin(["EM", "sublattice+EM"])][v1_cols + ["correction"]])

# %% [markdown]
# ## Ranking or threshold? Where the networks lose to intensity
# A network can trail the intensity baseline because its threshold is off (priors, calibration), or because its
# scores order the metal sites worse than the column intensity does. `tdmctx.defects.dopant_ranking` separates the
# two on the metal sublattice: the ROC AUC of the network's metal-vs-dopant log-odds, and the dopant F1 its *best*
# threshold reaches when tuned on the labels, exactly as the oracle intensity baseline tunes its own. Both ignore
# any prior correction (it rescales the log-odds of every site alike). A diagnostic that uses the labels, not a
# method.

# %%
from tdmctx.defects import dopant_ranking

oracle_f1 = baselines[baselines["variant"] == "oracle"].set_index(["field", "channel"])["dopant_f1"]
ranking_rows = []
for f in fields:
    for c in rd.CHANNELS:
        data = details["data"][(f, c)]
        row = {"field": f, "channel": c, "oracle intensity F1": oracle_f1.loc[(f, c)]}
        for name in models:
            r = dopant_ranking(details["predictions"][(name, f, c, "unknown", correction)].probs, data.labels,
                               data.metal_site)
            row[f"{name} AUC"] = r["auc"]
            row[f"{name} oracle F1"] = r["oracle_dopant_f1"]
        ranking_rows.append(row)
ranking = pd.DataFrame(ranking_rows)
display(ranking)

# %% [markdown]
# ## Label audit: what any column reader can agree with
# A label can only be reproduced from the image if its column looks like its class. `tdmctx.defects.audit_labels`
# flags the labelled defects whose column is at least 80 % as bright as the intact columns around it in *both*
# channels (and intact labels at most 60 % as bright in both), from the same normalised intensities as the
# baseline. A flag does not prove a label wrong, but no method that reads the column can agree with it, which caps
# the recall (and so the F1) of every method in the tables above. Found after looking at where the oracle fails;
# the levels were not tuned.

# %%
from tdmctx.defects import audit_labels
from tdmctx.defects.label_audit import plot_label_audit
from tdmctx.experimental import load_ti_wse2

field_data = {f: load_ti_wse2(f) for f in fields}
audits = {f: audit_labels({c: d[c].values for c in rd.CHANNELS}, d["points_px"].values, d["label"].values.astype(str))
          for f, d in field_data.items()}
audit_table = pd.concat([a.summary().assign(field=f) for f, a in audits.items()], ignore_index=True)
display(audit_table[["field", "label", "n", "flagged", "flagged_fraction", "recall_ceiling", "f1_ceiling"]])
worst = max(audits, key=lambda f: audits[f].defect_looks_intact.sum())
fig = plot_label_audit(audits[worst], field_data[worst]["adf2"].values, title=f"field {worst}, adf2: flagged sites",
                       pixel_size_A=float(field_data[worst]["adf2"].attrs["pixel_size_A"]))

# %% [markdown]
# ## What this chapter found

# %%
wall_s = time.perf_counter() - start
em = results[results["correction"].isin(["EM", "sublattice+EM"])]
oracle = baselines[baselines["variant"] == "oracle"].set_index(["field", "channel"])
rows = []
for (f, c), group in em.groupby(["field", "channel"]):
    for _, r in group.iterrows():
        goal = (r["dopant_f1"] >= 0.9) and (r["dopant_f1"] > oracle.loc[(f, c), "dopant_f1"]) and (r["kappa"] >= 0.98)
        rows.append({"field": f, "channel": c, "model": r["model"], "detector": r["detector"], "correction": r["correction"],
                     "kappa": r["kappa"], "kappa 95% CI": f"{r['kappa_low']:.3f}-{r['kappa_high']:.3f}",
                     "dopant F1": r["dopant_f1"], "dopant F1 95% CI": f"{r['dopant_f1_low']:.3f}-{r['dopant_f1_high']:.3f}",
                     "oracle dopant F1": oracle.loc[(f, c), "dopant_f1"], "oracle kappa": oracle.loc[(f, c), "kappa"],
                     "V2 predicted": r["n_pred_V2"], "goal met": goal})
found = pd.DataFrame(rows)
display(found)
print(f"goal (dopant F1 >= 0.9 and above the oracle, kappa >= 0.98) met in {int(found['goal met'].sum())} of "
      f"{len(found)} model/field/channel/detector/correction rows")
for (f, c), inf in details["inference"].items():
    print(f"field {f} {c}: X2/metal {inf['ratio']:.3f} -> plausible inner {inf['inner_range_mrad'][0]:.0f}-"
          f"{inf['inner_range_mrad'][1]:.0f} mrad, outer {inf['outer_range_mrad'][0]:.0f}-"
          f"{inf['outer_range_mrad'][1]:.0f} mrad")
best = em.loc[em.groupby(["field", "channel"])["dopant_f1"].idxmax(),
              ["field", "channel", "model", "detector", "correction", "dopant_f1", "kappa"]]
print("best network per field and channel:")
print(best.to_string(index=False))
for f, a in audits.items():
    row = a.summary().set_index("label").loc["dopant"]
    print(f"field {f}: {int(row['flagged'])} of {int(row['n'])} dopant labels sit on columns as bright as the metal "
          f"in both channels -> dopant recall <= {row['recall_ceiling']:.3f}, F1 <= {row['f1_ceiling']:.3f} for "
          "any column reader")
gap = ranking[[f"{n} oracle F1" for n in models]].max(axis=1) - ranking["oracle intensity F1"]
print(f"ranking: with its threshold tuned on the labels, the best network's dopant F1 is {gap.min():+.3f} to "
      f"{gap.max():+.3f} from the oracle intensity threshold's")
print(f"sweep: dopant F1 spans {sweep['dopant_f1'].min():.3f}-{sweep['dopant_f1'].max():.3f}, kappa "
      f"{sweep['kappa'].min():.3f}-{sweep['kappa'].max():.3f} over the assumed angles")
print(f"wall time {wall_s:.0f} s")

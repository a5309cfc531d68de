"""Ablation study: splits by structure, the shuffled control, tables, caching, paired entropy reduction."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import xarray as xr

from tdmctx.defects.ablation import GRID, TrainSettings, fixed_patches, run_ablation
from tdmctx.defects.ablation_metrics import (
    METRICS,
    ablation_table,
    fit_temperature_with_offset,
    group_scores,
    paired_entropy_reduction,
    per_condition_table,
    summarise,
)
from tdmctx.defects.context import CLASS_NAMES
from tdmctx.defects.evaluate import classification_summary, entropy_reduction, fit_temperature, softmax
from tdmctx.defects.splits import SplitUnavailable, make_split, plan_splits

torch.set_num_threads(1)

_DETECTORS = {"HAADF": (90.0, 200.0), "MAADF": (40.0, 90.0)}
# Column brightness per detector: metal and X2 swap, the contrast reversal of the real data.
_BRIGHT = {"HAADF": (1.0, 0.25, 0.6, 0.3, 0.0), "MAADF": (0.6, 0.15, 1.0, 0.5, 0.0)}


def tiny_store(dopants=("Ti",), energies_kV=(60, 80), n_fields=6, seed=0) -> xr.Dataset:
    """Images of 25 Gaussian columns each, with the variables of open_dataset that the ablation reads."""
    rng = np.random.default_rng(seed)
    yy, xx = np.indices((64, 64), dtype=float)
    grid = np.array([(x, y) for y in range(22, 43, 5) for x in range(22, 43, 5)], dtype=float)
    images, per_image, sites = [], {k: [] for k in ("structure", "case_id", "condition", "dopant", "energy_eV",
                                                    "detector_inner_mrad", "detector_outer_mrad")}, []
    for dopant in dopants:
        for kv in energies_kV:
            for f in range(n_fields):
                labels = rng.integers(0, 5, len(grid))
                xy = grid + rng.uniform(-0.3, 0.3, grid.shape)
                for det, (inner, outer) in _DETECTORS.items():
                    img = np.full(xx.shape, 0.01)
                    for (x, y), k in zip(xy, labels):
                        img += 0.05 * _BRIGHT[det][k] * np.exp(-((xx - x) ** 2 + (yy - y) ** 2) / 2.0)
                    i = len(images)
                    images.append(img)
                    sites += [(i, x, y, CLASS_NAMES[k]) for (x, y), k in zip(xy, labels)]
                    for key, value in (("structure", f"WSe2-{dopant}_{kv}kV-field{f}"),
                                       ("case_id", f"WSe2-{dopant}_{kv}kV-{det}"), ("condition", f"{kv}kV-{det}"),
                                       ("dopant", dopant), ("energy_eV", kv * 1e3), ("detector_inner_mrad", inner),
                                       ("detector_outer_mrad", outer)):
                        per_image[key].append(value)
    n = len(images)
    return xr.Dataset(
        {
            "intensity": (("image", "y", "x"), np.stack(images).astype(np.float32)),
            "site_image": (("site",), np.array([s[0] for s in sites])),
            "site_x_px": (("site",), np.array([s[1] for s in sites], dtype=np.float32)),
            "site_y_px": (("site",), np.array([s[2] for s in sites], dtype=np.float32)),
            "site_label": (("site",), np.array([s[3] for s in sites])),
            "host_metal": (("image",), np.array(["W"] * n)),
            "chalcogen": (("image",), np.array(["Se"] * n)),
            **{k: (("image",), np.array(v)) for k, v in per_image.items()},
        },
        attrs={"pixel_size_A": 0.4},
    )


FAST = TrainSettings(width=4, epochs=2, batches_per_epoch=3, batch_size=32, val_patches=64, context_dropout=0.0,
                     patience=None)


def _structures(ds, idx):
    return set(ds.structure.values[idx])


# -- splits ----------------------------------------------------------------------------------


def test_image_split_holds_out_whole_structures_in_every_case():
    ds = tiny_store()
    split = make_split(ds, "image", seed=3)
    parts = [split.train, split.val, split.test]
    assert sum(map(len, parts)) == ds.sizes["image"]
    for a in range(3):
        for b in range(a + 1, 3):
            assert not set(parts[a]) & set(parts[b])
            assert not _structures(ds, parts[a]) & _structures(ds, parts[b])
    for part in parts:  # every case is represented in every part
        assert set(ds.case_id.values[part]) == set(ds.case_id.values)
    # 6 structures per energy: 1 to validation, 2 to test (both detector images each)
    assert len(split.val) == 2 * 2 and len(split.test) == 2 * 2 * 2
    assert make_split(ds, "image", seed=3).key == split.key
    assert make_split(ds, "image", seed=4).key != split.key


def test_condition_split_really_holds_the_condition_out():
    ds = tiny_store()
    split = make_split(ds, "condition", held_out="80kV-MAADF", seed=0)
    cond = ds.condition.values
    assert set(cond[split.test]) == {"80kV-MAADF"}
    assert np.sum(cond == "80kV-MAADF") == len(split.test)
    assert "80kV-MAADF" not in set(cond[split.train]) | set(cond[split.val])
    # the other detector's images of the test structures may not train: they are dropped
    assert set(cond[split.dropped]) == {"80kV-HAADF"}
    assert not _structures(ds, split.test) & (_structures(ds, split.train) | _structures(ds, split.val))
    assert split.name == "condition: 80kV-MAADF"
    with pytest.raises(ValueError, match="names no condition"):
        make_split(ds, "condition", held_out="300kV-HAADF")


def test_dopant_split_is_skipped_with_one_dopant_and_holds_systems_out_with_two():
    one = tiny_store()
    with pytest.raises(SplitUnavailable, match="1 dopant"):
        make_split(one, "dopant")
    splits, skipped = plan_splits(one, ["image", "dopant"], seed=0)
    assert list(splits) == ["image"] and "at least two" in skipped["dopant"]
    two = tiny_store(dopants=("Ti", "V"), n_fields=4)
    split = make_split(two, "dopant", held_out=["V"], seed=0)
    assert set(two.dopant.values[split.test]) == {"V"}
    assert set(two.dopant.values[split.train]) == {"Ti"} == set(two.dopant.values[split.val])
    with pytest.raises(ValueError, match="kind='patch'"):
        make_split(one, "patch")


# -- fixed patches and the shuffled control ------------------------------------------------------


def test_fixed_patches_are_reproducible_and_come_from_the_given_images_once():
    ds = tiny_store()
    a = fixed_patches(ds, [0, 5], seed=1, device="cpu")
    b = fixed_patches(ds, [0, 5], seed=1, device="cpu")
    assert torch.equal(a["image"], b["image"])
    assert set(a["image_index"].tolist()) == {0, 5}
    assert len(set(a["site_index"].tolist())) == len(a["site_index"]) == 50
    c = fixed_patches(ds, [0, 5], seed=2, max_patches=20, device="cpu")
    assert len(c["label"]) == 20 and set(c["site_index"].tolist()) <= set(a["site_index"].tolist())


def test_shuffled_control_trains_on_permuted_contexts(tmp_path):
    ds = tiny_store()
    split = make_split(ds, "image", seed=0)
    seen: dict[int, list] = {}

    def spy(module, args):
        if module.training and getattr(module, "uses_context", False):
            seen.setdefault(id(module), []).append((args[0].clone(), args[1].clone()))

    handle = torch.nn.modules.module.register_module_forward_pre_hook(spy)
    try:
        run_ablation(ds, split, ("film", "shuffled"), settings=FAST, cache=tmp_path, device="cpu", progress=False)
    finally:
        handle.remove()
    (img_f, ctx_f), (img_s, ctx_s) = [batches[0] for batches in seen.values()]
    assert torch.equal(img_f, img_s)  # same batch of patches ...
    assert not torch.equal(ctx_f, ctx_s)  # ... with the contexts moved between samples
    rows = lambda c: sorted(map(tuple, c.tolist()))  # noqa: E731
    assert rows(ctx_f) == rows(ctx_s)


# -- end to end, cache, tables -------------------------------------------------------------------


def test_tiny_ablation_runs_tabulates_and_resumes_from_the_cache(tmp_path):
    ds = tiny_store()
    split = make_split(ds, "image", seed=0)
    specs = ("image-only", "film", "late")
    first = run_ablation(ds, split, specs, seeds=(0, 1), settings=FAST, cache=tmp_path, device="cpu", progress=False)
    files = {k: (r.checkpoint_dir / "last.pt").stat().st_mtime_ns for k, r in first.runs.items()}
    again = run_ablation(ds, split, specs, seeds=(0, 1), settings=FAST, cache=tmp_path, device="cpu", progress=False)
    for key, run in again.runs.items():
        assert (run.checkpoint_dir / "last.pt").stat().st_mtime_ns == files[key]  # not retrained
        assert np.array_equal(run.test_logits, first.runs[key].test_logits)
        assert run.history["epoch"] == [1, 2]
    assert len(files) == 6 and len({r.checkpoint_dir for r in first.runs.values()}) == 6

    tidy = summarise(first, n_boot=200, seed=0)
    table = ablation_table(tidy)
    assert list(table.index) == list(specs)
    for m in (*METRICS, "temperature", "accuracy_gain", "entropy_reduction"):
        assert m in table.columns
    assert table.loc["image-only", ["accuracy_gain", "entropy_reduction"]].isna().all()
    assert table.loc["film", ["accuracy_gain", "entropy_reduction"]].notna().all()
    for m in ("accuracy", "nll", "mean_entropy_nats"):
        assert (table[f"{m}_low"] <= table[m] + 1e-12).all() and (table[m] <= table[f"{m}_high"] + 1e-12).all()
    assert set(tidy["seed"].astype(str)) == {"pooled", "0", "1"}
    # pooled accuracy of equally many patches per seed = the mean of the per-seed accuracies
    sub = tidy[(tidy.model == "film") & (tidy.metric == "accuracy")]
    acc = dict(zip(sub["seed"].astype(str), sub["estimate"]))
    assert acc["pooled"] == pytest.approx((acc["0"] + acc["1"]) / 2)
    per_cond = per_condition_table(first, n_boot=50)
    assert set(per_cond.condition) == set(ds.condition.values[split.test])
    assert len(per_cond) == 4 * len(specs) and per_cond["accuracy"].between(0, 1).all()
    with pytest.raises(ValueError, match="not in the ablation grid"):
        run_ablation(ds, split, ("film", "bogus"), settings=FAST, cache=tmp_path, device="cpu", progress=False)


# -- metrics ---------------------------------------------------------------------------------------


def test_group_scores_match_the_evaluate_functions():
    rng = np.random.default_rng(0)
    probs = softmax(rng.normal(0, 2, (500, 5)))
    labels = rng.integers(0, 5, 500)
    groups = rng.integers(0, 20, 500)
    scores = group_scores(probs, labels, groups, n_boot=20, seed=0)
    ref = classification_summary(labels, probs)
    for m in ("accuracy", "macro_f1", "nll", "ece", "mean_entropy_nats"):
        assert scores[m][0] == pytest.approx(ref[m], rel=1e-10)
    for k, c in enumerate(CLASS_NAMES):
        assert scores[f"recall_{c}"][0] == pytest.approx(ref["recall"][k])
    assert scores["accuracy"].shape == (21,) and np.std(scores["accuracy"][1:]) > 0


def test_paired_entropy_reduction_has_its_known_value():
    n = 400
    uniform5 = np.full((n, 5), 0.2)
    half = np.zeros((n, 5))
    half[:, :2] = 0.5
    groups = np.repeat(np.arange(20), 20)
    # every sample loses the same share of entropy: every replicate gives 1 - ln 2 / ln 5
    r = paired_entropy_reduction(uniform5, half, groups, n_boot=200, seed=0)
    assert r["estimate"] == pytest.approx(1 - np.log(2) / np.log(5))
    assert r["low"] == pytest.approx(r["estimate"]) and r["high"] == pytest.approx(r["estimate"])
    # half the groups certain (H = 0), half no better than the reference: 0.5, with spread
    mixed = uniform5.copy()
    sure = groups % 2 == 0
    mixed[sure] = np.eye(5)[0]
    r = paired_entropy_reduction(uniform5, mixed, groups, n_boot=500, seed=0)
    assert r["estimate"] == pytest.approx(0.5) == entropy_reduction(uniform5, mixed)
    assert r["low"] < 0.5 < r["high"]
    with pytest.raises(ValueError, match="same samples"):
        paired_entropy_reduction(uniform5, half[:10], groups)


def test_temperature_with_prior_offset():
    rng = np.random.default_rng(1)
    z = rng.normal(0, 3, (4000, 5))
    offset = np.log(np.array([0.4, 0.1, 0.3, 0.1, 0.1]) / 0.2)
    p = softmax(z / 2.0 + offset)
    labels = np.array([rng.choice(5, p=row) for row in p])
    assert fit_temperature_with_offset(z, labels, offset) == pytest.approx(2.0, rel=0.1)
    assert fit_temperature_with_offset(z, labels, np.zeros(5)) == pytest.approx(fit_temperature(z, labels))


def test_grid_holds_the_ablations_of_the_issue():
    assert list(GRID) == ["image-only", "composition", "energy", "detector", "film", "shuffled", "late"]
    assert GRID["shuffled"].shuffle_context and not GRID["film"].shuffle_context
    assert GRID["late"].variant == "late" and GRID["energy"].fields == ("energy_eV",)


# -- systems whose dopant no ADF image can resolve -------------------------------------------------


def test_catalog_flags_the_low_z_contrast_systems_as_unresolvable():
    from tdmctx.defects.catalog import MIN_RESOLVABLE_CONTRAST, catalog, get_system

    assert get_system("MoS2:Nb").delta_Z == 1 and get_system("WSe2:Re").delta_Z == 1
    assert get_system("WSe2:Ti").delta_Z == 74 - 22 and get_system("MoS2:V").delta_Z == 42 - 23
    assert get_system("WSe2:Pt").z_contrast == pytest.approx((78 / 74) ** 1.7 - 1)
    assert get_system("MoS2:Ti").z_contrast == pytest.approx((22 / 42) ** 1.7 - 1)  # negative: darker than Mo
    unresolvable = sorted(s.name for s in catalog() if not s.z_contrast_resolvable)
    # dZ = 1 and 2 everywhere, dZ = 3-4 in the W hosts (Ir, Pt), where Z is large.
    assert unresolvable == ["MoS2:Nb", "MoS2:Ru", "MoS2:Zr", "MoSe2:Nb", "MoSe2:Ru", "MoSe2:Zr",
                            "WS2:Hf", "WS2:Ir", "WS2:Os", "WS2:Pt", "WS2:Re", "WS2:Ta",
                            "WSe2:Hf", "WSe2:Ir", "WSe2:Os", "WSe2:Pt", "WSe2:Re", "WSe2:Ta"]
    assert all(abs(s.z_contrast) >= MIN_RESOLVABLE_CONTRAST for s in catalog() if s.z_contrast_resolvable)
    assert get_system("MoS2:Pd").z_contrast_resolvable  # dZ = 4 but 17 % in the lighter host


def test_subset_resolvable_mask_and_per_system_table(tmp_path):
    from tdmctx.defects.ablation_metrics import per_system_table, resolvable_mask

    ds = tiny_store(dopants=("Ti", "Ta"), energies_kV=(80,), n_fields=4)
    ds["system"] = ("image", np.array([f"WSe2:{d}" for d in ds.dopant.values]))
    split = make_split(ds, "image", seed=0)
    result = run_ablation(ds, split, ("image-only", "film"), settings=FAST, cache=tmp_path, device="cpu",
                          progress=False)
    mask = resolvable_mask(result, ds)
    assert np.array_equal(mask, ds.dopant.values[result.image_index] == "Ti") and mask.any() and not mask.all()

    sub = result.subset(mask)
    assert len(sub.labels) == mask.sum() and np.array_equal(sub.groups, result.groups[mask])
    for key, run in sub.runs.items():
        np.testing.assert_array_equal(run.test_probs, result.runs[key].test_probs[mask])
        assert run.temperature == result.runs[key].temperature  # fitted on validation, not refitted
    assert len(result.runs[("film", 0)].test_logits) == len(result.labels)  # the original is untouched
    whole = ablation_table(summarise(result.subset(np.ones_like(mask)), n_boot=20))
    assert whole.equals(ablation_table(summarise(result, n_boot=20)))
    with pytest.raises(ValueError, match="boolean array"):
        result.subset(mask[:-1])
    with pytest.raises(ValueError, match="keeps no test patch"):
        result.subset(np.zeros_like(mask))

    table = per_system_table(result, ds)
    assert set(table.system) == {"WSe2:Ti", "WSe2:Ta"} and set(table.model) == {"image-only", "film"}
    ta = table[table.system == "WSe2:Ta"].iloc[0]
    assert ta.delta_Z == 1 and not ta.resolvable and ta.z_contrast == pytest.approx((73 / 74) ** 1.7 - 1)
    dopant = CLASS_NAMES.index("dopant")
    assert ta.dopant_sites == int(np.sum((~mask) & (result.labels == dopant)))
    assert table[["accuracy", "dopant_recall", "dopant_called_metal"]].stack().between(0, 1).all()
    with pytest.raises(ValueError, match="no 'system' variable"):
        resolvable_mask(result, ds.drop_vars("system"))

    from tdmctx.defects.ablation_plots import plot_dopant_recall

    fig = plot_dopant_recall(table)
    ax = fig.axes[0]
    assert ax.get_xscale() == "log" and len(ax.collections) == 2  # one marker set per model
    assert any("WSe2:Ta" in t.get_text() for t in ax.texts)  # the unresolvable system is named

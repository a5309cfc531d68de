"""The experimental path (scoring, priors, detector angles) and the release recipe."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
import xarray as xr

from tdmctx.defects import CLASS_NAMES, ContextClassifier
from tdmctx.defects.evaluate import cohen_kappa
from tdmctx.defects import realdata as rd
from tdmctx.defects.detector_angles import infer_detector, measured_chalcogen_ratio
from tdmctx.defects.patches import Augmentation, PatchSampler
from tdmctx.defects.release import MODELS, Recipe, default_weights_dir, field_index, release, split_images


# -- scoring --------------------------------------------------------------------------------------


def test_scores_of_constructed_labels_match_hand_computed_values():
    labels = np.array(["metal"] * 50 + ["X2"] * 40 + ["dopant"] * 10)
    pred = labels.copy()
    pred[90:92] = "metal"  # two dopants missed
    pred[0] = "dopant"  # one metal called dopant
    s = rd.score_sites(labels, pred, n_boot=0)
    assert s["accuracy"] == pytest.approx(0.97)
    # po = 0.97; pe = (50*51 + 40*40 + 10*9) / 100^2 = 0.424
    assert s["kappa"] == pytest.approx((0.97 - 0.424) / (1 - 0.424))
    assert s["dopant_precision"] == pytest.approx(8 / 9)
    assert s["dopant_recall"] == pytest.approx(0.8)
    assert s["dopant_f1"] == pytest.approx(16 / 19)
    assert s["n_dopant"] == 10 and s["n_pred_dopant"] == 9
    assert s["confusion"][CLASS_NAMES.index("dopant"), CLASS_NAMES.index("metal")] == 2
    ids = lambda names: np.array([CLASS_NAMES.index(n) for n in names])  # noqa: E731
    assert cohen_kappa(ids(labels), ids(pred)) == pytest.approx(s["kappa"])
    low, high = rd.score_sites(labels, pred, n_boot=200)["kappa_ci"]
    assert low < s["kappa"] < high


def test_a_v2_prediction_on_a_v1_or_x2_site_is_an_error():
    labels = np.array(["X2"] * 95 + ["V1"] * 5)
    pred = labels.copy()
    pred[95] = "V2"  # a V1 called V2
    pred[0] = "V2"  # an X2 called V2
    s = rd.score_sites(labels, pred, n_boot=0)
    assert s["accuracy"] == pytest.approx(0.98)
    assert s["V1_recall"] == pytest.approx(0.8)
    assert s["X2_recall"] == pytest.approx(94 / 95)
    assert s["n_pred_V2"] == 2 and s["n_V2"] == 0
    assert s["kappa"] < 1


def test_bootstrap_intervals_bracket_the_estimate_and_are_wide_for_tiny_counts():
    rng = np.random.default_rng(0)
    labels = np.array(["X2"] * 990 + ["V1"] * 10)
    pred = labels.copy()
    pred[990:994] = "X2"  # 6 of 10 V1 found
    pred[rng.choice(990, 3, replace=False)] = "V1"
    s = rd.score_sites(labels, pred, n_boot=300, seed=1)
    low, high = s["V1_f1_ci"]
    assert low <= s["V1_f1"] <= high
    assert high - low > 0.2  # ten sites cannot pin an F1 down


# -- prior shift ------------------------------------------------------------------------------------


def _gaussian_posteriors(priors, n, seed=0):
    """1-D class-conditional Gaussians; posteriors exact under uniform priors."""
    rng = np.random.default_rng(seed)
    means = np.array([0.0, 3.0, 6.0, 9.0, 12.0])
    y = rng.choice(5, n, p=priors)
    x = rng.normal(means[y], 1.0)
    logits = -0.5 * (x[:, None] - means[None]) ** 2
    p = np.exp(logits - logits.max(1, keepdims=True))
    return p / p.sum(1, keepdims=True), y


def test_em_prior_correction_recovers_the_field_priors_and_cuts_false_rare_calls():
    target = np.array([0.5, 0.04, 0.44, 0.02, 0.0])
    probs, y = _gaussian_posteriors(target, 20000)
    uniform = np.full(5, 0.2)
    same, prior_none = rd.correct_priors(probs, uniform, "none")
    np.testing.assert_allclose(same, probs)
    np.testing.assert_allclose(prior_none, uniform)
    adapted, prior = rd.correct_priors(probs, uniform, "EM")
    np.testing.assert_allclose(prior, target, atol=0.01)
    np.testing.assert_allclose(adapted.sum(1), 1.0)
    # Rare classes: fewer false calls after the correction, and a better accuracy.
    false_v2_before = np.sum((probs.argmax(1) == 4) & (y != 4))
    false_v2_after = np.sum((adapted.argmax(1) == 4) & (y != 4))
    assert false_v2_after < false_v2_before
    assert np.mean(adapted.argmax(1) == y) > np.mean(probs.argmax(1) == y)
    with pytest.raises(ValueError, match="method='bayes'"):
        rd.correct_priors(probs, uniform, "bayes")


def test_sublattice_restriction_keeps_each_site_on_its_own_classes():
    probs = np.array([[0.1, 0.1, 0.7, 0.05, 0.05],   # metal site the model calls X2
                      [0.6, 0.3, 0.05, 0.05, 0.0],    # chalcogen site the model calls metal
                      [0.0, 0.0, 0.5, 0.5, 0.0]])     # metal site with no mass on metal/dopant
    out = rd.restrict_to_sublattice(probs, np.array([True, False, True]))
    np.testing.assert_allclose(out[0], [0.5, 0.5, 0, 0, 0])
    np.testing.assert_allclose(out[1], [0, 0, 0.5, 0.5, 0])
    np.testing.assert_allclose(out[2], [0.5, 0.5, 0, 0, 0])
    adapted, prior = rd.correct_posteriors(probs, np.full(5, 0.2), "sublattice", np.array([True, False, True]))
    np.testing.assert_allclose(adapted, out)
    with pytest.raises(ValueError, match="needs metal_site"):
        rd.correct_posteriors(probs, np.full(5, 0.2), "sublattice+EM")
    with pytest.raises(ValueError, match="correction='bayes'"):
        rd.correct_posteriors(probs, np.full(5, 0.2), "bayes")
    with pytest.raises(ValueError, match=r"metal_site has shape \(2,\)"):
        rd.restrict_to_sublattice(probs, np.array([True, False]))


# -- detector angles ----------------------------------------------------------------------------------


def test_infer_detector_on_a_synthetic_curve_returns_the_known_range():
    inner = np.arange(20.0, 151.0, 5.0)
    curve = pd.DataFrame({"inner_mrad": inner, "outer_mrad": 200.0, "ratio": 2.0 - inner / 100.0})
    out = infer_detector(1.3, curve, tolerance=0.05)  # accepts |2 - i/100 - 1.3| <= 0.065
    assert out["inner_range_mrad"] == (65.0, 75.0)
    assert out["best"] == (70.0, 200.0)
    assert out["assumed"] == (70.0, 200.0)
    assert len(out["plausible"]) == 3
    none = infer_detector(5.0, curve, tolerance=0.05)
    assert np.isnan(none["inner_range_mrad"][0]) and none["assumed"] == (20.0, 200.0)
    with pytest.raises(ValueError, match="ratio=-1"):
        infer_detector(-1.0, curve)
    with pytest.raises(ValueError, match="lacks column"):
        infer_detector(1.0, curve.drop(columns="ratio"))


def _honeycomb(metal_amp=1.0, chalc_amp=0.6, background=100.0, pixel_A=0.4):
    a_px, sigma_px = 3.28 / pixel_A, 0.45 / pixel_A
    a1, a2 = np.array([a_px, 0.0]), np.array([a_px / 2, a_px * np.sqrt(3) / 2])
    bond = (a1 + a2) / 3
    metal, chalc = [], []
    for i in range(-2, 20):
        for j in range(0, 15):
            m = i * a1 + j * a2 + np.array([8.0, 8.0])
            for pts, p in ((metal, m), (chalc, m + bond)):
                if 6 < p[0] < 114 and 6 < p[1] < 114:
                    pts.append(p)
    metal, chalc = np.array(metal), np.array(chalc)
    yy, xx = np.indices((120, 120), dtype=float)
    img = np.full((120, 120), background)
    for pts, amp in ((metal, metal_amp), (chalc, chalc_amp)):
        for x, y in pts:
            img += amp * np.exp(-((xx - x) ** 2 + (yy - y) ** 2) / (2 * sigma_px**2))
    return img, metal, chalc


def test_measured_chalcogen_ratio_of_a_synthetic_lattice_is_its_amplitude_ratio():
    img, metal, chalc = _honeycomb(chalc_amp=0.6)
    points = np.concatenate([metal, chalc])
    mask = np.r_[np.ones(len(metal), bool), np.zeros(len(chalc), bool)]
    data = rd.FieldData(0, "adf2", img, points, np.where(mask, "metal", "X2"), np.zeros((len(points), 24, 24)),
                        0.4, mask)
    assert measured_chalcogen_ratio(data) == pytest.approx(0.6, abs=0.01)


def test_context_of_the_fields_keeps_unknown_angles_unknown():
    c = rd.ti_wse2_context()
    assert (c.host_metal, c.chalcogen, c.dopant, c.energy_eV) == ("W", "Se", "Ti", 80e3)
    assert c.detector_inner_mrad is None and c.detector_outer_mrad is None
    assert rd.ti_wse2_context((60, 200)).detector_outer_mrad == 200.0


# -- the release recipe ---------------------------------------------------------------------------------


def _toy_store(n_fields=4, seed=0):
    rng = np.random.default_rng(seed)
    shape = (90, 100)
    brightness = {"metal": 1.0, "dopant": 0.2, "X2": 0.7, "V1": 0.35, "V2": 0.0}
    yy, xx = np.indices(shape, dtype=float)
    labels, xs, ys, idx, images = [], [], [], [], []
    for i in range(n_fields):
        img = np.zeros(shape)
        for k in range(40):
            c = CLASS_NAMES[k % 5]
            x, y = rng.uniform(22, 78), rng.uniform(22, 68)
            img += brightness[c] * np.exp(-((xx - x) ** 2 + (yy - y) ** 2) / 2.0)
            labels.append(c), xs.append(x), ys.append(y), idx.append(i)
        images.append(0.02 * img + 0.001)
    per_image = {"host_metal": "W", "chalcogen": "Se", "dopant": "Ti", "energy_eV": 80e3,
                 "detector_inner_mrad": 70.0, "detector_outer_mrad": 200.0}
    return xr.Dataset(
        {
            "intensity": (("image", "y", "x"), np.stack(images).astype(np.float32)),
            "structure": (("image",), np.array([f"toy-field{i}" for i in range(n_fields)])),
            "system": (("image",), np.array(["WSe2:Ti"] * n_fields)),
            "condition": (("image",), np.array(["80kV-HAADF"] * n_fields)),
            "site_image": (("site",), np.array(idx)),
            "site_x_px": (("site",), np.array(xs, dtype=np.float32)),
            "site_y_px": (("site",), np.array(ys, dtype=np.float32)),
            "site_label": (("site",), np.array(labels)),
            **{k: (("image",), np.array([v] * n_fields)) for k, v in per_image.items()},
        },
        attrs={"pixel_size_A": 0.4},
    )


def test_splits_are_by_field_and_checked():
    ds = _toy_store()
    split = split_images(ds, Recipe(val_fields=(2,), test_fields=(3,)))
    assert split["train"].tolist() == [0, 1] and split["val"].tolist() == [2] and split["test"].tolist() == [3]
    with pytest.raises(ValueError, match="test split is empty"):
        split_images(ds, Recipe(val_fields=(2,), test_fields=(9,)))
    with pytest.raises(ValueError, match="overlap"):
        Recipe(val_fields=(1,), test_fields=(1,))
    assert field_index("WSe2-Ti_80kV-field13") == 13
    assert field_index("MoSe2-Nb_200kV-abtem4") == 4  # a cell the build kept from abTEM
    with pytest.raises(ValueError, match="field<k>"):
        field_index("WSe2-Ti_80kV")


def test_card_names_the_origin_and_scope_of_an_exported_dataset():
    from tdmctx.defects.release import _scope_lines, _store_summary

    ds = _toy_store()
    ds.attrs.update(store="/elsewhere/wide-seed0", profile="wide", build_seed=3)
    summary = _store_summary(ds, None)
    assert (summary["store"], summary["profile"], summary["build_seed"]) == ("wide-seed0", "wide", 3)
    one = " ".join(_scope_lines(summary))
    assert "one host and one dopant" in one and "learns only from energy" in one
    many = " ".join(_scope_lines({**summary, "systems": ["MoS2:Ti", "WSe2:V"], "conditions": ["a", "b"]}))
    assert "2 systems (hosts MoS2, WSe2;" in many and "learns composition" in many
    assert _store_summary(_toy_store(), None)["profile"] == "in-memory dataset"


def test_defect_fill_brightens_defect_centres_only():
    ds = _toy_store(n_fields=1)
    kwargs = dict(batch_size=512, balance_classes=True, seed=0)
    plain = Augmentation(rotate=False, mirror=False, jitter_px=0.0, dose_e_per_A2=None, dark_offset=(0, 0),
                         read_noise=(0, 0), gamma=(1, 1))
    filled = Augmentation(rotate=False, mirror=False, jitter_px=0.0, dose_e_per_A2=None, dark_offset=(0, 0),
                          read_noise=(0, 0), gamma=(1, 1), defect_fill=(0.5, 0.5))
    a = PatchSampler(ds, augmentation=plain, **kwargs).batch(np.random.default_rng(3))
    b = PatchSampler(ds, augmentation=filled, **kwargs).batch(np.random.default_rng(3))
    assert torch.equal(a["label"], b["label"])
    centre = lambda batch: batch["image"][:, 0, 11:13, 11:13].mean(dim=(1, 2))  # noqa: E731
    gain = centre(b) - centre(a)
    for name in ("dopant", "V1"):
        assert gain[a["label"] == CLASS_NAMES.index(name)].min() > 0.05
    for name in ("metal", "X2", "V2"):
        assert gain[a["label"] == CLASS_NAMES.index(name)].abs().max() < 1e-5
    with pytest.raises(ValueError, match="defect_fill"):
        Augmentation(defect_fill=(0.5, 0.2))


def test_release_recipe_end_to_end_writes_loadable_weights_with_a_card(tmp_path):
    torch.set_num_threads(1)
    recipe = Recipe(steps=2, batch_size=16, batches_per_epoch=1, width=4, val_batches=1, test_batches=1,
                    val_fields=(2,), test_fields=(3,))
    cards = release(_toy_store(), tmp_path, recipe, device="cpu", real_fields=False, detector_curve=False,
                    checkpoints=tmp_path / "ck", progress=False)
    assert set(cards) == set(MODELS)
    for name, variant in MODELS.items():
        model = ContextClassifier.load(tmp_path / f"{name}.pt", device="cpu")
        assert model.variant == variant
        assert model.card["training"]["steps_run"] == 2
        assert model.card["data"]["systems"] == ["WSe2:Ti"]
        assert model.card["temperature"] > 0
        assert 0 <= model.card["simulated_test"]["accuracy"] <= 1
        assert (tmp_path / f"{name}.pt").stat().st_size < 5e6
        probs = model.predict_proba(np.random.default_rng(0).random((3, 24, 24)), rd.ti_wse2_context(), device="cpu")
        np.testing.assert_allclose(probs.sum(1), 1.0, rtol=1e-6)
    text = (tmp_path / "MODEL_CARD.md").read_text()
    assert "WSe2:Ti" in text and "constant in training" in text and "| context |" in text


# -- the shipped weights on a real field --------------------------------------------------------------


def test_shipped_weights_reproduce_their_card_on_field_2():
    from tdmctx.data import MissingDataError
    from tdmctx.experimental import load_ti_wse2

    weights = default_weights_dir()
    if not (weights / "context.pt").is_file():
        pytest.skip(f"no shipped weights in {weights}")
    try:
        ds = load_ti_wse2(2)
    except MissingDataError as exc:
        pytest.skip(f"Ti-WSe2 data folder absent: {exc}")
    torch.set_num_threads(1)
    data = rd.load_field(2, "adf2", dataset=ds)
    assert data.patches.shape == (len(data.labels), 24, 24)
    # The label-free sublattice split agrees with the labels on this field.
    assert np.mean(data.metal_site == np.isin(data.labels, ("metal", "dopant"))) > 0.99
    model = ContextClassifier.load(weights / "context.pt", device="cpu")
    card = [r for r in model.card.get("real_fields", []) if (r["field"], r["channel"], r["detector"], r["correction"])
            == (2, "adf2", "unknown", "sublattice+EM")]
    if not card:
        pytest.skip("the shipped card holds no real-field results (written with --no-real)")
    pred = rd.predict_sites(model, data.patches, detector_mrad=None, correction="sublattice+EM",
                            metal_site=data.metal_site)
    scores = rd.score_sites(data.labels, pred.predicted, n_boot=0)
    # Loose enough for another thread count or CPU (float sums in another order can flip a
    # borderline site), tight enough to catch a changed pipeline.
    assert scores["kappa"] == pytest.approx(card[0]["kappa"], abs=0.01)
    assert scores["dopant_f1"] == pytest.approx(card[0]["dopant_f1"], abs=0.02)
    assert scores["kappa"] > 0.5  # far above chance

"""Metrics, calibration, entropy, bootstrap and prior shift: hand-computed and synthetic known answers."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.stats import norm

from tdmctx.defects.context import CLASS_NAMES
from tdmctx.defects.evaluate import (
    accuracy,
    as_class_ids,
    bootstrap_ci,
    classification_summary,
    cohen_kappa,
    confusion_matrix,
    em_priors,
    entropy,
    entropy_reduction,
    expected_calibration_error,
    fit_temperature,
    macro_f1,
    mean_entropy,
    nll,
    paired_bootstrap,
    per_class_scores,
    prior_shift,
    reliability,
    softmax,
)


def _table_labels(table: np.ndarray, classes: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray]:
    """Label pairs realising a confusion table over the given class ids."""
    t, p = [], []
    for i, ci in enumerate(classes):
        for j, cj in enumerate(classes):
            t += [ci] * int(table[i, j])
            p += [cj] * int(table[i, j])
    return np.array(t), np.array(p)


def test_kappa_and_scores_on_a_hand_computed_table():
    # metal vs X2: p_o = 35/50 = 0.7, p_e = (25*30 + 25*20)/2500 = 0.5, kappa = 0.4.
    t, p = _table_labels(np.array([[20, 5], [10, 15]]), (0, 2))
    assert cohen_kappa(t, p) == pytest.approx(0.4)
    assert accuracy(t, p) == pytest.approx(0.7)
    cm = confusion_matrix(t, p)
    assert cm.shape == (5, 5)
    assert cm[0, 0] == 20 and cm[0, 2] == 5 and cm[2, 0] == 10 and cm[2, 2] == 15 and cm.sum() == 50
    s = per_class_scores(t, p)
    assert s["precision"][0] == pytest.approx(20 / 30)
    assert s["recall"][0] == pytest.approx(20 / 25)
    assert s["f1"][0] == pytest.approx(2 * 20 / (2 * 20 + 10 + 5))
    assert s["recall"][2] == pytest.approx(15 / 25)
    # dopant, V1, V2 never occur: undefined, not zero, and left out of the macro average.
    assert np.all(np.isnan(s["f1"][[1, 3, 4]]))
    assert macro_f1(t, p) == pytest.approx(np.mean([s["f1"][0], s["f1"][2]]))


def test_scores_match_sklearn_on_random_labels():
    skm = pytest.importorskip("sklearn.metrics")  # an independent implementation
    rng = np.random.default_rng(0)
    t = rng.integers(0, 5, 400)
    p = np.where(rng.random(400) < 0.6, t, rng.integers(0, 5, 400))
    s = per_class_scores(t, p)
    np.testing.assert_allclose(s["precision"], skm.precision_score(t, p, average=None, labels=range(5)))
    np.testing.assert_allclose(s["recall"], skm.recall_score(t, p, average=None, labels=range(5)))
    np.testing.assert_allclose(s["f1"], skm.f1_score(t, p, average=None, labels=range(5)))
    assert cohen_kappa(t, p) == pytest.approx(skm.cohen_kappa_score(t, p))


def test_class_never_predicted_has_zero_f1_and_undefined_precision():
    t = np.array(["metal", "dopant", "metal", "X2"])
    p = np.array(["metal", "metal", "metal", "X2"])
    s = per_class_scores(t, p)
    assert s["f1"][1] == 0.0 and s["recall"][1] == 0.0 and np.isnan(s["precision"][1])
    # a V2 prediction on a V1 site is an error like any other
    assert accuracy(["V1", "X2"], ["V2", "X2"]) == 0.5


def test_names_and_ids_agree_and_bad_labels_are_named():
    names = np.array(CLASS_NAMES)[[0, 1, 2, 3, 4, 0]]
    np.testing.assert_array_equal(as_class_ids(names), [0, 1, 2, 3, 4, 0])
    with pytest.raises(ValueError, match="unknown class name"):
        as_class_ids(["metal", "W"])
    with pytest.raises(ValueError, match="class ids 0-4"):
        as_class_ids([0, 5])
    with pytest.raises(ValueError, match="same number"):
        accuracy([0, 1], [0])
    with pytest.raises(ValueError, match="not logits"):
        nll(np.array([[2.0, -1.0, 0, 0, 0]]), [0])


def test_nll_and_entropy_known_values():
    uniform = np.full((3, 5), 0.2)
    onehot = np.eye(5)[[0, 2, 4]]
    assert nll(uniform, [0, 1, 2]) == pytest.approx(np.log(5))
    assert nll(onehot, [0, 2, 4]) == pytest.approx(0.0, abs=1e-9)
    np.testing.assert_allclose(entropy(uniform), np.log(5))
    np.testing.assert_allclose(entropy(uniform, base=2), np.log2(5))
    assert mean_entropy(onehot) == 0.0
    assert entropy_reduction(uniform, onehot) == pytest.approx(1.0)
    half = softmax(np.log(np.array([[0.5, 0.5, 1e-30, 1e-30, 1e-30]])))
    assert entropy(half, base=2)[0] == pytest.approx(1.0, abs=1e-6)


def _calibrated_set(n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Probabilities whose top class is right exactly as often as its probability says."""
    conf = rng.uniform(0.2, 1.0, n)
    top = rng.integers(0, 5, n)
    probs = np.empty((n, 5))
    probs[:] = ((1 - conf) / 4)[:, None]
    probs[np.arange(n), top] = conf
    correct = rng.random(n) < conf
    wrong = (top + rng.integers(1, 5, n)) % 5
    return probs, np.where(correct, top, wrong)


def test_ece_near_zero_when_calibrated_and_large_when_overconfident():
    rng = np.random.default_rng(1)
    probs, labels = _calibrated_set(40_000, rng)
    assert expected_calibration_error(probs, labels) < 0.01
    sharp = softmax(np.log(probs) * 3.0)  # same ranking, overconfident
    assert expected_calibration_error(sharp, labels) > 0.1
    r = reliability(probs, labels, n_bins=10)
    assert r["count"].sum() == 40_000 and r["edges"].shape == (11,)
    assert r["count"][:2].sum() == 0 and np.isnan(r["accuracy"][0])  # confidences start at 0.2
    # a confidence of exactly 1 lands in the last bin, not outside
    assert reliability(np.eye(5)[[0]], [0], n_bins=4)["count"][-1] == 1


def test_temperature_scaling_recovers_a_known_temperature():
    rng = np.random.default_rng(2)
    logits = rng.normal(0, 3.0, (20_000, 5))
    true_t = 2.5
    p = softmax(logits, true_t)
    labels = (rng.random(len(p))[:, None] > np.cumsum(p, axis=1)).sum(axis=1)
    t = fit_temperature(logits, labels)
    assert t == pytest.approx(true_t, rel=0.05)
    assert nll(softmax(logits, t), labels) < nll(softmax(logits), labels)


def test_bootstrap_ci_is_seeded_and_has_binomial_width():
    rng = np.random.default_rng(3)
    t = np.zeros(2000, int)
    p = np.where(rng.random(2000) < 0.8, 0, 2)
    a = bootstrap_ci(accuracy, t, p, n_boot=400, seed=7)
    b = bootstrap_ci(accuracy, t, p, n_boot=400, seed=7)
    assert a == b
    assert a["low"] < a["estimate"] < a["high"]
    assert a["std"] == pytest.approx(np.sqrt(0.8 * 0.2 / 2000), rel=0.2)
    # Ten identical copies of each sample: a cluster bootstrap over the copies sees only
    # 200 independent samples and must give an interval about sqrt(10) wider.
    groups = np.repeat(np.arange(200), 10)
    p_cl = np.repeat(p[:200], 10)
    cl = bootstrap_ci(accuracy, t, p_cl, n_boot=400, seed=7, groups=groups)
    naive = bootstrap_ci(accuracy, t, p_cl, n_boot=400, seed=7)
    assert cl["std"] / naive["std"] == pytest.approx(np.sqrt(10), rel=0.3)
    with pytest.raises(ValueError, match="groups"):
        bootstrap_ci(accuracy, t, p, groups=np.arange(5))


def test_paired_bootstrap_detects_a_better_model_and_not_a_twin():
    rng = np.random.default_rng(4)
    t = rng.integers(0, 5, 1500)
    good = np.where(rng.random(1500) < 0.9, t, (t + 1) % 5)
    bad = np.where(rng.random(1500) < 0.8, t, (t + 1) % 5)
    d = paired_bootstrap(accuracy, t, good, bad, n_boot=500, seed=0)
    assert d["difference"] == pytest.approx(accuracy(t, good) - accuracy(t, bad))
    assert d["low"] > 0 and d["p_value"] <= 0.01
    same = paired_bootstrap(accuracy, t, good, good, n_boot=200, seed=0)
    assert same["difference"] == 0 and same["low"] == same["high"] == 0 and same["p_value"] == 1.0


def test_prior_shift_known_answer_and_identity():
    probs = np.array([[0.5, 0.5, 0, 0, 0], [0.2, 0.2, 0.2, 0.2, 0.2]])
    src = np.full(5, 0.2)
    tgt = np.array([0.6, 0.1, 0.1, 0.1, 0.1])
    out = prior_shift(probs, src, tgt)
    np.testing.assert_allclose(out[0], [6 / 7, 1 / 7, 0, 0, 0])
    np.testing.assert_allclose(out[1], tgt)
    np.testing.assert_allclose(prior_shift(probs, src, src), probs)
    with pytest.raises(ValueError, match="target_priors"):
        prior_shift(probs, src, [0.5, 0.5, 0.5, 0, 0])


def test_em_recovers_target_priors_without_labels():
    # 1-D Gaussian class conditionals; exact posteriors under balanced source priors,
    # evaluated on a target set drawn with very different priors.
    rng = np.random.default_rng(5)
    means = np.array([0.0, 1.5, 3.0, 4.5, 6.0])
    target = np.array([0.70, 0.05, 0.20, 0.04, 0.01])
    y = rng.choice(5, 30_000, p=target)
    x = rng.normal(means[y], 1.0)
    lik = norm.pdf(x[:, None], means[None], 1.0)
    src = np.full(5, 0.2)
    post = lik * src / (lik * src).sum(axis=1, keepdims=True)
    est, adapted = em_priors(post, src)
    np.testing.assert_allclose(est, target, atol=0.02)
    # adapting to the true priors makes the posteriors better (lower NLL)
    assert nll(adapted, y) < nll(post, y)


def test_summary_collects_consistent_numbers():
    rng = np.random.default_rng(6)
    probs, labels = _calibrated_set(2000, rng)
    s = classification_summary(labels, probs)
    assert s["accuracy"] == pytest.approx(np.trace(s["confusion"]) / 2000)
    np.testing.assert_array_equal(s["support"], np.bincount(labels, minlength=5))
    np.testing.assert_array_equal(s["confusion"].sum(axis=0), np.bincount(probs.argmax(1), minlength=5))
    assert s["ece"] < 0.05  # the set is calibrated by construction
    assert 0 < s["mean_entropy_nats"] < np.log(5)

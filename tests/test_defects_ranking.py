"""Ranking diagnostic: known AUCs, invariance to prior corrections, the oracle threshold's F1."""

from __future__ import annotations

import numpy as np
import pytest

from tdmctx.defects.context import CLASS_IDS
from tdmctx.defects.evaluate import prior_shift, restrict_to_sublattice
from tdmctx.defects.ranking import dopant_ranking, roc_auc


def test_roc_auc_known_values():
    y = np.array([0, 0, 1, 1], bool)
    assert roc_auc(np.array([0.1, 0.2, 0.8, 0.9]), y) == 1.0
    assert roc_auc(np.array([0.9, 0.8, 0.2, 0.1]), y) == 0.0
    assert roc_auc(np.array([0.5, 0.5, 0.5, 0.5]), y) == 0.5  # ties count half
    # One of the four positive/negative pairs is misordered.
    assert roc_auc(np.array([0.1, 0.6, 0.5, 0.9]), y) == 0.75
    assert np.isnan(roc_auc(np.array([0.1, 0.2]), np.array([True, True])))
    with pytest.raises(ValueError, match="same length"):
        roc_auc(np.zeros(3), np.zeros(2, bool))


def _field(seed: int = 0, n: int = 400):
    """Half metal-sublattice sites (10 % dopants), half chalcogen; a score that ranks imperfectly."""
    rng = np.random.default_rng(seed)
    metal_site = np.arange(n) < n // 2
    labels = np.where(metal_site, "metal", "X2").astype("<U6")
    labels[np.flatnonzero(metal_site)[:20]] = "dopant"
    logits = rng.normal(size=(n, 5))
    logits[:, CLASS_IDS["dopant"]] += 3.0 * (labels == "dopant") + rng.normal(0, 1.5, n)
    probs = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    return probs, labels, metal_site


def test_ranking_ignores_prior_corrections_and_the_sublattice_restriction():
    probs, labels, metal_site = _field()
    plain = dopant_ranking(probs, labels, metal_site)
    shifted = prior_shift(probs, np.full(5, 0.2), np.array([0.5, 0.02, 0.45, 0.02, 0.01]))
    restricted = restrict_to_sublattice(shifted, metal_site)
    for other in (dopant_ranking(shifted, labels, metal_site), dopant_ranking(restricted, labels, metal_site)):
        assert other["auc"] == pytest.approx(plain["auc"], abs=1e-12)
        assert other["oracle_dopant_f1"] == pytest.approx(plain["oracle_dopant_f1"], abs=1e-12)
    assert 0.5 < plain["auc"] < 1.0 and plain["n_metal_sites"] == 200


def test_a_perfect_ranking_gives_a_perfect_oracle_f1_and_a_useless_one_does_not():
    probs, labels, metal_site = _field()
    perfect = probs.copy()
    perfect[:, CLASS_IDS["dopant"]] = np.where(labels == "dopant", 0.9, 0.01)
    r = dopant_ranking(perfect, labels, metal_site)
    assert r["auc"] == 1.0 and r["oracle_dopant_f1"] == 1.0
    flat = np.full_like(probs, 0.2)
    r = dopant_ranking(flat, labels, metal_site)
    assert r["auc"] == 0.5 and r["oracle_dopant_f1"] < 0.5


def test_ranking_input_is_checked():
    probs, labels, metal_site = _field()
    with pytest.raises(ValueError, match="same"):
        dopant_ranking(probs[:-1], labels, metal_site)
    bad = probs.copy()
    bad[0, 0] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        dopant_ranking(bad, labels, metal_site)

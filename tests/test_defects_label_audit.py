"""Label audit: sites whose columns contradict their labels in every channel are found, and only those."""

from __future__ import annotations

import numpy as np
import pytest
from test_defects_baseline import _HIGH, _LOW, _image, _labelled_lattice

from tdmctx.defects.label_audit import audit_labels, plot_label_audit


def _two_channels(points, truth, shape=(160, 160)):
    high = _image(points, [_HIGH[c] for c in truth], shape, seed=1)
    low = _image(points, [_LOW[c] for c in truth], shape, seed=2)
    return {"high": high, "low": low}


def test_audit_flags_exactly_the_planted_label_errors():
    points, truth = _labelled_lattice(seed=3)
    images = _two_channels(points, truth)
    labels = truth.copy()
    metals = np.flatnonzero(truth == "metal")
    dopants = np.flatnonzero(truth == "dopant")
    wrong_dopant = metals[:5]  # intact W columns labelled dopant
    wrong_metal = dopants[:3]  # real dopants labelled metal
    labels[wrong_dopant] = "dopant"
    labels[wrong_metal] = "metal"
    audit = audit_labels(images, points, labels)
    assert np.array_equal(np.flatnonzero(audit.defect_looks_intact), np.sort(wrong_dopant))
    assert np.array_equal(np.flatnonzero(audit.intact_looks_defect), np.sort(wrong_metal))
    summary = audit.summary().set_index("label")
    n_dopant = len(dopants) - 3 + 5
    assert summary.loc["dopant", "n"] == n_dopant and summary.loc["dopant", "flagged"] == 5
    r = 1 - 5 / n_dopant
    assert summary.loc["dopant", "recall_ceiling"] == pytest.approx(r)
    assert summary.loc["dopant", "f1_ceiling"] == pytest.approx(2 * r / (1 + r))
    assert summary.loc["metal", "flagged"] == 3
    # Correct labels raise no flag at all.
    clean = audit_labels(images, points, truth)
    assert not clean.defect_looks_intact.any() and not clean.intact_looks_defect.any()
    fig = plot_label_audit(audit, images["high"], title="planted errors", pixel_size_A=0.4)
    assert len(fig.axes[1].collections) == 2  # both flag kinds drawn


def test_audit_needs_every_channel_to_agree():
    points, truth = _labelled_lattice(seed=4)
    images = _two_channels(points, truth)
    labels = truth.copy()
    target = np.flatnonzero(truth == "metal")[0]
    labels[target] = "dopant"
    # Darken that column in one channel only: one channel no longer says "intact", so no flag.
    x, y = points[target]
    yy, xx = np.mgrid[:160, :160]
    images["low"] = images["low"] - 0.6 * np.exp(-((xx - x) ** 2 + (yy - y) ** 2) / (2 * 1.3**2))
    assert not audit_labels(images, points, labels).defect_looks_intact[target]
    assert audit_labels({"high": images["high"]}, points, labels).defect_looks_intact[target]


def test_audit_rejects_bad_input():
    points, truth = _labelled_lattice(seed=5)
    images = _two_channels(points, truth)
    with pytest.raises(ValueError, match="images is empty"):
        audit_labels({}, points, truth)
    with pytest.raises(ValueError, match="different shapes"):
        audit_labels({"a": images["high"], "b": images["low"][:-1]}, points, truth)
    bad = truth.copy()
    bad[0] = "Ti"
    with pytest.raises(ValueError, match=r"unknown label\(s\) \['Ti'\]"):
        audit_labels(images, points, bad)
    with pytest.raises(ValueError, match="one class name per point"):
        audit_labels(images, points, truth[:-1])
    with pytest.raises(ValueError, match="defect_level < intact_level"):
        audit_labels(images, points, truth, intact_level=0.5, defect_level=0.6)

"""Hollow-referenced column ratios: invariant to dark offset and gain, ordered like the classes."""

from __future__ import annotations

import numpy as np
import pytest

from tdmctx.defects.ratios import hollow_referenced_ratios


def _honeycomb(offset: float, gain: float):
    a_px = 3.282 / 0.4  # WSe2 lattice constant in 0.4 A pixels
    rng = np.random.default_rng(0)
    points, labels = [], []
    for i in range(-2, 14):
        for j in range(-2, 14):
            m = np.array([i * a_px + j * a_px / 2, j * a_px * np.sqrt(3) / 2])
            x = m + np.array([a_px / 2, a_px / (2 * np.sqrt(3))])
            for p, kind in ((m, "metal"), (x, "X2")):
                if 8 < p[0] < 92 and 8 < p[1] < 82:
                    if kind == "metal" and rng.random() < 0.15:
                        kind = "dopant"
                    elif kind == "X2" and rng.random() < 0.15:
                        kind = "V1"
                    points.append(p), labels.append(kind)
    amp = {"metal": 1.0, "dopant": 0.2, "X2": 0.7, "V1": 0.35}
    yy, xx = np.indices((90, 100), dtype=float)
    image = np.zeros((90, 100))
    for p, kind in zip(points, labels):
        image += amp[kind] * np.exp(-((xx - p[0]) ** 2 + (yy - p[1]) ** 2) / (2 * 1.1**2))
    return gain * image + offset, np.array(points), np.array(labels)


def test_ratios_ignore_dark_offset_and_gain_and_follow_the_classes():
    clean = hollow_referenced_ratios(*_honeycomb(0.0, 1.0), pixel_size_A=0.4)
    shifted = hollow_referenced_ratios(*_honeycomb(1e5, 3.0), pixel_size_A=0.4)
    for key in ("dopant/metal", "X2/metal", "V1/metal"):
        assert shifted[key] == pytest.approx(clean[key], rel=1e-6)
    assert clean["X2/metal"] > clean["V1/metal"] > clean["dopant/metal"] > 0
    assert clean["X2/metal"] == pytest.approx(0.7, abs=0.08)
    # the raw ratio does depend on the offset: that is why the hollow reference exists
    assert shifted["raw X2/metal"] > clean["raw X2/metal"] + 0.2

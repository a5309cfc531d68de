"""Site finder, the user-facing Classifier and ``tdmctx classify``: known answers and bad input."""

from __future__ import annotations

import logging
import re
import sys

import numpy as np
import pandas as pd
import pytest
import torch

from tdmctx.cli import main
from tdmctx.defects import classifier as classifier_module
from tdmctx.defects.classifier import PROBA_COLUMNS, SHIPPED_MODELS, Classifier, as_context, shipped_models
from tdmctx.defects.cli_classify import build_context, parse_host, read_image
from tdmctx.defects.context import CLASS_NAMES, Context
from tdmctx.defects.models import ContextClassifier
from tdmctx.defects.patches import extract_patches
from tdmctx.defects.sites import find_sites, metal_brighter_from_context, metal_group_from_proba

torch.set_num_threads(1)

PIXEL_A = 0.4
BOND_A = 1.9
ROTATION_DEG = 17.0
CSV_COLUMNS = ["x_px", "y_px", "class", *PROBA_COLUMNS, "entropy"]


def honeycomb(
    shape=(160, 160), *, metal=1.0, chalcogen=0.6, noise=0.05, missing=(), seed=0, origin=(40.3, 52.7)
):
    """A projected 1H-TMD image: Gaussian columns on a honeycomb rotated by ROTATION_DEG.

    Returns the image and a dict of the true sites drawn (also just outside the image,
    whose tails reach in): ``xy`` (x, y) px, ``metal`` mask, ``inside`` (centre on the
    image's pixels, ``-0.5 <= x <= nx - 0.5``) and ``borderline`` (within 0.15 px of that
    limit, where noise decides). Sites listed in ``missing`` (indices into ``xy``) are left
    empty, as a V2 or a metal vacancy.
    """
    rng = np.random.default_rng(seed)
    bond = BOND_A / PIXEL_A
    t = np.radians(ROTATION_DEG)
    e = bond * np.array([[np.cos(t), np.sin(t)], [np.cos(t + np.pi / 3), np.sin(t + np.pi / 3)]])
    n = np.arange(-80, 81)
    n1, n2 = np.meshgrid(n, n, indexing="ij")
    idx = np.stack([n1.ravel(), n2.ravel()], axis=1)
    xy = np.asarray(origin) + idx @ e
    coset = (idx[:, 0] - idx[:, 1]) % 3
    ny, nx = shape
    drawn = (xy[:, 0] > -4) & (xy[:, 0] < nx + 3) & (xy[:, 1] > -4) & (xy[:, 1] < ny + 3) & (coset != 2)
    xy, is_metal = xy[drawn], coset[drawn] == 0
    # Signed distance inside the image's pixel area.
    margin = np.minimum.reduce([xy[:, 0] + 0.5, nx - 0.5 - xy[:, 0], xy[:, 1] + 0.5, ny - 0.5 - xy[:, 1]])
    amplitude = np.where(is_metal, metal, chalcogen)
    amplitude[list(missing)] = 0.0
    image = np.full(shape, 0.1)
    sigma = 0.45 / PIXEL_A
    yy, xx = np.mgrid[0:ny, 0:nx]
    for (x, y), a in zip(xy, amplitude):
        y0, y1 = min(max(int(y) - 6, 0), ny), min(max(int(y) + 7, 0), ny)
        x0, x1 = min(max(int(x) - 6, 0), nx), min(max(int(x) + 7, 0), nx)
        image[y0:y1, x0:x1] += a * np.exp(-((xx[y0:y1, x0:x1] - x) ** 2 + (yy[y0:y1, x0:x1] - y) ** 2) / (2 * sigma**2))
    truth = {"xy": xy, "metal": is_metal, "inside": margin >= 0, "borderline": np.abs(margin) < 0.15}
    return image + noise * rng.standard_normal(shape), truth


def match_sites(found_px: np.ndarray, truth: dict, tolerance_px: float = 0.6) -> tuple[np.ndarray, np.ndarray]:
    """Check found sites against the truth; return (true index per found site, its error, px).

    Asserts that every found site lies within ``tolerance_px`` of a distinct true site on
    the image, and that every true site on the image (borderline ones aside) was found.
    """
    dist = np.hypot(*(found_px[:, None, :] - truth["xy"][None, :, :]).transpose(2, 0, 1))
    which = dist.argmin(axis=1)
    error = dist[np.arange(len(found_px)), which]
    assert error.max() < tolerance_px, f"a found site is {error.max():.2f} px from every true site"
    assert len(np.unique(which)) == len(which), "two found sites share a true site"
    assert (truth["inside"] | truth["borderline"])[which].all(), "a site off the image was returned"
    wanted = np.flatnonzero(truth["inside"] & ~truth["borderline"])
    assert np.isin(wanted, which).all(), f"{int((~np.isin(wanted, which)).sum())} true sites were not found"
    return which, error


@pytest.fixture(scope="module")
def lattice_image():
    _, truth = honeycomb()
    xy, is_metal = truth["xy"], truth["metal"]
    interior = np.flatnonzero((xy[:, 0] > 20) & (xy[:, 0] < 140) & (xy[:, 1] > 20) & (xy[:, 1] < 140))
    gone = (int(interior[is_metal[interior]][5]), int(interior[~is_metal[interior]][7]))
    image, truth = honeycomb(missing=gone)
    return image, truth, gone


def on_image(truth: dict) -> np.ndarray:
    """(x, y) of the true sites on the image, borderline ones left out."""
    return truth["xy"][truth["inside"] & ~truth["borderline"]]


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    """A randomly initialised small context model saved with a card (plumbing, not accuracy)."""
    path = tmp_path_factory.mktemp("model") / "tiny.pt"
    ContextClassifier("film", width=4, context_hidden=8, seed=0).save(path, card={"data": "none", "note": "random"})
    return path


# -- site finder --------------------------------------------------------------------------


def test_find_sites_synthetic_known_answer(lattice_image):
    image, truth, gone = lattice_image
    sites = find_sites(image, PIXEL_A, metal_brighter=True)
    assert sites.lattice.bond_A == pytest.approx(BOND_A, abs=0.01)
    assert sites.lattice.rotation_deg == pytest.approx(ROTATION_DEG % 60, abs=0.2)
    which, error = match_sites(sites.points_px, truth)
    assert error.mean() < 0.15
    # The empty columns are found from the lattice alone.
    for i in gone:
        (k,) = np.flatnonzero(which == i)
        assert not sites.has_peak[k] and error[k] < 0.3
    assert (~sites.has_peak).sum() == len(gone)
    assert np.array_equal(sites.sublattice, np.where(truth["metal"][which], "metal", "chalcogen"))
    # A whole 24 x 24 px patch fits only 12 px from the edges.
    xy = truth["xy"][which]
    inner = (xy[:, 0] >= 12.5) & (xy[:, 0] <= 146.5) & (xy[:, 1] >= 12.5) & (xy[:, 1] <= 146.5)
    assert sites.full_patch[inner].all()
    assert not sites.full_patch[(xy[:, 0] < 11) | (xy[:, 1] < 11)].any()
    assert len(find_sites(image, PIXEL_A, drop_partial=True)) == int(sites.full_patch.sum())
    # refine=True: sites with a peak move to its sub-pixel centre, the empty ones stay put.
    refined = find_sites(image, PIXEL_A, refine=True)
    match_sites(refined.points_px, truth)
    moved = np.hypot(*(refined.points_px - sites.points_px).T) > 1e-9
    assert not moved[~sites.has_peak].any() and moved[sites.has_peak & sites.full_patch].all()


def test_find_sites_tolerates_missing_columns_and_outliers():
    rng = np.random.default_rng(5)
    _, truth = honeycomb((128, 128))
    on = np.flatnonzero(truth["inside"])
    gone = rng.choice(on, size=len(on) // 20, replace=False)  # 5 % empty sites
    image, truth = honeycomb((128, 128), missing=gone, seed=5)
    # 5 % spurious bright blobs (contamination, hot pixels) off the lattice.
    yy, xx = np.mgrid[0:128, 0:128]
    for x, y in rng.uniform(5, 123, size=(len(on) // 20, 2)):
        image += 0.8 * np.exp(-((xx - x) ** 2 + (yy - y) ** 2) / (2 * 1.2**2))
    sites = find_sites(image, PIXEL_A, metal_brighter=True)
    which, error = match_sites(sites.points_px, truth)
    assert np.median(error) < 0.15
    assert np.array_equal(sites.sublattice, np.where(truth["metal"][which], "metal", "chalcogen"))
    assert (~sites.has_peak[np.isin(which, gone)]).mean() > 0.8  # most empty sites show no peak


@pytest.mark.parametrize("rotation_deg, shape", [(0.0, (80, 120)), (30.0, (200, 64)), (45.0, (64, 64))])
def test_find_sites_any_rotation_and_shape(rotation_deg, shape, monkeypatch):
    monkeypatch.setattr(sys.modules[__name__], "ROTATION_DEG", rotation_deg)
    image, truth = honeycomb(shape, seed=2)
    sites = find_sites(image, PIXEL_A, metal_brighter=True)
    which, _ = match_sites(sites.points_px, truth, tolerance_px=0.8)
    assert np.array_equal(sites.sublattice, np.where(truth["metal"][which], "metal", "chalcogen"))


def test_find_sites_metal_hint_and_contrast_reversal():
    # Medium-angle contrast: the chalcogen pair outshines the metal.
    image, truth = honeycomb((96, 96), metal=0.6, chalcogen=1.0, seed=3)
    for hint in (False, True):
        sites = find_sites(image, PIXEL_A, metal_brighter=hint)
        which, _ = match_sites(sites.points_px, truth)
        metal = truth["metal"][which] if hint is False else ~truth["metal"][which]
        assert np.array_equal(sites.sublattice, np.where(metal, "metal", "chalcogen"))
    unassigned = find_sites(image, PIXEL_A)
    assert unassigned.metal_group is None and set(unassigned.sublattice) == {"unassigned"}
    assert set(unassigned.with_metal_group(1).sublattice) == {"metal", "chalcogen"}
    frame = unassigned.to_frame()
    assert list(frame.columns) == ["x_px", "y_px", "sublattice", "has_peak", "full_patch"]


def test_find_sites_rejects_non_lattice_and_bad_input():
    rng = np.random.default_rng(0)
    with pytest.raises(ValueError, match="no honeycomb lattice"):
        find_sites(rng.random((128, 128)), PIXEL_A)
    image, _ = honeycomb((96, 96))
    with pytest.raises(ValueError, match="pixel_size_A"):
        find_sites(image, 4.0)  # a tenfold unit mistake
    with pytest.raises(ValueError, match="pixel_size_A"):
        find_sites(image)
    bad = image.copy()
    bad[3, 4] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        find_sites(bad, PIXEL_A)


def test_metal_brighter_rule():
    wse2 = Context("W", "Se", energy_eV=80e3)
    assert metal_brighter_from_context(wse2) is None  # detector unknown
    assert metal_brighter_from_context(Context("W", "Se", energy_eV=80e3, detector_inner_mrad=70.0)) is True
    assert metal_brighter_from_context(Context("W", "Se", energy_eV=80e3, detector_inner_mrad=35.0)) is False
    assert metal_brighter_from_context(Context("Mo", "S", energy_eV=200e3, detector_inner_mrad=70.0)) is True
    # Tellurium pairs outshine W even at high angles.
    assert metal_brighter_from_context(Context("W", "Te", energy_eV=80e3, detector_inner_mrad=70.0)) is False


def test_metal_group_from_proba():
    group = np.array([0, 0, 1, 1, 1])
    proba = np.tile(np.eye(5)[[2]], (5, 1))
    proba[group == 1] = np.eye(5)[0]
    proba[3] = np.eye(5)[1]  # a dopant counts for the metal sublattice too
    assert metal_group_from_proba(group, proba) == 1
    assert metal_group_from_proba(1 - group, proba) == 0
    with pytest.raises(ValueError, match="proba"):
        metal_group_from_proba(group, proba[:3])


def test_find_sites_real_field():
    from scipy.spatial import cKDTree

    from tdmctx.data import MissingDataError, data_root
    from tdmctx.experimental import load_ti_wse2

    try:
        data_root()
    except MissingDataError:
        pytest.skip("the shared data folder with the Ti-WSe2 fields is absent")
    field = load_ti_wse2(2)
    labels = field["label"].values
    points = field["points_px"].values.astype(float)
    sites = find_sites(field["adf2"], metal_brighter=True)  # adf2: the higher-angle channel, W brighter
    dist, idx = cKDTree(sites.points_px).query(points)
    matched = dist <= 1.0
    assert matched.mean() >= 0.99  # measured 0.997; the labels are whole pixels
    truth = np.where(np.isin(labels, ["metal", "dopant"]), "metal", "chalcogen")
    assert np.mean(sites.sublattice[idx[matched]] == truth[matched]) > 0.999


# -- Classifier -----------------------------------------------------------------------------


def test_classifier_load_round_trip(tiny_model, lattice_image):
    clf = Classifier.load(tiny_model, device="cpu")
    assert clf.card == {"data": "none", "note": "random"}
    assert clf.temperature == 1.0
    image, truth, _ = lattice_image
    xy = on_image(truth)
    patches = extract_patches(image, xy[:6], source_pixel_A=PIXEL_A)
    ctx = {"host_metal": "W", "chalcogen": "Se", "dopant": "Ti", "energy_eV": 80e3, "detector_inner_mrad": None}
    proba = clf.predict_proba(patches, ctx)
    assert proba.shape == (6, len(CLASS_NAMES))
    np.testing.assert_allclose(proba.sum(axis=1), 1.0, atol=1e-6)
    reference = ContextClassifier.load(tiny_model, device="cpu").predict_proba(patches, as_context(ctx), device="cpu")
    np.testing.assert_allclose(proba, reference, atol=1e-6)
    # Unknown context is all-None, not a default.
    assert as_context(None) == Context()
    with pytest.raises(ValueError, match="unknown context field"):
        clf.predict_proba(patches, {"host": "WSe2"})


def test_classifier_applies_card_temperature(tmp_path, lattice_image):
    path = tmp_path / "hot.pt"
    model = ContextClassifier("image-only", width=4, seed=1)
    model.save(path, card={"temperature": 2.0})
    clf = Classifier.load(path, device="cpu")
    image, truth, _ = lattice_image
    xy = on_image(truth)
    patches = extract_patches(image, xy[:4], source_pixel_A=PIXEL_A)
    logits = model.predict_logits(patches, device="cpu")
    expected = torch.softmax(torch.from_numpy(logits).double() / 2.0, dim=1).numpy()
    np.testing.assert_allclose(clf.predict_proba(patches), expected, atol=1e-6)


def test_shipped_weights_absent_is_a_clear_error(monkeypatch, tmp_path):
    monkeypatch.setattr(classifier_module, "_weights_folder", lambda: tmp_path / "weights")
    assert shipped_models() == ()
    with pytest.raises(FileNotFoundError, match="not in this installation"):
        Classifier.load()
    with pytest.raises(ValueError, match="not a shipped model"):
        Classifier.load(model="film")


def test_shipped_weights_load(lattice_image):
    image, truth, _ = lattice_image
    xy = on_image(truth)
    patches = extract_patches(image, xy[:8], source_pixel_A=PIXEL_A)
    for name in SHIPPED_MODELS:
        clf = Classifier.load(model=name, device="cpu")
        assert clf.card, f"the shipped {name} model has no model card"
        proba = clf.predict_proba(patches, Context("W", "Se", "Ti", energy_eV=80e3))
        assert proba.shape == (8, len(CLASS_NAMES))
        np.testing.assert_allclose(proba.sum(axis=1), 1.0, atol=1e-6)


def test_classify_sites_refines_and_keeps_order(tiny_model, lattice_image):
    image, truth, _ = lattice_image
    xy = on_image(truth)
    clf = Classifier.load(tiny_model, device="cpu")
    order = np.random.default_rng(0).permutation(len(xy))[:20]
    table = clf.classify_sites(image, np.rint(xy[order]), pixel_size_A=PIXEL_A, context=Context("W", "Se", "Ti"))
    assert list(table.columns) == CSV_COLUMNS
    shift = np.hypot(table["x_px"] - xy[order, 0], table["y_px"] - xy[order, 1])
    assert shift.max() < 0.6  # whole-pixel inputs moved back onto their own columns, in order
    assert set(table["class"]) <= set(CLASS_NAMES)
    np.testing.assert_allclose(table[list(PROBA_COLUMNS)].sum(axis=1), 1.0, atol=1e-6)
    p = table[list(PROBA_COLUMNS)].to_numpy()
    np.testing.assert_allclose(table["entropy"], -(p * np.log(p)).sum(axis=1), rtol=1e-6)


def test_classify_sites_prior_correction(tmp_path, lattice_image):
    from tdmctx.defects.evaluate import em_priors

    image, truth, _ = lattice_image
    xy = on_image(truth)[:60]
    path = tmp_path / "skewed.pt"
    train_priors = [0.4, 0.1, 0.3, 0.1, 0.1]
    ContextClassifier("image-only", width=4, seed=2).save(path, card={"training": {"train_priors": train_priors}})
    clf = Classifier.load(path, device="cpu")
    np.testing.assert_allclose(clf.train_priors, train_priors)
    raw = clf.classify_sites(image, xy, pixel_size_A=PIXEL_A, refine=False, priors="none")
    adapted = clf.classify_sites(image, xy, pixel_size_A=PIXEL_A, refine=False)
    p_raw = raw[list(PROBA_COLUMNS)].to_numpy()
    np.testing.assert_allclose(p_raw, clf.predict_proba(extract_patches(image, xy, source_pixel_A=PIXEL_A)), atol=1e-6)
    np.testing.assert_allclose(adapted[list(PROBA_COLUMNS)].to_numpy(), em_priors(p_raw, train_priors)[1], atol=1e-6)
    assert not np.allclose(adapted[list(PROBA_COLUMNS)].to_numpy(), p_raw, atol=1e-3)
    with pytest.raises(ValueError, match="priors"):
        clf.classify_sites(image, xy, pixel_size_A=PIXEL_A, priors="uniform")


# -- command line -----------------------------------------------------------------------------


def _run(args, capsys):
    code = main(["classify", *map(str, args)])
    out, err = capsys.readouterr()
    return code, out, err


def test_cli_npy_with_points_keeps_input_order(tmp_path, tiny_model, lattice_image, capsys):
    image, truth, _ = lattice_image
    xy = on_image(truth)
    np.save(tmp_path / "image.npy", image)
    order = np.random.default_rng(1).permutation(len(xy))[:40]
    np.save(tmp_path / "points.npy", np.rint(xy[order]))
    out = tmp_path / "out" / "result.csv"
    code, stdout, err = _run(
        [tmp_path / "image.npy", "--host", "WSe2", "--dopant", "Ti", "--energy-kV", "80",
         "--points", tmp_path / "points.npy", "--pixel-size-A", PIXEL_A, "--output", out, "--weights", tiny_model,
         "--device", "cpu"],
        capsys,
    )
    assert code == 0, err
    table = pd.read_csv(out)
    assert list(table.columns) == CSV_COLUMNS
    assert len(table) == 40
    assert np.hypot(table["x_px"] - xy[order, 0], table["y_px"] - xy[order, 1]).max() < 0.6
    np.testing.assert_allclose(table[list(PROBA_COLUMNS)].sum(axis=1), 1.0, atol=1e-5)
    assert out.with_suffix(".png").stat().st_size > 10_000
    assert "40 sites" in stdout and "mean entropy" in stdout
    assert sorted(p.name for p in out.parent.iterdir()) == ["result.csv", "result.png"]


def test_cli_tiff_finds_sites(tmp_path, tiny_model, lattice_image, capsys):
    import tifffile

    image, truth, gone = lattice_image
    # ImageJ calibration: 0.04 nm per pixel.
    tifffile.imwrite(tmp_path / "field.tif", image.astype(np.float32), imagej=True,
                     resolution=(1 / 0.04, 1 / 0.04), metadata={"unit": "nm"})
    assert read_image(tmp_path / "field.tif")[1] == pytest.approx(PIXEL_A, rel=1e-5)
    out = tmp_path / "sites.csv"
    code, stdout, err = _run(
        [tmp_path / "field.tif", "--host", "WSe2", "--dopant", "Ti", "--energy-kV", "80", "--detector-mrad", "70", "200",
         "--output", out, "--weights", tiny_model, "--device", "cpu"],
        capsys,
    )
    assert code == 0, err
    table = pd.read_csv(out)
    assert list(table.columns) == [*CSV_COLUMNS, "sublattice", "has_peak", "full_patch"]
    which, _ = match_sites(table[["x_px", "y_px"]].to_numpy(), truth)
    # 80 kV, 70 mrad: the detector rule says the metal is the brighter sublattice.
    assert np.array_equal(table["sublattice"].to_numpy(), np.where(truth["metal"][which], "metal", "chalcogen"))
    assert (~table["has_peak"]).sum() == len(gone)
    np.testing.assert_allclose(table[list(PROBA_COLUMNS)].sum(axis=1), 1.0, atol=1e-5)
    assert "detector rule" in stdout
    assert out.with_suffix(".png").is_file()


def test_cli_tiff_without_calibration_needs_pixel_size(tmp_path, tiny_model, lattice_image, capsys):
    import tifffile

    tifffile.imwrite(tmp_path / "plain.tif", lattice_image[0].astype(np.float32))
    out = tmp_path / "out" / "x.csv"
    code, _, err = _run([tmp_path / "plain.tif", "--output", out, "--weights", tiny_model, "--device", "cpu"], capsys)
    assert code == 2 and "--pixel-size-A" in err
    assert not out.parent.exists()
    code, stdout, err = _run([tmp_path / "plain.tif", "--output", out, "--weights", tiny_model, "--device", "cpu",
                              "--pixel-size-A", PIXEL_A, "--model", "image-only"], capsys)
    assert code == 0, err
    assert "model vote" in stdout  # no detector angles: the model decides the metal sublattice
    code, stdout, err = _run([tmp_path / "plain.tif", "--output", out, "--weights", tiny_model, "--device", "cpu",
                              "--pixel-size-A", PIXEL_A, "--metal-sublattice", "darker"], capsys)
    assert code == 0, err
    assert "--metal-sublattice (darker sublattice)" in stdout
    table = pd.read_csv(out)
    which, _ = match_sites(table[["x_px", "y_px"]].to_numpy(), lattice_image[1])
    assert np.array_equal(table["sublattice"], np.where(lattice_image[1]["metal"][which], "chalcogen", "metal"))


BAD_CASES = (
    "missing image", "unreadable tiff", "unreadable npy", "unknown extension", "not 2-D", "NaN", "missing pixel size",
    "negative pixel size", "points outside", "points not (N, 2)", "missing points", "unknown dopant",
    "bad host formula", "host not a chalcogenide", "unknown host element", "energy out of range",
    "detector angles reversed",
)


def test_read_image_tiff_resolution_units(tmp_path, lattice_image):
    import tifffile

    image = lattice_image[0].astype(np.float32)
    # A centimetre resolution that gives an atomic-scale pixel is a calibration ...
    tifffile.imwrite(tmp_path / "cm.tif", image, resolution=(1e8 / PIXEL_A, 1e8 / PIXEL_A), resolutionunit="CENTIMETER")
    values, pixel = read_image(tmp_path / "cm.tif")
    assert pixel == pytest.approx(PIXEL_A, rel=1e-6) and values.shape == image.shape
    # ... a print resolution (72 dpi) is not, and neither are unequal x and y resolutions.
    tifffile.imwrite(tmp_path / "dpi.tif", image, resolution=(72, 72), resolutionunit="INCH")
    tifffile.imwrite(tmp_path / "skew.tif", image, imagej=True, resolution=(25, 20), metadata={"unit": "nm"})
    for name in ("dpi.tif", "skew.tif"):
        with pytest.raises(ValueError, match="--pixel-size-A"):
            read_image(tmp_path / name)
        assert read_image(tmp_path / name, 0.5)[1] == 0.5


def test_read_image_dm4():
    from tdmctx.data import MissingDataError, fetch

    try:
        path = fetch("experimental/ti-wse2/field2_adf2.dm4")
    except MissingDataError:
        pytest.skip("the shared data folder with the Ti-WSe2 fields is absent")
    values, pixel = read_image(path)
    assert values.shape == (512, 512) and values.dtype == np.float64
    assert pixel == pytest.approx(0.3988, abs=1e-4)
    assert read_image(path, 0.5)[1] == 0.5  # the flag overrides the file


def _bad_inputs(tmp, image):
    """Write the files of every bad-input case to ``tmp``; return case -> (arguments, error pattern)."""
    np.save(tmp / "ok.npy", image)
    nan = image.copy()
    nan[5, 5] = np.nan
    np.save(tmp / "nan.npy", nan)
    (tmp / "garbage.tif").write_bytes(b"II*\x00 this is not a tiff")
    (tmp / "garbage.npy").write_bytes(b"not numpy at all")
    np.save(tmp / "stack.npy", np.stack([image, image]))
    np.save(tmp / "outside.npy", np.array([[10.0, 10.0], [500.0, 20.0]]))
    np.save(tmp / "three.npy", np.ones((4, 3)))
    (tmp / "image.png").write_bytes(b"\x89PNG")
    px = ["--pixel-size-A", str(PIXEL_A)]
    return {
        "missing image": (["absent.npy", *px], "does not exist"),
        "unreadable tiff": (["garbage.tif", *px], "cannot be read as a TIFF"),
        "unreadable npy": (["garbage.npy", *px], "cannot be read as a .npy"),
        "unknown extension": (["image.png", *px], "expected .dm3"),
        "not 2-D": (["stack.npy", *px], "2-D"),
        "NaN": (["nan.npy", *px], "nan.npy holds 1 NaN"),
        "missing pixel size": (["ok.npy"], "--pixel-size-A"),
        "negative pixel size": (["ok.npy", "--pixel-size-A", "-1"], "positive"),
        "points outside": (["ok.npy", *px, "--points", "outside.npy"], "outside"),
        "points not (N, 2)": (["ok.npy", *px, "--points", "three.npy"], r"\(N, 2\)"),
        "missing points": (["ok.npy", *px, "--points", "nothere.npy"], "does not exist"),
        "unknown dopant": (["ok.npy", *px, "--dopant", "Xy"], "not a chemical element"),
        "bad host formula": (["ok.npy", *px, "--host", "WSe"], "not a TMD formula"),
        "host not a chalcogenide": (["ok.npy", *px, "--host", "WO2"], "not a chalcogen"),
        "unknown host element": (["ok.npy", *px, "--host", "QSe2"], "not a chemical element"),
        "energy out of range": (["ok.npy", *px, "--energy-kV", "8000"], "--energy-kV 8000 is out of range"),
        "detector angles reversed": (["ok.npy", *px, "--detector-mrad", "200", "70"], "smaller than"),
    }


@pytest.mark.parametrize("case", BAD_CASES)
def test_cli_bad_input_is_one_error_line_and_writes_nothing(case, tmp_path, tiny_model, capsys, caplog, monkeypatch):
    image, _ = honeycomb((64, 64))
    cases = _bad_inputs(tmp_path, image)
    assert set(cases) == set(BAD_CASES)
    args, message = cases[case]
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "results" / "out.csv"
    code, stdout, err = _run([*args, "--output", out, "--weights", tiny_model, "--device", "cpu"], capsys)
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ")
    assert re.search(message, lines[0]), lines[0]
    assert not [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]  # no second message
    assert not (tmp_path / "results").exists()


def test_cli_missing_shipped_weights_writes_nothing(tmp_path, lattice_image, capsys, monkeypatch):
    monkeypatch.setattr(classifier_module, "_weights_folder", lambda: tmp_path / "weights")
    np.save(tmp_path / "image.npy", lattice_image[0])
    out = tmp_path / "results" / "out.csv"
    code, _, err = _run([tmp_path / "image.npy", "--pixel-size-A", PIXEL_A, "--output", out], capsys)
    assert code == 2 and "not in this installation" in err
    assert not (tmp_path / "results").exists()


def test_cli_bad_weights_file_writes_nothing(tmp_path, lattice_image, capsys):
    np.save(tmp_path / "image.npy", lattice_image[0])
    (tmp_path / "notes.pt").write_text("not a model")
    for weights, message in ((tmp_path / "absent.pt", "no model file"), (tmp_path / "notes.pt", "not a readable torch file")):
        code, _, err = _run([tmp_path / "image.npy", "--pixel-size-A", PIXEL_A, "--output", tmp_path / "res" / "o.csv",
                             "--weights", weights], capsys)
        assert code == 2 and message in err
        assert not (tmp_path / "res").exists()


def test_cli_failure_while_writing_leaves_nothing(tmp_path, tiny_model, lattice_image, capsys, monkeypatch):
    from tdmctx.defects import cli_classify

    def broken_overlay(*args, **kwargs):
        raise ValueError("figure failed")

    monkeypatch.setattr(cli_classify, "_overlay", broken_overlay)
    np.save(tmp_path / "image.npy", lattice_image[0])
    code, _, err = _run([tmp_path / "image.npy", "--pixel-size-A", PIXEL_A, "--output", tmp_path / "res" / "o.csv",
                         "--weights", tiny_model, "--device", "cpu"], capsys)
    assert code == 2 and "figure failed" in err
    assert not (tmp_path / "res").exists()  # neither the CSV written before the figure nor the folder


def test_cli_output_must_be_csv(tmp_path, tiny_model, lattice_image, capsys):
    np.save(tmp_path / "image.npy", lattice_image[0])
    code, _, err = _run([tmp_path / "image.npy", "--pixel-size-A", PIXEL_A, "--output", tmp_path / "out.png",
                         "--weights", tiny_model], capsys)
    assert code == 2 and ".csv" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["image.npy"]


def test_parse_host_and_context_units():
    assert parse_host("WSe2") == ("W", "Se")
    assert parse_host("MoS2") == ("Mo", "S")
    ctx = build_context("WSe2", "ti", 80, (70, 200))
    assert ctx == Context("W", "Se", "Ti", energy_eV=80e3, detector_inner_mrad=70.0, detector_outer_mrad=200.0)
    assert build_context(None, None, None) == Context()


# -- compositions outside the training systems ---------------------------------------------


@pytest.fixture(scope="module")
def ti_model(tmp_path_factory):
    """A small random context model whose card says it was trained on WSe2:Ti only."""
    path = tmp_path_factory.mktemp("model") / "ti.pt"
    model = ContextClassifier("film", width=4, context_hidden=8, seed=1)
    with torch.no_grad():  # FiLM starts as the identity; make the context matter
        generator = torch.Generator().manual_seed(0)
        for name, param in model.named_parameters():
            if name.startswith("film."):
                param.add_(0.5 * torch.randn(param.shape, generator=generator))
    model.save(path, card={"data": {"systems": ["WSe2:Ti"]}})
    return path


def test_unseen_composition_is_classified_as_unknown_by_default(ti_model, lattice_image):
    image, truth, _ = lattice_image
    patches = extract_patches(image, on_image(truth)[:16], source_pixel_A=PIXEL_A)
    clf = Classifier.load(ti_model, device="cpu")
    assert clf.training_systems == ("WSe2:Ti",)
    seen = Context("W", "Se", "Ti", energy_eV=80e3)
    assert clf.checked_context(seen) == seen  # nothing to do, no warning
    told_v = Context("W", "Se", "V", energy_eV=80e3)
    with pytest.warns(UserWarning, match="dopant='V'"):
        assert clf.checked_context(told_v) == Context("W", "Se", None, energy_eV=80e3)
    with pytest.warns(UserWarning, match="host_metal='Mo', chalcogen='S'"):
        assert clf.checked_context(Context("Mo", "S", "Ti")) == Context(None, None, "Ti")
    with pytest.warns(UserWarning):
        default = clf.predict_proba(patches, told_v)
    unknown = clf.predict_proba(patches, Context("W", "Se", None, energy_eV=80e3))
    kept = clf.predict_proba(patches, told_v, unseen="keep")
    np.testing.assert_allclose(default, unknown)
    assert not np.allclose(kept, unknown)  # the dopant does reach the network when kept
    with pytest.raises(ValueError, match="not among the model's training systems"):
        clf.predict_proba(patches, told_v, unseen="error")
    with pytest.raises(ValueError, match="unseen='maybe' is unknown"):
        clf.checked_context(seen, "maybe")


def test_low_z_contrast_dopant_warns_for_every_model(ti_model, tiny_model):
    import warnings

    for path in (ti_model, tiny_model):
        clf = Classifier.load(path, device="cpu")
        with pytest.warns(UserWarning, match=r"Re scatters within 2\.3% of the host metal W"):
            clf.checked_context(Context("W", "Se", "Re"), "keep")
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # a resolvable dopant, or no host given: silent
            clf.checked_context(Context("W", "Se", "Ti"), "keep")
            clf.checked_context(Context(None, None, "Re"), "keep")


def test_run_classify_warns_once_about_a_low_contrast_dopant(tmp_path, tiny_model, lattice_image):
    import warnings

    from tdmctx.defects.cli_classify import run_classify

    image, truth, _ = lattice_image
    np.save(tmp_path / "image.npy", image)
    np.save(tmp_path / "points.npy", np.rint(on_image(truth)[:20]))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        run_classify(tmp_path / "image.npy", tmp_path / "out.csv", context=Context("W", "Se", "Re", energy_eV=80e3),
                     points_path=tmp_path / "points.npy", weights=tiny_model, pixel_size_A=PIXEL_A, device="cpu")
    messages = [str(w.message) for w in caught if "scatters within" in str(w.message)]
    assert len(messages) == 1, messages
    assert (tmp_path / "out.csv").is_file()


def test_unseen_check_skips_image_only_models_and_cards_without_systems(tiny_model, tmp_path):
    told_v = Context("W", "Se", "V")
    assert Classifier.load(tiny_model, device="cpu").checked_context(told_v, "error") == told_v  # card names none
    path = tmp_path / "image-only.pt"
    ContextClassifier("image-only", width=4, seed=0).save(path, card={"data": {"systems": ["WSe2:Ti"]}})
    assert Classifier.load(path, device="cpu").checked_context(told_v, "error") == told_v


def test_cli_unseen_dopant(tmp_path, ti_model, lattice_image, capsys):
    image, truth, _ = lattice_image
    np.save(tmp_path / "image.npy", image)
    np.save(tmp_path / "points.npy", np.rint(on_image(truth)[:12]))
    args = [tmp_path / "image.npy", "--host", "WSe2", "--dopant", "V", "--energy-kV", "80", "--points",
            tmp_path / "points.npy", "--pixel-size-A", PIXEL_A, "--weights", ti_model, "--device", "cpu"]
    refused = tmp_path / "refused" / "r.csv"
    code, _, err = _run([*args, "--output", refused, "--unseen", "error"], capsys)
    assert code != 0 and "dopant='V'" in err and not refused.parent.exists()
    out = tmp_path / "ok" / "r.csv"
    with pytest.warns(UserWarning, match="dopant='V'"):
        code, stdout, err = _run([*args, "--output", out], capsys)
    assert code == 0, err
    assert "context unknown: dopant, detector_inner_mrad, detector_outer_mrad" in stdout and out.is_file()


# -- sublattice restriction -----------------------------------------------------------------


def _allowed(classes: pd.Series, on_metal: np.ndarray) -> bool:
    metal_classes = classes.isin(["metal", "dopant"]).to_numpy()
    return bool(np.all(metal_classes == on_metal))


def test_classify_sites_restricts_each_site_to_its_sublattice(tiny_model, lattice_image):
    image, truth, _ = lattice_image
    keep = truth["inside"] & ~truth["borderline"]
    xy, is_metal = truth["xy"][keep], truth["metal"][keep]
    groups = is_metal.astype(int)  # group 1 holds the metal
    clf = Classifier.load(tiny_model, device="cpu")
    ctx = Context("W", "Se", "Ti", energy_eV=80e3)
    free = clf.classify_sites(image, xy, pixel_size_A=PIXEL_A, context=ctx, refine=False)
    assert not _allowed(free["class"], is_metal)  # a random network mixes them up
    told = clf.classify_sites(image, xy, pixel_size_A=PIXEL_A, context=ctx, refine=False, sublattice=groups,
                              metal_group=1)
    assert _allowed(told["class"], is_metal) and told.attrs["metal_group"] == 1
    np.testing.assert_allclose(told[list(PROBA_COLUMNS)].sum(axis=1), 1.0, atol=1e-9)
    on_metal = told.loc[is_metal, ["p_X2", "p_V1", "p_V2"]].to_numpy()
    assert on_metal.max() == 0.0  # no mass off the site's sublattice
    flipped = clf.classify_sites(image, xy, pixel_size_A=PIXEL_A, context=ctx, refine=False, sublattice=1 - groups,
                                 metal_group=0)
    pd.testing.assert_frame_equal(flipped, told)  # the ids are names only
    voted = clf.classify_sites(image, xy, pixel_size_A=PIXEL_A, context=ctx, refine=False, sublattice=groups)
    assert voted.attrs["metal_group"] in (0, 1)
    with pytest.raises(ValueError, match="one id, 0 or 1, per point"):
        clf.classify_sites(image, xy, pixel_size_A=PIXEL_A, context=ctx, sublattice=groups[:-1])
    with pytest.raises(ValueError, match="one id, 0 or 1, per point"):
        clf.classify_sites(image, xy, pixel_size_A=PIXEL_A, context=ctx, sublattice=groups + 1)
    with pytest.raises(ValueError, match="without sublattice"):
        clf.classify_sites(image, xy, pixel_size_A=PIXEL_A, context=ctx, metal_group=1)
    with pytest.raises(ValueError, match="metal_group=2"):
        clf.classify_sites(image, xy, pixel_size_A=PIXEL_A, context=ctx, sublattice=groups, metal_group=2)


def test_cli_with_a_full_lattice_of_points_uses_the_sublattices(tmp_path, tiny_model, lattice_image, capsys):
    image, truth, _ = lattice_image
    keep = truth["inside"] & ~truth["borderline"]
    xy, is_metal = truth["xy"][keep], truth["metal"][keep]
    np.save(tmp_path / "image.npy", image)
    np.save(tmp_path / "points.npy", xy)
    common = [tmp_path / "image.npy", "--points", tmp_path / "points.npy", "--pixel-size-A", PIXEL_A,
              "--weights", tiny_model, "--device", "cpu", "--host", "WSe2"]
    # The synthetic metal columns are the brighter ones.
    code, stdout, err = _run([*common, "--metal-sublattice", "brighter", "--output", tmp_path / "a.csv"], capsys)
    assert code == 0, err
    assert "metal sublattice from --metal-sublattice (brighter sublattice)" in stdout
    assert _allowed(pd.read_csv(tmp_path / "a.csv")["class"], is_metal)
    code, stdout, err = _run([*common, "--no-sublattice", "--output", tmp_path / "b.csv"], capsys)
    assert code == 0, err
    assert "metal sublattice" not in stdout
    assert not _allowed(pd.read_csv(tmp_path / "b.csv")["class"], is_metal)


def test_cli_refuses_the_restriction_for_points_that_are_no_honeycomb(tmp_path, tiny_model, lattice_image):
    from tdmctx.defects.cli_classify import run_classify

    image, truth, _ = lattice_image
    keep = truth["inside"] & ~truth["borderline"]
    metal_only = truth["xy"][keep & truth["metal"]]
    np.save(tmp_path / "image.npy", image)
    np.save(tmp_path / "points.npy", metal_only)
    with pytest.warns(UserWarning, match="do not look like a honeycomb"):
        result = run_classify(tmp_path / "image.npy", tmp_path / "out.csv", points_path=tmp_path / "points.npy",
                              weights=tiny_model, pixel_size_A=PIXEL_A, device="cpu", metal_brighter=True)
    assert result["metal_rule"] is None and len(result["table"]) == len(metal_only)

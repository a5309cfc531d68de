"""Detector collection angles from an unlabelled image: the Se2/W ratio against simulation.

The ratio of the chalcogen (Se2) to the metal (W) column intensity, both referenced to the
hollow-site level, depends strongly on the detector's inner angle (contrast reversal at low
angles) and is shared by simulation and experiment to 6-14 %. The sublattices come from the
geometry (:func:`~tdmctx.defects.baseline.split_sublattices`) and which one is the metal
from the two channels' ratio (:func:`~tdmctx.defects.baseline.metal_sites_two_channels`),
so :func:`~tdmctx.defects.detector_angles.measured_chalcogen_ratio` needs no labels; medians keep the few percent of
defects out. :func:`~tdmctx.defects.detector_angles.detector_ratio_curve` gives the simulated ratio against (inner, outer)
angles from one abTEM run with a flexible detector, and :func:`~tdmctx.defects.detector_angles.infer_detector` keeps the
angle pairs whose simulated ratio lies within a tolerance of the measured one.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

if TYPE_CHECKING:
    from tdmctx.defects.realdata import FieldData

__all__ = ["measured_chalcogen_ratio", "simulate_ratio_curve", "detector_ratio_curve", "infer_detector"]

_CURVE_FILE = "detector_ratio_curve.csv"
_CHALCOGEN_CLASSES = ("X2", "V1", "V2")


def _hollow_ratio(image: np.ndarray, metal_px: np.ndarray, chalc_px: np.ndarray, radius_px: float) -> float:
    from tdmctx.experimental import column_intensities, hollow_level

    hollow = hollow_level(image, metal_px, chalc_px, radius_px=radius_px)
    metal = np.median(column_intensities(image, metal_px, radius_px=radius_px))
    chalc = np.median(column_intensities(image, chalc_px, radius_px=radius_px))
    return float((chalc - hollow) / (metal - hollow))


def measured_chalcogen_ratio(data: FieldData) -> float:
    """Label-free X2/metal ratio of a field channel, both referenced to the hollow sites.

    Medians over the geometric sublattices (the metal one from the two channels' ratio,
    :attr:`FieldData.metal_site`); no label is read.
    """
    from tdmctx.defects.ratios import COLUMN_RADIUS_A

    return _hollow_ratio(data.image, data.points_px[data.metal_site], data.points_px[~data.metal_site],
                         COLUMN_RADIUS_A / data.pixel_size_A)


def _default_grid() -> list[tuple[float, float]]:
    inner = np.arange(20.0, 151.0, 5.0)
    outer = (60.0, 80.0, 100.0, 120.0, 150.0, 200.0)
    return [(float(i), float(o)) for o in outer for i in inner if o >= i + 15]


def simulate_ratio_curve(
    detectors_mrad: Sequence[tuple[float, float]] | None = None,
    *,
    energy_eV: float = 80e3,
    num_phonon_configs: int = 4,
    seed: int = 0,
    progress: bool = False,
) -> pd.DataFrame:
    """Simulated hollow-referenced X2/metal ratio of pristine WSe2 against detector angles.

    One abTEM multislice run (flexible annular detector, every annulus integrated from it)
    of a pristine 3 x 2 orthogonal WSe2 cell with the study's 80 kV probe and source size
    (:func:`~tdmctx.defects.conditions.get_condition`); the periodic image is resampled to
    0.1 A, tiled 3 x 3 and measured as the experiment (disc means of
    :data:`~tdmctx.defects.ratios.COLUMN_RADIUS_A`, hollow level at the hexagon centres).

    Returns
    -------
    pandas.DataFrame
        Columns ``inner_mrad``, ``outer_mrad``, ``ratio``.
    """
    from tdmctx.defects.acquisition import blur_periodic, fourier_resample
    from tdmctx.defects.catalog import get_system
    from tdmctx.defects.conditions import get_condition
    from tdmctx.defects.ratios import COLUMN_RADIUS_A
    from tdmctx.defects.simulate import MultisliceSettings, simulate_adf
    from tdmctx.defects.structures import Concentrations, build_supercell

    grid = list(detectors_mrad) if detectors_mrad is not None else _default_grid()
    probe = get_condition(f"{energy_eV / 1e3:g}kV-HAADF").probe
    cell = build_supercell(get_system("WSe2:Ti"), (3, 2), Concentrations(0.0, 0.0, 0.0), seed=seed)
    settings = MultisliceSettings(num_phonon_configs=num_phonon_configs,
                                  max_angle_mrad=max(205.0, max(o for _, o in grid) + 5))
    names = {f"d{i}": (float(a), float(b)) for i, (a, b) in enumerate(grid)}
    sim = simulate_adf(cell, energy_eV, probe, names, settings, seed=seed, device="cpu", progress=progress)
    ext = cell.extent_A
    step = 0.1
    shape = (int(round(ext[1] / step)), int(round(ext[0] / step)))
    pix = (ext[0] / shape[1], ext[1] / shape[0])
    metal = cell.labels == "metal"
    chalc = np.isin(cell.labels, _CHALCOGEN_CLASSES)
    # Tile 3 x 3 and measure the centre copy, so that discs and hollow sites never wrap.
    offsets = np.array([(i * ext[0], j * ext[1]) for i in (-1, 0, 1) for j in (-1, 0, 1)])
    pts = (cell.points_A[None] + offsets[:, None] + np.array(ext)).reshape(-1, 2) / np.array(pix)
    tiled_metal, tiled_chalc = np.tile(metal, 9), np.tile(chalc, 9)
    centre = np.zeros(9 * len(metal), bool)
    centre[4 * len(metal):5 * len(metal)] = True  # offsets index 4 is (0, 0)
    rows = []
    for name, (inner, outer) in names.items():
        fine = fourier_resample(np.asarray(sim[name].values, dtype=float), shape)
        fine = blur_periodic(fine, ext, probe.source_size_fwhm_A)
        tiled = np.tile(fine, (3, 3))
        from tdmctx.experimental import column_intensities, hollow_level

        r = COLUMN_RADIUS_A / pix[0]
        hollow = hollow_level(tiled, pts[tiled_metal], pts[tiled_chalc], radius_px=r)
        i_m = np.median(column_intensities(tiled, pts[tiled_metal & centre], radius_px=r))
        i_x = np.median(column_intensities(tiled, pts[tiled_chalc & centre], radius_px=r))
        rows.append({"inner_mrad": inner, "outer_mrad": outer, "ratio": float((i_x - hollow) / (i_m - hollow))})
    return pd.DataFrame(rows)


def detector_ratio_curve(path: str | os.PathLike | None = None, *, recompute: bool = False,
                         progress: bool = False) -> pd.DataFrame:
    """The simulated X2/metal ratio against detector angles, from the shipped table.

    Reads ``detector_ratio_curve.csv`` beside the shipped weights (written by
    :func:`simulate_ratio_curve` through the release recipe); when it is absent, or
    ``recompute`` is set, the curve is simulated (about a minute on one core) and cached.

    Parameters
    ----------
    path
        A CSV with ``inner_mrad``, ``outer_mrad``, ``ratio`` to read instead.
    """
    from tdmctx.data import cache_dir
    from tdmctx.defects.release import default_weights_dir

    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"path={str(path)!r}: no detector ratio table there")
        return pd.read_csv(path)
    for candidate in (default_weights_dir() / _CURVE_FILE, cache_dir("defects", create=False) / _CURVE_FILE):
        if candidate.is_file() and not recompute:
            return pd.read_csv(candidate)
    curve = simulate_ratio_curve(progress=progress)
    target = cache_dir("defects") / _CURVE_FILE
    tmp = target.with_suffix(".csv.tmp")
    curve.to_csv(tmp, index=False)
    os.replace(tmp, target)
    return curve


def infer_detector(ratio: float, curve: pd.DataFrame, *, tolerance: float = 0.10) -> dict[str, Any]:
    """Detector angles consistent with a measured X2/metal ratio.

    Parameters
    ----------
    ratio
        Measured hollow-referenced X2/metal ratio (:func:`measured_chalcogen_ratio`).
    curve
        Simulated ratios (:func:`detector_ratio_curve`): ``inner_mrad``, ``outer_mrad``,
        ``ratio``.
    tolerance
        Relative mismatch accepted, ``|r_sim - r| <= tolerance * r`` (default 10 %: the
        simulation reproduces the X2/metal ratio of the fields to 6-14 %).

    Returns
    -------
    dict
        ``plausible`` (DataFrame of the accepted rows), ``inner_range_mrad`` (min, max
        inner angle accepted, ``(nan, nan)`` when none), ``outer_range_mrad``, ``best``
        (inner, outer) with the smallest mismatch, and ``assumed`` (inner, outer): the
        accepted pair nearest the median accepted (inner, outer), the angles the
        ``"inferred"`` runs use (the best pair when none is accepted).

    Raises
    ------
    ValueError
        If the ratio is not a positive finite number or the table lacks columns.
    """
    if not (np.isfinite(ratio) and ratio > 0):
        raise ValueError(f"ratio={ratio!r} must be a positive finite number")
    missing = {"inner_mrad", "outer_mrad", "ratio"} - set(curve.columns)
    if missing:
        raise ValueError(f"curve lacks column(s) {sorted(missing)}; expected inner_mrad, outer_mrad, ratio")
    if not tolerance > 0:
        raise ValueError(f"tolerance={tolerance!r} must be positive")
    mismatch = np.abs(curve["ratio"].to_numpy() - ratio) / ratio
    ok = mismatch <= tolerance
    best_row = curve.iloc[int(np.argmin(mismatch))]
    best = (float(best_row["inner_mrad"]), float(best_row["outer_mrad"]))
    plausible = curve[ok].assign(mismatch=mismatch[ok])
    if len(plausible) == 0:
        nan = (float("nan"), float("nan"))
        return {"plausible": plausible, "inner_range_mrad": nan, "outer_range_mrad": nan, "best": best,
                "assumed": best}
    med = np.array([plausible["inner_mrad"].median(), plausible["outer_mrad"].median()])
    d = np.hypot(plausible["inner_mrad"] - med[0], plausible["outer_mrad"] - med[1]).to_numpy()
    pick = plausible.iloc[int(np.argmin(d))]
    return {
        "plausible": plausible,
        "inner_range_mrad": (float(plausible["inner_mrad"].min()), float(plausible["inner_mrad"].max())),
        "outer_range_mrad": (float(plausible["outer_mrad"].min()), float(plausible["outer_mrad"].max())),
        "best": best,
        "assumed": (float(pick["inner_mrad"]), float(pick["outer_mrad"])),
    }


# -- the whole evaluation -----------------------------------------------------------------------

"""One unit of dataset work: a system at one beam energy, giving one case per detector.

For a system and an energy the pipeline

1. builds a calibration and a validation cell (every class present) and simulates both
   with abTEM, once, recording every detector of that energy;
2. per detector, calibrates the fast incoherent model on one cell and measures its error
   on the other (a cell it has never seen), both ways;
3. where the error is within ``config.fast_tolerance``, renders ``images_per_case``
   large random fields with the fast model; elsewhere the case keeps abTEM images only
   (the two cells above plus extra cells up to ``config.fallback_cells``);
4. "acquires" every image: source blur, then a distorted raster scan shared by the
   detectors (they record simultaneously), and lists where each column appears.

The result is one :class:`xarray.Dataset` per case (system x condition) with clean
images (expected intensity; dose and read-out noise are drawn later, per patch) and a
site table, ready for :mod:`tdmctx.defects.store`.
"""

from __future__ import annotations

import json
import time
import zlib

import numpy as np
import xarray as xr
from scipy.fft import next_fast_len

from tdmctx.defects.acquisition import (
    ScanSettings,
    apparent_positions_px,
    blur_periodic,
    fourier_resample,
    sample_positions,
    scan_positions_A,
)
from tdmctx.defects.catalog import get_system
from tdmctx.defects.conditions import ImagingCondition, get_condition
from tdmctx.defects.config import BuildConfig
from tdmctx.defects.fastmodel import FastModel, calibrate, compare
from tdmctx.defects.simulate import simulate_adf
from tdmctx.defects.structures import Supercell, build_supercell

__all__ = ["case_id", "run_seed", "simulate_run", "FINE_PIXEL_A"]

#: Pixel of the intermediate periodic image that the scan samples, Angstrom.
FINE_PIXEL_A = 0.08


def case_id(system: str, condition: str) -> str:
    """File-system safe identifier of a case: ``"WSe2-Ti_80kV-HAADF"``."""
    return f"{system.replace(':', '-')}_{condition}"


def run_seed(seed: int, system: str, energy_eV: float) -> np.random.SeedSequence:
    """Seed of one run, stable across processes and independent of the build order."""
    return np.random.SeedSequence([int(seed), zlib.crc32(system.encode()), int(energy_eV)])


def _fine_shape(extent_A: tuple[float, float]) -> tuple[int, int]:
    return tuple(next_fast_len(int(np.ceil(e / FINE_PIXEL_A))) for e in extent_A[::-1])  # type: ignore[return-value]


def _min_counts(cell_repeats: tuple[int, int]) -> dict[str, int]:
    # Two of each defect when the cell has room (8+ chalcogen columns), else one.
    n_chalcogen = 2 * cell_repeats[0] * cell_repeats[1]
    k = 2 if n_chalcogen >= 8 else 1
    return {"dopant": k, "V1": k, "V2": k}


def _acquire(
    fine: dict[str, np.ndarray], cell: Supercell, scan: ScanSettings, source_fwhm_A: float, rng: np.random.Generator
) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """Blur, scan (shared distortion) and locate the columns of one structure."""
    extent = cell.extent_A
    positions, offsets = scan_positions_A(extent, scan, rng)
    images = {}
    for det, image in fine.items():
        images[det] = sample_positions(blur_periodic(image, extent, source_fwhm_A), extent, positions).astype(np.float32)
    xy = apparent_positions_px(cell.points_A, offsets, scan)
    sites = {
        "x_px": xy[:, 0].astype(np.float32),
        "y_px": xy[:, 1].astype(np.float32),
        "x_A": cell.points_A[:, 0].astype(np.float32),
        "y_A": cell.points_A[:, 1].astype(np.float32),
        "label": cell.labels.astype(str),
    }
    return images, sites


def _case_dataset(
    images: list[np.ndarray],
    sites: list[dict[str, np.ndarray]],
    structures: list[str],
    scan: ScanSettings,
    attrs: dict,
    validation: tuple[xr.DataArray, np.ndarray],
) -> xr.Dataset:
    stack = np.stack(images)
    n, rows, cols = stack.shape
    m, p = int(scan.margin_px), scan.pixel_size_A
    site_image = np.concatenate([np.full(len(s["label"]), i, dtype=np.int32) for i, s in enumerate(sites)])
    table = {k: np.concatenate([s[k] for s in sites]) for k in sites[0]}
    ref, fast = validation
    ds = xr.Dataset(
        {
            "intensity": (("image", "y", "x"), stack, {"units": "fraction of incident beam", "long_name": "clean ADF image"}),
            "structure": (("image",), np.array(structures, dtype=str)),
            "site_image": (("site",), site_image),
            "site_x_px": (("site",), table["x_px"], {"units": "px", "long_name": "apparent column x in the image"}),
            "site_y_px": (("site",), table["y_px"], {"units": "px"}),
            "site_x_A": (("site",), table["x_A"], {"units": "Angstrom", "long_name": "column x in the cell"}),
            "site_y_A": (("site",), table["y_A"], {"units": "Angstrom"}),
            "site_label": (("site",), table["label"]),
            "validation_reference": (("vy", "vx"), ref.values.astype(np.float32)),
            "validation_fast": (("vy", "vx"), fast.astype(np.float32)),
        },
        coords={
            "y": (np.arange(rows) - m) * p,
            "x": (np.arange(cols) - m) * p,
            "vy": ref["y"].values,
            "vx": ref["x"].values,
        },
        attrs=attrs,
    )
    return ds


def simulate_run(
    system_name: str,
    energy_eV: float,
    config: BuildConfig,
    *,
    device: str | None = None,
    progress: bool = False,
) -> dict[str, xr.Dataset]:
    """Simulate every case of one system at one energy.

    Parameters
    ----------
    system_name
        Catalog name, e.g. ``"WSe2:Ti"``.
    energy_eV
        Beam energy, eV; the cases are the build's conditions at this energy.
    config
        Build settings.
    device
        ``None`` (GPU when available), ``"cpu"`` or ``"cuda"``; used by abTEM and the
        fast renderer.
    progress
        Progress bars of the abTEM runs.

    Returns
    -------
    dict
        ``{case_id: Dataset}`` for each condition at this energy.
    """
    system = get_system(system_name)
    conditions: list[ImagingCondition] = [
        get_condition(n) for n in config.condition_names() if get_condition(n).energy_eV == energy_eV
    ]
    if not conditions:
        raise ValueError(f"energy_eV={energy_eV!r} matches none of the build's conditions {config.condition_names()}")
    probe = conditions[0].probe
    detectors = {c.detector: (c.detector_inner_mrad, c.detector_outer_mrad) for c in conditions}
    rng = np.random.default_rng(run_seed(config.seed, system_name, energy_eV))
    ms = config.multislice
    mins = _min_counts(config.calibration_repeats)

    def abtem_cell() -> tuple[Supercell, xr.Dataset]:
        cell = build_supercell(system, config.calibration_repeats, config.concentrations, min_counts=mins, seed=rng)
        sim = simulate_adf(cell, energy_eV, probe, detectors, ms, engine=config.engine, seed=rng, device=device, progress=progress)
        return cell, sim

    t0 = time.perf_counter()
    cells = [abtem_cell(), abtem_cell()]
    (cal, cal_sim), (val, val_sim) = cells
    models: dict[str, FastModel] = {}
    metrics: dict[str, dict[str, float]] = {}
    validation: dict[str, tuple[xr.DataArray, np.ndarray]] = {}
    fs = ms.focal_spread_samples
    for det in detectors:
        # Two-fold cross-validation: calibrate on one cell, test on the other, both ways;
        # the average halves the noise of the decision. The model kept is the first fold's.
        folds = []
        for (fit_cell, fit_sim), (test_cell, test_sim) in ((cells[0], cells[1]), (cells[1], cells[0])):
            model = calibrate(fit_sim[det], fit_cell.points_A, fit_cell.labels, fit_cell.extent_A, energy_eV, probe, focal_spread_samples=fs)
            fast = model.render(test_cell.points_A, test_cell.labels, test_cell.extent_A, test_sim[det].shape, focal_spread_samples=fs, device=device)
            noise = test_sim[f"{det}_phonon_noise"].values if f"{det}_phonon_noise" in test_sim else None
            folds.append((model, fast, compare(test_sim[det], fast, test_cell.points_A, test_cell.labels, test_cell.extent_A, reference_noise=noise)))
        models[det] = folds[0][0]
        metrics[det] = {k: float(np.mean([f[2][k] for f in folds])) for k in folds[0][2]}
        validation[det] = (val_sim[det], folds[0][1])
    # The decision uses the model's error beyond the reference's own phonon noise when the
    # run can estimate that noise (>= 2 independent groups of configurations).
    use_fast = {det: metrics[det].get("column_excess", metrics[det]["column_rmse"]) <= config.fast_tolerance for det in detectors}
    if not all(use_fast.values()):
        cells += [abtem_cell() for _ in range(config.fallback_cells - 2)]
    abtem_wall = time.perf_counter() - t0

    per_det_images: dict[str, list[np.ndarray]] = {d: [] for d in detectors}
    per_det_sites: dict[str, list[dict]] = {d: [] for d in detectors}
    per_det_structs: dict[str, list[str]] = {d: [] for d in detectors}
    run_tag = case_id(system_name, f"{energy_eV / 1e3:g}kV")
    t1 = time.perf_counter()
    fast_dets = [d for d in detectors if use_fast[d]]
    if fast_dets:
        for k in range(config.images_per_case):
            field = build_supercell(system, config.field_repeats, config.concentrations, seed=rng)
            shape = _fine_shape(field.extent_A)
            fine = {
                d: models[d].render(field.points_A, field.labels, field.extent_A, shape, focal_spread_samples=ms.focal_spread_samples, device=device)
                for d in fast_dets
            }
            images, sites = _acquire(fine, field, config.scan, probe.source_size_fwhm_A, rng)
            for d in fast_dets:
                per_det_images[d].append(images[d])
                per_det_sites[d].append(sites)
                per_det_structs[d].append(f"{run_tag}-field{k}")
    slow_dets = [d for d in detectors if not use_fast[d]]
    if slow_dets:
        for k, (cell, sim) in enumerate(cells):
            shape = _fine_shape(cell.extent_A)
            fine = {d: fourier_resample(sim[d].values, shape) for d in slow_dets}
            images, sites = _acquire(fine, cell, config.scan, probe.source_size_fwhm_A, rng)
            for d in slow_dets:
                per_det_images[d].append(images[d])
                per_det_sites[d].append(sites)
                per_det_structs[d].append(f"{run_tag}-abtem{k}")
    render_wall = time.perf_counter() - t1

    out = {}
    for cond in conditions:
        det = cond.detector
        context = cond.context(system)
        attrs = {
            "case_id": case_id(system_name, cond.name),
            "system": system_name,
            "condition": cond.name,
            "detector": det,
            **{k: ("" if v is None else v) for k, v in context.to_dict().items()},
            "engine": "fast" if use_fast[det] else config.engine,
            "fast_tolerance": config.fast_tolerance,
            **{f"fast_{k}": v for k, v in metrics[det].items()},
            "fast_fit_nrmse": models[det].fit_nrmse,
            "column_intensity_A2": json.dumps(models[det].column_intensity()),
            "pixel_size_A": config.scan.pixel_size_A,
            "abtem_engine": config.engine,
            "abtem_wall_s": abtem_wall,
            "abtem_runs": len(cells),
            "render_wall_s": render_wall,
        }
        out[attrs["case_id"]] = _case_dataset(
            per_det_images[det], per_det_sites[det], per_det_structs[det], config.scan, attrs, validation[det]
        )
    return out

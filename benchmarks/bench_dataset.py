"""Dataset benchmark: abTEM runs per hour, fast-engine and PRISM speed-up and error, patches/s.

Everything is measured in one run, on one machine, and printed as one table::

    python benchmarks/bench_dataset.py                 # 80 kV, WSe2:Ti, 3 x 2 cells
    python benchmarks/bench_dataset.py --energies 60 80 200 --configs 8

For each energy, the same held-out cell is simulated with abTEM multislice (the
reference), abTEM PRISM (interpolation 1 and 2) and the fast incoherent model calibrated
on another cell; each engine's speed-up is its reference time over its own time on that
cell, and its error is measured per detector against the multislice image
(:func:`tdmctx.defects.fastmodel.compare`). A second multislice run of the same cell with
other phonon seeds gives the frozen-phonon noise floor of the reference itself. The patch
loader's throughput is measured on a small store built on the spot.
"""

from __future__ import annotations

import argparse
import os
import platform
import tempfile
import time

import numpy as np
import pandas as pd
import torch

from tdmctx.defects.catalog import get_system
from tdmctx.defects.conditions import DETECTORS_MRAD, get_condition
from tdmctx.defects.config import FAST_TOLERANCE, BuildConfig
from tdmctx.defects.fastmodel import calibrate, compare
from tdmctx.defects.patches import PatchSampler
from tdmctx.defects.simulate import MultisliceSettings, simulate_adf
from tdmctx.defects.store import build_dataset
from tdmctx.defects.structures import ENRICHED_CONCENTRATIONS, build_supercell


def engine_rows(system: str, energy_eV: float, repeats: tuple[int, int], configs: int, seed: int) -> list[dict]:
    """Time and score every engine on one held-out cell at one energy."""
    sysm = get_system(system)
    probe = get_condition(f"{energy_eV / 1e3:g}kV-HAADF").probe
    mins = {"dopant": 2, "V1": 2, "V2": 2}
    rng = np.random.default_rng(seed)
    cal = build_supercell(sysm, repeats, ENRICHED_CONCENTRATIONS, min_counts=mins, seed=rng)
    val = build_supercell(sysm, repeats, ENRICHED_CONCENTRATIONS, min_counts=mins, seed=rng)
    settings = MultisliceSettings(num_phonon_configs=configs)
    run = dict(energy_eV=energy_eV, probe=probe, detectors_mrad=DETECTORS_MRAD, settings=settings, progress=False)

    ref = simulate_adf(val, **run, seed=1)
    noise = simulate_adf(val, **run, seed=2)
    prism1 = simulate_adf(val, **run, engine="prism", seed=1)
    prism2 = simulate_adf(val, **run, engine="prism", prism_interpolation=2, seed=1)
    calib = simulate_adf(cal, **run, engine="prism", seed=3)
    t_ms = ref.attrs["wall_s"]

    rows = []
    for det in DETECTORS_MRAD:
        model = calibrate(calib[det], cal.points_A, cal.labels, cal.extent_A, energy_eV, probe)
        start = time.perf_counter()
        fast = model.render(val.points_A, val.labels, val.extent_A, ref[det].shape)
        t_fast = time.perf_counter() - start
        candidates = {
            "multislice (other phonon seeds)": (noise[det].values, noise.attrs["wall_s"]),
            "PRISM f=1": (prism1[det].values, prism1.attrs["wall_s"]),
            "PRISM f=2": (prism2[det].values, prism2.attrs["wall_s"]),
            "fast incoherent": (fast, t_fast),
        }
        noise_image = ref[f"{det}_phonon_noise"].values
        for name, (image, seconds) in candidates.items():
            err = compare(ref[det], image, val.points_A, val.labels, val.extent_A, reference_noise=noise_image)
            rows.append(
                {
                    "energy_kV": energy_eV / 1e3,
                    "detector": det,
                    "engine": name,
                    "seconds": seconds,
                    "speed_up": t_ms / seconds,
                    "image_nrmse": err["image_nrmse"],
                    "column_rmse": err["column_rmse"],
                    "reference_noise": err["column_noise"],
                    "beyond_noise": err["column_excess"],
                    "within_tolerance": err["column_excess"] <= FAST_TOLERANCE,
                }
            )
    rows.append(
        {
            "energy_kV": energy_eV / 1e3,
            "detector": "both",
            "engine": "multislice (reference)",
            "seconds": t_ms,
            "speed_up": 1.0,
            "runs_per_hour": 3600.0 / t_ms,
        }
    )
    return rows


def patch_rate(batches: int, batch_size: int) -> tuple[float, int]:
    """Patches per second served from a tiny store built on the spot."""
    config = BuildConfig(
        systems=("WSe2:Ti",),
        conditions=("80kV-HAADF",),
        images_per_case=4,
        field_repeats=(10, 6),
        calibration_repeats=(3, 2),
        multislice=MultisliceSettings(num_phonon_configs=2),
    )
    with tempfile.TemporaryDirectory() as folder:
        ds = build_dataset(os.path.join(folder, "bench"), config=config, scheduler="synchronous", progress=False).load()
    sampler = PatchSampler(ds, batch_size=batch_size, batches_per_epoch=batches, seed=0)
    next(iter(PatchSampler(ds, batch_size=8, batches_per_epoch=1)))  # warm-up
    start = time.perf_counter()
    n = sum(len(b["label"]) for b in sampler)
    return n / (time.perf_counter() - start), n


def main(argv: list[str] | None = None) -> pd.DataFrame:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--system", default="WSe2:Ti")
    parser.add_argument("--energies", type=float, nargs="+", default=[80.0], help="beam energies, kV")
    parser.add_argument("--repeats", type=int, nargs=2, default=[3, 2], help="orthogonal cells (nx ny)")
    parser.add_argument("--configs", type=int, default=4, help="frozen-phonon configurations (even)")
    parser.add_argument("--batches", type=int, default=20)
    parser.add_argument("--batch-size", type=int, default=512)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if args.configs < 4 or args.configs % 2:
        parser.error(f"--configs {args.configs}: need an even number >= 4 to estimate the reference's phonon noise")

    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, torch threads {torch.get_num_threads()}")
    rows = []
    for kv in args.energies:
        rows += engine_rows(args.system, kv * 1e3, tuple(args.repeats), args.configs, args.seed)
    table = pd.DataFrame(rows)
    pd.set_option("display.width", 160)
    print(f"\n{args.system}, {args.repeats[0]} x {args.repeats[1]} cells, {args.configs} antithetic phonon configurations")
    print("errors against the multislice reference of the same cell (column errors: fraction of the metal-column intensity);")
    print(f"reference_noise: its own frozen-phonon noise; beyond_noise: error in excess of it; tolerance {FAST_TOLERANCE:.0%}")
    print(table.to_string(index=False, float_format=lambda v: f"{v:.4g}"))
    rate, n = patch_rate(args.batches, args.batch_size)
    print(f"\npatch loader: {rate:,.0f} patches/s ({n} patches, batch {args.batch_size}, device cpu)")
    return table


if __name__ == "__main__":
    main()

"""Speed of tdmctx's torch ptychography engine against py4DSTEM at equal work.

Both methods reconstruct the same simulated dataset with the same settings: object, probe
and positions refined, the same minibatch size, the same number of full passes, single
precision (complex64), and the same CPU thread count (set before numpy and torch load). Each
method runs in its own child process so that its peak memory is its own. Printed per method:
seconds per full pass with position refinement (the mean over those passes), the ratio, the
peak memory (resident set on the CPU; ``torch.cuda.max_memory_allocated`` on CUDA), and the
time to reach a set RMS position error (translation removed).

Examples::

    python benchmarks/bench_ptycho.py                      # small default, a few minutes on 2 CPU cores
    python benchmarks/bench_ptycho.py --scan 64 --detector 96 --iterations 20
    python benchmarks/bench_ptycho.py --device cuda --scan 64 --detector 96 --no-py4dstem

py4DSTEM runs on the CPU, or on the GPU through cupy when ``--device cuda`` and cupy is present.
``--data abtem`` simulates MoS2 with abTEM instead of the fast synthetic object (slow on a CPU).
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import platform
import queue as queue_module
import sys
import time


def _configure_threads(threads: int) -> None:
    # Must run before numpy / torch are imported in the child.
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "NUMEXPR_NUM_THREADS"):
        os.environ[var] = str(threads)


def _dataset(args):
    import numpy as np

    from tdmctx.ptycho.scan import RasterScan, mixed_error

    if args.data == "abtem":
        from tdmctx.ptycho.simulate import centred_scan, mos2_cell, simulate_4dstem

        # A cell large enough for the scan; the detector size follows from max_angle and the cell.
        repeats = (max(5, int(np.ceil(args.scan * args.step / 3.19)) + 3),
                   max(3, int(np.ceil(args.scan * args.step / 5.525)) + 2))
        atoms = mos2_cell(repeats)
        scan = centred_scan(atoms, (args.scan, args.scan), args.step)
        data = simulate_4dstem(atoms, scan=scan, error=mixed_error(args.error, seed=args.seed),
                               electrons_per_pattern=args.dose, seed=args.seed, progress=False)
        return data
    from tdmctx.ptycho.detector import object_pixel_size_A
    from tdmctx.ptycho.simulate import simulate_synthetic

    margin = args.detector // 2 * object_pixel_size_A(80e3, args.detector, args.sampling) + 1.0
    scan = RasterScan((args.scan, args.scan), args.step, origin_A=(margin, margin))
    true = mixed_error(args.error, seed=args.seed).apply(scan)
    return simulate_synthetic(scan, true, n_detector=args.detector, angular_sampling_mrad=args.sampling,
                              electrons_per_pattern=args.dose, peak_phase_rad=1.0, seed=args.seed)


def _child(method: str, args_dict: dict, queue) -> None:
    """Run one method in a fresh process and report its log and peak memory."""
    _configure_threads(args_dict["threads"])
    import resource

    import numpy as np
    import torch

    torch.set_num_threads(args_dict["threads"])
    args = argparse.Namespace(**args_dict)
    data = _dataset(args)
    true = data.extras["true_positions_A"]
    common = dict(iterations=args.iterations, position_start=args.position_start, true_positions_A=true,
                  batch_size=args.batch_size, seed=args.seed, progress=False)
    cuda = args.device.startswith("cuda")
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    t0 = time.perf_counter()
    if method == "tdmctx":
        from tdmctx.ptycho.engine import reconstruct

        result = reconstruct(data, device=args.device, **common)
        if cuda:
            torch.cuda.synchronize()
    else:
        from tdmctx.ptycho.baselines import reconstruct_py4dstem

        result = reconstruct_py4dstem(data, device="gpu" if cuda else "cpu", **common)
    wall = time.perf_counter() - t0
    if cuda and method == "tdmctx":
        peak_mb = torch.cuda.max_memory_allocated() / 2**20
        memory_kind = "CUDA max allocated"
    elif cuda:
        import cupy

        peak_mb = cupy.get_default_memory_pool().total_bytes() / 2**20
        memory_kind = "cupy pool"
    else:
        peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        memory_kind = f"peak RSS (process; {rss0 / 1024:.0f} MB before the run)"
    times = np.asarray(result.log["time_s"])
    per_pass = np.diff(np.concatenate([[0.0], times]))
    queue.put({
        "method": method,
        "wall_s": wall,
        "s_per_pass_positions": float(np.mean(per_pass[args.position_start:])),
        "s_per_pass_fixed": float(np.mean(per_pass[: args.position_start])) if args.position_start else float("nan"),
        "time_s": times.tolist(),
        "rms_A": np.asarray(result.log["rms_position_error_A"]).tolist(),
        "peak_mb": peak_mb,
        "memory_kind": memory_kind,
        "shape": list(data.datacube.shape),
        "start_rms_A": float(np.sqrt(np.mean(np.sum(
            ((data.nominal_positions_A - true) - (data.nominal_positions_A - true).reshape(-1, 2).mean(0)) ** 2,
            axis=-1)))),
    })


def _time_to(record: dict, target_A: float) -> float:
    for t, rms in zip(record["time_s"], record["rms_A"]):
        if rms <= target_A:
            return t
    return float("nan")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scan", type=int, default=24, help="positions per scan side (default 24)")
    parser.add_argument("--detector", type=int, default=64, help="detector pixels per side (default 64)")
    parser.add_argument("--step", type=float, default=0.5, help="scan step, Angstrom")
    parser.add_argument("--sampling", type=float, default=1.6, help="detector sampling, mrad (synthetic data)")
    parser.add_argument("--error", type=float, default=0.5, help="mixed scan error strength, in scan steps")
    parser.add_argument("--dose", type=float, default=2.5e4, help="electrons per pattern")
    parser.add_argument("--iterations", type=int, default=12, help="full passes (default 12)")
    parser.add_argument("--position-start", type=int, default=2, help="passes before position refinement")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--target-fraction", type=float, default=0.75,
                        help="time to reach this fraction of the starting RMS position error (default 0.75)")
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--threads", type=int, default=os.cpu_count(), help="CPU threads for both methods")
    parser.add_argument("--data", choices=("synthetic", "abtem"), default="synthetic")
    parser.add_argument("--no-py4dstem", action="store_true", help="time tdmctx only")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", help="also write the results to this JSON file")
    args = parser.parse_args(argv)
    if args.iterations <= args.position_start:
        parser.error("--iterations must exceed --position-start (passes with position refinement are timed)")

    methods = ["tdmctx"] + ([] if args.no_py4dstem else ["py4dstem"])
    ctx = mp.get_context("spawn")
    records = {}
    for method in methods:
        queue = ctx.Queue()
        proc = ctx.Process(target=_child, args=(method, vars(args), queue))
        proc.start()
        while method not in records:
            try:
                records[method] = queue.get(timeout=5)
            except queue_module.Empty:
                if not proc.is_alive():  # a crashed child would otherwise leave us waiting forever
                    raise SystemExit(f"the {method} run exited with code {proc.exitcode}; see its traceback above")
        proc.join()

    first = records["tdmctx"]
    target = args.target_fraction * first["start_rms_A"]
    print(f"# bench_ptycho  python {platform.python_version()}  {platform.processor() or platform.machine()}")
    print(f"data: {args.data}, datacube {tuple(first['shape'])}, step {args.step} A, "
          f"{args.dose:g} e/pattern, start RMS error {first['start_rms_A']:.4f} A")
    print(f"work: {args.iterations} full passes (positions refined from pass {args.position_start + 1}), "
          f"batch {args.batch_size}, object + probe + positions, complex64, {args.threads} CPU thread(s), "
          f"device {args.device}")
    print(f"{'method':10s} {'s/pass (pos)':>13s} {'s/pass (fixed)':>15s} {'peak MB':>9s} "
          f"{'final RMS A':>12s} {'t to ' + format(target, '.3f') + ' A':>14s}")
    for method, rec in records.items():
        print(f"{method:10s} {rec['s_per_pass_positions']:13.4f} {rec['s_per_pass_fixed']:15.4f} "
              f"{rec['peak_mb']:9.0f} {rec['rms_A'][-1]:12.4f} {_time_to(rec, target):14.2f}")
    if "py4dstem" in records:
        ratio = records["py4dstem"]["s_per_pass_positions"] / first["s_per_pass_positions"]
        print(f"speed-up per pass with position refinement (py4DSTEM / tdmctx): {ratio:.2f}x")
        fixed = records["py4dstem"]["s_per_pass_fixed"] / first["s_per_pass_fixed"]
        print(f"speed-up per pass with fixed positions: {fixed:.2f}x")
    print("memory: " + "; ".join(f"{m}: {r['memory_kind']}" for m, r in records.items()))
    if args.json:
        with open(args.json, "w") as fh:
            json.dump({"args": vars(args), "records": records, "target_A": target}, fh, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())

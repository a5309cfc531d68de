"""``tdmctx ptycho reconstruct``: reconstruct a 4D-STEM file with our engine or py4DSTEM.

::

    tdmctx ptycho reconstruct INPUT --method gd|py4dstem|icgd [--constraint NAME ...]
        [--iterations N] [--position-start N] [--device cpu|cuda] --output OUT.npz

``INPUT`` is an ``.npz`` or HDF5 file in the format of :mod:`tdmctx.ptycho.io`, an EMD 1.0
(py4DSTEM) file, or an EMPAD ``.xml``/``.raw`` pair (:mod:`tdmctx.ptycho.readers`); what a
detector file does not record is given with ``--energy-kV``, ``--semiangle-mrad``,
``--sampling-mrad`` and ``--step-A``. Raw detector data are preprocessed with ``--prepare``
(implied by ``--dark``, ``--gain`` and ``--bin``): dark and gain, counts to electrons, the
read-noise threshold, centring on the bright-field disk, and the detector rotation and
defocus where the file has none (:func:`tdmctx.ptycho.prepare.prepare_dataset`).
``--method icgd`` runs the staged iCGD protocol (:mod:`tdmctx.ptycho.icgd`: two cycles of
80 passes in all by default, scaled to ``--iterations`` when given), resumable with
``--checkpoint``. The output
(``.npz`` or HDF5, written atomically) holds ``positions_A``, ``object``,
``object_pixel_size_A``, ``probe`` and the per-iteration log (``log_*`` keys). When the input
carries ``true_positions_A`` (simulated files), the log also has the RMS position error.

The foundation's :mod:`tdmctx.cli` calls :func:`register` to add the sub-command; this module
also runs alone: ``python -m tdmctx.ptycho.cli reconstruct ...``.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

import numpy as np

__all__ = ["register", "run_reconstruct", "main"]


def register(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Add ``ptycho`` (with its ``reconstruct`` sub-command) to a parent parser's subparsers."""
    ptycho = subparsers.add_parser("ptycho", help="electron ptychography with scan-position correction")
    commands = ptycho.add_subparsers(dest="ptycho_command", required=True)
    rec = commands.add_parser("reconstruct", help="reconstruct object, probe and positions from a 4D-STEM file")
    rec.add_argument("input", help="input .npz / .h5 file (see tdmctx.ptycho.io for the keys)")
    rec.add_argument("--method", choices=("gd", "py4dstem", "icgd"), default="gd",
                     help="tdmctx's torch gradient descent (gd), py4DSTEM's single-slice ptychography, or the "
                          "staged iCGD protocol (icgd)")
    rec.add_argument("--constraint", action="append", default=[], metavar="NAME",
                     help="project every position step with this constraint (repeatable, applied in order): "
                          "affine, line, column, lowpass, highpass, no_translation. With py4dstem only "
                          "'affine' exists (its global_affine_transformation).")
    rec.add_argument("--iterations", type=int, default=None,
                     help="full passes over the data (default 30; icgd: its schedule, 80 passes in two cycles)")
    rec.add_argument("--cycles", type=int, default=2, help="icgd: coarse-to-fine cycles (default 2)")
    rec.add_argument("--position-start", type=int, default=5,
                     help="passes with positions fixed before position refinement starts (default 5)")
    rec.add_argument("--no-positions", action="store_true", help="keep the positions fixed (object and probe only)")
    rec.add_argument("--batch-size", type=int, default=64, help="positions per minibatch (default 64)")
    rec.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    rec.add_argument("--seed", type=int, default=0, help="seed of the minibatch order")
    rec.add_argument("--output", required=True, help="output .npz / .h5 file")
    rec.add_argument("--checkpoint", default=None, help="icgd: checkpoint file, written every pass; resumes when present")
    rec.add_argument("--energy-kV", type=float, default=None, help="beam energy, kV (detector files record none)")
    rec.add_argument("--semiangle-mrad", type=float, default=None, help="probe convergence semi-angle, mrad")
    rec.add_argument("--sampling-mrad", type=float, default=None, help="detector pixel size, mrad")
    rec.add_argument("--step-A", type=float, default=None, help="scan step, Angstrom")
    rec.add_argument("--defocus-A", type=float, default=None, help="probe defocus, Angstrom (abTEM sign: positive = underfocus)")
    prep = rec.add_argument_group("preprocessing of raw detector data")
    prep.add_argument("--prepare", action="store_true",
                      help="preprocess: dark/gain, counts to electrons, threshold, centring, rotation and defocus "
                           "where the file has none")
    prep.add_argument("--dark", default=None, help="dark reference, .npy (k0, k1) in counts (implies --prepare)")
    prep.add_argument("--gain", default=None, help="flat-field gain map, .npy (k0, k1) (implies --prepare)")
    prep.add_argument("--electrons-per-count", type=float, default=None,
                      help="detector gain, electrons per count (default: the file's, else 1)")
    prep.add_argument("--threshold-e", type=float, default=0.5,
                      help="pixels below this many electrons are zeroed, read noise (default 0.5; 0 keeps all)")
    prep.add_argument("--bin", type=int, default=1, help="sum BIN x BIN detector pixels (implies --prepare)")
    prep.add_argument("--no-centre", action="store_true", help="do not centre the patterns on the bright-field disk")
    prep.add_argument("--estimate-rotation", action="store_true",
                      help="estimate the detector rotation from the centre of mass even if the file records one")
    prep.add_argument("--estimate-defocus", action="store_true",
                      help="estimate the defocus from parallax even if the file or --defocus-A gives one")
    rec.add_argument("--quiet", action="store_true", help="no progress bar")
    rec.set_defaults(handler=run_reconstruct)
    return ptycho


def _hook(names: Sequence[str]):
    """One callable for the position hook from the ``--constraint`` names (applied in order)."""
    if not names:
        return None
    from tdmctx.ptycho import constraints

    for name in names:
        if name not in constraints.CONSTRAINT_NAMES:
            known = ", ".join(constraints.CONSTRAINT_NAMES)
            raise SystemExit(f"--constraint {name!r} is not known; choose from {known}")
    if len(names) == 1:
        return constraints.get_constraint(names[0])
    return constraints.Chain([constraints.get_constraint(n) for n in names])


def run_reconstruct(args: argparse.Namespace) -> int:
    """Handler of ``tdmctx ptycho reconstruct``; returns the exit status."""
    from tdmctx.ptycho.readers import read_4dstem

    if args.iterations is not None and args.iterations < 1:
        raise SystemExit(f"--iterations {args.iterations} must be >= 1")
    if args.cycles < 1:
        raise SystemExit(f"--cycles {args.cycles} must be >= 1")
    # The command line takes kV, as people type it; the package works in eV.
    energy_eV = None if args.energy_kV is None else args.energy_kV * 1e3
    try:
        dataset = read_4dstem(args.input, energy_eV=energy_eV, semiangle_mrad=args.semiangle_mrad,
                              angular_sampling_mrad=args.sampling_mrad, step_A=args.step_A, defocus_A=args.defocus_A)
    except (ValueError, FileNotFoundError) as exc:
        raise SystemExit(f"error: {exc}") from None
    if args.prepare or args.dark or args.gain or args.bin != 1:
        dataset = _prepare(dataset, args)
    truth = dataset.extras.get("true_positions_A")
    if truth is not None and np.shape(truth) != dataset.nominal_positions_A.shape:
        truth = None
    common = dict(iterations=args.iterations or 30, position_start=args.position_start,
                  refine_positions=not args.no_positions, true_positions_A=truth,
                  batch_size=args.batch_size, seed=args.seed, progress=not args.quiet)
    if args.method == "gd":
        from tdmctx.ptycho.engine import reconstruct

        result = reconstruct(dataset, position_step=_hook(args.constraint), device=args.device, **common)
    elif args.method == "icgd":
        result = _run_icgd(dataset, truth, args)
    else:
        from tdmctx.ptycho.baselines import reconstruct_py4dstem

        unsupported = [c for c in args.constraint if c != "affine"]
        if unsupported:
            raise SystemExit(f"--method py4dstem supports only --constraint affine, got {unsupported}")
        result = reconstruct_py4dstem(dataset, global_affine_transformation="affine" in args.constraint,
                                      device=args.device, **common)
    path = result.save(args.output)
    log = result.log
    summary = f"{args.method}: {len(log['iteration'])} passes, data error {log['data_error'][-1]:.4g}"
    if "rms_position_error_A" in log:
        summary += f", RMS position error {log['rms_position_error_A'][-1]:.4f} A (translation removed)"
    print(f"{summary}; wrote {path}")
    return 0


def _run_icgd(dataset, truth, args: argparse.Namespace):
    import json

    from tdmctx.ptycho.engine import GDPtychography
    from tdmctx.ptycho.icgd import default_schedule, run_icgd

    if args.constraint:
        raise SystemExit("--method icgd chooses its constraints stage by stage; drop --constraint")
    schedule = default_schedule(cycles=args.cycles)
    # --iterations scales the schedule: its total pass budget becomes about that many passes.
    scale = 1.0 if args.iterations is None else args.iterations / sum(stage.max_iterations for stage in schedule)
    engine = GDPtychography(dataset, true_positions_A=truth, batch_size=args.batch_size, seed=args.seed,
                            device=args.device)
    stages = run_icgd(engine, default_schedule(scale, cycles=args.cycles), checkpoint=args.checkpoint, progress=not args.quiet)
    result = engine.result()
    result.method = "icgd"
    result.info["icgd_stages"] = json.dumps(stages.stages)
    return result


def _load_map(path: str | None, name: str, shape: tuple[int, int]) -> np.ndarray | None:
    if path is None:
        return None
    try:
        values = np.load(path)
    except (OSError, ValueError) as exc:
        raise SystemExit(f"error: --{name} {path}: not a readable .npy file ({exc})") from None
    if values.shape != shape:
        raise SystemExit(f"error: --{name} {path} has shape {values.shape}; the detector is {shape}")
    return values


def _prepare(dataset, args: argparse.Namespace):
    from tdmctx.ptycho.prepare import prepare_dataset

    try:
        prepared, report = prepare_dataset(
            dataset,
            dark=_load_map(args.dark, "dark", dataset.detector_shape),
            gain=_load_map(args.gain, "gain", dataset.detector_shape),
            electrons_per_count=args.electrons_per_count,
            threshold_e=args.threshold_e,
            centre=not args.no_centre,
            rotation="estimate" if args.estimate_rotation else "keep",
            defocus="estimate" if args.estimate_defocus else "keep",
            bin_factor=args.bin,
        )
    except ValueError as exc:
        raise SystemExit(f"error: preprocessing failed: {exc}") from None
    if not args.quiet:
        print(report.summary())
    return prepared


def main(argv: Sequence[str] | None = None) -> int:
    """Stand-alone entry point: ``python -m tdmctx.ptycho.cli reconstruct ...``."""
    parser = argparse.ArgumentParser(prog="tdmctx")
    register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return args.handler(args)


if __name__ == "__main__":
    sys.exit(main())

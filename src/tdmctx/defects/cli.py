"""``tdmctx dataset``: build, resume and inspect the simulated defect dataset."""

from __future__ import annotations

import argparse

__all__ = ["register"]


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``tdmctx dataset build|export|info`` to the command line."""
    parser = subparsers.add_parser("dataset", help="build or inspect the simulated TMD defect dataset")
    sub = parser.add_subparsers(dest="dataset_command", required=True)

    build = sub.add_parser("build", help="build (or resume) a dataset store")
    build.add_argument("--profile", default="quick", choices=("quick", "multi", "wide", "medium", "paper"))
    build.add_argument("--store", default=None, help="store folder (default: the tdmctx cache, defects/PROFILE-seedSEED)")
    build.add_argument("--seed", type=int, default=0)
    build.add_argument("--scheduler", default=None, help="dask scheduler address, or 'synchronous' (default: a LocalCluster)")
    build.add_argument("--n-workers", type=int, default=None, help="LocalCluster workers (default: CPU count)")
    build.add_argument("--device", default=None, help="'cpu' or 'cuda' (default: CUDA when available)")
    build.add_argument("--overwrite", action="store_true", help="rebuild a store made with other settings")
    build.set_defaults(handler=_cmd_build)

    export = sub.add_parser("export", help="write a store to one portable .npz file (to train elsewhere)")
    export.add_argument("store")
    export.add_argument("output", help="the .npz file to write")
    export.add_argument("--float16", action="store_true",
                        help="images at half precision (relative rounding <= 2**-11), about half the file")
    export.set_defaults(handler=_cmd_export)

    info = sub.add_parser("info", help="summarise a dataset store")
    info.add_argument("store")
    info.set_defaults(handler=_cmd_info)


def _store_path(args: argparse.Namespace):
    from tdmctx.data import cache_dir

    return args.store or cache_dir("defects", f"{args.profile}-seed{args.seed}")


def _cmd_build(args: argparse.Namespace) -> int:
    from tdmctx.defects.store import build_dataset

    path = _store_path(args)
    ds = build_dataset(
        path,
        profile=args.profile,
        scheduler=args.scheduler,
        n_workers=args.n_workers,
        overwrite=args.overwrite,
        device=args.device,
        seed=args.seed,
    )
    print(f"{path}: {ds.sizes['case']} cases, {ds.sizes['image']} images, {ds.sizes['site']} sites")
    return 0


def _cmd_export(args: argparse.Namespace) -> int:
    from tdmctx.defects.portable import export_dataset
    from tdmctx.defects.store import open_dataset

    path = export_dataset(open_dataset(args.store), args.output, float_dtype="float16" if args.float16 else None)
    print(f"wrote {path} ({path.stat().st_size / 1e6:.1f} MB)")
    return 0


def _cmd_info(args: argparse.Namespace) -> int:
    import numpy as np

    from tdmctx.defects.store import completed_cases, open_dataset, planned_cases, read_config

    config = read_config(args.store)
    done = completed_cases(args.store)
    print(f"{args.store}: {len(done)} of {len(planned_cases(config))} cases finished")
    if done:
        ds = open_dataset(args.store)
        for case, engine, err in zip(ds.case.values, ds.case_engine.values, ds.case_fast_column_rmse.values):
            print(f"  {case:28s} engine {engine:10s} fast-engine column error {err:.3f}")
        labels, counts = np.unique(ds.site_label.values, return_counts=True)
        print("  sites: " + ", ".join(f"{label} {count}" for label, count in zip(labels, counts)))
    return 0

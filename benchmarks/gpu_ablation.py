"""The context ablation on a GPU inside a fixed time budget, resumable, with its models packed.

Made for short loans of a GPU machine: the store travels as one file
(:func:`tdmctx.defects.portable.export_dataset`), the script measures the training
throughput first and sizes the schedule so that the planned models fit the budget, trains
them in order of importance through :func:`tdmctx.defects.ablation.run_ablation` (the same
cache layout and keys as chapter 02), and after every model rewrites what comes back:
``OUT/progress.json`` (schedule, throughput, one row per model), ``OUT/results.pkl`` (the
:class:`~tdmctx.defects.ablation.AblationResult` of each split: logits, temperatures,
histories, enough to redo every table and figure) and ``OUT/weights_<split>.tar.gz`` (the
best weights of each model; the full checkpoints with optimiser state are too large to
bring back). Whatever finished comes back even if the machine is taken away::

    tdmctx dataset export ~/.cache/tdmctx/defects/multi-seed0 .gpu/multi-seed0.npz [--float16]  # here
    python benchmarks/gpu_ablation.py run .gpu/multi-seed0.npz --out OUT --budget-s 420   # on the GPU
    python benchmarks/gpu_ablation.py report OUT/results.pkl                                 # here

Printed: the planned schedule, throughput (patches/s, training with AMP on CUDA), one line
per finished model, and the ablation tables (also ``OUT/tidy_<split>.csv``).
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import pickle
import platform
import tarfile
import time
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np
import torch

from tdmctx.defects.ablation import GRID, TrainSettings, run_ablation
from tdmctx.defects.ablation_metrics import ablation_table, summarise
from tdmctx.defects.models import ContextClassifier
from tdmctx.defects.patches import PatchSampler
from tdmctx.defects.splits import plan_splits
from tdmctx.defects.store import open_dataset
from tdmctx.defects.train import train

#: (split, model) in order of importance: the headline comparison first.
PRIORITY = (
    ("image", "image-only"), ("image", "film"), ("image", "shuffled"),
    ("dopant", "image-only"), ("dopant", "film"), ("dopant", "shuffled"),
    ("image", "composition"), ("image", "detector"), ("image", "energy"), ("image", "late"),
)


def measure_throughput(ds, images, settings: TrainSettings, device: str, batches: int = 40) -> float:
    """Patches per second of the real training loop (FiLM model, AMP on CUDA), after a warm-up."""
    sampler = PatchSampler(ds, images=images, batch_size=settings.batch_size, batches_per_epoch=batches, seed=99,
                           device=device)
    val = [sampler.batch(np.random.default_rng(0))]
    model = ContextClassifier("film", width=settings.width, blocks_per_stage=settings.blocks_per_stage, seed=99)
    train(model, sampler, val, epochs=1, device=device, progress=False)  # warm-up: kernels, autotuning
    history = train(model, sampler, val, epochs=1, device=device, progress=False, resume=False)
    return float(history["patches_per_s"][0])


def _atomic(path: Path, write) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    write(tmp)
    os.replace(tmp, path)


def pack_weights(results: dict, out: Path) -> None:
    """One archive per split of every model's ``best.pt`` (the weights early stopping kept)."""
    for kind, res in results.items():
        def write(tmp, res=res):
            with tarfile.open(tmp, "w:gz") as tar:
                for (name, seed), run in res.runs.items():
                    tar.add(Path(run.checkpoint_dir) / "best.pt", arcname=f"{kind}/{name}/seed{seed}/best.pt")
        _atomic(out / f"weights_{kind}.tar.gz", write)


def save_results(results: dict, out: Path) -> None:
    def write(tmp):
        with open(tmp, "wb") as fh:
            pickle.dump(results, fh)
    _atomic(out / "results.pkl", write)


def merge(results: dict, kind: str, res) -> None:
    """Add the runs of another ablation of the split (other models or seeds) to its result.

    Both must share the training settings and the fixed test patches, so that every
    comparison stays paired.
    """
    if kind not in results:
        results[kind] = res
        return
    have = results[kind]
    if have.settings != res.settings:
        raise ValueError(f"split {kind}: the models were trained with other settings")
    if not np.array_equal(have.labels, res.labels):
        raise RuntimeError(f"split {kind}: the fixed test patches differ between models")
    have.specs = (*have.specs, *[s for s in res.specs if s not in have.specs])
    have.seeds = tuple(sorted(set(have.seeds) | set(res.seeds)))
    have.runs.update(res.runs)


def report(results: dict, n_boot: int, seed: int, out: Path | None = None) -> None:
    cols = ["accuracy", "accuracy_low", "accuracy_high", "macro_f1", "mean_entropy_nats", "entropy_reduction",
            "entropy_reduction_low", "entropy_reduction_high", "nll", "ece"]
    for kind, res in results.items():
        tidy = summarise(res, n_boot=n_boot, seed=seed).assign(split=res.split.name)
        if out is not None:
            tidy.to_csv(out / f"tidy_{kind}.csv", index=False)
        table = ablation_table(tidy)
        print(f"\n{res.split.name}: {len(res.labels)} test patches\n"
              f"{table[[c for c in cols if c in table]].to_string(float_format=lambda v: f'{v:.4f}')}", flush=True)
        print(res.training_table().to_string(float_format=lambda v: f"{v:.4g}"), flush=True)


def run(args: argparse.Namespace) -> None:
    t0 = time.perf_counter()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    cache = Path(args.cache)
    cache.mkdir(parents=True, exist_ok=True)
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cpu":
        torch.set_num_threads(args.threads)
    ds = open_dataset(args.store).load()
    splits, skipped = plan_splits(ds, ["image", "dopant"], held_out={"condition": ["80kV-MAADF"]}, seed=args.eval_seed)
    print(f"store {ds.attrs.get('store_key')}: {ds.sizes['image']} images, {ds.sizes['site']} sites; "
          f"splits {list(splits)}, skipped {skipped}; loaded in {time.perf_counter() - t0:.0f} s", flush=True)
    base = TrainSettings(width=args.width, epochs=1, batches_per_epoch=args.batches_per_epoch,
                         batch_size=args.batch_size, lr=args.lr, patience=args.patience,
                         val_patches=args.val_patches, test_patches=args.test_patches)
    pps = measure_throughput(ds, splits["image"].train, base, device)
    order = [tuple(item.split(":")) for item in args.only.split(",")] if args.only else PRIORITY
    plan = [(s, m) for s, m in order if s in splits][: args.max_models]
    per_model_s = (args.budget_s - (time.perf_counter() - t0) - args.reserve_s) / len(plan)
    patches_per_epoch = base.batches_per_epoch * base.batch_size
    epochs = int(np.clip(per_model_s * pps * args.fill / patches_per_epoch, args.min_epochs, args.max_epochs))
    if args.epochs:
        epochs = args.epochs
    settings = replace(base, epochs=epochs)
    info = {
        "device": torch.cuda.get_device_name(0) if device == "cuda" else platform.processor() or "cpu",
        "torch": torch.__version__, "throughput_probe_patches_per_s": pps, "settings": asdict(settings),
        "plan": plan, "per_model_budget_s": per_model_s, "seed": args.seed, "done": [],
    }
    print(f"throughput {pps:,.0f} patches/s on {info['device']}; {len(plan)} models planned, "
          f"{per_model_s:.0f} s each -> {epochs} epochs x {patches_per_epoch} patches", flush=True)
    durations, results = [], {}
    for split_kind, model in plan:
        elapsed = time.perf_counter() - t0
        typical = float(np.median(durations)) if durations else per_model_s
        if elapsed + typical > args.budget_s - args.reserve_s / 2:
            print(f"stopping before {split_kind}/{model}: {elapsed:.0f} s used of {args.budget_s:.0f}", flush=True)
            break
        start = time.perf_counter()
        res = run_ablation(ds, splits[split_kind], [model], [args.seed], settings, eval_seed=args.eval_seed, cache=cache,
                           device=device, progress=False)
        durations.append(time.perf_counter() - start)
        h = res.runs[(model, args.seed)].history
        acc = float(np.mean(res.runs[(model, args.seed)].test_probs.argmax(1) == res.labels))
        row = {"split": split_kind, "model": model, "seconds": durations[-1], "epochs": len(h["epoch"]),
               "best_epoch": h["best_epoch"], "patches_per_s": float(np.mean(h["patches_per_s"])), "test_accuracy": acc}
        info["done"].append(row)
        print(json.dumps(row), flush=True)
        merge(results, split_kind, res)
        save_results(results, out)
        pack_weights(results, out)
        (out / "progress.json").write_text(json.dumps(info, indent=1, default=str))
    report(results, args.n_boot, args.eval_seed, out)
    info["total_s"] = time.perf_counter() - t0
    (out / "progress.json").write_text(json.dumps(info, indent=1, default=str))
    print(f"total {info['total_s']:.0f} s", flush=True)


def _subset(res, specs: list[str], seeds: tuple[int, ...]):
    sub = copy.copy(res)
    sub.specs = tuple(s for s in res.specs if s.name in specs)
    sub.seeds = seeds
    sub.runs = {k: v for k, v in res.runs.items() if k[0] in specs and k[1] in seeds}
    return sub


def figures(merged: dict, folder: str, stem: str) -> list[Path]:
    """Entropy histograms, confusions and reliability of the seed-pooled headline models of each split."""
    import matplotlib.pyplot as plt

    from tdmctx.defects.ablation_plots import plot_confusions, plot_entropy, plot_reliability
    from tdmctx.plotting import apply_style

    apply_style()
    out = Path(folder)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for kind, res in merged.items():
        every = [s.name for s in res.specs if all((s.name, k) in res.runs for k in res.seeds)]
        sub = _subset(res, [m for m in ("image-only", "film", "shuffled") if m in every], res.seeds)
        for name, plot in (("entropy", plot_entropy), ("confusion", plot_confusions), ("reliability", plot_reliability)):
            fig = plot(sub)
            fig.suptitle(f"{res.split.name}: {len(res.labels)} test patches x {len(res.seeds)} seed(s)", fontsize=9)
            path = out / f"{stem}_{kind}_{name}.png"
            fig.savefig(path, dpi=110, bbox_inches="tight")
            plt.close(fig)
            written.append(path)
    return written


def combine(paths: list[str], out_csv: str, n_boot: int, eval_seed: int, figure_dir: str | None = None,
            store: str | None = None) -> None:
    """Merge several runs' ``results.pkl`` (same settings, other models or seeds) into one tidy CSV.

    Per split, two blocks: ``grid`` (every model of the first seed) and ``seeds`` (the models
    trained with every seed, pooled and per seed). With the store, both again as
    ``grid-resolvable`` and ``seeds-resolvable`` on the test patches of systems whose dopant
    differs in scattering from the host metal by at least ``MIN_RESOLVABLE_CONTRAST``, and a
    per-system table (``*_systems.csv``).
    """
    from tdmctx.defects.ablation_metrics import per_system_table, resolvable_mask

    import pandas as pd

    merged: dict = {}
    for path in paths:
        with open(path, "rb") as fh:
            for kind, res in pickle.load(fh).items():
                merge(merged, kind, res)
    ds = open_dataset(store) if store else None
    frames, systems = [], []
    for kind, res in merged.items():
        seeds = res.seeds
        first = [s.name for s in res.specs if (s.name, seeds[0]) in res.runs]
        every = [s.name for s in res.specs if all((s.name, k) in res.runs for k in seeds)]
        variants = [("", res)]
        if ds is not None:
            variants.append(("-resolvable", res.subset(resolvable_mask(res, ds))))
            systems.append((kind, per_system_table(_subset(res, every, seeds), ds).assign(split=res.split.name)))
        for suffix, r in variants:
            frames.append(summarise(_subset(r, first, seeds[:1]), n_boot=n_boot, seed=eval_seed)
                          .assign(split=res.split.name, block="grid" + suffix))
            if len(seeds) > 1 and len(every) > 1:
                frames.append(summarise(_subset(r, every, seeds), n_boot=n_boot, seed=eval_seed)
                              .assign(split=res.split.name, block="seeds" + suffix))
    if systems:
        path = Path(out_csv).with_name(Path(out_csv).stem + "_systems.csv")
        pd.concat([t for _, t in systems], ignore_index=True).to_csv(path, index=False, float_format="%.4f")
        print(f"wrote {path}")
    tidy = pd.concat(frames, ignore_index=True)
    tidy.to_csv(out_csv, index=False)
    print(f"wrote {out_csv}: {len(tidy)} rows")
    if figure_dir:
        for path in figures(merged, figure_dir, Path(out_csv).stem):
            print(f"wrote {path}")
        if systems:
            import matplotlib.pyplot as plt

            from tdmctx.defects.ablation_plots import plot_dopant_recall

            for kind, table in systems:
                fig = plot_dopant_recall(table)
                path = Path(figure_dir) / f"{Path(out_csv).stem}_{kind}_dopant_recall.png"
                fig.savefig(path, dpi=110, bbox_inches="tight")
                plt.close(fig)
                print(f"wrote {path}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    r = sub.add_parser("run", help="train the ablation grid inside a time budget")
    r.add_argument("store", help="store folder or exported .npz")
    r.add_argument("--out", required=True)
    r.add_argument("--cache", default="/tmp/tdmctx-ablations")
    r.add_argument("--budget-s", type=float, default=420.0)
    r.add_argument("--reserve-s", type=float, default=60.0, help="kept for the final scoring")
    r.add_argument("--fill", type=float, default=0.8, help="fraction of the per-model time spent in training steps")
    r.add_argument("--max-models", type=int, default=len(PRIORITY))
    r.add_argument("--epochs", type=int, default=None, help="fix the epochs instead of sizing them")
    r.add_argument("--min-epochs", type=int, default=3)
    r.add_argument("--max-epochs", type=int, default=40)
    r.add_argument("--width", type=int, default=32)
    r.add_argument("--batches-per-epoch", type=int, default=200)
    r.add_argument("--batch-size", type=int, default=512)
    r.add_argument("--lr", type=float, default=2e-3)
    r.add_argument("--patience", type=int, default=5)
    r.add_argument("--val-patches", type=int, default=8000)
    r.add_argument("--test-patches", type=int, default=8000)
    r.add_argument("--n-boot", type=int, default=1000)
    r.add_argument("--seed", type=int, default=0, help="training seed")
    r.add_argument("--eval-seed", type=int, default=0, help="seed of the splits and the fixed patches (keep it to pair seeds)")
    r.add_argument("--only", default=None, help="comma-separated split:model list instead of the priority order")
    r.add_argument("--device", default=None)
    r.add_argument("--threads", type=int, default=2)
    q = sub.add_parser("report", help="print the tables of a results.pkl brought back")
    q.add_argument("results")
    q.add_argument("--n-boot", type=int, default=1000)
    q.add_argument("--seed", type=int, default=0)
    c = sub.add_parser("combine", help="merge several results.pkl into one tidy CSV")
    c.add_argument("results", nargs="+")
    c.add_argument("--out", required=True)
    c.add_argument("--n-boot", type=int, default=1000)
    c.add_argument("--eval-seed", type=int, default=0)
    c.add_argument("--figures", default=None, help="folder for entropy, confusion and reliability figures")
    c.add_argument("--store", default=None, help="the store (folder or .npz), for the per-system scores")
    args = parser.parse_args(argv)
    if args.command == "combine":
        combine(args.results, args.out, args.n_boot, args.eval_seed, args.figures, args.store)
    elif args.command == "run":
        run(args)
    else:
        with open(args.results, "rb") as fh:
            report(pickle.load(fh), args.n_boot, args.seed)


if __name__ == "__main__":
    main()

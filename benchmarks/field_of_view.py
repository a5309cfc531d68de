"""Does a smaller patch close the real-field gap? The release recipe at several patch sizes.

Chapter 03's ranking diagnostic (:func:`tdmctx.defects.dopant_ranking`) found that the
shipped networks order the real metal columns worse than the column intensity does, which
suggests that they read the neighbourhood of a column (neighbours, tails, background) in a way
the simulation does not reproduce. This benchmark tests that reading: it trains the release
recipe (:mod:`tdmctx.defects.release`: bridge augmentation, class balance, same steps, seed and
width) on one store with patches of several sizes at the same 0.4 A sampling, and scores each
network on the held-out simulated fields and on both labelled Ti-WSe2 fields, both channels
(detector angles unknown): ranking AUC and best-threshold dopant F1 on the metal sublattice,
and the dopant F1 and kappa after the chapter's sublattice + EM correction. No real image or
label is used in training; the labels only score.

::

    python benchmarks/field_of_view.py [--store ~/.cache/tdmctx/defects/quick-seed0] [--sizes 12 16 24]
        [--steps 1500] [--variant film] [--threads 2] [--out FILE.csv]
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import pandas as pd
import torch

from tdmctx.data import cache_dir
from tdmctx.defects.evaluate import fit_temperature, softmax
from tdmctx.defects.models import ContextClassifier
from tdmctx.defects.patches import Augmentation, PatchSampler, PatchSpec, extract_patches
from tdmctx.defects.ranking import dopant_ranking
from tdmctx.defects.realdata import CHANNELS, correct_posteriors, load_field, score_sites, ti_wse2_context
from tdmctx.defects.release import Recipe, split_images
from tdmctx.defects.store import open_dataset
from tdmctx.defects.train import predict_loader, train
from tdmctx.experimental import FIELDS, load_ti_wse2


def _sampler(ds, images, spec: PatchSpec, *, batch: int, batches: int, seed: int, balance: bool, augmentation):
    return PatchSampler(ds, spec, augmentation, batch_size=batch, batches_per_epoch=batches, images=list(images),
                        balance_classes=balance, seed=seed, device="cpu")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--store", default=str(cache_dir("defects", "quick-seed0")), help="store folder or .npz")
    parser.add_argument("--sizes", type=int, nargs="+", default=[12, 16, 24], help="patch sides, pixels of 0.4 A")
    parser.add_argument("--variant", default="film", choices=("film", "image-only"))
    parser.add_argument("--steps", type=int, default=Recipe.steps)
    parser.add_argument("--width", type=int, default=Recipe.width)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", default=None)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    recipe = Recipe(steps=args.steps, width=args.width, seed=args.seed)
    ds = open_dataset(args.store).load()
    split = split_images(ds, recipe)
    fields = {(f, c): load_field(f, c, dataset=load_ti_wse2(f)) for f in FIELDS for c in CHANNELS}
    rows = []
    for size in args.sizes:
        spec = PatchSpec(size_px=size)
        t0 = time.perf_counter()
        model = ContextClassifier(args.variant, width=recipe.width, seed=recipe.seed)
        kw = dict(augmentation=recipe.augmentation, balance=True)
        train_s = _sampler(ds, split["train"], spec, batch=recipe.batch_size, batches=recipe.batches_per_epoch,
                           seed=recipe.seed, **kw)
        val_s = _sampler(ds, split["val"], spec, batch=256, batches=recipe.val_batches, seed=recipe.seed + 1, **kw)
        history = train(model, train_s, val_s, epochs=recipe.epochs, lr=recipe.lr, seed=recipe.seed, device="cpu",
                        patience=recipe.patience, progress=False,
                        context_dropout=recipe.context_dropout if args.variant != "image-only" else 0.0)
        temperature = float(fit_temperature(*predict_loader(model, val_s, device="cpu")))
        test_s = _sampler(ds, split["test"], spec, batch=256, batches=recipe.test_batches, seed=recipe.seed + 2,
                          augmentation=Augmentation(), balance=False)
        z, y = predict_loader(model, test_s, device="cpu")
        row = {"patch_px": size, "patch_A": spec.extent_A, "variant": args.variant,
               "train_s": time.perf_counter() - t0, "epochs": len(history["epoch"]), "temperature": temperature,
               "sim_accuracy": float(np.mean(softmax(z, temperature).argmax(1) == y))}
        for (f, c), data in fields.items():
            patches = extract_patches(data.image, data.points_px, source_pixel_A=data.pixel_size_A, spec=spec)
            probs = softmax(model.predict_logits(patches, ti_wse2_context(), device="cpu"), temperature)
            rank = dopant_ranking(probs, data.labels, data.metal_site)
            corrected, _ = correct_posteriors(probs, np.full(5, 0.2), "sublattice+EM", data.metal_site)
            s = score_sites(data.labels, corrected.argmax(1), n_boot=0)
            key = f"f{f}_{c}"
            row.update({f"{key}_auc": rank["auc"], f"{key}_oracle_f1": rank["oracle_dopant_f1"],
                        f"{key}_dopant_f1": s["dopant_f1"], f"{key}_kappa": s["kappa"]})
        rows.append(row)
        print(f"{size} px: trained in {row['train_s']:.0f} s, simulated accuracy {row['sim_accuracy']:.4f}", flush=True)
    table = pd.DataFrame(rows).set_index("patch_px")
    print(f"\nstore {args.store}; release recipe, {args.variant}, {recipe.steps} steps x {recipe.batch_size}, width "
          f"{recipe.width}, seed {recipe.seed}; real fields: angles unknown")
    print(table.T.to_string(float_format=lambda v: f"{v:.3f}" if isinstance(v, float) else str(v)))
    if args.out:
        table.to_csv(args.out, float_format="%.4f")


if __name__ == "__main__":
    main()

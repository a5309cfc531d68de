"""Two detectors at once against either one: simulated held-out fields and the real Ti-WSe2 fields.

Trains three image-only networks with the release recipe's augmentation (the
simulation-to-experiment bridge of :mod:`tdmctx.defects.release`), same backbone, steps and
seed: one on the HAADF images, one on the MAADF images, and one on both at once
(:class:`tdmctx.defects.two_channel.TwoChannelSampler`). Each is temperature scaled on
validation fields and scored

- on the same held-out simulated sites (fields of :class:`~tdmctx.defects.release.Recipe`),
  cut with one geometry for every model;
- on both labelled real fields, ``adf2`` standing for the high-angle channel and ``adf1``
  for the medium-angle one, with the label-free sublattice + EM prior correction of chapter 03
  (:func:`tdmctx.defects.realdata.correct_posteriors`).

::

    python benchmarks/two_channel.py [--store ~/.cache/tdmctx/defects/quick-seed0] [--epochs 8] [--threads 2]

Prints one table; ``--out FILE.csv`` keeps it. On a GPU machine without the real data, train and
keep the models, then score them where the data are::

    python benchmarks/two_channel.py --store wide-seed0.npz --variant film --device cuda --no-real --save DIR ...
    python benchmarks/two_channel.py --score DIR --out FILE.csv

``--variant film`` trains context models: the single-channel ones see the whole context, the
two-channel one composition and energy (its detector fields are hidden); the real fields are
classified with the Ti-WSe2 context, detector angles unknown.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from tdmctx.data import cache_dir
from tdmctx.defects.baseline import metal_sites_two_channels
from tdmctx.defects.evaluate import entropy, fit_temperature, softmax
from tdmctx.defects.models import ContextClassifier
from tdmctx.defects.patches import PatchSampler, extract_patches
from tdmctx.defects.realdata import correct_posteriors, score_sites, ti_wse2_context
from tdmctx.defects.release import RELEASE_AUGMENTATION, Recipe, split_images
from tdmctx.defects.store import open_dataset
from tdmctx.defects.train import predict_loader, train
from tdmctx.defects.two_channel import TwoChannelSampler, channel_pairs, two_channel_patches
from tdmctx.experimental import FIELDS, load_ti_wse2, refine_columns

MODELS = ("HAADF only", "MAADF only", "both channels")


def _samplers(ds, images: np.ndarray, first: np.ndarray, second: np.ndarray, **kw) -> dict:
    return {
        "HAADF only": PatchSampler(ds, augmentation=RELEASE_AUGMENTATION, images=first[np.isin(first, images)], **kw),
        "MAADF only": PatchSampler(ds, augmentation=RELEASE_AUGMENTATION, images=second[np.isin(second, images)], **kw),
        "both channels": TwoChannelSampler(ds, augmentation=RELEASE_AUGMENTATION, images=images, **kw),
    }


def _fixed(samplers: dict, n: int, seed: int) -> dict:
    """The same sites, geometry and draws for every model (MAADF: the partner sites)."""
    pair = samplers["both channels"]
    sites = np.random.default_rng(seed).choice(pair.usable_sites, min(n, len(pair.usable_sites)), replace=False)
    partner = pair.partner_sites(sites)
    out = {}
    for name, use in (("HAADF only", sites), ("MAADF only", partner), ("both channels", sites)):
        batches = [samplers[name].batch(np.random.default_rng([seed, k]), use[k:k + 512])
                   for k in range(0, len(use), 512)]
        out[name] = batches
    return out


def _real_patches(field: int) -> tuple[dict, np.ndarray, np.ndarray]:
    ds = load_ti_wse2(field)
    raw = ds["points_px"].values.astype(np.float64)
    points = refine_columns(ds["adf2"].values, raw)
    pixel = float(ds["adf2"].attrs["pixel_size_A"])
    patches = {
        "HAADF only": extract_patches(ds["adf2"].values, points, source_pixel_A=pixel)[:, None],
        "MAADF only": extract_patches(ds["adf1"].values, points, source_pixel_A=pixel)[:, None],
        "both channels": two_channel_patches(ds["adf2"].values, ds["adf1"].values, points, source_pixel_A=pixel),
    }
    metal = metal_sites_two_channels(raw, ds["adf1"].values, ds["adf2"].values)
    return patches, metal, ds["label"].values.astype(str)


def _slug(name: str) -> str:
    return name.split()[0].lower()  # "HAADF only" -> "haadf", "both channels" -> "both"


def _score_real(model: ContextClassifier, name: str, temperature: float, real: dict, n_boot: int, seed: int) -> dict:
    """Dopant and kappa scores on every labelled field (sublattice + EM correction, detector angles unknown)."""
    out = {}
    for field, (patches, metal, labels) in real.items():
        logits = model.predict_logits(patches[name], ti_wse2_context(), device="cpu")
        probs, _ = correct_posteriors(softmax(logits, temperature), np.full(5, 0.2), "sublattice+EM", metal)
        s = score_sites(labels, probs.argmax(1), n_boot=n_boot, seed=seed)
        out.update({f"field{field}_kappa": s["kappa"], f"field{field}_dopant_f1": s["dopant_f1"],
                    f"field{field}_dopant_f1_low": s["dopant_f1_ci"][0],
                    f"field{field}_dopant_f1_high": s["dopant_f1_ci"][1],
                    f"field{field}_dopant_recall": s["dopant_recall"],
                    f"field{field}_dopant_precision": s["dopant_precision"]})
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--store", default=str(cache_dir("defects", "quick-seed0")), help="store folder or exported .npz")
    parser.add_argument("--variant", default="image-only", choices=("image-only", "film"),
                        help="network; film sees composition and energy (the detector fields are hidden for two channels)")
    parser.add_argument("--models", default=",".join(MODELS), help=f"comma-separated subset of {MODELS}")
    parser.add_argument("--width", type=int, default=16)
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--batches-per-epoch", type=int, default=60)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--val-fields", type=int, nargs="+", default=list(Recipe.val_fields))
    parser.add_argument("--test-fields", type=int, nargs="+", default=list(Recipe.test_fields))
    parser.add_argument("--test-patches", type=int, default=4000)
    parser.add_argument("--n-boot", type=int, default=500)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--save", default=None, help="folder for the trained models (with their simulated scores)")
    parser.add_argument("--no-real", action="store_true", help="skip the real fields (a machine without the data)")
    parser.add_argument("--score", default=None, help="score the models saved in this folder instead of training")
    parser.add_argument("--out", default=None)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    names = [n.strip() for n in args.models.split(",")]
    if set(names) - set(MODELS):
        parser.error(f"--models {args.models}: expected names among {MODELS}")
    start = time.perf_counter()
    real = {} if args.no_real else {f: _real_patches(f) for f in FIELDS}
    rows = []
    if args.score:
        for name in names:
            model = ContextClassifier.load(f"{args.score}/{_slug(name)}.pt", device="cpu")
            row = dict(model.card["benchmark"])
            row.update(_score_real(model, name, row["temperature"], real, args.n_boot, args.seed))
            rows.append(row)
        header = f"models in {args.score}, scored on the real fields"
    else:
        ds = open_dataset(args.store).load()
        first, second = channel_pairs(ds)
        parts = split_images(ds, Recipe(val_fields=tuple(args.val_fields), test_fields=tuple(args.test_fields)))
        kw = dict(batch_size=args.batch_size, device=args.device)
        train_s = _samplers(ds, parts["train"], first, second, batches_per_epoch=args.batches_per_epoch,
                            seed=args.seed, **kw)
        val = _fixed(_samplers(ds, parts["val"], first, second, **kw), 2000, seed=1)
        test = _fixed(_samplers(ds, parts["test"], first, second, **kw), args.test_patches, seed=2)
        for name in names:
            t0 = time.perf_counter()
            model = ContextClassifier(args.variant, width=args.width, in_channels=2 if name == "both channels" else 1,
                                      seed=args.seed)
            history = train(model, train_s[name], val[name], epochs=args.epochs, lr=args.lr, device=args.device,
                            progress=False, patience=None)
            temperature = float(fit_temperature(*predict_loader(model, val[name], device=args.device)))
            z, y = predict_loader(model, test[name], device=args.device)
            p = softmax(z, temperature)
            row = {"model": name, "variant": args.variant, "train_s": time.perf_counter() - t0,
                   "patches_per_s": float(np.mean(history["patches_per_s"])), "temperature": temperature,
                   "sim_accuracy": float(np.mean(p.argmax(1) == y)),
                   "sim_mean_entropy_bits": float(entropy(p, base=2).mean())}
            model = model.cpu()
            if args.save:
                Path(args.save).mkdir(parents=True, exist_ok=True)
                model.save(f"{args.save}/{_slug(name)}.pt", card={"benchmark": row, "store": str(args.store),
                                                                   "arguments": vars(args)})
            row.update(_score_real(model, name, temperature, real, args.n_boot, args.seed))
            rows.append(row)
            print(f"{name}: trained in {row['train_s']:.0f} s, simulated accuracy {row['sim_accuracy']:.4f}", flush=True)
        header = (f"store {args.store}: {len(first)} structures with both detectors; {args.variant}, {args.epochs} x "
                  f"{args.batches_per_epoch} x {args.batch_size} patches per model, width {args.width}, seed "
                  f"{args.seed}; {sum(len(b['label']) for b in test['HAADF only'])} simulated test sites")
    table = pd.DataFrame(rows).set_index("model")
    print(f"\n{header}; real fields corrected by sublattice + EM; total {time.perf_counter() - start:.0f} s")
    print(table.T.to_string(float_format=lambda v: f"{v:.3f}" if isinstance(v, float) else str(v)))
    if args.out:
        table.to_csv(args.out, float_format="%.4f")


if __name__ == "__main__":
    main()

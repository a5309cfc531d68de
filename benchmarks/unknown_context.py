"""What a context model does on a held-out dopant when context fields are declared unknown at inference.

Reads what ``benchmarks/gpu_ablation.py run`` brought back for the held-out-dopant split
(``results.pkl`` and ``weights_dopant.tar.gz``), cuts the same fixed test patches on this
machine, and scores the FiLM model with the full context, with the dopant unknown, with the
whole composition unknown and with no context, beside the image-only model; every model
keeps the temperature and prior correction fitted on the validation images::

    python benchmarks/unknown_context.py OUT/results.pkl OUT/weights_dopant.tar.gz .gpu/multi-seed0.npz

The fixed patches are cut with this machine's random streams, so the read-out noise differs
from the GPU's and the scores agree with the GPU tables to within a few tenths of a point.
"""

from __future__ import annotations

import argparse
import pickle
import tarfile
import tempfile
from pathlib import Path

import numpy as np
import torch

from tdmctx.defects.ablation import fixed_patches
from tdmctx.defects.evaluate import entropy, softmax
from tdmctx.defects.models import ContextClassifier, hide_context_fields
from tdmctx.defects.store import open_dataset

VARIANTS = {
    "full context": (),
    "dopant unknown": ("dopant",),
    "composition unknown": ("host_metal", "chalcogen", "dopant"),
    "no context": ("host_metal", "chalcogen", "dopant", "energy_eV", "detector_inner_mrad", "detector_outer_mrad"),
}


def _logits(model: ContextClassifier, images: torch.Tensor, context: torch.Tensor) -> np.ndarray:
    model.eval()
    with torch.no_grad():
        return torch.cat([model(images[i : i + 1024], context[i : i + 1024]).float()
                          for i in range(0, len(images), 1024)]).numpy()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("results")
    parser.add_argument("weights")
    parser.add_argument("store")
    parser.add_argument("--split", default="dopant")
    parser.add_argument("--seed", type=int, default=0, help="training seed of the models")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    with open(args.results, "rb") as fh:
        res = pickle.load(fh)[args.split]
    ds = open_dataset(args.store).load()
    test = fixed_patches(ds, res.split.test, max_patches=res.settings.test_patches, seed=0, device="cpu")
    if not np.array_equal(test["label"].numpy(), res.labels):
        raise RuntimeError("the fixed test patches differ from those of the results; same store and settings?")
    labels = res.labels
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        with tarfile.open(args.weights) as tar:
            tar.extractall(tmp, filter="data")
        for name in ("image-only", "film"):
            run = res.runs[(name, args.seed)]
            model = ContextClassifier.load(Path(tmp) / args.split / name / f"seed{args.seed}" / "best.pt")
            for variant, fields in (VARIANTS.items() if name == "film" else [("", ())]):
                probs = softmax(_logits(model, test["image"], hide_context_fields(test["context"], fields)) / run.temperature
                                + run.log_prior_ratio)
                rows.append((f"{name} {variant}".strip(), float(np.mean(probs.argmax(1) == labels)),
                             float(entropy(probs).mean())))
    reference = rows[0][2]
    print(f"{res.split.name}: {len(labels)} fixed test patches, training seed {args.seed}")
    print(f"{'model':34s} {'accuracy':>9s} {'mean H (nats)':>14s} {'entropy reduction':>18s}")
    for name, acc, h in rows:
        print(f"{name:34s} {acc:9.4f} {h:14.4f} {1 - h / reference:18.1%}")


if __name__ == "__main__":
    main()

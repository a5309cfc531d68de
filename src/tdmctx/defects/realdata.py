"""The experimental test: the classifiers on the labelled Ti-WSe2 fields, never trained on them.

For each field and detector channel (``adf1`` lower-angle, ``adf2`` higher-angle):

1. the labelled whole-pixel points are refined to sub-pixel column centres
   (:func:`~tdmctx.experimental.refine_columns`, on that channel);
2. patches are cut with :func:`~tdmctx.defects.patches.extract_patches`, the one patch
   definition (resampled to 0.4 A, percentile-normalised: the dark offset drops out);
3. the models predict with the context WSe2 host, Ti dopant, 80 kV and the detector angles
   either unknown (``None``) or assumed (:func:`~tdmctx.defects.detector_angles.infer_detector`, or a sweep);
4. posteriors are temperature scaled (the model card's temperature) and corrected for the
   shift in class priors (:func:`correct_priors`): the models were trained on
   class-balanced patches (20 % each), a real field is ~50 % metal, ~50 % X2, a few %
   dopant, < 1 % V1 and no V2. The field's priors are estimated by EM (Saerens et al. 2002,
   :func:`~tdmctx.defects.evaluate.em_priors`) from the unlabelled posteriors alone;
5. optionally (``"sublattice"`` corrections) each site's posterior is restricted to the
   classes of its sublattice (metal, dopant on the metal sublattice; X2, V1, V2 on the
   chalcogen one), with the sublattices from the geometry and the two channels' ratio
   (:func:`~tdmctx.defects.baseline.metal_sites_two_channels`), no labels: the same
   information the intensity baselines start from. A single patch cannot tell a bright
   metal column in a high-angle image from a bright Se2 column in a low-angle one (the
   contrast reverses, and the three neighbours look alike); the whole field can;
6. the predictions are scored against the human labels (:func:`score_sites`).

Detector angles without labels: :mod:`tdmctx.defects.detector_angles`.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from tdmctx.defects.classifier import Classifier
from tdmctx.defects.context import CLASS_NAMES, Context
from tdmctx.defects.evaluate import (
    as_class_ids,
    bootstrap_ci,
    cohen_kappa,
    confusion_matrix,
    em_priors,
    entropy,
    per_class_scores,
    restrict_to_sublattice,
    softmax,
)
from tdmctx.defects.detector_angles import detector_ratio_curve, infer_detector, measured_chalcogen_ratio
from tdmctx.defects.patches import PATCH, extract_patches

__all__ = [
    "CHANNELS",
    "CORRECTIONS",
    "DEFAULT_SWEEP_MRAD",
    "FieldData",
    "SitePrediction",
    "ti_wse2_context",
    "load_field",
    "score_sites",
    "correct_priors",
    "restrict_to_sublattice",
    "correct_posteriors",
    "calibrated_posteriors",
    "predict_sites",
    "evaluate_fields",
    "comparison_table",
    "detector_sweep",
]

#: Detector channels of the Ti-WSe2 fields.
CHANNELS: tuple[str, ...] = ("adf1", "adf2")

#: Posterior corrections of :func:`correct_posteriors`, all label-free.
CORRECTIONS: tuple[str, ...] = ("none", "EM", "sublattice", "sublattice+EM")

#: (inner, outer) detector angles, mrad, of the default sensitivity sweep: MAADF-like
#: annuli (outer 80-120 mrad) to HAADF-like ones (outer 200 mrad).
DEFAULT_SWEEP_MRAD: tuple[tuple[float, float], ...] = (
    (30.0, 80.0), (40.0, 100.0), (50.0, 120.0), (60.0, 200.0), (80.0, 200.0), (100.0, 200.0),
)



def ti_wse2_context(detector_mrad: tuple[float, float] | None = None) -> Context:
    """Context of the Ti-WSe2 fields: W/Se host, Ti dopant, 80 kV, detector angles if assumed.

    Parameters
    ----------
    detector_mrad
        (inner, outer) mrad, or ``None`` for unknown angles (never defaulted).
    """
    inner, outer = (None, None) if detector_mrad is None else (float(detector_mrad[0]), float(detector_mrad[1]))
    return Context(host_metal="W", chalcogen="Se", dopant="Ti", energy_eV=80e3,
                   detector_inner_mrad=inner, detector_outer_mrad=outer)


# -- data ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class FieldData:
    """One detector channel of one labelled field, ready for the models.

    Attributes
    ----------
    field, channel
        Field number and channel name.
    image
        (y, x) raw counts, float64.
    points_px
        (N, 2) refined (x, y) column centres, pixels.
    labels
        (N,) human labels (class names).
    patches
        (N, size, size) normalised patches (:data:`~tdmctx.defects.patches.PATCH`).
    pixel_size_A
        Image pixel, Angstrom.
    metal_site
        (N,) label-free metal-sublattice mask (geometry + the two channels' ratio).
    """

    field: int
    channel: str
    image: np.ndarray
    points_px: np.ndarray
    labels: np.ndarray
    patches: np.ndarray
    pixel_size_A: float
    metal_site: np.ndarray


def load_field(
    field: int,
    channel: str,
    *,
    refine: bool = True,
    root: str | os.PathLike | None = None,
    dataset: Any | None = None,
) -> FieldData:
    """Load one channel of a labelled Ti-WSe2 field, refine its columns and cut the patches.

    Parameters
    ----------
    field
        Field number (:data:`tdmctx.experimental.FIELDS`).
    channel
        ``"adf1"`` or ``"adf2"``.
    refine
        Refine the whole-pixel labelled points to sub-pixel centres on this channel.
    root
        Data folder (found automatically by default).
    dataset
        The field as :func:`~tdmctx.experimental.load_ti_wse2` returns it, when already
        loaded (both channels come from one read).

    Raises
    ------
    ValueError
        For an unknown channel or field.
    tdmctx.data.MissingDataError
        If the data files are absent.
    """
    from tdmctx.defects.baseline import metal_sites_two_channels
    from tdmctx.experimental import load_ti_wse2, refine_columns

    if channel not in CHANNELS:
        raise ValueError(f"channel={channel!r} is unknown; expected one of {CHANNELS}")
    ds = load_ti_wse2(field, root=root) if dataset is None else dataset
    image = np.asarray(ds[channel].values, dtype=np.float64)
    raw_points = np.asarray(ds["points_px"].values, dtype=np.float64)
    points = refine_columns(image, raw_points) if refine else raw_points
    pixel = float(ds[channel].attrs["pixel_size_A"])
    patches = extract_patches(image, points, source_pixel_A=pixel, spec=PATCH, device="cpu")
    metal = metal_sites_two_channels(raw_points, ds["adf1"].values, ds["adf2"].values)
    return FieldData(int(field), channel, image, points, ds["label"].values.astype(str), patches, pixel,
                     np.asarray(metal, dtype=bool))


# -- scoring ------------------------------------------------------------------------------


def score_sites(
    labels: Sequence[str] | np.ndarray,
    predicted: Sequence[str] | np.ndarray,
    *,
    n_boot: int = 1000,
    seed: int = 0,
) -> dict[str, Any]:
    """Score site predictions against human labels.

    All five classes are scored, so a prediction the labels never use is simply wrong:
    the Ti-WSe2 labels have no V2, and a V2 predicted on a V1 (or X2) site counts as an
    error (it lowers accuracy, kappa and the V1 recall alike).

    Parameters
    ----------
    labels, predicted
        (N,) class names or ids in :data:`~tdmctx.defects.context.CLASS_NAMES` order.
    n_boot
        Bootstrap replicates (over sites) of the intervals; 0 skips them.
    seed
        Seed of the bootstrap.

    Returns
    -------
    dict
        ``n``, ``accuracy``, ``kappa``, ``confusion`` (5 x 5, rows = labels), for every
        class ``<class>_precision``, ``_recall``, ``_f1``, ``n_<class>``, ``n_pred_<class>``,
        and 95 % percentile bootstrap intervals ``dopant_f1_ci``, ``V1_f1_ci``,
        ``V1_recall_ci``, ``kappa_ci`` as (low, high).
    """
    t = as_class_ids(labels, name="labels")
    p = as_class_ids(predicted, name="predicted")
    if t.shape != p.shape:
        raise ValueError(f"labels has {t.shape[0]} sites and predicted {p.shape[0]}; expected the same")
    out: dict[str, Any] = {"n": int(len(t)), "accuracy": float(np.mean(t == p)), "kappa": cohen_kappa(t, p),
                           "confusion": confusion_matrix(t, p)}
    scores = per_class_scores(t, p)
    for k, name in enumerate(CLASS_NAMES):
        out[f"{name}_precision"] = float(scores["precision"][k])
        out[f"{name}_recall"] = float(scores["recall"][k])
        out[f"{name}_f1"] = float(scores["f1"][k])
        out[f"n_{name}"] = int(scores["support"][k])
        out[f"n_pred_{name}"] = int(np.sum(p == k))
    if n_boot:
        dop, v1 = CLASS_NAMES.index("dopant"), CLASS_NAMES.index("V1")
        metrics: dict[str, Callable[[np.ndarray, np.ndarray], float]] = {
            "dopant_f1": lambda a, b: float(per_class_scores(a, b)["f1"][dop]),
            "V1_f1": lambda a, b: float(per_class_scores(a, b)["f1"][v1]),
            "V1_recall": lambda a, b: float(per_class_scores(a, b)["recall"][v1]),
            "kappa": cohen_kappa,
        }
        for name, metric in metrics.items():
            ci = bootstrap_ci(metric, t, p, n_boot=n_boot, seed=seed)
            out[f"{name}_ci"] = (ci["low"], ci["high"])
    return out


# -- prediction ---------------------------------------------------------------------------


def correct_priors(
    probs: np.ndarray, source_priors: Sequence[float] | np.ndarray, method: str = "EM"
) -> tuple[np.ndarray, np.ndarray]:
    """Adapt posteriors to the class priors of the data they were computed on.

    Parameters
    ----------
    probs
        (N, 5) calibrated posteriors under the training priors.
    source_priors
        Class frequencies of training (the released models: 0.2 each).
    method
        ``"none"`` (posteriors as they are) or ``"EM"`` (priors of the data estimated
        without labels by :func:`~tdmctx.defects.evaluate.em_priors`, posteriors adapted
        to them by Bayes' rule).

    Returns
    -------
    probs, priors
        The adapted (N, 5) posteriors and the (5,) priors they assume.
    """
    p = np.asarray(probs, dtype=np.float64)
    if method == "none":
        return p, np.asarray(source_priors, dtype=np.float64)
    if method == "EM":
        priors, adapted = em_priors(p, source_priors)
        return adapted, priors
    raise ValueError(f"method={method!r} is unknown; expected 'none' or 'EM'")


def correct_posteriors(
    probs: np.ndarray,
    source_priors: Sequence[float] | np.ndarray,
    correction: str = "EM",
    metal_site: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Apply one of :data:`CORRECTIONS` (all label-free) to calibrated posteriors.

    ``"none"`` and ``"EM"`` as :func:`correct_priors`; ``"sublattice"`` restricts each site
    to its sublattice's classes (:func:`restrict_to_sublattice`, needs ``metal_site``);
    ``"sublattice+EM"`` does that first, then estimates the priors by EM.

    Returns
    -------
    probs, priors
        Corrected (N, 5) posteriors and the (5,) class priors they assume.
    """
    if correction not in CORRECTIONS:
        raise ValueError(f"correction={correction!r} is unknown; expected one of {CORRECTIONS}")
    p = np.asarray(probs, dtype=np.float64)
    if correction.startswith("sublattice"):
        if metal_site is None:
            raise ValueError(f"correction={correction!r} needs metal_site, the (N,) metal-sublattice mask")
        p = restrict_to_sublattice(p, metal_site)
    return correct_priors(p, source_priors, "EM" if correction.endswith("EM") else "none")


@dataclass(frozen=True)
class SitePrediction:
    """A model's output on one field channel.

    Attributes
    ----------
    probs
        (N, 5) posteriors after temperature scaling and prior correction.
    predicted
        (N,) predicted class names.
    entropy_nats
        (N,) Shannon entropy of ``probs``, nats.
    priors
        (5,) class priors the posteriors assume.
    """

    probs: np.ndarray
    predicted: np.ndarray
    entropy_nats: np.ndarray
    priors: np.ndarray


def _classifier(model: Any) -> Classifier:
    """The model with its card readers (temperature, training priors): one place reads the card."""
    return model if isinstance(model, Classifier) else Classifier(model)


def calibrated_posteriors(
    model: Any,
    patches: np.ndarray,
    *,
    detector_mrad: tuple[float, float] | None = None,
    temperature: float | None = None,
    device: str | None = "cpu",
) -> np.ndarray:
    """Temperature-scaled posteriors under the training priors, (N, 5).

    Parameters
    ----------
    model
        A :class:`~tdmctx.defects.models.ContextClassifier` or :class:`~tdmctx.defects.Classifier`
        (its card gives the temperature; 1 without a card).
    patches
        (N, size, size) normalised patches.
    detector_mrad
        Assumed (inner, outer) angles, mrad; ``None``: unknown.
    temperature
        Overrides the card's temperature.
    device
        Torch device of the forward passes.
    """
    clf = _classifier(model)
    temp = clf.temperature if temperature is None else float(temperature)
    logits = clf.model.predict_logits(patches, ti_wse2_context(detector_mrad), device=device)
    return softmax(logits, temp)


def _prediction(probs: np.ndarray, source_priors: np.ndarray, correction: str,
                metal_site: np.ndarray | None = None) -> SitePrediction:
    adapted, prior = correct_posteriors(probs, source_priors, correction, metal_site)
    return SitePrediction(adapted, np.asarray(CLASS_NAMES)[adapted.argmax(1)], entropy(adapted), prior)


def predict_sites(
    model: Any,
    patches: np.ndarray,
    *,
    detector_mrad: tuple[float, float] | None = None,
    correction: str = "EM",
    metal_site: np.ndarray | None = None,
    temperature: float | None = None,
    device: str | None = "cpu",
) -> SitePrediction:
    """Classify the patches of one field channel.

    :func:`calibrated_posteriors`, then :func:`correct_posteriors` (``correction``, one of
    :data:`CORRECTIONS`) from the training priors of the model card (uniform without a
    card); the sublattice corrections need ``metal_site``.
    """
    probs = calibrated_posteriors(model, patches, detector_mrad=detector_mrad, temperature=temperature, device=device)
    return _prediction(probs, _classifier(model).train_priors, correction, metal_site)


# -- detector angles -------------------------------------------------------------------------


def _row(model: str, data: FieldData, detector: str, assumed: tuple[float, float] | None, correction: str,
         pred: SitePrediction, n_boot: int, seed: int) -> dict[str, Any]:
    s = score_sites(data.labels, pred.predicted, n_boot=n_boot, seed=seed)
    row = {"model": model, "field": data.field, "channel": data.channel, "detector": detector,
           "inner_mrad": np.nan if assumed is None else assumed[0],
           "outer_mrad": np.nan if assumed is None else assumed[1], "correction": correction,
           "accuracy": s["accuracy"], "kappa": s["kappa"]}
    for name in ("dopant", "V1"):
        row.update({f"{name}_{m}": s[f"{name}_{m}"] for m in ("precision", "recall", "f1")})
    if n_boot:
        row.update({"kappa_low": s["kappa_ci"][0], "kappa_high": s["kappa_ci"][1],
                    "dopant_f1_low": s["dopant_f1_ci"][0], "dopant_f1_high": s["dopant_f1_ci"][1],
                    "V1_f1_low": s["V1_f1_ci"][0], "V1_f1_high": s["V1_f1_ci"][1],
                    "V1_recall_low": s["V1_recall_ci"][0], "V1_recall_high": s["V1_recall_ci"][1]})
    row.update({"n_dopant": s["n_dopant"], "n_V1": s["n_V1"], "n_pred_dopant": s["n_pred_dopant"],
                "n_pred_V1": s["n_pred_V1"], "n_pred_V2": s["n_pred_V2"],
                "mean_entropy_nats": float(np.mean(pred.entropy_nats)),
                "prior_dopant": float(pred.priors[1]), "prior_V1": float(pred.priors[3]),
                "prior_V2": float(pred.priors[4])})
    return row


def evaluate_fields(
    models: Mapping[str, Any],
    *,
    fields: Sequence[int] | None = None,
    channels: Sequence[str] = CHANNELS,
    corrections: Sequence[str] = CORRECTIONS,
    infer: bool = True,
    curve: pd.DataFrame | None = None,
    tolerance: float = 0.10,
    n_boot: int = 1000,
    seed: int = 0,
    root: str | os.PathLike | None = None,
    progress: bool = True,
    return_details: bool = False,
) -> pd.DataFrame | tuple[pd.DataFrame, dict[str, Any]]:
    """Score the models on the labelled Ti-WSe2 fields.

    Parameters
    ----------
    models
        ``{name: model}``; models that use a context are run with the detector angles
        unknown and, with ``infer``, with the angles of :func:`~tdmctx.defects.detector_angles.infer_detector`;
        image-only models once (reported under ``detector = "unknown"``).
    fields, channels
        What to score (default: every field, both channels).
    corrections
        Posterior corrections to report (:data:`CORRECTIONS`).
    infer
        Also run with the label-free inferred detector angles.
    curve
        Simulated ratio table (default :func:`~tdmctx.defects.detector_angles.detector_ratio_curve`).
    tolerance
        Of :func:`~tdmctx.defects.detector_angles.infer_detector`.
    n_boot, seed
        Bootstrap of the intervals.
    return_details
        Also return ``{"data": {(field, channel): FieldData}, "predictions":
        {(model, field, channel, detector, correction): SitePrediction}, "inference":
        {(field, channel): dict}}`` for figures.

    Returns
    -------
    pandas.DataFrame
        One row per model, field, channel, detector (``unknown`` / ``inferred``) and
        ``correction``: accuracy, kappa, dopant and V1 precision/recall/F1 with bootstrap
        intervals, counts of labels and predictions (``n_pred_V2`` > 0 are errors),
        mean entropy, and the priors assumed for dopant, V1, V2.
    """
    from tdmctx.experimental import FIELDS, load_ti_wse2

    fields = FIELDS if fields is None else tuple(fields)
    if infer and curve is None:
        curve = detector_ratio_curve()
    rows, data_all, preds, inference = [], {}, {}, {}
    jobs = [(f, c) for f in fields for c in channels]
    loaded: dict[int, Any] = {}
    for field, channel in tqdm(jobs, desc="fields", disable=not progress):
        if field not in loaded:
            loaded = {field: load_ti_wse2(field, root=root)}
        data = load_field(field, channel, dataset=loaded[field])
        data_all[(field, channel)] = data
        detectors: dict[str, tuple[float, float] | None] = {"unknown": None}
        if infer:
            ratio = measured_chalcogen_ratio(data)
            inf = infer_detector(ratio, curve, tolerance=tolerance)
            inf["ratio"] = ratio
            inference[(field, channel)] = inf
            detectors["inferred"] = inf["assumed"]
        for name, model in models.items():
            uses = bool(getattr(model, "uses_context", True))
            for label, det in (detectors.items() if uses else [("unknown", None)]):
                # One forward pass serves every prior correction.
                probs = calibrated_posteriors(model, data.patches, detector_mrad=det)
                for method in corrections:
                    pred = _prediction(probs, _classifier(model).train_priors, method, data.metal_site)
                    preds[(name, field, channel, label, method)] = pred
                    rows.append(_row(name, data, label, det, method, pred, n_boot, seed))
    table = pd.DataFrame(rows)
    if return_details:
        return table, {"data": data_all, "predictions": preds, "inference": inference}
    return table


def detector_sweep(
    model: Any,
    data: Sequence[FieldData],
    sweep_mrad: Sequence[tuple[float, float]] = DEFAULT_SWEEP_MRAD,
    *,
    correction: str = "EM",
    progress: bool = True,
) -> pd.DataFrame:
    """Sensitivity of a context model's scores to the assumed detector angles.

    Parameters
    ----------
    model
        A context-aware model.
    data
        Field channels (:func:`load_field`).
    sweep_mrad
        (inner, outer) pairs to assume, mrad.
    correction
        Posterior correction (:data:`CORRECTIONS`).

    Returns
    -------
    pandas.DataFrame
        One row per field channel and angle pair: ``field``, ``channel``, ``inner_mrad``,
        ``outer_mrad``, ``accuracy``, ``kappa``, ``dopant_f1``, ``V1_f1``, ``n_pred_V2``,
        ``mean_entropy_nats``.
    """
    if not getattr(model, "uses_context", True):
        raise ValueError("model is image-only; a detector sweep needs a context-aware model")
    rows = []
    jobs = [(d, a) for d in data for a in sweep_mrad]
    for d, angles in tqdm(jobs, desc="sweep", disable=not progress):
        pred = predict_sites(model, d.patches, detector_mrad=angles, correction=correction, metal_site=d.metal_site)
        s = score_sites(d.labels, pred.predicted, n_boot=0)
        rows.append({"field": d.field, "channel": d.channel, "inner_mrad": float(angles[0]),
                     "outer_mrad": float(angles[1]), "accuracy": s["accuracy"], "kappa": s["kappa"],
                     "dopant_f1": s["dopant_f1"], "V1_f1": s["V1_f1"], "n_pred_V2": s["n_pred_V2"],
                     "mean_entropy_nats": float(np.mean(pred.entropy_nats))})
    return pd.DataFrame(rows)


def comparison_table(results: pd.DataFrame, baselines: pd.DataFrame | None = None, *,
                     corrections: Sequence[str] = ("EM", "sublattice+EM"), local_radius_px: float = 15.0,
                     baseline_method: str = "mixture") -> pd.DataFrame:
    """Networks and intensity baselines side by side, one row per field, channel and method.

    Parameters
    ----------
    results
        Output of :func:`evaluate_fields`.
    baselines
        Output of :func:`~tdmctx.defects.baseline.baseline_table` (``None``: computed).
    corrections
        Posterior corrections of the network rows shown.
    local_radius_px, baseline_method
        Which baseline variant to show (the label-free one and the oracle).

    Returns
    -------
    pandas.DataFrame
        ``field``, ``channel``, ``method``, ``kappa``, ``accuracy``, ``dopant_precision``,
        ``dopant_recall``, ``dopant_f1``, ``V1_f1``.
    """
    from tdmctx.defects.baseline import baseline_table

    cols = ["kappa", "accuracy", "dopant_precision", "dopant_recall", "dopant_f1", "V1_f1"]
    net = results[results["correction"].isin(corrections)].copy()
    angles = np.where(net["model"] == "image-only", "", "angles " + net["detector"] + ", ")
    net["method"] = net["model"] + " (" + angles + net["correction"] + ")"
    frames = [net[["field", "channel", "method"] + cols]]
    if baselines is None:
        baselines = baseline_table(sorted(set(results["field"])), local_radii_px=(local_radius_px,),
                                   methods=(baseline_method,))
    b = baselines[np.isclose(baselines["local_radius_px"].astype(float), local_radius_px)
                  & baselines["variant"].isin([baseline_method, "oracle"])].copy()
    b["method"] = np.where(b["variant"] == "oracle", "intensity oracle (label-tuned)", "intensity, label-free")
    frames.append(b[["field", "channel", "method"] + cols])
    return pd.concat(frames, ignore_index=True).reset_index(drop=True)

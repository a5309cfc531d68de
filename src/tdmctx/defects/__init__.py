"""Doped TMD monolayers: catalog, imaging conditions, ADF simulation, dataset store, patches.

The dataset (catalog, conditions, simulation, store, patches) and the classifiers trained on it
(models, training, evaluation, the intensity baseline). Typical use::

    from tdmctx.defects import catalog, imaging_conditions, build_dataset, patch_loader

    ds = build_dataset(cache_dir("defects", "quick"), profile="quick")
    for batch in patch_loader(ds, batch_size=256):
        ...
"""

from tdmctx.defects.ablation import GRID, AblationResult, AblationSpec, TrainSettings, run_ablation
from tdmctx.defects.acquisition import ScanSettings
from tdmctx.defects.baseline import baseline_table, intensity_baseline, oracle_baseline, split_sublattices
from tdmctx.defects.classifier import Classifier
from tdmctx.defects.catalog import HOSTS, Host, System, catalog, get_host, get_system, hosts
from tdmctx.defects.conditions import ImagingCondition, ProbeSettings, get_condition, imaging_conditions
from tdmctx.defects.config import FAST_TOLERANCE, PROFILES, BuildConfig, profile_config
from tdmctx.defects.context import CLASS_IDS, CLASS_NAMES, CONTEXT_FIELDS, Context
from tdmctx.defects.evaluate import (
    accuracy,
    bootstrap_ci,
    classification_summary,
    cohen_kappa,
    confusion_matrix,
    em_priors,
    entropy_reduction,
    expected_calibration_error,
    fit_temperature,
    macro_f1,
    mean_entropy,
    paired_bootstrap,
    per_class_scores,
    prior_shift,
)
from tdmctx.defects.fastmodel import FastModel, calibrate, compare
from tdmctx.defects.label_audit import LabelAudit, audit_labels
from tdmctx.defects.models import FIELD_SETS, VARIANTS, ContextClassifier, encode_contexts
from tdmctx.defects.patches import PATCH, Augmentation, PatchSampler, PatchSpec, extract_patches, image_contexts, patch_loader
from tdmctx.defects.portable import export_dataset
from tdmctx.defects.ranking import dopant_ranking
from tdmctx.defects.two_channel import TwoChannelSampler, two_channel_patches
from tdmctx.defects.simulate import MultisliceSettings, simulate_adf
from tdmctx.defects.splits import Split, SplitUnavailable, make_split, plan_splits
from tdmctx.defects.store import StoreError, build_dataset, completed_cases, open_case, open_dataset
from tdmctx.defects.structures import Concentrations, Supercell, build_supercell
from tdmctx.defects.train import init_distributed, predict_loader, train

__all__ = [
    "GRID",
    "AblationResult",
    "AblationSpec",
    "TrainSettings",
    "run_ablation",
    "Split",
    "SplitUnavailable",
    "make_split",
    "plan_splits",
    "Classifier",
    "ContextClassifier",
    "FIELD_SETS",
    "VARIANTS",
    "encode_contexts",
    "train",
    "predict_loader",
    "init_distributed",
    "accuracy",
    "bootstrap_ci",
    "classification_summary",
    "cohen_kappa",
    "confusion_matrix",
    "em_priors",
    "entropy_reduction",
    "expected_calibration_error",
    "fit_temperature",
    "macro_f1",
    "mean_entropy",
    "paired_bootstrap",
    "per_class_scores",
    "prior_shift",
    "baseline_table",
    "audit_labels",
    "dopant_ranking",
    "LabelAudit",
    "intensity_baseline",
    "oracle_baseline",
    "split_sublattices",
    "Augmentation",
    "BuildConfig",
    "CLASS_IDS",
    "CLASS_NAMES",
    "CONTEXT_FIELDS",
    "Concentrations",
    "Context",
    "FAST_TOLERANCE",
    "FastModel",
    "HOSTS",
    "Host",
    "ImagingCondition",
    "MultisliceSettings",
    "PATCH",
    "PROFILES",
    "PatchSampler",
    "PatchSpec",
    "ProbeSettings",
    "ScanSettings",
    "StoreError",
    "Supercell",
    "System",
    "build_dataset",
    "build_supercell",
    "calibrate",
    "catalog",
    "compare",
    "completed_cases",
    "extract_patches",
    "get_condition",
    "get_host",
    "get_system",
    "hosts",
    "image_contexts",
    "imaging_conditions",
    "open_case",
    "open_dataset",
    "export_dataset",
    "TwoChannelSampler",
    "two_channel_patches",
    "patch_loader",
    "profile_config",
    "simulate_adf",
]

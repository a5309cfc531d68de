"""Train / validation / test splits of a dataset store, by simulated structure, never by patch.

Patches cut from one image overlap and share the image's noise-free signal; the two
detector images of one energy show the *same* atoms (variable ``structure``). A split that
put a patch, an image or a structure on both sides would measure memory, not
generalisation. Every split here therefore assigns whole structures: all images of a
structure land in one part, or (when the split holds out a condition or a dopant and the
structure has images on both sides) its images outside the test conditions are left out of
training altogether and counted in :attr:`Split.dropped`.

Three kinds:

``"image"``
    Held-out structures within every case: each system and energy gives some structures
    (with both their detector images) to validation and some to test, the rest to
    training (every condition and system is seen in every part).
``"condition"``
    Every image of the held-out condition(s) is test; validation is a share of the
    structures of the other conditions.
``"dopant"``
    Every system with a held-out dopant is test (systems never seen in training);
    possible only when the store holds several dopants, else :class:`SplitUnavailable`.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import xarray as xr

__all__ = ["SPLIT_KINDS", "Split", "SplitUnavailable", "make_split", "plan_splits"]

#: Kinds of split (see the module docstring).
SPLIT_KINDS: tuple[str, ...] = ("image", "condition", "dopant")


class SplitUnavailable(ValueError):
    """The store cannot support this split (e.g. one dopant only: nothing to hold out)."""


@dataclass(frozen=True)
class Split:
    """Image indices of the three parts of a split.

    Attributes
    ----------
    kind
        ``"image"``, ``"condition"`` or ``"dopant"``.
    train, val, test
        Sorted indices along the store's ``image`` dimension; pairwise disjoint and
        sharing no ``structure``.
    held_out
        What the test part holds out: conditions or dopants (empty for ``"image"``).
    dropped
        Images in no part (their structure is imaged in a test condition).
    seed
        Seed of the draw.
    """

    kind: str
    train: np.ndarray
    val: np.ndarray
    test: np.ndarray
    held_out: tuple[str, ...] = ()
    dropped: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    seed: int = 0

    @property
    def name(self) -> str:
        """Readable name, e.g. ``"condition: 80kV-MAADF"``."""
        return self.kind if not self.held_out else f"{self.kind}: {', '.join(self.held_out)}"

    @property
    def key(self) -> str:
        """Short hash of the kind and the three index sets (cache folders of trained models)."""
        text = json.dumps([self.kind, list(self.held_out)] + [p.tolist() for p in (self.train, self.val, self.test)])
        return f"{self.kind}-{hashlib.sha1(text.encode()).hexdigest()[:10]}"

    def summary(self, dataset: xr.Dataset) -> dict[str, int]:
        """Images and labelled sites of each part."""
        site_image = np.asarray(dataset["site_image"].values)
        out = {}
        for part in ("train", "val", "test", "dropped"):
            idx = getattr(self, part)
            out[f"{part} images"] = len(idx)
            out[f"{part} sites"] = int(np.isin(site_image, idx).sum())
        return out


def _column(dataset: xr.Dataset, name: str) -> np.ndarray:
    if name not in dataset:
        raise ValueError(f"dataset has no variable {name!r}; expected a store opened with open_dataset")
    return np.asarray(dataset[name].values).astype(str)


def _structures(dataset: xr.Dataset) -> np.ndarray:
    # A store without a structure variable (hand-made test sets): each image is its own.
    if "structure" in dataset:
        return _column(dataset, "structure")
    return np.array([f"image{i}" for i in range(dataset.sizes["image"])])


def _strata(dataset: xr.Dataset, structure: np.ndarray, mask: np.ndarray | None = None) -> dict[str, list[str]]:
    """Structures grouped by the set of cases that image them (e.g. both detectors of one energy).

    Drawing a share of each group keeps every case represented in every part, and draws
    each structure once however many cases image it.
    """
    mask = np.ones(len(structure), bool) if mask is None else mask
    cases = _column(dataset, "case_id") if "case_id" in dataset else np.full(len(structure), "all")
    seen: dict[str, set] = {}
    for s, c in zip(structure[mask], cases[mask]):
        seen.setdefault(s, set()).add(c)
    strata: dict[str, list[str]] = {}
    for s, cs in seen.items():
        strata.setdefault(" + ".join(sorted(cs)), []).append(s)
    return {k: sorted(v) for k, v in sorted(strata.items())}


def _check_fraction(value: float, name: str) -> float:
    if not 0.0 < value < 1.0:
        raise ValueError(f"{name}={value!r} must be a fraction in (0, 1)")
    return float(value)


def _draw_structures(structures: Sequence[str], n_val: int, n_test: int, rng: np.random.Generator) -> tuple[set, set]:
    order = rng.permutation(sorted(set(structures)))
    return set(order[:n_val]), set(order[n_val : n_val + n_test])


def _parts(structure: np.ndarray, candidates: np.ndarray, val: set, test: set) -> tuple[np.ndarray, ...]:
    in_val = np.isin(structure, list(val)) & candidates
    in_test = np.isin(structure, list(test)) & candidates
    train = candidates & ~in_val & ~in_test
    return tuple(np.flatnonzero(m).astype(np.int64) for m in (train, in_val, in_test))


def _held_out_split(
    dataset: xr.Dataset, kind: str, mask: np.ndarray, held: tuple[str, ...], val_fraction: float, seed: int
) -> Split:
    structure = _structures(dataset)
    test = np.flatnonzero(mask).astype(np.int64)
    # Other images of a test structure (the other detector at the same energy) see the
    # same atoms: they may not train the model.
    shared = np.isin(structure, structure[test]) & ~mask
    rest = ~mask & ~shared
    rng = np.random.default_rng(seed)
    val = set()
    for here in _strata(dataset, structure, rest).values():
        n_val = max(1, int(round(val_fraction * len(here)))) if len(here) > 1 else 0
        val |= _draw_structures(here, n_val, 0, rng)[0]
    train, val_idx, _ = _parts(structure, rest, val, set())
    if len(train) == 0 or len(val_idx) == 0:
        raise SplitUnavailable(f"holding out {held} leaves {len(train)} training and {len(val_idx)} validation images")
    return Split(kind, train, val_idx, test, held, np.flatnonzero(shared).astype(np.int64), seed)


def make_split(
    dataset: xr.Dataset,
    kind: str = "image",
    *,
    held_out: Sequence[str] | str | None = None,
    val_fraction: float = 0.15,
    test_fraction: float = 0.25,
    seed: int = 0,
) -> Split:
    """Split a store's images by structure (see the module docstring).

    Parameters
    ----------
    dataset
        :func:`~tdmctx.defects.store.open_dataset` output.
    kind
        ``"image"``, ``"condition"`` or ``"dopant"``.
    held_out
        For ``"condition"``: condition name(s) such as ``"80kV-MAADF"`` (default: the
        alphabetically first condition); for ``"dopant"``: element symbol(s) (default: a
        quarter of the dopants, drawn with ``seed``). Ignored for ``"image"``.
    val_fraction
        Share of the structures of every system and energy (both detectors image the
        same structures; of the training ones for held-out splits) used for validation:
        early stopping and temperature scaling.
    test_fraction
        Share of the structures of every system and energy held out for test
        (``"image"`` only).
    seed
        Seed of the draw.

    Returns
    -------
    Split

    Raises
    ------
    SplitUnavailable
        If the store cannot support the split (a single dopant; a case with too few
        structures; nothing left to train on).
    ValueError
        For an unknown kind, fraction or held-out name.
    """
    if kind not in SPLIT_KINDS:
        raise ValueError(f"kind={kind!r} is not a split kind; expected one of {SPLIT_KINDS}")
    val_fraction = _check_fraction(val_fraction, "val_fraction")
    names = (held_out,) if isinstance(held_out, str) else tuple(held_out or ())
    if kind == "image":
        test_fraction = _check_fraction(test_fraction, "test_fraction")
        if val_fraction + test_fraction >= 1:
            raise ValueError(f"val_fraction + test_fraction = {val_fraction + test_fraction:g} must be < 1")
        structure = _structures(dataset)
        rng = np.random.default_rng(seed)
        val, test = set(), set()
        for stratum, here in _strata(dataset, structure).items():
            n_val = max(1, int(round(val_fraction * len(here))))
            n_test = max(1, int(round(test_fraction * len(here))))
            if n_val + n_test >= len(here):
                raise SplitUnavailable(f"case(s) {stratum} have {len(here)} structure(s); a held-out-image split "
                                       f"needs at least {n_val + n_test + 1} (one to train on)")
            v, t = _draw_structures(here, n_val, n_test, rng)
            val |= v
            test |= t
        # Structures are per energy and shared by the detectors of that energy, so both
        # images of one structure follow it into the same part.
        train, val_idx, test_idx = _parts(structure, np.ones(len(structure), bool), val, test)
        return Split("image", train, val_idx, test_idx, (), np.zeros(0, np.int64), seed)
    if kind == "condition":
        conditions = _column(dataset, "condition")
        available = sorted(str(c) for c in set(conditions))
        names = names or (available[0],)
        unknown = [c for c in names if c not in available]
        if unknown:
            raise ValueError(f"held_out={unknown} names no condition of the store; expected some of {available}")
        if set(names) == set(available):
            raise SplitUnavailable(f"holding out every condition {available} leaves nothing to train on")
        return _held_out_split(dataset, "condition", np.isin(conditions, names), names, val_fraction, seed)
    dopants = _column(dataset, "dopant")
    available = sorted(str(d) for d in set(dopants) - {""})
    if len(available) < 2:
        raise SplitUnavailable(f"the store holds {len(available)} dopant(s) {available}; a held-out-dopant split "
                               "needs at least two (use the medium or paper profile)")
    if not names:
        rng = np.random.default_rng(seed)
        names = tuple(sorted(rng.choice(available, max(1, len(available) // 4), replace=False).tolist()))
    unknown = [d for d in names if d not in available]
    if unknown:
        raise ValueError(f"held_out={unknown} names no dopant of the store; expected some of {available}")
    if set(names) == set(available):
        raise SplitUnavailable(f"holding out every dopant {available} leaves nothing to train on")
    return _held_out_split(dataset, "dopant", np.isin(dopants, names), names, val_fraction, seed)


def plan_splits(
    dataset: xr.Dataset,
    kinds: Sequence[str],
    *,
    held_out: Mapping[str, Sequence[str] | str] | None = None,
    seed: int = 0,
    **kwargs,
) -> tuple[dict[str, Split], dict[str, str]]:
    """The splits a store supports, and why the others were skipped.

    Parameters
    ----------
    kinds
        Split kinds to try, e.g. ``("image", "condition", "dopant")``.
    held_out
        ``kind -> held-out names`` (e.g. ``{"condition": ["80kV-MAADF"]}``); defaults of
        :func:`make_split` for the kinds it does not name.
    seed, kwargs
        Passed to :func:`make_split` (``val_fraction``, ``test_fraction``).

    Returns
    -------
    splits, skipped
        ``kind -> Split`` for the possible ones; ``kind -> reason`` for the others.
    """
    splits, skipped = {}, {}
    for kind in kinds:
        try:
            splits[kind] = make_split(dataset, kind, held_out=(held_out or {}).get(kind), seed=seed, **kwargs)
        except SplitUnavailable as exc:
            skipped[kind] = str(exc)
    return splits, skipped

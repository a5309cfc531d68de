"""Dataset build settings and the ``quick`` / ``multi`` / ``medium`` / ``paper`` profiles.

A :class:`BuildConfig` fixes everything that changes the content of a store (which
systems and conditions, cell sizes, defect concentrations, simulation accuracy, scan and
the fast-engine tolerance). It is written into the store, and a rerun with different
settings on the same store is refused rather than silently mixed.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, replace
from typing import Any

from tdmctx.defects.acquisition import ScanSettings
from tdmctx.defects.catalog import catalog, get_system
from tdmctx.defects.conditions import get_condition, imaging_conditions
from tdmctx.defects.simulate import MultisliceSettings
from tdmctx.defects.structures import ENRICHED_CONCENTRATIONS, REALISTIC_CONCENTRATIONS, Concentrations

__all__ = ["FAST_TOLERANCE", "BuildConfig", "PROFILES", "profile_config"]

#: Largest error of the fast engine, on a held-out cell, under which it replaces
#: abTEM for a case: RMS difference of the column intensities (integrated within 0.8 A of
#: each column) / mean metal-column intensity, counted beyond the frozen-phonon noise of
#: the abTEM reference itself when the run can estimate it
#: (:func:`tdmctx.defects.fastmodel.compare`, ``column_excess``). 5 % is a sixth of the
#: smallest intensity gap between the metal, X2, V1 and V2 classes of these hosts
#: (>= 30 %); dopants closer to the host metal than that are hard for any engine.
FAST_TOLERANCE = 0.05


@dataclass(frozen=True)
class BuildConfig:
    """Everything that determines the content of a dataset store.

    Attributes
    ----------
    systems
        Catalog system names (``"WSe2:Ti"``); empty means all 96.
    conditions
        Condition names (``"80kV-HAADF"``); empty means all 6.
    images_per_case
        Fields rendered per case by the fast engine.
    field_repeats
        (nx, ny) orthogonal cells per fast-engine field.
    calibration_repeats
        (nx, ny) of the calibration and validation cells simulated with abTEM.
    fallback_cells
        abTEM cells simulated per case where the fast engine misses the tolerance
        (the calibration and validation cells count among them).
    concentrations
        Defect fractions of the rendered fields.
    multislice
        abTEM settings (phonon configurations, focal-spread samples, sampling).
    engine
        abTEM engine of the calibration runs: ``"prism"`` (interpolation 1, equal to
        multislice to < 1e-3, ~5x faster on small cells) or ``"multislice"``.
    fast_tolerance
        See :data:`FAST_TOLERANCE`.
    scan
        Scan step, distortions and margins.
    seed
        Root seed; every case derives its own from it and its name.
    """

    systems: tuple[str, ...] = ()
    conditions: tuple[str, ...] = ()
    images_per_case: int = 16
    field_repeats: tuple[int, int] = (12, 7)
    calibration_repeats: tuple[int, int] = (3, 2)
    fallback_cells: int = 2
    concentrations: Concentrations = ENRICHED_CONCENTRATIONS
    multislice: MultisliceSettings = field(default_factory=MultisliceSettings)
    engine: str = "prism"
    fast_tolerance: float = FAST_TOLERANCE
    scan: ScanSettings = field(default_factory=ScanSettings)
    seed: int = 0

    def __post_init__(self) -> None:
        for name in self.systems:
            get_system(name)
        for name in self.conditions:
            get_condition(name)
        if int(self.images_per_case) < 1:
            raise ValueError(f"images_per_case={self.images_per_case!r} must be >= 1")
        if int(self.fallback_cells) < 2:
            raise ValueError(f"fallback_cells={self.fallback_cells!r} must be >= 2 (calibration and validation cells)")
        if self.engine not in ("prism", "multislice"):
            raise ValueError(f"engine={self.engine!r} is unknown; expected 'prism' or 'multislice'")
        if not self.fast_tolerance >= 0:
            raise ValueError(f"fast_tolerance={self.fast_tolerance!r} must be >= 0")

    def system_names(self) -> tuple[str, ...]:
        """Systems of the build (all 96 when none are named)."""
        return self.systems or tuple(s.name for s in catalog())

    def condition_names(self) -> tuple[str, ...]:
        """Conditions of the build (all 6 when none are named)."""
        return self.conditions or tuple(c.name for c in imaging_conditions())

    def energies_eV(self) -> tuple[float, ...]:
        """Beam energies needed: one abTEM run per system and energy serves its detectors."""
        return tuple(sorted({get_condition(n).energy_eV for n in self.condition_names()}))

    def to_json(self) -> str:
        """Stable JSON text of the settings (stored in the dataset)."""
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> BuildConfig:
        """Inverse of :meth:`to_json`."""
        raw: dict[str, Any] = json.loads(text)
        raw["systems"] = tuple(raw["systems"])
        raw["conditions"] = tuple(raw["conditions"])
        raw["field_repeats"] = tuple(raw["field_repeats"])
        raw["calibration_repeats"] = tuple(raw["calibration_repeats"])
        raw["concentrations"] = Concentrations(**raw["concentrations"])
        raw["multislice"] = MultisliceSettings(**raw["multislice"])
        raw["scan"] = ScanSettings(**raw["scan"])
        return cls(**raw)

    def with_overrides(self, **overrides: Any) -> BuildConfig:
        """Copy with some fields replaced (names checked)."""
        valid = set(self.__dataclass_fields__)
        bad = sorted(set(overrides) - valid)
        if bad:
            raise ValueError(f"unknown BuildConfig field(s) {bad}; expected some of {sorted(valid)}")
        return replace(self, **overrides)


_MEDIUM_SYSTEMS = tuple(f"{h}:{d}" for h in ("MoS2", "MoSe2", "WS2", "WSe2") for d in ("Ti", "V", "Nb", "Re", "Cr", "Pt"))

#: Named build profiles. ``quick`` is one system (Ti in WSe2, which the experimental
#: chapter needs) under all six conditions with enriched defects; ``multi`` the same
#: settings for four dopants of very different Z (Ti, V, Nb, Re) in two hosts (WSe2, MoS2),
#: the smallest store in which composition is a context worth knowing and a dopant can be
#: held out (CPU-sized); ``wide`` the 24 systems of ``medium`` (six dopants on every host)
#: at the ``multi`` simulation settings and 12 images per case (about 40 minutes on two
#: cores, and small enough to carry to a GPU as one file); ``medium`` the same systems
#: simulated more accurately; ``paper`` the full 96 x 6 with realistic concentrations.
PROFILES: dict[str, BuildConfig] = {
    "quick": BuildConfig(
        systems=("WSe2:Ti",),
        images_per_case=16,
        field_repeats=(12, 7),
        fallback_cells=10,
        multislice=MultisliceSettings(num_phonon_configs=4),
    ),
    "multi": BuildConfig(
        systems=tuple(f"{h}:{d}" for h in ("WSe2", "MoS2") for d in ("Ti", "V", "Nb", "Re")),
        images_per_case=16,
        field_repeats=(12, 7),
        fallback_cells=10,
        multislice=MultisliceSettings(num_phonon_configs=4),
    ),
    "wide": BuildConfig(
        systems=_MEDIUM_SYSTEMS,
        images_per_case=12,
        field_repeats=(12, 7),
        fallback_cells=10,
        multislice=MultisliceSettings(num_phonon_configs=4),
    ),
    "medium": BuildConfig(
        systems=_MEDIUM_SYSTEMS,
        images_per_case=24,
        field_repeats=(14, 8),
        fallback_cells=16,
        multislice=MultisliceSettings(num_phonon_configs=8, focal_spread_samples=3),
    ),
    "paper": BuildConfig(
        images_per_case=48,
        field_repeats=(16, 9),
        fallback_cells=24,
        concentrations=REALISTIC_CONCENTRATIONS,
        multislice=MultisliceSettings(num_phonon_configs=16, focal_spread_samples=5),
    ),
}


def profile_config(profile: str, **overrides: Any) -> BuildConfig:
    """Return the :class:`BuildConfig` of a named profile, with optional overrides.

    Raises
    ------
    ValueError
        If the profile is unknown or an override names no field.
    """
    if profile not in PROFILES:
        raise ValueError(f"profile={profile!r} is unknown; expected one of {sorted(PROFILES)}")
    return PROFILES[profile].with_overrides(**overrides) if overrides else PROFILES[profile]

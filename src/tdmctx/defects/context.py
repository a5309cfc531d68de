"""The imaging context of a defect column: composition, beam energy and detector angles.

One dataclass, :class:`Context`, carries the six fields of the design notes. Any field
may be ``None`` (unknown); the classifiers accept that, and nothing here ever fills an
unknown value with a default. Validation happens on construction, so a context that
exists is a context that makes physical sense.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields, replace
from typing import Any

from ase.data import atomic_numbers, chemical_symbols

__all__ = [
    "CLASS_NAMES",
    "CLASS_IDS",
    "CONTEXT_FIELDS",
    "CHALCOGENS",
    "ENERGY_RANGE_EV",
    "Context",
    "element_symbol",
]

#: Column classes in the order used everywhere (integer ids 0-4); files store the names.
CLASS_NAMES: tuple[str, ...] = ("metal", "dopant", "X2", "V1", "V2")
#: Class name -> integer id.
CLASS_IDS: dict[str, int] = {name: i for i, name in enumerate(CLASS_NAMES)}

#: The fields of :class:`Context`, in order.
CONTEXT_FIELDS: tuple[str, ...] = (
    "host_metal",
    "chalcogen",
    "dopant",
    "energy_eV",
    "detector_inner_mrad",
    "detector_outer_mrad",
)

#: Chalcogens that form transition-metal dichalcogenides.
CHALCOGENS: tuple[str, ...] = ("S", "Se", "Te")

#: Beam energies accepted, eV: the range of transmission electron microscopes in use
#: (20 kV low-voltage instruments up to 400 kV).
ENERGY_RANGE_EV: tuple[float, float] = (20e3, 400e3)

# Annular detectors beyond ~1 rad do not exist in STEM; a larger value is a unit mistake
# (degrees or rad passed as mrad), which we prefer to catch.
_MAX_ANGLE_MRAD = 1000.0


def element_symbol(value: str | int, name: str = "element") -> str:
    """Return the canonical chemical symbol for a symbol or an atomic number.

    Parameters
    ----------
    value
        A symbol in any capitalisation (``"ti"``, ``"Ti"``) or an atomic number (22).
    name
        Name of the argument, used in the error message.

    Raises
    ------
    ValueError
        If ``value`` names no chemical element.
    """
    if isinstance(value, bool):
        raise ValueError(f"{name}={value!r} is not a chemical element; expected a symbol such as 'W' or an atomic number")
    if isinstance(value, int):
        if 1 <= value < len(chemical_symbols):
            return chemical_symbols[value]
        raise ValueError(f"{name}={value!r} is not an atomic number; expected 1-{len(chemical_symbols) - 1}")
    if isinstance(value, str):
        symbol = value.strip().capitalize()
        if symbol in atomic_numbers and symbol != "X":
            return symbol
    raise ValueError(f"{name}={value!r} is not a chemical element; expected a symbol such as 'W', 'Se' or 'Ti'")


def _check_angle(value: float | None, name: str) -> float | None:
    if value is None:
        return None
    try:
        angle = float(value)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{name}={value!r} is not a number; expected an angle in mrad") from exc
    if not (math.isfinite(angle) and 0.0 <= angle <= _MAX_ANGLE_MRAD):
        raise ValueError(f"{name}={value!r} mrad is out of range; expected 0-{_MAX_ANGLE_MRAD:g} mrad")
    return angle


@dataclass(frozen=True)
class Context:
    """What is known about how a column was imaged.

    Parameters
    ----------
    host_metal
        Metal of the host lattice (``"W"``), or ``None`` if unknown.
    chalcogen
        Chalcogen of the host (``"S"``, ``"Se"`` or ``"Te"``), or ``None``.
    dopant
        Substitutional dopant on the metal site (``"Ti"``), or ``None``.
    energy_eV
        Beam energy, eV (within :data:`ENERGY_RANGE_EV`), or ``None``.
    detector_inner_mrad, detector_outer_mrad
        Annular detector collection semi-angles, mrad, or ``None``. When both are known,
        inner must be smaller than outer.

    Symbols are normalised (``"ti"`` becomes ``"Ti"``; atomic numbers are accepted).

    Raises
    ------
    ValueError
        For an unknown element, a chalcogen that is not S/Se/Te, a dopant equal to the
        host metal, an energy out of range, or detector angles that are negative, too
        large or not ordered.
    """

    host_metal: str | None = None
    chalcogen: str | None = None
    dopant: str | None = None
    energy_eV: float | None = None
    detector_inner_mrad: float | None = None
    detector_outer_mrad: float | None = None

    def __post_init__(self) -> None:
        # frozen dataclass: normalised values are written with object.__setattr__.
        set_ = object.__setattr__
        for name in ("host_metal", "chalcogen", "dopant"):
            value = getattr(self, name)
            if value is not None:
                set_(self, name, element_symbol(value, name))
        if self.chalcogen is not None and self.chalcogen not in CHALCOGENS:
            raise ValueError(f"chalcogen={self.chalcogen!r} is not a chalcogen; expected one of {CHALCOGENS}")
        if self.host_metal is not None and self.host_metal in CHALCOGENS:
            raise ValueError(f"host_metal={self.host_metal!r} is a chalcogen; expected the metal of the host")
        if self.dopant is not None and self.dopant == self.host_metal:
            raise ValueError(f"dopant={self.dopant!r} equals host_metal; a substitutional dopant must differ from the host metal")
        if self.energy_eV is not None:
            try:
                energy = float(self.energy_eV)
            except (TypeError, ValueError) as exc:
                raise ValueError(f"energy_eV={self.energy_eV!r} is not a number; expected eV") from exc
            lo, hi = ENERGY_RANGE_EV
            if not (math.isfinite(energy) and lo <= energy <= hi):
                raise ValueError(
                    f"energy_eV={self.energy_eV!r} is out of range; expected {lo:g}-{hi:g} eV "
                    "(did you pass kV? 80 kV is 80000 eV)"
                )
            set_(self, "energy_eV", energy)
        inner = _check_angle(self.detector_inner_mrad, "detector_inner_mrad")
        outer = _check_angle(self.detector_outer_mrad, "detector_outer_mrad")
        if inner is not None and outer is not None and not inner < outer:
            raise ValueError(
                f"detector_inner_mrad={inner:g} must be smaller than detector_outer_mrad={outer:g}"
            )
        set_(self, "detector_inner_mrad", inner)
        set_(self, "detector_outer_mrad", outer)

    # -- atomic numbers -------------------------------------------------------------
    @property
    def host_metal_Z(self) -> int | None:
        """Atomic number of the host metal, or ``None``."""
        return None if self.host_metal is None else atomic_numbers[self.host_metal]

    @property
    def chalcogen_Z(self) -> int | None:
        """Atomic number of the chalcogen, or ``None``."""
        return None if self.chalcogen is None else atomic_numbers[self.chalcogen]

    @property
    def dopant_Z(self) -> int | None:
        """Atomic number of the dopant, or ``None``."""
        return None if self.dopant is None else atomic_numbers[self.dopant]

    @property
    def host(self) -> str | None:
        """Host formula such as ``"WSe2"`` when metal and chalcogen are known."""
        if self.host_metal is None or self.chalcogen is None:
            return None
        return f"{self.host_metal}{self.chalcogen}2"

    # -- conversions ----------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """Return the six fields as a plain dict (``None`` for unknown)."""
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> Context:
        """Build a context from a mapping; keys outside :data:`CONTEXT_FIELDS` are an error.

        Float NaN and empty strings (how tables store missing values) mean unknown.
        """
        unknown = set(values) - set(CONTEXT_FIELDS)
        if unknown:
            raise ValueError(f"unknown context field(s) {sorted(unknown)}; expected a subset of {CONTEXT_FIELDS}")
        clean = {}
        for key, value in values.items():
            if value is None or (isinstance(value, float) and math.isnan(value)) or value == "":
                clean[key] = None
            else:
                clean[key] = value
        return cls(**clean)

    def masked(self, *names: str) -> Context:
        """Return a copy with the named fields set to unknown (``None``).

        Used for context dropout and for running with, e.g., unknown detector angles.
        """
        valid = {f.name for f in fields(self)}
        bad = [n for n in names if n not in valid]
        if bad:
            raise ValueError(f"cannot mask {bad}; expected field names from {CONTEXT_FIELDS}")
        return replace(self, **{n: None for n in names})

    @property
    def is_complete(self) -> bool:
        """True when every field is known."""
        return all(getattr(self, n) is not None for n in CONTEXT_FIELDS)

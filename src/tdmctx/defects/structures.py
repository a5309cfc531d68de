"""Orthogonal monolayer supercells with random point defects, and their column site tables.

A 1H MX2 monolayer seen along c is a honeycomb of two kinds of atomic columns: metal
columns (one M atom) and chalcogen columns (two X atoms stacked along the beam, ``X2``).
The defects of the study live on those columns:

===========  =============================================================
``metal``    host metal
``dopant``   substitutional dopant on a metal site
``X2``       intact chalcogen column
``V1``       chalcogen column that lost one of its two atoms
``V2``       empty chalcogen column (both atoms missing)
===========  =============================================================

The orthogonal cell is ``a x sqrt(3) a`` with two metal and two chalcogen columns; a
supercell repeats it ``(nx, ny)`` times. Atoms are not relaxed around defects: ADF
contrast of a monolayer is dominated by which atoms are in a column, and the simulated
images are compared at column positions.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
from ase import Atoms

from tdmctx.defects.catalog import System
from tdmctx.defects.context import CLASS_NAMES

__all__ = [
    "Concentrations",
    "REALISTIC_CONCENTRATIONS",
    "ENRICHED_CONCENTRATIONS",
    "Supercell",
    "build_supercell",
    "repeats_for_extent",
    "class_counts",
]


@dataclass(frozen=True)
class Concentrations:
    """Defect fractions per sublattice.

    Attributes
    ----------
    dopant
        Fraction of metal sites occupied by the dopant.
    V1, V2
        Fractions of chalcogen columns missing one / both atoms.
    """

    dopant: float
    V1: float
    V2: float

    def __post_init__(self) -> None:
        for name in ("dopant", "V1", "V2"):
            value = getattr(self, name)
            if not (isinstance(value, (int, float)) and 0.0 <= value <= 1.0):
                raise ValueError(f"concentration {name}={value!r} must be a fraction in [0, 1]")
        if self.V1 + self.V2 > 1.0:
            raise ValueError(f"V1 + V2 = {self.V1 + self.V2:g} exceeds 1; they share the chalcogen sublattice")


#: Concentrations like those of the labelled Ti-WSe2 fields (Ti 3.7-8.8 % of metal sites,
#: V1 0.1-0.5 % of chalcogen columns); V2 is rarer still.
REALISTIC_CONCENTRATIONS = Concentrations(dopant=0.05, V1=0.01, V2=0.002)

#: Enriched fractions so that every class has hundreds of sites in a small build.
ENRICHED_CONCENTRATIONS = Concentrations(dopant=0.2, V1=0.15, V2=0.1)


@dataclass(frozen=True)
class Supercell:
    """A defective monolayer and its labelled columns.

    Attributes
    ----------
    atoms
        The ase structure; cell ``(Lx, Ly, Lz)`` orthogonal, the layer in its middle.
    points_A
        (N, 2) column positions (x, y), Angstrom, inside ``[0, Lx) x [0, Ly)``.
    labels
        (N,) class names from :data:`~tdmctx.defects.context.CLASS_NAMES`.
    system
        The catalog system.
    repeats
        (nx, ny) repeats of the orthogonal unit cell.
    """

    atoms: Atoms
    points_A: np.ndarray
    labels: np.ndarray
    system: System
    repeats: tuple[int, int]

    @property
    def extent_A(self) -> tuple[float, float]:
        """Cell lengths (Lx, Ly), Angstrom."""
        lengths = self.atoms.cell.lengths()
        return float(lengths[0]), float(lengths[1])


def repeats_for_extent(a_A: float, extent_A: float | tuple[float, float]) -> tuple[int, int]:
    """Return ``(nx, ny)`` such that the supercell is at least ``extent_A`` across.

    Parameters
    ----------
    a_A
        Lattice constant, Angstrom.
    extent_A
        Wanted field size (x, y) or one value for both, Angstrom.
    """
    ex, ey = (extent_A, extent_A) if np.isscalar(extent_A) else extent_A
    if not (ex > 0 and ey > 0):
        raise ValueError(f"extent_A={extent_A!r} must be positive")
    return max(1, int(np.ceil(ex / a_A))), max(1, int(np.ceil(ey / (a_A * 3**0.5))))


def _unit_columns(a_A: float) -> tuple[np.ndarray, np.ndarray]:
    """Metal and chalcogen column positions (x, y) of the orthogonal a x sqrt(3)a cell."""
    s3 = 3**0.5
    metal = np.array([[0.0, 0.0], [a_A / 2, s3 * a_A / 2]])
    chalcogen = np.array([[a_A / 2, a_A / (2 * s3)], [0.0, 2 * a_A / s3]])
    # Shift off the cell edges so that no column sits on the periodic boundary.
    shift = np.array([a_A / 4, a_A / (4 * s3)])
    return metal + shift, chalcogen + shift


def build_supercell(
    system: System,
    repeats: tuple[int, int],
    concentrations: Concentrations = ENRICHED_CONCENTRATIONS,
    *,
    min_counts: Mapping[str, int] | None = None,
    vacuum_fraction: float = 0.25,
    seed: int | np.random.Generator | None = None,
) -> Supercell:
    """Build an orthogonal supercell of ``system`` with randomly placed defects.

    Parameters
    ----------
    system
        Catalog system (host and dopant).
    repeats
        (nx, ny) repeats of the ``a x sqrt(3) a`` orthogonal cell.
    concentrations
        Defect fractions; the count of each defect is drawn from a multinomial law
        over the sites of its sublattice.
    min_counts
        Minimum number of sites per defect class (``{"dopant": 1, "V1": 1, "V2": 1}``),
        used for calibration cells that must show every class.
    vacuum_fraction
        Vacuum above and below the layer, as a fraction of its thickness; the cell height
        is ``thickness * (1 + 2 vacuum_fraction)``, so slices of half the thickness hold
        one atomic plane each.
    seed
        Seed or generator for the defect placement.

    Returns
    -------
    Supercell

    Raises
    ------
    ValueError
        If ``repeats`` are not positive integers or the minimum counts do not fit.
    """
    nx, ny = (int(r) for r in repeats)
    if nx < 1 or ny < 1 or (nx, ny) != tuple(repeats):
        raise ValueError(f"repeats={repeats!r} must be two positive integers")
    rng = np.random.default_rng(seed)
    host = system.host
    a, t = host.a_A, host.thickness_A
    metal_u, chalc_u = _unit_columns(a)
    offsets = np.array([[i * a, j * a * 3**0.5] for j in range(ny) for i in range(nx)])
    metal_xy = (offsets[:, None, :] + metal_u[None]).reshape(-1, 2)
    chalc_xy = (offsets[:, None, :] + chalc_u[None]).reshape(-1, 2)
    n_m, n_x = len(metal_xy), len(chalc_xy)

    n_dop = int(rng.binomial(n_m, concentrations.dopant))
    vac = rng.multinomial(n_x, [concentrations.V1, concentrations.V2, 1.0 - concentrations.V1 - concentrations.V2])
    n_v1, n_v2 = int(vac[0]), int(vac[1])
    if min_counts:
        n_dop = max(n_dop, int(min_counts.get("dopant", 0)))
        n_v1 = max(n_v1, int(min_counts.get("V1", 0)))
        n_v2 = max(n_v2, int(min_counts.get("V2", 0)))
    if n_dop > n_m or n_v1 + n_v2 > n_x:
        raise ValueError(
            f"min_counts={dict(min_counts or {})} do not fit a cell with {n_m} metal and {n_x} chalcogen sites"
        )

    metal_labels = np.full(n_m, "metal", dtype=object)
    metal_labels[rng.choice(n_m, n_dop, replace=False)] = "dopant"
    chalc_labels = np.full(n_x, "X2", dtype=object)
    picked = rng.choice(n_x, n_v1 + n_v2, replace=False)
    chalc_labels[picked[:n_v1]] = "V1"
    chalc_labels[picked[n_v1:]] = "V2"

    z_mid = t * (0.5 + vacuum_fraction)
    symbols: list[str] = []
    positions: list[tuple[float, float, float]] = []
    for (x, y), label in zip(metal_xy, metal_labels):
        symbols.append(system.dopant if label == "dopant" else host.metal)
        positions.append((x, y, z_mid))
    # Which atom of a V1 column is missing (top or bottom) is drawn too; at these
    # thicknesses it barely changes ADF intensity, but it keeps the structure honest.
    keep_top = rng.random(n_x) < 0.5
    for (x, y), label, top in zip(chalc_xy, chalc_labels, keep_top):
        if label == "X2" or (label == "V1" and not top):
            symbols.append(host.chalcogen)
            positions.append((x, y, z_mid - t / 2))
        if label == "X2" or (label == "V1" and top):
            symbols.append(host.chalcogen)
            positions.append((x, y, z_mid + t / 2))

    cell = (nx * a, ny * a * 3**0.5, t * (1 + 2 * vacuum_fraction))
    atoms = Atoms(symbols=symbols, positions=positions, cell=cell, pbc=True)
    points = np.concatenate([metal_xy, chalc_xy])
    labels = np.concatenate([metal_labels, chalc_labels]).astype(str)
    return Supercell(atoms=atoms, points_A=points, labels=labels, system=system, repeats=(nx, ny))


def class_counts(labels: np.ndarray) -> dict[str, int]:
    """Count sites per class, in :data:`CLASS_NAMES` order (zeros included)."""
    labels = np.asarray(labels)
    return {name: int(np.sum(labels == name)) for name in CLASS_NAMES}

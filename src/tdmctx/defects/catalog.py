"""The 96 doped monolayer systems: four 1H hosts x 24 substitutional metal-site dopants.

Host geometry comes from the bulk 2H crystal structures (space group P6_3/mmc) measured by
X-ray diffraction; a monolayer keeps the in-plane lattice constant to within ~0.5 %. In the
bulk cell the layer centred on the metal plane at z = 3/4 has its chalcogens at z and
3/2 - z, so the chalcogen-chalcogen thickness of the layer is ``2 (3/4 - z) c``.

Sources
-------
- MoS2: B. Schoenfeld, J. J. Huang, S. C. Moss, Acta Cryst. B 39, 404 (1983):
  a = 3.1604 A, c = 12.295 A, z(S) = 0.621.
- MoSe2: P. B. James, M. T. Lavik, Acta Cryst. 16, 1183 (1963): a = 3.288 A, c = 12.92 A,
  z(Se) = 0.621.
- WS2 and WSe2: W. J. Schutte, J. L. de Boer, F. Jellinek, J. Solid State Chem. 70, 207
  (1987): WS2 a = 3.1532 A, c = 12.323 A, z(S) = 0.622; WSe2 a = 3.282 A, c = 12.96 A,
  z(Se) = 0.621.

The resulting thicknesses (3.17, 3.33, 3.15, 3.34 A) agree with monolayer values from
density-functional theory within 0.05 A (F. A. Rasmussen, K. S. Thygesen, J. Phys. Chem. C
119, 13169 (2015)).

The dopant pool: transition metals (and one rare earth, Er) reported as substitutional
metal-site dopants of MoS2/WS2/MoSe2/WSe2 monolayers in the doping literature, plus the
other host metal (W in the Mo hosts, Mo in the W hosts). Every host gets the same 23 plus
the other host metal, so no host is ever doped with its own metal. Dopants are placed
without lattice relaxation: a substitution keeps the host site.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

from ase.data import atomic_numbers

from tdmctx.defects.context import Context, element_symbol

__all__ = [
    "Host", "System", "HOSTS", "COMMON_DOPANTS", "MIN_RESOLVABLE_CONTRAST", "Z_CONTRAST_EXPONENT", "z_contrast", "hosts", "catalog", "get_host", "get_system",
]

#: Exponent of the ADF Z-contrast rule ``I ~ Z**Z_CONTRAST_EXPONENT`` (high-angle detectors).
Z_CONTRAST_EXPONENT: float = 1.7

#: Smallest relative intensity difference between a dopant and a host-metal column,
#: ``|(Z_dopant / Z_metal)**1.7 - 1|`` (:attr:`System.z_contrast`), at which an ADF image is
#: taken to tell them apart. Measured on the H200 ablations of chapter 02 (dopant recall of
#: every model): unresolved at 2.3 % (Re in WS2/WSe2), 4.0 % (Nb in MoS2/MoSe2) and 9.4 %
#: (Pt in WS2/WSe2: 1-3 % image only, 20-26 % with context), resolved at 61 % and above
#: (every other dopant of the ``multi`` and ``wide`` stores: 75-100 %). The threshold sits
#: just above the largest unresolved contrast; the catalog systems between 10 % and 61 %
#: (Au, Er in W hosts; Rh, Pd, Ag in Mo hosts) are untested and assumed resolvable.
#: (An absolute ``|dZ| >= 2``, the earlier rule, failed: Pt in W hosts has ``dZ = 4``.)
MIN_RESOLVABLE_CONTRAST: float = 0.10


def z_contrast(dopant: str, metal: str) -> float:
    """Relative ADF intensity of a ``dopant`` column against a ``metal`` column, ``(Z_d / Z_m)**1.7 - 1``."""
    return (atomic_numbers[dopant] / atomic_numbers[metal]) ** Z_CONTRAST_EXPONENT - 1.0


@dataclass(frozen=True)
class Host:
    """A 1H transition-metal dichalcogenide monolayer.

    Attributes
    ----------
    metal, chalcogen
        Element symbols.
    a_A
        In-plane lattice constant, Angstrom.
    c_A, z_chalcogen
        Bulk 2H c axis (Angstrom) and chalcogen position parameter, from which the layer
        thickness is derived.
    source
        Literature reference for ``a_A``, ``c_A`` and ``z_chalcogen``.
    """

    metal: str
    chalcogen: str
    a_A: float
    c_A: float
    z_chalcogen: float
    source: str

    @property
    def formula(self) -> str:
        """``"WSe2"`` style formula."""
        return f"{self.metal}{self.chalcogen}2"

    @property
    def thickness_A(self) -> float:
        """Vertical chalcogen-chalcogen distance of the monolayer, Angstrom."""
        return 2.0 * (0.75 - self.z_chalcogen) * self.c_A

    @property
    def metal_chalcogen_distance_A(self) -> float:
        """In-plane distance between a metal column and its neighbouring X2 columns, Angstrom."""
        return self.a_A / 3**0.5


_SCHUTTE = "W. J. Schutte, J. L. de Boer, F. Jellinek, J. Solid State Chem. 70, 207 (1987)"

#: The four hosts with their literature lattice parameters.
HOSTS: tuple[Host, ...] = (
    Host("Mo", "S", 3.1604, 12.295, 0.621, "B. Schoenfeld, J. J. Huang, S. C. Moss, Acta Cryst. B 39, 404 (1983)"),
    Host("Mo", "Se", 3.288, 12.92, 0.621, "P. B. James, M. T. Lavik, Acta Cryst. 16, 1183 (1963)"),
    Host("W", "S", 3.1532, 12.323, 0.622, _SCHUTTE),
    Host("W", "Se", 3.282, 12.96, 0.621, _SCHUTTE),
)

#: Dopants shared by every host (23); each host adds the other host metal to reach 24.
COMMON_DOPANTS: tuple[str, ...] = (
    "Ti", "V", "Cr", "Mn", "Fe", "Co", "Ni", "Cu", "Zn",
    "Zr", "Nb", "Ru", "Rh", "Pd", "Ag",
    "Hf", "Ta", "Re", "Os", "Ir", "Pt", "Au",
    "Er",
)  # fmt: skip

_HOST_METALS = ("Mo", "W")


@dataclass(frozen=True)
class System:
    """One doped monolayer: a host and its substitutional dopant.

    Attributes
    ----------
    host
        The :class:`Host`.
    dopant
        Symbol of the dopant on the metal site.
    """

    host: Host
    dopant: str

    @property
    def name(self) -> str:
        """``"WSe2:Ti"`` style identifier, unique in the catalog."""
        return f"{self.host.formula}:{self.dopant}"

    @property
    def dopant_Z(self) -> int:
        """Atomic number of the dopant."""
        return atomic_numbers[self.dopant]

    @property
    def delta_Z(self) -> int:
        """Atomic-number difference between dopant and host metal, ``|Z_dopant - Z_metal|``."""
        return abs(self.dopant_Z - atomic_numbers[self.host.metal])

    @property
    def z_contrast(self) -> float:
        """Relative ADF intensity of a dopant column against a host-metal column (:func:`z_contrast`)."""
        return z_contrast(self.dopant, self.host.metal)

    @property
    def z_contrast_resolvable(self) -> bool:
        """Whether the dopant differs enough in Z from the host metal to be seen (:data:`MIN_RESOLVABLE_CONTRAST`).

        Where it does not (Nb in MoS2, Re or Pt in WSe2, ...), no image-based classifier can
        tell a dopant column from a metal column reliably; at best it returns the dopant's
        prior there.
        """
        return abs(self.z_contrast) >= MIN_RESOLVABLE_CONTRAST

    def context(
        self,
        energy_eV: float | None = None,
        detector_inner_mrad: float | None = None,
        detector_outer_mrad: float | None = None,
    ) -> Context:
        """Return the :class:`Context` of this system under the given imaging settings."""
        return Context(
            host_metal=self.host.metal,
            chalcogen=self.host.chalcogen,
            dopant=self.dopant,
            energy_eV=energy_eV,
            detector_inner_mrad=detector_inner_mrad,
            detector_outer_mrad=detector_outer_mrad,
        )


def hosts() -> tuple[Host, ...]:
    """Return the four host monolayers (MoS2, MoSe2, WS2, WSe2)."""
    return HOSTS


def get_host(formula: str) -> Host:
    """Return the host with this formula (case-sensitive chemical notation, e.g. ``"WSe2"``).

    Raises
    ------
    ValueError
        If ``formula`` is not one of the catalog hosts.
    """
    for host in HOSTS:
        if host.formula == formula:
            return host
    raise ValueError(f"host={formula!r} is not in the catalog; expected one of {[h.formula for h in HOSTS]}")


def _dopants_for(host: Host) -> tuple[str, ...]:
    other = tuple(m for m in _HOST_METALS if m != host.metal)
    return COMMON_DOPANTS + other


@lru_cache(maxsize=1)
def catalog() -> tuple[System, ...]:
    """Return the 96 doped systems, host-major in the order of :data:`HOSTS`.

    Returns
    -------
    tuple of System
        4 hosts x 24 dopants; no host carries its own metal as dopant.
    """
    return tuple(System(host, dopant) for host in HOSTS for dopant in _dopants_for(host))


def get_system(name_or_host: str, dopant: str | int | None = None) -> System:
    """Look a system up by name (``"WSe2:Ti"``) or by host formula and dopant.

    Raises
    ------
    ValueError
        If the host is not in the catalog, the dopant is not a chemical element, or the
        pair is not one of the 96 systems.
    """
    if dopant is None:
        if ":" not in name_or_host:
            raise ValueError(f"system={name_or_host!r} is not a system name; expected 'HOST:DOPANT' such as 'WSe2:Ti'")
        name_or_host, dopant = name_or_host.split(":", 1)
    host = get_host(name_or_host)
    symbol = element_symbol(dopant, "dopant")
    for system in catalog():
        if system.host == host and system.dopant == symbol:
            return system
    raise ValueError(
        f"dopant={symbol!r} is not catalogued for host {host.formula}; expected one of {list(_dopants_for(host))}"
    )

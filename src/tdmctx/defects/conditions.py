"""The six imaging conditions: three beam energies x two annular detectors.

Energies are those used for ADF-STEM of 2D materials: 60 and 80 kV stay below the
knock-on threshold of the sulphides and selenides, 200 kV is the common default of
general-purpose aberration-corrected instruments. The two detectors are a high-angle
annular dark-field (HAADF, 70-200 mrad), where intensity grows roughly as Z^1.6-1.8, and a
medium-angle one (MAADF, 35-80 mrad) just outside the bright-field disk, where coherent
and elastic scattering flattens the Z dependence: at 60-80 kV an Se2 column outshines a W
column there, which is the contrast reversal seen between the two channels of the
experimental Ti-WSe2 data. The detector geometry is shared by the three energies, as on a
microscope where the camera length is kept.

Probe settings are typical of aberration-corrected instruments with a cold field-emission
gun:

- convergence semi-angles of 30 / 25 / 24 mrad at 60 / 80 / 200 kV (the angle shrinks with
  energy as the corrected aperture is limited by the same residual aberration phase);
- residual aberrations after auto-tuning, chosen so that each phase stays below pi/4 at
  the aperture edge (the usual tuning tolerance): twofold astigmatism C12, coma C21,
  threefold astigmatism C23 and spherical aberration C30;
- focal spread sigma = Cc * sigma_E / E with Cc = 1.4 mm and an energy spread of 0.35 eV
  FWHM (cold FEG), i.e. 35 / 26 / 10 A;
- an effective source size of 0.6 A FWHM (incoherent blur of the image).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import lru_cache

from tdmctx.defects.catalog import System
from tdmctx.defects.context import Context

__all__ = [
    "ProbeSettings",
    "ImagingCondition",
    "DETECTORS_MRAD",
    "imaging_conditions",
    "get_condition",
    "focal_spread_A",
]

#: Annular detector collection angles (inner, outer), mrad.
DETECTORS_MRAD: dict[str, tuple[float, float]] = {"HAADF": (70.0, 200.0), "MAADF": (35.0, 80.0)}

# Chromatic aberration and energy spread of a cold-FEG, aberration-corrected column.
_CC_A = 1.4e7  # 1.4 mm
_ENERGY_SPREAD_FWHM_EV = 0.35
_FWHM_TO_SIGMA = 1.0 / 2.3548


def focal_spread_A(energy_eV: float, cc_A: float = _CC_A, energy_spread_fwhm_eV: float = _ENERGY_SPREAD_FWHM_EV) -> float:
    """Return the standard deviation of the defocus spread, Angstrom.

    Parameters
    ----------
    energy_eV
        Beam energy, eV.
    cc_A
        Chromatic aberration coefficient, Angstrom.
    energy_spread_fwhm_eV
        Energy spread of the source, FWHM, eV.
    """
    if not energy_eV > 0:
        raise ValueError(f"energy_eV={energy_eV!r} must be positive")
    return cc_A * energy_spread_fwhm_eV * _FWHM_TO_SIGMA / energy_eV


@dataclass(frozen=True)
class ProbeSettings:
    """A realistic aberration-corrected STEM probe.

    Attributes
    ----------
    semiangle_mrad
        Convergence semi-angle, mrad.
    defocus_A
        Defocus, Angstrom, abTEM convention (``defocus = -C10``, positive = underfocus).
    aberrations_A
        Residual aberrations in abTEM's polar notation: magnitudes in Angstrom
        (``C12``, ``C21``, ``C23``, ``C30``) and angles in rad (``phi12``, ...).
    focal_spread_A
        Standard deviation of the defocus spread (temporal incoherence), Angstrom.
    source_size_fwhm_A
        Effective source size (spatial incoherence), FWHM, Angstrom.
    """

    semiangle_mrad: float
    defocus_A: float
    aberrations_A: dict[str, float] = field(hash=False, compare=True)
    focal_spread_A: float = 0.0
    source_size_fwhm_A: float = 0.6

    def abtem_aberrations(self) -> dict[str, float]:
        """Aberrations as abTEM keyword arguments (``C10 = -defocus``)."""
        return {"C10": -self.defocus_A, **self.aberrations_A}


@dataclass(frozen=True)
class ImagingCondition:
    """Beam energy, detector and probe of one simulated acquisition.

    Attributes
    ----------
    energy_eV
        Beam energy, eV.
    detector
        Detector name (``"HAADF"`` or ``"MAADF"``).
    detector_inner_mrad, detector_outer_mrad
        Collection semi-angles, mrad.
    probe
        The :class:`ProbeSettings`.
    """

    energy_eV: float
    detector: str
    detector_inner_mrad: float
    detector_outer_mrad: float
    probe: ProbeSettings

    @property
    def name(self) -> str:
        """``"80kV-HAADF"`` style identifier."""
        return f"{self.energy_eV / 1e3:g}kV-{self.detector}"

    def context(self, system: System | None = None) -> Context:
        """Return the full :class:`Context` of ``system`` imaged under this condition.

        Without a system, composition fields are unknown (``None``).
        """
        if system is None:
            return Context(
                energy_eV=self.energy_eV,
                detector_inner_mrad=self.detector_inner_mrad,
                detector_outer_mrad=self.detector_outer_mrad,
            )
        return system.context(self.energy_eV, self.detector_inner_mrad, self.detector_outer_mrad)


def _probe(energy_eV: float) -> ProbeSettings:
    # Residuals sized so that each aberration phase stays below ~pi/4 at the aperture edge.
    table = {
        60e3: (30.0, {"C12": 8.0, "phi12": 0.5, "C21": 120.0, "phi21": 1.0, "C23": 120.0, "phi23": 2.0, "C30": 8e3}),
        80e3: (25.0, {"C12": 10.0, "phi12": 0.5, "C21": 150.0, "phi21": 1.0, "C23": 150.0, "phi23": 2.0, "C30": 1e4}),
        200e3: (24.0, {"C12": 5.0, "phi12": 0.5, "C21": 100.0, "phi21": 1.0, "C23": 100.0, "phi23": 2.0, "C30": 5e3}),
    }
    semiangle, aberrations = table[energy_eV]
    return ProbeSettings(
        semiangle_mrad=semiangle,
        defocus_A=0.0,
        aberrations_A=aberrations,
        focal_spread_A=round(focal_spread_A(energy_eV), 1),
        source_size_fwhm_A=0.6,
    )


@lru_cache(maxsize=1)
def imaging_conditions() -> tuple[ImagingCondition, ...]:
    """Return the six imaging conditions, energy-major (60, 80, 200 kV) then HAADF, MAADF."""
    out = []
    for energy in (60e3, 80e3, 200e3):
        for detector, (inner, outer) in DETECTORS_MRAD.items():
            out.append(ImagingCondition(energy, detector, inner, outer, _probe(energy)))
    return tuple(out)


def get_condition(name: str) -> ImagingCondition:
    """Return the condition called ``name`` (e.g. ``"80kV-MAADF"``).

    Raises
    ------
    ValueError
        If no condition has that name.
    """
    for condition in imaging_conditions():
        if condition.name == name:
            return condition
    raise ValueError(f"condition={name!r} is unknown; expected one of {[c.name for c in imaging_conditions()]}")

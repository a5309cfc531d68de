"""abTEM multislice (and PRISM) ADF images of a periodic supercell, both detectors from one run.

The electron wave is propagated once per frozen-phonon configuration (and per defocus
sample when the focal spread is simulated); a flexible annular detector records the
scattered intensity in 1 mrad rings, from which every annular detector of the study is
integrated afterwards. One run thus serves both the HAADF and the MAADF condition.

The output is the *periodic* image of the whole cell on the scan grid, (y, x) with
Angstrom coordinates, in units of the fraction of the incident beam. Source size, scan
distortions, dose and detector read-out are applied by :mod:`tdmctx.defects.acquisition`.

Speed choices, measured on a 2-core CPU (WSe2, 3 x 2 orthogonal cell, 80 kV):

- the layer is cut into three slices, one per atomic plane (the cell height is 1.5 x the
  layer thickness, slices of half the thickness), instead of 1 A slices: 3 instead of 8
  FFT pairs per probe;
- the potential grid is the coarsest that keeps the outer detector angle inside abTEM's
  2/3 anti-aliasing aperture, rounded to an FFT-friendly size;
- the scan step is just below the probe's Nyquist step ``lambda / (4 alpha)``, enough for
  an exact Fourier interpolation of the band-limited ADF image.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import xarray as xr
from scipy.fft import next_fast_len
from tqdm.auto import tqdm

from tdmctx.defects.conditions import ProbeSettings
from tdmctx.defects.structures import Supercell
from tdmctx.devices import resolve_device

__all__ = [
    "MultisliceSettings",
    "PHONON_SIGMA_A",
    "wavelength_A",
    "potential_gpts",
    "scan_gpts",
    "abtem_device",
    "simulate_adf",
    "abtem_to_yx",
    "defocus_samples",
]

#: RMS thermal displacement per direction at room temperature, Angstrom. From
#: u = sqrt(B / 8 pi^2) with the Debye-Waller factor B ~ 0.4 A^2 typical of the
#: transition-metal dichalcogenides at 300 K; used for every species.
PHONON_SIGMA_A = 0.07

# abTEM keeps spatial frequencies up to 2/3 of the grid's Nyquist frequency (anti-aliasing).
_ANTIALIAS = 2.0 / 3.0


@dataclass(frozen=True)
class MultisliceSettings:
    """Numerical settings of one multislice run.

    Attributes
    ----------
    num_phonon_configs
        Frozen-phonon configurations averaged.
    phonon_sigma_A
        RMS displacement per direction, Angstrom.
    antithetic
        Draw configurations in pairs ``+u, -u``: the part of the image linear in the
        displacements (a random shift of every column, the dominant frozen-phonon noise
        with few configurations) cancels within each pair while the average stays an
        unbiased frozen-phonon estimate. Needs an even ``num_phonon_configs``.
    focal_spread_samples
        Defocus samples of the focal-spread integral (1 = coherent probe at nominal focus).
    max_angle_mrad
        Largest scattering angle the potential grid must represent, mrad (>= every outer
        detector angle).
    scan_oversampling
        Scan step = Nyquist step / this factor (>= 1).
    max_batch
        Probe positions propagated at once (memory versus overhead).
    """

    num_phonon_configs: int = 4
    phonon_sigma_A: float = PHONON_SIGMA_A
    antithetic: bool = True
    focal_spread_samples: int = 1
    max_angle_mrad: float = 205.0
    scan_oversampling: float = 1.05
    max_batch: int = 256

    def __post_init__(self) -> None:
        if int(self.num_phonon_configs) < 1:
            raise ValueError(f"num_phonon_configs={self.num_phonon_configs!r} must be >= 1")
        if int(self.focal_spread_samples) < 1:
            raise ValueError(f"focal_spread_samples={self.focal_spread_samples!r} must be >= 1")
        if self.antithetic and int(self.num_phonon_configs) % 2:
            raise ValueError(f"num_phonon_configs={self.num_phonon_configs!r} must be even with antithetic=True")
        if not self.phonon_sigma_A >= 0:
            raise ValueError(f"phonon_sigma_A={self.phonon_sigma_A!r} must be >= 0")
        if not self.scan_oversampling >= 1:
            raise ValueError(f"scan_oversampling={self.scan_oversampling!r} must be >= 1 (Nyquist)")
        if not self.max_angle_mrad > 0:
            raise ValueError(f"max_angle_mrad={self.max_angle_mrad!r} must be positive")


def wavelength_A(energy_eV: float) -> float:
    """Relativistic electron wavelength, Angstrom."""
    from abtem.core.energy import energy2wavelength

    return float(energy2wavelength(energy_eV))


def potential_gpts(extent_A: tuple[float, float], energy_eV: float, max_angle_mrad: float) -> tuple[int, int]:
    """Coarsest FFT-friendly potential grid that represents ``max_angle_mrad``.

    abTEM's anti-aliasing keeps angles up to ``(2/3) lambda / (2 sampling)``; a 2 % margin
    keeps the last detector ring inside.
    """
    sampling = _ANTIALIAS * wavelength_A(energy_eV) / (2 * max_angle_mrad * 1e-3) * 0.98
    return tuple(next_fast_len(int(np.ceil(length / sampling))) for length in extent_A)  # type: ignore[return-value]


def scan_gpts(extent_A: tuple[float, float], energy_eV: float, semiangle_mrad: float, oversampling: float = 1.05) -> tuple[int, int]:
    """Scan grid (nx, ny) over the periodic cell with a step just below ``lambda / (4 alpha)``."""
    nyquist = wavelength_A(energy_eV) / (4 * semiangle_mrad * 1e-3)
    return tuple(int(np.ceil(length * oversampling / nyquist)) for length in extent_A)  # type: ignore[return-value]


def abtem_device(device: str | None = None) -> str:
    """Map a torch-style device to abTEM's ``"cpu"`` / ``"gpu"``.

    ``None`` picks the GPU when torch sees CUDA and CuPy (abTEM's GPU backend) imports.

    Raises
    ------
    ValueError
        If CUDA is asked for explicitly but CuPy is not installed.
    """
    dev = resolve_device(device)
    if dev.type != "cuda":
        return "cpu"
    try:
        import cupy  # noqa: F401
    except ImportError as exc:
        if device is None:
            return "cpu"
        raise ValueError(f"device={device!r}: abTEM runs on CUDA through CuPy, which is not installed") from exc
    return "gpu"


def abtem_to_yx(array: np.ndarray, extent_A: tuple[float, float], name: str = "intensity") -> xr.DataArray:
    """Turn an abTEM (x, y) scan image of a periodic cell into a (y, x) DataArray.

    The single place where abTEM's axis order is converted. Coordinates are the probe
    positions in Angstrom (pixel 0 at the cell origin, no endpoint).
    """
    image = np.asarray(array).T
    ny, nx = image.shape
    x = np.arange(nx) * (extent_A[0] / nx)
    y = np.arange(ny) * (extent_A[1] / ny)
    return xr.DataArray(image, dims=("y", "x"), coords={"y": y, "x": x}, name=name, attrs={"units": "fraction of incident beam"})


def defocus_samples(probe: ProbeSettings, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Defocus values (Angstrom) and weights of the focal-spread integral.

    Gauss-Hermite nodes of the Gaussian defocus distribution; ``n = 1`` (or no spread)
    returns the nominal defocus with weight 1.
    """
    if n == 1 or probe.focal_spread_A == 0:
        return np.array([probe.defocus_A]), np.array([1.0])
    nodes, weights = np.polynomial.hermite_e.hermegauss(n)
    return probe.defocus_A + probe.focal_spread_A * nodes, weights / weights.sum()


def _ring_sum(polar: np.ndarray, inner_mrad: float, outer_mrad: float, step_mrad: float) -> np.ndarray:
    """Sum 1-mrad rings of a flexible annular detector between two angles."""
    lo = int(round(inner_mrad / step_mrad))
    hi = int(round(outer_mrad / step_mrad))
    if hi > polar.shape[2]:
        raise ValueError(
            f"detector outer angle {outer_mrad:g} mrad exceeds the simulated {polar.shape[2] * step_mrad:g} mrad; "
            "raise MultisliceSettings.max_angle_mrad"
        )
    return polar[:, :, lo:hi].sum(axis=(2, 3) if polar.ndim == 4 else 2)


def simulate_adf(
    supercell: Supercell,
    energy_eV: float,
    probe: ProbeSettings,
    detectors_mrad: Mapping[str, tuple[float, float]],
    settings: MultisliceSettings = MultisliceSettings(),
    *,
    engine: str = "multislice",
    prism_interpolation: int = 1,
    seed: int | np.random.Generator | None = None,
    device: str | None = None,
    num_threads: int = 1,
    progress: bool = True,
) -> xr.Dataset:
    """Simulate periodic ADF images of a supercell for several detectors in one run.

    Parameters
    ----------
    supercell
        Structure to image; its cell is treated as periodic.
    energy_eV
        Beam energy, eV.
    probe
        Probe settings (semi-angle, aberrations, focal spread).
    detectors_mrad
        ``{name: (inner_mrad, outer_mrad)}``: every detector integrated from the run.
    settings
        Numerical settings (phonons, sampling, focal-spread samples).
    engine
        ``"multislice"`` (probe by probe) or ``"prism"`` (abTEM ``SMatrix``).
    prism_interpolation
        PRISM interpolation factor (1 = exact plane-wave expansion of the probe).
    seed
        Seed or generator for the frozen-phonon displacements.
    device
        ``None`` (GPU when available through CuPy), ``"cpu"`` or ``"cuda"``.
    num_threads
        Threads for abTEM's batches of probe positions (1 inside a parallel build).
    progress
        Show a progress bar over phonon configurations and defocus samples.

    Returns
    -------
    xarray.Dataset
        One (y, x) variable per detector on the scan grid, coords in Angstrom, attrs with
        the grid, timing (``wall_s``) and engine; with two or more independent groups of
        configurations also ``<detector>_phonon_noise``, an estimate of the average's
        frozen-phonon error from the difference of the two halves of the ensemble.

    Raises
    ------
    ValueError
        For an unknown engine, non-positive energy, or a detector whose inner angle is
        not below its outer angle.
    """
    import abtem

    if engine not in ("multislice", "prism"):
        raise ValueError(f"engine={engine!r} is unknown; expected 'multislice' or 'prism'")
    if int(prism_interpolation) < 1:
        raise ValueError(f"prism_interpolation={prism_interpolation!r} must be a positive integer")
    if not energy_eV > 0:
        raise ValueError(f"energy_eV={energy_eV!r} must be positive")
    for name, (inner, outer) in detectors_mrad.items():
        if not 0 <= inner < outer:
            raise ValueError(f"detector {name!r}: inner={inner!r} mrad must be >= 0 and below outer={outer!r} mrad")
        if outer > settings.max_angle_mrad:
            raise ValueError(f"detector {name!r}: outer={outer!r} mrad exceeds max_angle_mrad={settings.max_angle_mrad!r}")
    rng = np.random.default_rng(seed)
    dev = abtem_device(device)
    scheduler = "synchronous" if num_threads <= 1 else "threads"
    extent = supercell.extent_A
    gpts = potential_gpts(extent, energy_eV, settings.max_angle_mrad)
    if engine == "prism" and prism_interpolation > 1:
        # PRISM's interpolation must divide the grid, or abTEM's normalisation drifts.
        gpts = tuple(int(np.ceil(g / prism_interpolation)) * prism_interpolation for g in gpts)
    sgpts = scan_gpts(extent, energy_eV, probe.semiangle_mrad, settings.scan_oversampling)
    thickness = supercell.system.host.thickness_A
    defoci, weights = defocus_samples(probe, settings.focal_spread_samples)
    aberrations = {k: v for k, v in probe.abtem_aberrations().items() if k != "C10"}

    total = {name: np.zeros(sgpts) for name in detectors_mrad}  # abTEM (x, y) order
    # Images of the two halves of the ensemble (alternate pairs of configurations) give the
    # frozen-phonon noise of the average: (A - B) / 2 has the variance of (A + B) / 2 - truth.
    half = {name: np.zeros(sgpts) for name in detectors_mrad}
    per_group = 2 if settings.antithetic else 1
    detected = 0.0  # mean intensity over all rings: the probe's normalisation
    n_runs = settings.num_phonon_configs * len(defoci)
    bar = tqdm(total=n_runs, desc=f"{engine} {supercell.system.name} {energy_eV / 1e3:g} kV", disable=not progress, leave=False)
    start = time.perf_counter()
    with abtem.config.set({"device": dev}), contextlib.closing(bar):
        for config in range(settings.num_phonon_configs):
            atoms = supercell.atoms.copy()
            if not settings.antithetic or config % 2 == 0:
                displacement = rng.normal(0.0, settings.phonon_sigma_A, atoms.positions.shape)
            else:
                displacement = -displacement
            atoms.positions += displacement
            atoms.wrap()
            potential = abtem.Potential(atoms, gpts=gpts, slice_thickness=thickness / 2, projection="infinite", device=dev)
            scan = abtem.GridScan(start=(0, 0), end=extent, gpts=sgpts, endpoint=False)
            detector = abtem.FlexibleAnnularDetector(step_size=1.0)
            for defocus, weight in zip(defoci, weights):
                if engine == "multislice":
                    wave = abtem.Probe(
                        energy=energy_eV, semiangle_cutoff=probe.semiangle_mrad, defocus=defocus, device=dev, **aberrations
                    )
                    measured = wave.scan(potential, scan=scan, detectors=detector, max_batch=settings.max_batch)
                else:
                    smatrix = abtem.SMatrix(
                        potential=potential,
                        energy=energy_eV,
                        semiangle_cutoff=probe.semiangle_mrad,
                        interpolation=prism_interpolation,
                        device=dev,
                    )
                    ctf = abtem.CTF(semiangle_cutoff=probe.semiangle_mrad, energy=energy_eV, defocus=defocus, **aberrations)
                    measured = smatrix.scan(scan=scan, detectors=detector, ctf=ctf)
                # An explicit local scheduler: inside a dask.distributed worker the default
                # would hand abTEM's graph to the build's cluster and nest the tasks.
                polar = np.asarray(measured.compute(scheduler=scheduler, num_workers=num_threads, progress_bar=False).array)
                step = detector.step_size
                for name, (inner, outer) in detectors_mrad.items():
                    ring = weight * _ring_sum(polar, inner, outer, step)
                    total[name] += ring
                    if (config // per_group) % 2 == 0:
                        half[name] += ring
                detected += weight * float(polar.sum()) / np.prod(sgpts)
                bar.update()
    wall = time.perf_counter() - start
    detected /= settings.num_phonon_configs
    # abTEM normalises a Probe to unit intensity but PRISM's plane-wave expansion to a
    # different constant (measured: a uniform factor ~1.08 at 80 kV); dividing by the
    # intensity that reaches all rings puts both engines in the same units (the loss to
    # angles beyond the grid is < 1e-3 for a monolayer).
    scale = 1.0 if engine == "multislice" else 1.0 / detected
    data = {}
    n = settings.num_phonon_configs
    for name, image_xy in total.items():
        data[name] = abtem_to_yx(image_xy * scale / n, extent, name=name)
        if n >= 2 * per_group:
            n_a = per_group * ((n // per_group + 1) // 2)  # configurations in the first half
            a = half[name] / n_a
            b = (image_xy - half[name]) / (n - n_a)
            noise = abtem_to_yx((a - b) * scale / 2, extent, name=f"{name}_phonon_noise")
            noise.attrs = {"long_name": "frozen-phonon noise estimate of the average, (A - B) / 2"}
            data[f"{name}_phonon_noise"] = noise
    attrs = {
        "engine": engine,
        "energy_eV": float(energy_eV),
        "potential_gpts": list(gpts),
        "scan_gpts": list(sgpts),
        "extent_A": list(extent),
        "num_phonon_configs": settings.num_phonon_configs,
        "focal_spread_samples": len(defoci),
        "wall_s": wall,
        "detected_fraction": detected * scale,
        "device": dev,
    }
    if engine == "prism":
        attrs["prism_interpolation"] = prism_interpolation
    return xr.Dataset(data, attrs=attrs)

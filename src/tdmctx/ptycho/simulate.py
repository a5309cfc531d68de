"""Known-error 4D-STEM datasets: diffraction patterns recorded at true, distorted positions.

:func:`simulate_4dstem` runs abTEM (``CustomScan`` at the true positions, a pixelated
detector, Poisson shot noise) on monolayer MoS2 by default or on any ASE structure, and
returns a :class:`tdmctx.ptycho.io.PtychoDataset` whose ``extras`` hold the truth for scoring:
``true_positions_A``, ``true_object`` (the projected transmission function, (y, x), one
periodic cell, pixel (0, 0) at the origin) and ``true_object_sampling_A`` (x, y). Results are
cached in ``tdmctx.data.cache_dir("ptycho")`` under a hash of every input.

:func:`simulate_synthetic` is a fast stand-in for tests and benchmarks: a synthetic phase
object, the same Fourier-shift forward model as the engine, written independently in numpy.
"""

from __future__ import annotations

import hashlib
import math
import json

import numpy as np

from tdmctx.ptycho.detector import object_pixel_size_A, square_detector
from tdmctx.ptycho.io import PtychoDataset, dataset_from_mapping, load_dataset, save_dataset
from tdmctx.ptycho.scan import RasterScan, ScanError

__all__ = ["mos2_cell", "square_mos2_cell", "centred_scan", "simulate_4dstem", "simulate_synthetic", "abtem_to_yx"]


def mos2_cell(repeats: tuple[int, int] = (5, 3), a_A: float = 3.19, vacuum_A: float = 2.0):
    """Orthogonal monolayer 2H-MoS2 cell, repeated ``repeats`` = (along x, along y) times.

    The default (5, 3) is 15.95 x 16.58 Angstrom, close to square but not square: abTEM's
    detector then has two angular samplings that must be interpolated onto one, a model error
    that biases refined positions (:func:`square_mos2_cell` avoids it).
    """
    import abtem
    import ase.build

    atoms = ase.build.mx2("MoS2", a=a_A, thickness=3.19, vacuum=vacuum_A)
    return abtem.orthogonalize_cell(atoms) * (int(repeats[0]), int(repeats[1]), 1)


def square_mos2_cell(min_side_A: float, a_A: float = 3.19, max_mismatch: float = 0.04):
    """Monolayer MoS2 in a square periodic cell of side at least ``min_side_A`` Angstrom.

    The smallest orthogonal supercell ``nx x ny`` whose sides differ by at most ``max_mismatch``
    is put in a square cell of the longer side; the shorter axis keeps a seam (a strip of that
    width, 0.23 Angstrom for the 7 x 4 cell) far from the scan. The crystal itself is unstrained.
    """
    if not min_side_A > 0:
        raise ValueError(f"min_side_A={min_side_A!r} must be a positive number of Angstrom")
    b_A = a_A * math.sqrt(3.0)
    for nx in range(1, 200):
        ny = max(1, round(nx * a_A / b_A))
        side = max(nx * a_A, ny * b_A)
        if side >= min_side_A and abs(nx * a_A - ny * b_A) <= max_mismatch * side:
            atoms = mos2_cell((nx, ny), a_A=a_A)
            cell = np.array(atoms.cell)
            cell[0, 0] = cell[1, 1] = side
            atoms.set_cell(cell)
            return atoms
    raise ValueError(f"no square MoS2 cell up to 200 repeats for min_side_A={min_side_A!r}")


def centred_scan(atoms, scan_shape: tuple[int, int], step_A: float) -> RasterScan:
    """A raster of ``scan_shape`` with ``step_A`` centred in the cell of ``atoms``."""
    rows, cols = scan_shape
    centre = np.diag(np.asarray(atoms.cell))[:2] / 2
    origin = centre - np.array([(cols - 1), (rows - 1)]) * step_A / 2
    return RasterScan((rows, cols), step_A, origin_A=tuple(origin))


def abtem_to_yx(array: np.ndarray) -> np.ndarray:
    """abTEM's real-space arrays are (..., x, y); the package's images are (..., y, x)."""
    return np.swapaxes(np.asarray(array), -1, -2)


def _cache_key(atoms, payload: dict, true_A: np.ndarray) -> str:
    digest = hashlib.sha256()
    for arr in (atoms.numbers, atoms.positions, np.asarray(atoms.cell), true_A):
        digest.update(np.ascontiguousarray(arr, dtype=np.float64).tobytes())
    digest.update(json.dumps(payload, sort_keys=True).encode())
    return digest.hexdigest()[:20]


def simulate_4dstem(
    atoms=None,
    *,
    scan: RasterScan | None = None,
    error: ScanError | None = None,
    energy_eV: float = 80e3,
    semiangle_mrad: float = 25.0,
    defocus_A: float = 50.0,
    max_angle_mrad: float = 55.0,
    potential_sampling_A: float = 0.1,
    electrons_per_pattern: float | None = 2.5e4,
    seed: int = 0,
    cache: bool = True,
    progress: bool = True,
) -> PtychoDataset:
    """Simulate a 4D-STEM dataset with abTEM at the true (distorted) scan positions.

    Parameters
    ----------
    atoms
        ASE structure with an orthogonal cell; monolayer MoS2 (:func:`mos2_cell`) by default.
    scan
        Nominal raster; by default 16 x 16 positions with a 0.5 Angstrom step, centred in the cell.
    error
        Scan-error model giving the true positions; none (true = nominal) by default.
    energy_eV, semiangle_mrad, defocus_A
        Probe: beam energy (eV), convergence semi-angle (mrad), defocus (abTEM sign,
        ``-C10``, positive = underfocus, Angstrom).
    max_angle_mrad
        Detector cut-off; the detector is resampled to a square grid with one angular
        sampling before noise is added, so the counts stay exactly Poisson.
    potential_sampling_A
        Real-space sampling of the projected potential, Angstrom; it must resolve
        ``max_angle_mrad`` (abTEM's antialiasing keeps 2/3 of Nyquist).
    electrons_per_pattern
        Beam electrons per probe position (before the detector cut); ``None`` for noise-free data.
    seed
        Seed of the shot noise.
    cache
        Reuse a cached result with identical inputs (``tdmctx.data.cache_dir("ptycho")``).
    progress
        Show abTEM's progress bar.

    Returns
    -------
    PtychoDataset
        With ``extras``: ``true_positions_A``, ``true_object``, ``true_object_sampling_A``,
        ``electrons_per_pattern`` (``nan`` when noise-free).
    """
    import abtem

    from tdmctx.data import cache_dir

    atoms = mos2_cell() if atoms is None else atoms
    cell = np.asarray(atoms.cell)
    if not np.allclose(cell[:2, :2], np.diag(np.diag(cell[:2, :2]))):
        raise ValueError("atoms must have an orthogonal cell in x and y; use abtem.orthogonalize_cell(atoms)")
    scan = centred_scan(atoms, (16, 16), 0.5) if scan is None else scan
    true_A = scan.positions_A if error is None else error.apply(scan)
    if electrons_per_pattern is not None and not electrons_per_pattern > 0:
        raise ValueError(f"electrons_per_pattern={electrons_per_pattern!r} must be positive or None")
    payload = dict(energy_eV=energy_eV, semiangle_mrad=semiangle_mrad, defocus_A=defocus_A,
                   max_angle_mrad=max_angle_mrad, potential_sampling_A=potential_sampling_A,
                   electrons_per_pattern=electrons_per_pattern, seed=seed,
                   nominal=np.round(scan.positions_A, 9).ravel().tolist(), version=1)
    path = cache_dir("ptycho") / f"sim-{_cache_key(atoms, payload, true_A)}.npz"
    if cache and path.is_file():
        return load_dataset(path)

    potential = abtem.Potential(atoms, sampling=potential_sampling_A, projection="infinite",
                                slice_thickness=float(cell[2, 2]) / 2)
    probe = abtem.Probe(energy=energy_eV, semiangle_cutoff=semiangle_mrad, defocus=defocus_A)
    probe.grid.match(potential)
    measurement = probe.scan(
        potential,
        scan=abtem.CustomScan(true_A.reshape(-1, 2)),
        detectors=abtem.PixelatedDetector(max_angle=max_angle_mrad),
    ).compute(progress_bar=progress)
    # abTEM's pattern axes are (kx, ky), which is the package's (k0, k1) at rotation 0.
    patterns, dk_mrad = square_detector(np.asarray(measurement.array, dtype=np.float64),
                                        measurement.angular_sampling)
    patterns = np.clip(patterns, 0.0, None).reshape(*scan.scan_shape, *patterns.shape[-2:])
    if electrons_per_pattern is None:
        datacube = patterns.astype(np.float32)
    else:
        rng = np.random.default_rng(seed)
        datacube = rng.poisson(patterns * electrons_per_pattern).astype(np.float32)
    transmission = potential.build().compute(progress_bar=False).transmission_function(energy_eV).compute(
        progress_bar=False)
    true_object = abtem_to_yx(np.prod(np.asarray(transmission.array), axis=0)).astype(np.complex64)
    dataset = dataset_from_mapping(
        {
            "datacube": datacube,
            "nominal_positions_A": scan.positions_A,
            "energy_eV": energy_eV,
            "semiangle_mrad": semiangle_mrad,
            "angular_sampling_mrad": np.array([dk_mrad, dk_mrad]),
            "defocus_A": defocus_A,
            "rotation_deg": 0.0,
            "transpose": False,
            "true_positions_A": true_A,
            "true_object": true_object,
            "true_object_sampling_A": np.asarray(potential.sampling, dtype=np.float64),
            "electrons_per_pattern": np.nan if electrons_per_pattern is None else float(electrons_per_pattern),
            "step_A": scan.step_A,
        }
    )
    if cache:
        save_dataset(dataset, path)
    return dataset


def _synthetic_phase(shape: tuple[int, int], pixel_size_A: float, lattice_A: float, peak_rad: float) -> np.ndarray:
    """Gaussian 'atoms' on a hexagonal lattice (two species of different strength), (y, x)."""
    iy, ix = np.indices(shape, dtype=np.float64) * pixel_size_A
    phase = np.zeros(shape)
    a1 = np.array([lattice_A, 0.0])
    a2 = np.array([lattice_A / 2, lattice_A * np.sqrt(3) / 2])
    extent = np.array([shape[1], shape[0]]) * pixel_size_A
    n_max = int(np.ceil(2 * max(extent) / lattice_A)) + 2
    basis = ((np.zeros(2), 1.0), ((a1 + a2) / 3, 0.6))
    sigma = 0.35
    for i in range(-n_max, n_max):
        for j in range(-n_max, n_max):
            for offset, strength in basis:
                cx, cy = i * a1 + j * a2 + offset
                if -1 < cx < extent[0] + 1 and -1 < cy < extent[1] + 1:
                    phase += strength * np.exp(-((ix - cx) ** 2 + (iy - cy) ** 2) / (2 * sigma**2))
    return peak_rad * phase


def simulate_synthetic(
    scan: RasterScan,
    true_positions_A: np.ndarray | None = None,
    *,
    n_detector: int = 32,
    energy_eV: float = 80e3,
    semiangle_mrad: float = 25.0,
    defocus_A: float = 40.0,
    angular_sampling_mrad: float = 3.0,
    electrons_per_pattern: float | None = 2.5e4,
    peak_phase_rad: float = 0.6,
    seed: int = 0,
) -> PtychoDataset:
    """Fast synthetic 4D-STEM data: a lattice phase object seen through the engine's forward model.

    Used by the tests and the benchmark where abTEM would be too slow. The object grid has
    pixel (0, 0) at the origin and the reconstruction's pixel size ``lambda / (n * dk)``;
    positions must be >= 0. Sub-pixel positions shift the probe by the Fourier shift theorem.

    Parameters
    ----------
    scan
        Nominal raster (its positions are stored as ``nominal_positions_A``).
    true_positions_A
        Where the patterns are really recorded; the nominal positions by default.
    n_detector
        Detector pixels per axis (square).
    electrons_per_pattern
        Electrons per pattern (Poisson noise); ``None`` for noise-free data.
    peak_phase_rad
        Phase of the strongest 'atom'.
    seed
        Seed of the shot noise.

    Returns
    -------
    PtychoDataset
        With the same ``extras`` as :func:`simulate_4dstem`.
    """
    from tdmctx.ptycho.engine import initial_probe

    true_A = scan.positions_A if true_positions_A is None else np.asarray(true_positions_A, dtype=np.float64)
    if true_A.shape != (*scan.scan_shape, 2):
        raise ValueError(f"true_positions_A has shape {true_A.shape}; expected {(*scan.scan_shape, 2)}")
    n = int(n_detector)
    dx = object_pixel_size_A(energy_eV, n, angular_sampling_mrad)
    pos_px = true_A.reshape(-1, 2) / dx
    if pos_px.min() < n // 2:
        raise ValueError(f"positions must lie at least n_detector/2 pixels ({n // 2 * dx:.2f} A) from the origin")
    size = int(np.ceil(pos_px.max())) + n
    obj = np.exp(1j * _synthetic_phase((size, size), dx, 3.19, peak_phase_rad))
    probe = initial_probe(n, dx, energy_eV, semiangle_mrad, defocus_A)[0].astype(np.complex128)
    probe_k = np.fft.fft2(probe)
    k = np.fft.fftfreq(n)
    corner = np.round(pos_px - n // 2).astype(int)
    frac = pos_px - n // 2 - corner
    patterns = np.empty((len(pos_px), n, n))
    for i, ((cx, cy), (fx, fy)) in enumerate(zip(corner, frac)):
        ramp = np.exp(-2j * np.pi * (k[None, :] * fx + k[:, None] * fy))
        exit_wave = np.fft.ifft2(probe_k * ramp) * obj[cy:cy + n, cx:cx + n]
        patterns[i] = np.abs(np.fft.fft2(exit_wave, norm="ortho")) ** 2
    # Model arrays are (ky, kx) with DC at the corner; the file wants (k0 = kx, k1 = ky), centred.
    patterns = np.fft.fftshift(patterns, axes=(-2, -1)).swapaxes(-1, -2)
    if electrons_per_pattern is None:
        datacube = patterns
    else:
        datacube = np.random.default_rng(seed).poisson(patterns * electrons_per_pattern).astype(np.float64)
    return dataset_from_mapping(
        {
            "datacube": datacube.reshape(*scan.scan_shape, n, n).astype(np.float32),
            "nominal_positions_A": scan.positions_A,
            "energy_eV": energy_eV,
            "semiangle_mrad": semiangle_mrad,
            "angular_sampling_mrad": np.array([angular_sampling_mrad] * 2),
            "defocus_A": defocus_A,
            "rotation_deg": 0.0,
            "transpose": False,
            "true_positions_A": true_A,
            "true_object": obj.astype(np.complex64),
            "true_object_sampling_A": np.array([dx, dx]),
            "electrons_per_pattern": np.nan if electrons_per_pattern is None else float(electrons_per_pattern),
            "step_A": scan.step_A,
        }
    )


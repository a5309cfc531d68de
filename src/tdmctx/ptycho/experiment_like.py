"""An experiment-like MoS2 4D-STEM dataset: simulated EMPAD frames of an 80 kV experiment.

No real MoS2 4D-STEM dataset ships with the package, so the iCGD chapter runs by default on
data that imitate a typical EMPAD experiment on monolayer MoS2, written in the detector's own
format (EMPAD ``.raw`` + ``.xml``, :func:`tdmctx.ptycho.readers.write_empad`) so that they
reach the reconstruction through the same reader and preprocessing as real data. The truth
(true positions, object, detector calibration) goes to a separate file that the
reconstruction never reads; it is used only to score the result.

What is simulated (:class:`EmpadLikeConditions` holds every number):

* **probe and detector**: 80 kV, 21.4 mrad, defocus 80 Angstrom; 128 x 128 frames of
  0.94 mrad pixels (the bright-field disk ~46 pixels across, the detector edge at ~2.8 times
  the convergence angle); the detector is rotated by ``detector_rotation_deg`` against the
  scan, transposed, and its pattern centre sits a few whole pixels off the middle;
* **specimen**: monolayer 2H-MoS2 (abTEM, two slices, Lobato potentials, no thermal diffuse
  scattering) in a square periodic cell. abTEM's angular sampling is lambda over the cell
  side, so a square detector pixel needs a square cell: the orthogonal cell is strained by
  under 1 % (``strain`` in the truth file) instead of cutting a seam into the crystal;
* **scan errors**: every type at once (:func:`tdmctx.ptycho.scan.mixed_error`) on a raster
  with a 1 ms dwell and a 5 ms flyback;
* **partial spatial coherence**: a finite effective source, modelled as the incoherent sum
  over a Gaussian distribution of probe positions, i.e. the intensity blurred over probe
  position by a Gaussian of FWHM ``source_fwhm_A`` (0.4 Angstrom by default: an assumed,
  plausible value for an aberration-corrected 80 kV probe, not a measurement); the
  reconstructions here model a coherent probe;
* **dose**: Poisson counts, ``dose_e_per_A2 * step_A**2`` electrons per pattern;
* **detector**: a per-pixel dark offset, Gaussian read noise, counts per electron with a
  per-pixel gain (flat-field) variation. Beside the data the experimenter's references are
  written: the mean of ``dark_frames`` dark frames and the flat-field gain map.

Not simulated (real data carry them): thermal diffuse and inelastic scattering, chromatic
(temporal) incoherence, the detector's point-spread function and non-linearity, descan,
sub-pixel pattern-centre offsets, contamination and defects. The EMPAD numbers (counts per
electron, dark level, read noise) are illustrative, not a vendor calibration.

How it stays cheap. A probe shifted by a lattice vector of a periodic specimen gives the same
pattern, so abTEM is run only at a grid of positions inside one orthogonal unit cell. As a
function of probe position the intensity at every detector pixel is band-limited to twice the
aperture radius, ``2 alpha / lambda`` (about 1.0 / Angstrom here), so a grid finer than half
that period (``position_grid_A``, 0.3 Angstrom by default) determines it exactly: the
patterns at any position are the Fourier series of the grid evaluated there
(:func:`interpolate_patterns`). The source blur is exact in the same series, a Gaussian
factor on every harmonic. Checked against direct abTEM runs at random positions: the RMS
difference is 2e-4 to 4e-3 of the mean pattern (abTEM works in float32), far below the
shot noise (the test suite checks it on a smaller cell).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from tdmctx.ptycho.detector import wavelength_A
from tdmctx.ptycho.io import ReconstructionResult, load_arrays, save_arrays
from tdmctx.ptycho.scan import RasterScan, mixed_error

__all__ = [
    "EmpadLikeConditions",
    "EmpadLikeFiles",
    "simulate_empad_like",
    "pattern_grid",
    "interpolate_patterns",
    "empad_readout",
    "load_truth",
    "score_against_truth",
]

_VERSION = 1
_FRAME = 128  # EMPAD frames are 128 x 128 pixels (plus two metadata rows in the file)


@dataclass(frozen=True)
class EmpadLikeConditions:
    """Every number of the experiment-like dataset (defaults: a typical 80 kV EMPAD MoS2 run).

    Parameters
    ----------
    scan_shape
        ``(scan_rows, scan_cols)``.
    step_A
        Nominal scan step, Angstrom.
    energy_eV, semiangle_mrad, defocus_A
        Beam energy (eV), convergence semi-angle (mrad), defocus (abTEM sign, ``-C10``,
        positive = underfocus, Angstrom).
    angular_sampling_mrad
        Detector pixel, mrad (sets the simulation cell side ``lambda / sampling``).
    dose_e_per_A2
        Electron dose, electrons per square Angstrom of scanned area.
    source_fwhm_A
        FWHM of the Gaussian effective source (partial spatial coherence), Angstrom; 0 is coherent.
    error_strength_step
        Strength of :func:`~tdmctx.ptycho.scan.mixed_error`, in units of the scan step.
    detector_rotation_deg, detector_transpose
        Detector orientation against the scan (the design notes' convention).
    disk_offset_px
        Whole-pixel offset ``(k0, k1)`` of the pattern centre from pixel ``(64, 64)``.
    counts_per_electron
        Mean detector counts per 80 keV electron.
    dark_level_counts, dark_spread_counts
        Mean and per-pixel spread of the dark offset, counts.
    read_noise_counts
        Gaussian read noise per pixel and frame, counts.
    gain_spread
        Relative per-pixel spread of the gain (flat field).
    dark_frames
        Frames averaged into the dark reference written beside the data.
    dwell_s, flyback_s
        Scan timing (drift and jitter act on the acquisition clock).
    potential_sampling_A
        Upper bound on abTEM's potential sampling, Angstrom (the grid is refined so that the
        cell holds a whole number of pixels per unit cell).
    position_grid_A
        Upper bound on the spacing of the abTEM probe-position grid, Angstrom; must stay
        below ``lambda / (4 alpha)`` (the Nyquist limit of the band-limited intensity).
    seed
        Seed of the scan errors, the shot noise and the detector noise.
    """

    scan_shape: tuple[int, int] = (16, 16)
    step_A: float = 0.5
    energy_eV: float = 80e3
    semiangle_mrad: float = 21.4
    defocus_A: float = 80.0
    angular_sampling_mrad: float = 0.94
    dose_e_per_A2: float = 1e5
    source_fwhm_A: float = 0.4
    error_strength_step: float = 0.5
    detector_rotation_deg: float = 15.0
    detector_transpose: bool = True
    disk_offset_px: tuple[int, int] = (3, -2)
    counts_per_electron: float = 10.0
    dark_level_counts: float = 50.0
    dark_spread_counts: float = 4.0
    read_noise_counts: float = 1.0
    gain_spread: float = 0.03
    dark_frames: int = 100
    dwell_s: float = 1e-3
    flyback_s: float = 5e-3
    potential_sampling_A: float = 0.16
    position_grid_A: float = 0.3
    seed: int = 0

    def __post_init__(self) -> None:
        shape = tuple(int(s) for s in np.atleast_1d(self.scan_shape))
        if len(shape) != 2 or min(shape) < 4:
            raise ValueError(f"scan_shape={self.scan_shape!r}: expected two integers >= 4 (scan_rows, scan_cols)")
        object.__setattr__(self, "scan_shape", shape)
        offset = tuple(int(s) for s in np.atleast_1d(self.disk_offset_px))
        if len(offset) != 2 or max(abs(o) for o in offset) > 16:
            raise ValueError(f"disk_offset_px={self.disk_offset_px!r}: expected two integers within +-16 pixels")
        object.__setattr__(self, "disk_offset_px", offset)
        positive = ("step_A", "energy_eV", "semiangle_mrad", "angular_sampling_mrad", "dose_e_per_A2",
                    "counts_per_electron", "dwell_s", "potential_sampling_A", "position_grid_A")
        for name in positive:
            value = getattr(self, name)
            if not (np.isfinite(value) and value > 0):
                raise ValueError(f"{name}={value!r} must be a positive finite number")
        non_negative = ("source_fwhm_A", "error_strength_step", "dark_spread_counts", "read_noise_counts",
                        "gain_spread", "flyback_s", "dark_level_counts")
        for name in non_negative:
            value = getattr(self, name)
            if not (np.isfinite(value) and value >= 0):
                raise ValueError(f"{name}={value!r} must be a finite number >= 0")
        if self.gain_spread >= 0.3:
            raise ValueError(f"gain_spread={self.gain_spread!r} must be below 0.3 (a relative spread)")
        if self.dark_frames < 1:
            raise ValueError(f"dark_frames={self.dark_frames!r} must be >= 1")
        nyquist_A = wavelength_A(self.energy_eV) / (4 * self.semiangle_mrad * 1e-3)
        if self.position_grid_A >= nyquist_A:
            raise ValueError(f"position_grid_A={self.position_grid_A!r} must be below lambda / (4 alpha) = "
                             f"{nyquist_A:.3f} A, or the position dependence of the patterns aliases")

    @property
    def cell_side_A(self) -> float:
        """Side of the square simulation cell, ``lambda / angular_sampling``, Angstrom."""
        return wavelength_A(self.energy_eV) / (self.angular_sampling_mrad * 1e-3)

    @property
    def electrons_per_pattern(self) -> float:
        """Beam electrons per probe position, ``dose * step**2``."""
        return self.dose_e_per_A2 * self.step_A**2

    @property
    def source_sigma_A(self) -> float:
        """Standard deviation of the Gaussian source, Angstrom (FWHM / 2.3548)."""
        return self.source_fwhm_A / (2.0 * math.sqrt(2.0 * math.log(2.0)))

    def key(self) -> str:
        """A short hash of every field (names the cached files)."""
        text = json.dumps({**asdict(self), "version": _VERSION}, sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:16]


@dataclass
class EmpadLikeFiles:
    """Where :func:`simulate_empad_like` put the dataset, and what a microscope log would say.

    Attributes
    ----------
    xml_path
        The EMPAD ``.xml`` (it names the ``.raw``); give it to :func:`~tdmctx.ptycho.readers.read_4dstem`.
    dark_path, gain_path
        ``.npy`` references: the mean dark frame (counts) and the flat-field gain map, (k0, k1).
    truth_path
        ``.npz`` with the hidden truth (:func:`load_truth`); never read by a reconstruction.
    metadata
        What the experimenter knows: ``energy_eV``, ``semiangle_mrad``, ``angular_sampling_mrad``
        (the camera-length calibration), ``electrons_per_count``, ``dwell_s``, ``flyback_s``.
    """

    xml_path: Path
    dark_path: Path
    gain_path: Path
    truth_path: Path
    metadata: dict[str, float] = field(default_factory=dict)


# ----------------------------------------------------------------------------- physics


def interpolate_patterns(
    grid: np.ndarray,
    cell_A: tuple[float, float],
    positions_A: np.ndarray,
    *,
    source_sigma_A: float = 0.0,
    chunk: int = 256,
) -> np.ndarray:
    """Patterns at arbitrary probe positions from patterns on a periodic grid of positions.

    The intensity at every detector pixel is a periodic, band-limited function of the probe
    position; its Fourier series over the grid is evaluated at each position. A Gaussian
    source (partial spatial coherence) multiplies every harmonic ``f`` by
    ``exp(-2 pi^2 sigma^2 |f|^2)``, which is the Gaussian blur of the intensity over position.

    Parameters
    ----------
    grid
        ``(my, mx, k0, k1)`` patterns with the probe at ``(i * cell_x / mx, j * cell_y / my)``
        for row ``j`` and column ``i``; ``my`` and ``mx`` must be odd (no unpaired Nyquist term).
    cell_A
        ``(cell_x, cell_y)``, the period of the patterns in probe position, Angstrom.
    positions_A
        ``(..., 2)`` probe positions (x, y), Angstrom, any values (the function is periodic).
    source_sigma_A
        Standard deviation of the Gaussian source, Angstrom.
    chunk
        Positions evaluated per matrix product (memory).

    Returns
    -------
    ndarray, float32, ``(..., k0, k1)``
    """
    grid = np.asarray(grid)
    if grid.ndim != 4 or grid.shape[0] % 2 == 0 or grid.shape[1] % 2 == 0:
        raise ValueError(f"grid has shape {grid.shape}; expected (my, mx, k0, k1) with odd my and mx")
    cell = np.asarray(cell_A, dtype=np.float64)
    if cell.shape != (2,) or not np.all(cell > 0):
        raise ValueError(f"cell_A={cell_A!r} must be two positive lengths (x, y) in Angstrom")
    if not source_sigma_A >= 0:
        raise ValueError(f"source_sigma_A={source_sigma_A!r} must be >= 0")
    points = np.asarray(positions_A, dtype=np.float64)
    if points.shape[-1:] != (2,) or not np.all(np.isfinite(points)):
        raise ValueError(f"positions_A has shape {points.shape}; expected finite (..., 2) (x, y) in Angstrom")
    my, mx, n0, n1 = grid.shape
    fy = np.fft.fftfreq(my, d=cell[1] / my)
    fx = np.fft.fftfreq(mx, d=cell[0] / mx)
    coeffs = np.fft.fft2(grid.astype(np.float64), axes=(0, 1)) / (mx * my)
    blur = np.exp(-2.0 * np.pi**2 * source_sigma_A**2 * (fy[:, None] ** 2 + fx[None, :] ** 2))
    coeffs = (coeffs * blur[:, :, None, None]).reshape(my * mx, n0 * n1).astype(np.complex64)
    freq = np.stack(np.meshgrid(fx, fy, indexing="xy"), axis=-1).reshape(-1, 2)  # (G, 2) as (fx, fy)
    flat = points.reshape(-1, 2)
    out = np.empty((len(flat), n0 * n1), dtype=np.float32)
    for start in range(0, len(flat), chunk):
        part = flat[start:start + chunk]
        phase = np.exp(2j * np.pi * (part @ freq.T)).astype(np.complex64)
        out[start:start + chunk] = np.real(phase @ coeffs)
    return out.reshape(*points.shape[:-1], n0, n1)


def empad_readout(
    electrons: np.ndarray,
    *,
    dark_counts: np.ndarray,
    gain: np.ndarray,
    counts_per_electron: float,
    read_noise_counts: float,
    rng: np.random.Generator,
) -> np.ndarray:
    """What the detector writes for a stack of electron counts.

    ``counts = dark + electrons * counts_per_electron / gain + N(0, read_noise)``, so that
    :func:`tdmctx.ptycho.preprocess.apply_dark_gain` with the dark and the gain map gives back
    ``electrons * counts_per_electron`` plus noise.

    Parameters
    ----------
    electrons
        ``(..., k0, k1)`` electrons per pixel.
    dark_counts, gain
        ``(k0, k1)`` dark offset (counts) and flat-field gain (dimensionless, near 1).
    counts_per_electron
        Mean counts per electron.
    read_noise_counts
        Standard deviation of the Gaussian read noise, counts.
    rng
        Random generator of the read noise.

    Returns
    -------
    ndarray, float32, the shape of ``electrons``.
    """
    electrons = np.asarray(electrons)
    if electrons.shape[-2:] != np.shape(dark_counts) or np.shape(gain) != np.shape(dark_counts):
        raise ValueError(f"dark_counts {np.shape(dark_counts)} and gain {np.shape(gain)} must match the "
                         f"detector shape {electrons.shape[-2:]}")
    if not np.all(np.asarray(gain) > 0):
        raise ValueError("gain must be positive everywhere")
    scale = (counts_per_electron / np.asarray(gain)).astype(np.float32)
    out = np.empty(electrons.shape, dtype=np.float32)
    flat_in, flat_out = electrons.reshape(-1, *electrons.shape[-2:]), out.reshape(-1, *electrons.shape[-2:])
    for i in range(len(flat_in)):  # frame by frame: a 64 x 64 scan would need half a GB of noise at once
        noise = rng.standard_normal(electrons.shape[-2:], dtype=np.float32) * np.float32(read_noise_counts)
        flat_out[i] = dark_counts + flat_in[i] * scale + noise
    return out


#: Lattice constant of MoS2 used for the specimen (the default of :func:`tdmctx.ptycho.simulate.mos2_cell`).
_MOS2_A = 3.19


def _cell_repeats(cond: EmpadLikeConditions) -> tuple[tuple[int, int], np.ndarray]:
    """How many orthogonal MoS2 cells fill the square cell along (x, y), and the strain that takes."""
    side = cond.cell_side_A
    natural = np.array([_MOS2_A, _MOS2_A * math.sqrt(3.0)])  # the orthogonal 2H cell, a x a sqrt(3)
    reps = np.maximum(1, np.round(side / natural)).astype(int)
    strain = side / reps / natural - 1.0
    if np.any(np.abs(strain) > 0.02):
        raise ValueError(f"angular_sampling_mrad={cond.angular_sampling_mrad!r} gives a {side:.2f} A cell that "
                         f"needs a {100 * np.abs(strain).max():.1f} % strain to hold whole MoS2 cells; "
                         "choose a slightly different sampling (strain must stay within 2 %)")
    return (int(reps[0]), int(reps[1])), strain


def _unit_cell(cond: EmpadLikeConditions):
    """The orthogonal MoS2 unit cell strained so that ``nx x ny`` copies fill the square cell."""
    from tdmctx.ptycho.simulate import mos2_cell

    (nx, ny), _ = _cell_repeats(cond)
    unit = mos2_cell((1, 1), a_A=_MOS2_A)
    cell = np.asarray(unit.cell).copy()
    cell[0, 0], cell[1, 1] = cond.cell_side_A / nx, cond.cell_side_A / ny
    unit.set_cell(cell, scale_atoms=True)
    return unit


def pattern_grid(
    conditions: EmpadLikeConditions, *, cache: bool = True, progress: bool = False
) -> dict[str, np.ndarray]:
    """abTEM patterns on a grid of probe positions in one unit cell, and the true object.

    Parameters
    ----------
    conditions
        The experiment; only the probe, the detector sampling and the grid settings matter.
    cache
        Reuse (and write) ``empad-like-grid-*.npz`` in ``tdmctx.data.cache_dir("ptycho")``.
    progress
        Show abTEM's progress bar.

    Returns
    -------
    dict
        ``patterns`` (my, mx, k0, k1) float32 in the simulation (detector) frame, centre at
        ``n // 2``, for the probe at ``(i * cell_x / mx, j * cell_y / my)``; ``cell_A``
        (x, y); ``true_object`` (one unit cell, (y, x)); ``true_object_sampling_A`` (x, y);
        ``strain`` (x, y); ``angular_sampling_mrad`` (k0, k1).
    """
    cond = conditions
    from tdmctx.data import cache_dir

    (nx, ny), strain = _cell_repeats(cond)
    side = cond.cell_side_A
    # A whole number of potential pixels per unit cell keeps the lattice translation exact on the grid.
    per_cell = math.lcm(nx, ny)
    gpts = per_cell * math.ceil(side / cond.potential_sampling_A / per_cell)
    cell_A = (side / nx, side / ny)
    # Odd counts: the Fourier series then has no unpaired Nyquist harmonic.
    mx, my = (2 * math.ceil(c / cond.position_grid_A / 2) + 1 for c in cell_A)
    payload = dict(energy_eV=cond.energy_eV, semiangle_mrad=cond.semiangle_mrad, defocus_A=cond.defocus_A,
                   side=round(side, 9), reps=[nx, ny], gpts=gpts, grid=[mx, my], version=_VERSION)
    digest = hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]
    path = cache_dir("ptycho") / f"empad-like-grid-{digest}.npz"
    if cache and path.is_file():
        return load_arrays(path)

    import abtem

    from tdmctx.ptycho.simulate import abtem_to_yx

    atoms = _unit_cell(cond) * (nx, ny, 1)
    potential = abtem.Potential(atoms, gpts=gpts, projection="infinite", slice_thickness=float(atoms.cell[2, 2]) / 2)
    probe = abtem.Probe(energy=cond.energy_eV, semiangle_cutoff=cond.semiangle_mrad, defocus=cond.defocus_A)
    probe.grid.match(potential)
    # Any lattice vector works as the grid origin; the middle of the cell keeps the probe off the seam of the FFT box.
    origin = np.array([cell_A[0] * (nx // 2), cell_A[1] * (ny // 2)])
    gx, gy = np.meshgrid(np.arange(mx) * cell_A[0] / mx, np.arange(my) * cell_A[1] / my, indexing="xy")
    points = np.stack([gx.ravel(), gy.ravel()], axis=-1) + origin
    measurement = probe.scan(potential, scan=abtem.CustomScan(points),
                             detectors=abtem.PixelatedDetector(max_angle="cutoff")).compute(progress_bar=progress)
    patterns = np.asarray(measurement.array, dtype=np.float32)
    patterns = patterns.reshape(my, mx, *patterns.shape[-2:])  # abTEM's (kx, ky) is (k0, k1) at rotation 0
    transmission = potential.build().compute(progress_bar=False).transmission_function(cond.energy_eV).compute(
        progress_bar=False)
    full = abtem_to_yx(np.prod(np.asarray(transmission.array), axis=0))
    # One unit cell of the (periodic) object, pixel (0, 0) at the origin.
    obj = full[: gpts // ny, : gpts // nx].astype(np.complex64)
    arrays = {
        "patterns": patterns,
        "cell_A": np.asarray(cell_A),
        "true_object": obj,
        "true_object_sampling_A": np.array([side / gpts, side / gpts]),
        "strain": np.asarray(strain),
        "angular_sampling_mrad": np.asarray(measurement.angular_sampling, dtype=np.float64),
    }
    if cache:
        save_arrays(arrays, path)
    return arrays


def _rotation(deg: float) -> np.ndarray:
    t = np.deg2rad(deg)
    return np.array([[np.cos(t), -np.sin(t)], [np.sin(t), np.cos(t)]])


def _detector_window(patterns: np.ndarray, cond: EmpadLikeConditions) -> np.ndarray:
    """Orient the simulated patterns as the detector sees them and cut the 128 x 128 frame."""
    if cond.detector_transpose:
        patterns = np.swapaxes(patterns, -1, -2)
    n = patterns.shape[-1]
    half = _FRAME // 2
    starts = [n // 2 - half - o for o in cond.disk_offset_px]
    if min(starts) < 0 or max(starts) + _FRAME > n:
        raise ValueError(f"the simulated patterns ({n} px) do not cover a {_FRAME}-pixel frame offset by "
                         f"{cond.disk_offset_px}; lower potential_sampling_A")
    return np.ascontiguousarray(patterns[..., starts[0]:starts[0] + _FRAME, starts[1]:starts[1] + _FRAME])


# ----------------------------------------------------------------------------- the dataset


def simulate_empad_like(
    conditions: EmpadLikeConditions | None = None,
    *,
    folder: str | os.PathLike | None = None,
    cache: bool = True,
    progress: bool = False,
) -> EmpadLikeFiles:
    """Simulate the experiment-like MoS2 dataset and write it as an EMPAD ``.raw``/``.xml`` pair.

    Parameters
    ----------
    conditions
        The experiment (:class:`EmpadLikeConditions` defaults when ``None``).
    folder
        Where to write; by default a folder named after the conditions' hash in
        ``tdmctx.data.cache_dir("ptycho")``.
    cache
        Return the files already written for identical conditions, and reuse the cached abTEM grid.
    progress
        Show abTEM's progress bar.

    Returns
    -------
    EmpadLikeFiles
        Paths of the data, the dark and gain references and the truth, and the metadata a
        microscope would record.
    """
    from tdmctx.data import cache_dir
    from tdmctx.ptycho.readers import write_empad

    cond = EmpadLikeConditions() if conditions is None else conditions
    target = Path(folder) if folder is not None else cache_dir("ptycho") / f"empad-like-{cond.key()}"
    files = _files(target, cond)
    if cache and files.truth_path.is_file() and files.xml_path.is_file():
        return files
    if target.is_dir() and not files.truth_path.is_file() and any(target.iterdir()):
        raise ValueError(f"folder={str(target)!r} exists and holds no experiment-like dataset; "
                         "give a new or empty folder (nothing there is overwritten)")

    grid = pattern_grid(cond, cache=cache, progress=progress)
    scan = RasterScan(cond.scan_shape, cond.step_A, dwell_s=cond.dwell_s, flyback_s=cond.flyback_s)
    true_A = mixed_error(cond.error_strength_step, seed=cond.seed).apply(scan)
    # The patterns are simulated in the detector frame (k0 along the simulation's x); a probe at
    # real-space position p sits at R(-rotation) p there.
    sim_A = true_A.reshape(-1, 2) @ _rotation(cond.detector_rotation_deg)
    frames = _detector_window(grid["patterns"], cond)
    intensity = np.clip(interpolate_patterns(frames, tuple(grid["cell_A"]), sim_A,
                                             source_sigma_A=cond.source_sigma_A), 0.0, None)
    rng_shot, rng_detector, rng_dark = (np.random.default_rng(s) for s in
                                        np.random.SeedSequence(cond.seed).spawn(3))
    electrons = rng_shot.poisson(intensity * cond.electrons_per_pattern).astype(np.float32)
    shape = (_FRAME, _FRAME)
    dark = (cond.dark_level_counts + cond.dark_spread_counts * rng_dark.standard_normal(shape)).astype(np.float32)
    gain = (1.0 + cond.gain_spread * rng_dark.standard_normal(shape)).astype(np.float32)
    raw = empad_readout(electrons, dark_counts=dark, gain=gain, counts_per_electron=cond.counts_per_electron,
                        read_noise_counts=cond.read_noise_counts, rng=rng_detector)
    dark_reference = dark + rng_dark.standard_normal(shape).astype(np.float32) * np.float32(
        cond.read_noise_counts / math.sqrt(cond.dark_frames))

    # Write into a temporary folder and rename it into place, so a crash leaves no half dataset.
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        staged = _files(tmp, cond)
        write_empad(raw.reshape(*cond.scan_shape, *shape), staged.xml_path, step_A=cond.step_A)
        np.save(staged.dark_path, dark_reference)
        np.save(staged.gain_path, gain)
        centre = np.array([_FRAME // 2, _FRAME // 2]) + np.asarray(cond.disk_offset_px)
        save_arrays({
            "true_positions_A": true_A,
            "nominal_positions_A": scan.positions_A,
            "true_object": grid["true_object"],
            "true_object_sampling_A": grid["true_object_sampling_A"],
            # The object is stored in the detector frame, rotated by this angle from real-space x.
            "true_object_frame_deg": np.float64(cond.detector_rotation_deg),
            "rotation_deg": np.float64(cond.detector_rotation_deg),
            "transpose": np.bool_(cond.detector_transpose),
            "defocus_A": np.float64(cond.defocus_A),
            "angular_sampling_mrad": np.asarray(grid["angular_sampling_mrad"], dtype=np.float64),
            "disk_centre_px": centre.astype(np.float64),
            "electrons_per_pattern": np.float64(cond.electrons_per_pattern),
            "mean_detected_electrons": np.float64(electrons.sum(axis=(-2, -1)).mean()),
            "dose_e_per_A2": np.float64(cond.dose_e_per_A2),
            "source_fwhm_A": np.float64(cond.source_fwhm_A),
            "error_strength_step": np.float64(cond.error_strength_step),
            "step_A": np.float64(cond.step_A),
            "strain": grid["strain"],
            "dark_counts": dark,
            "gain": gain,
            "counts_per_electron": np.float64(cond.counts_per_electron),
            "read_noise_counts": np.float64(cond.read_noise_counts),
            "conditions_json": np.asarray(json.dumps(asdict(cond))),
        }, staged.truth_path)
        (tmp / "metadata.json").write_text(json.dumps(files.metadata, indent=1))
        if target.exists():
            shutil.rmtree(target)  # an earlier dataset (checked above), or an empty folder
        os.replace(tmp, target)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return files


def _files(folder: Path, cond: EmpadLikeConditions) -> EmpadLikeFiles:
    metadata = {
        "energy_eV": cond.energy_eV,
        "semiangle_mrad": cond.semiangle_mrad,
        # The camera-length calibration, here exactly the simulation's sampling (real ones carry an error).
        "angular_sampling_mrad": cond.angular_sampling_mrad,
        "electrons_per_count": 1.0 / cond.counts_per_electron,
        "dwell_s": cond.dwell_s,
        "flyback_s": cond.flyback_s,
    }
    return EmpadLikeFiles(xml_path=folder / "mos2_empad_like.xml", dark_path=folder / "dark_reference.npy",
                          gain_path=folder / "gain_reference.npy", truth_path=folder / "truth.npz",
                          metadata=metadata)


def load_truth(path: str | os.PathLike) -> dict[str, Any]:
    """Read a truth file written by :func:`simulate_empad_like` (scalars as Python numbers).

    Raises
    ------
    ValueError
        If the file lacks ``true_positions_A`` (not a truth file).
    """
    arrays = load_arrays(path)
    if "true_positions_A" not in arrays:
        raise ValueError(f"{path}: no 'true_positions_A'; not a truth file written by simulate_empad_like")
    out: dict[str, Any] = {}
    for key, value in arrays.items():
        out[key] = value.item() if value.ndim == 0 else value
    return out


# ----------------------------------------------------------------------------- scoring


def score_against_truth(
    result: ReconstructionResult,
    truth: dict[str, Any],
    *,
    energy_eV: float,
    semiangle_mrad: float,
    margin_A: float = 0.5,
) -> dict[str, float]:
    """Score a reconstruction against the hidden truth (positions, parts, object phase).

    Like :func:`tdmctx.ptycho.metrics.score`, but the true object is stored in the detector
    frame (``true_object_frame_deg``), so the reconstruction frame is compared with it through
    the difference of the two rotations.

    Parameters
    ----------
    result
        Any method's :class:`~tdmctx.ptycho.io.ReconstructionResult`.
    truth
        :func:`load_truth` of the dataset.
    energy_eV, semiangle_mrad
        For the information limit of the phase comparison.
    margin_A
        The object is compared inside the scanned field shrunk by this margin, Angstrom.

    Returns
    -------
    dict
        ``rms_A``, ``affine_A``, ``line_A``, ``lowpass_A``, ``highpass_A``, ``best_rms_A``,
        ``best_iteration``, ``phase_correlation``, ``frc_mean``, ``seconds_per_pass``.
    """
    from tdmctx.ptycho.metrics import error_decomposition, information_limit_per_A, phase_fidelity

    true = np.asarray(truth["true_positions_A"], dtype=np.float64)
    parts = error_decomposition(result.positions_A, true)
    out = {"rms_A": parts["total"]}
    out.update({f"{k}_A": parts[k] for k in ("affine", "line", "lowpass", "highpass")})
    log = np.asarray(result.log.get("rms_position_error_A", [parts["total"]]))
    out["best_rms_A"] = float(log.min())
    out["best_iteration"] = int(np.argmin(log)) + 1
    times = np.asarray(result.log.get("time_s", [np.nan]))
    out["seconds_per_pass"] = float(times[-1] / len(times))
    frame = true.reshape(-1, 2) @ _rotation(result.object_rotation_deg)  # R(-rotation) p, as rows
    lo, hi = frame.min(axis=0) + margin_A, frame.max(axis=0) - margin_A
    fidelity = phase_fidelity(
        result.object, result.object_pixel_size_A, np.asarray(result.object_origin_A),
        truth["true_object"], tuple(truth["true_object_sampling_A"]), (lo[0], hi[0], lo[1], hi[1]),
        information_limit_per_A(energy_eV, semiangle_mrad, result.object_pixel_size_A),
        rotation_deg=result.object_rotation_deg - float(truth["true_object_frame_deg"]),
    )
    out["phase_correlation"], out["frc_mean"] = fidelity.correlation, fidelity.frc_mean
    return out

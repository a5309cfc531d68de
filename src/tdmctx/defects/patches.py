"""THE patch definition, patch cutting, and the training loader.

A patch is a ``size_px x size_px`` window centred on a column, resampled to
``pixel_size_A`` and normalised by its own low and high percentiles::

    patch = (p - P_low(p)) / (P_high(p) - P_low(p))

The normalisation is invariant to any gain and dark offset (affine changes of the
signal), which is what lets simulated images (fraction of the beam) and experimental
frames (raw counts on an unknown offset of ~1e5) meet without estimating either. The
same :func:`extract_patches` serves the experimental path; nobody redefines a patch.

Training patches are cut on the fly from the clean stored images, vectorised in torch:

1. draw sites (class-balanced by default) and crop a window around each;
2. draw dose (log-uniform), Poisson-count at the stored pixel (the scan step), add a
   dark offset, read noise and a mild gain non-linearity: a new noise realisation every
   time;
3. resample with a random continuous rotation, mirror and sub-pixel jitter (bilinear);
4. normalise.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
import xarray as xr
from torch.utils.data import DataLoader, IterableDataset

from tdmctx.defects.context import CLASS_IDS, CLASS_NAMES, CONTEXT_FIELDS, Context
from tdmctx.devices import resolve_device

__all__ = [
    "PatchSpec",
    "PATCH",
    "Augmentation",
    "image_contexts",
    "cut_patches",
    "extract_patches",
    "PatchSampler",
    "patch_loader",
]


@dataclass(frozen=True)
class PatchSpec:
    """Geometry and normalisation of a patch.

    Attributes
    ----------
    size_px
        Patch side, pixels.
    pixel_size_A
        Patch pixel, Angstrom (0.4 A: the scan step of the experimental Ti-WSe2 frames).
    low_percentile, high_percentile
        Percentiles of the patch mapped to 0 and 1.
    """

    size_px: int = 24
    pixel_size_A: float = 0.4
    low_percentile: float = 2.0
    high_percentile: float = 98.0

    def __post_init__(self) -> None:
        if int(self.size_px) < 4:
            raise ValueError(f"size_px={self.size_px!r} must be >= 4")
        if not self.pixel_size_A > 0:
            raise ValueError(f"pixel_size_A={self.pixel_size_A!r} must be positive")
        if not 0 <= self.low_percentile < self.high_percentile <= 100:
            raise ValueError(
                f"percentiles ({self.low_percentile!r}, {self.high_percentile!r}) must satisfy 0 <= low < high <= 100"
            )

    @property
    def extent_A(self) -> float:
        """Side of the patch, Angstrom."""
        return self.size_px * self.pixel_size_A

    @staticmethod
    def _percentile(ordered: torch.Tensor, percent: float) -> torch.Tensor:
        pos = percent / 100 * (ordered.shape[-1] - 1)
        below = int(math.floor(pos))
        above = min(below + 1, ordered.shape[-1] - 1)
        frac = pos - below
        return ordered[..., below : below + 1] * (1 - frac) + ordered[..., above : above + 1] * frac

    def normalise(self, patches: torch.Tensor) -> torch.Tensor:
        """Map each (..., H, W) patch's low/high percentiles to 0/1."""
        flat = patches.reshape(*patches.shape[:-2], -1)
        # Linear-interpolated percentiles from one sort (torch.quantile is ~10x slower).
        ordered = torch.sort(flat, dim=-1).values
        lo, hi = (self._percentile(ordered, p) for p in (self.low_percentile, self.high_percentile))
        # A flat patch (no contrast) stays 0 instead of dividing by zero.
        scale = torch.clamp(hi - lo, min=torch.finfo(flat.dtype).eps)
        return ((flat - lo) / scale).reshape(patches.shape)


#: The patch definition of the study: 24 x 24 px at 0.4 A (9.6 A, a column and its two
#: neighbour shells), percentile normalisation 2-98 %.
PATCH = PatchSpec()


@dataclass(frozen=True)
class Augmentation:
    """Random changes applied to every training patch.

    Attributes
    ----------
    rotate
        Continuous rotation, uniform in [0, 2 pi).
    mirror
        Mirror with probability 1/2.
    jitter_px
        Centre offset, uniform in +-``jitter_px`` patch pixels per axis.
    dose_e_per_A2
        (low, high) of a log-uniform incident dose, electrons / A^2; ``None`` for
        noise-free patches.
    dark_offset
        (low, high) dark offset as a fraction of the patch's mean signal.
    read_noise
        (low, high) read-noise RMS as a fraction of the patch's mean signal.
    gamma
        (low, high) exponent of a mild detector non-linearity (contrast change).
    defect_fill
        (low, high) of a uniform fraction ``a``: the centre column of a ``dopant`` or ``V1``
        site is raised by ``a`` times its gap to the intact column of its sublattice (metal
        for a dopant, X2 for a V1; medians of the same clean image; V2 is left as it is),
        as a Gaussian of a column's width, before the dose noise: ``a = 1`` would make it
        intact, so a defect never passes its intact neighbours. Domain randomisation for
        defect columns that are brighter in experiment than in the simulation (adatoms,
        contamination, partial occupancy, probe tails the simulation lacks). ``(0, 0)``: off.
    tail_fraction
        (low, high) fraction ``f`` of the signal moved into a wide Gaussian tail:
        ``(1 - f) I + f (G * I)`` with ``G`` of FWHM ``tail_fwhm_A``, before the dose noise
        (probe tails, partial coherence, source size). ``(0, 0)``: off.
    tail_fwhm_A
        FWHM of the tail kernel, Angstrom.
    line_noise
        (low, high) RMS of a random offset per scan row (the source window's rows, before
        the rotation), as a fraction of the patch's mean signal: scan-line noise.
        ``(0, 0)``: off.
    """

    rotate: bool = True
    mirror: bool = True
    jitter_px: float = 0.5
    dose_e_per_A2: tuple[float, float] | None = (2e4, 1e6)
    dark_offset: tuple[float, float] = (0.0, 0.5)
    read_noise: tuple[float, float] = (0.0, 0.02)
    gamma: tuple[float, float] = (0.9, 1.1)
    defect_fill: tuple[float, float] = (0.0, 0.0)
    tail_fraction: tuple[float, float] = (0.0, 0.0)
    tail_fwhm_A: float = 2.0
    line_noise: tuple[float, float] = (0.0, 0.0)

    def __post_init__(self) -> None:
        for name in ("defect_fill", "tail_fraction", "line_noise"):
            lo, hi = getattr(self, name)
            if not 0.0 <= lo <= hi <= 1.0:
                raise ValueError(f"{name}={getattr(self, name)!r} must be (low, high) with 0 <= low <= high <= 1")
        if not self.tail_fwhm_A > 0:
            raise ValueError(f"tail_fwhm_A={self.tail_fwhm_A!r} must be positive")
        if self.dose_e_per_A2 is not None and not 0 < self.dose_e_per_A2[0] <= self.dose_e_per_A2[1]:
            raise ValueError(f"dose_e_per_A2={self.dose_e_per_A2!r} must be (low, high) with 0 < low <= high")
        if self.jitter_px < 0:
            raise ValueError(f"jitter_px={self.jitter_px!r} must be >= 0")


def _intact_levels(images: np.ndarray, site_image: np.ndarray, xy: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Per site, the median peak of the intact columns of its sublattice in its image.

    Metal for a dopant, X2 for a V1; ``nan`` for the other sites (never filled). Peaks are
    read at the nearest pixel of each centre.
    """
    out = np.full(len(labels), np.nan, dtype=np.float32)
    ny, nx = images.shape[1:]
    for i in np.unique(site_image):
        sel = np.where(site_image == i)[0]
        x = np.clip(np.rint(xy[sel, 0]).astype(int), 0, nx - 1)
        y = np.clip(np.rint(xy[sel, 1]).astype(int), 0, ny - 1)
        peak, lab = images[i, y, x], labels[sel]
        # V2 is left as simulated: no measurement says how bright empty sites are in practice.
        for defect, intact in ((("dopant",), "metal"), (("V1",), "X2")):
            ok = lab == CLASS_IDS[intact]
            if ok.any():
                out[sel[np.isin(lab, [CLASS_IDS[d] for d in defect])]] = np.median(peak[ok])
    return out


def image_contexts(dataset: xr.Dataset) -> list[Context]:
    """The full :class:`~tdmctx.defects.context.Context` of every image of a dataset."""
    def value(name: str, i: int):
        v = dataset[name].values[i]
        if isinstance(v, (str, np.str_)):
            return str(v) or None
        return None if not np.isfinite(v) else float(v)

    return [Context(**{f: value(f, i) for f in CONTEXT_FIELDS}) for i in range(dataset.sizes["image"])]


def _half_window(spec: PatchSpec, source_pixel_A: float) -> int:
    # Half-diagonal of the rotated patch in source pixels, plus jitter and interpolation.
    return int(math.ceil(spec.size_px / 2 * math.sqrt(2) * spec.pixel_size_A / source_pixel_A)) + 2


def _crop(images: torch.Tensor, image_index: torch.Tensor, centres_px: torch.Tensor, half: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Integer windows (B, 2h+1, 2h+1) around rounded centres, and the residual offsets."""
    base = torch.round(centres_px)
    offs = torch.arange(-half, half + 1, device=images.device)
    rows = (base[:, 1, None] + offs[None, :]).long().clamp(0, images.shape[1] - 1)
    cols = (base[:, 0, None] + offs[None, :]).long().clamp(0, images.shape[2] - 1)
    crops = images[image_index[:, None, None], rows[:, :, None], cols[:, None, :]]
    return crops, centres_px - base


def cut_patches(
    images: torch.Tensor,
    image_index: torch.Tensor,
    centres_px: torch.Tensor,
    spec: PatchSpec,
    source_pixel_A: float,
    *,
    angles_rad: torch.Tensor | None = None,
    mirror: torch.Tensor | None = None,
    noise=None,
) -> torch.Tensor:
    """Cut rotated, resampled patches around sub-pixel centres (vectorised).

    Parameters
    ----------
    images
        (N, H, W) source images.
    image_index
        (B,) image of each patch.
    centres_px
        (B, 2) centres (x, y) in source pixels (pixel (0, 0) is the first pixel's centre).
    spec
        The patch definition.
    source_pixel_A
        Pixel of the source images, Angstrom.
    angles_rad, mirror
        (B,) rotation angles and mirror flags (``None``: none).
    noise
        Optional callable applied to the (B, h, w) source windows before resampling
        (the loader's dose and read-out model).

    Returns
    -------
    torch.Tensor
        (B, size_px, size_px) normalised patches.
    """
    b = centres_px.shape[0]
    half = _half_window(spec, source_pixel_A)
    crops, frac = _crop(images, image_index, centres_px, half)
    if noise is not None:
        crops = noise(crops)
    n = spec.size_px
    scale = spec.pixel_size_A / source_pixel_A
    u = (torch.arange(n, device=images.device, dtype=crops.dtype) - (n - 1) / 2) * scale
    gy, gx = torch.meshgrid(u, u, indexing="ij")
    gx = gx.expand(b, n, n)
    gy = gy.expand(b, n, n)
    if mirror is not None:
        gx = torch.where(mirror[:, None, None], -gx, gx)
    if angles_rad is not None:
        c, s = torch.cos(angles_rad)[:, None, None], torch.sin(angles_rad)[:, None, None]
        gx, gy = c * gx - s * gy, s * gx + c * gy
    # Source coordinates relative to the window's first pixel, then grid_sample's [-1, 1].
    sx = gx + half + frac[:, 0, None, None].to(crops.dtype)
    sy = gy + half + frac[:, 1, None, None].to(crops.dtype)
    w = 2 * half + 1
    grid = torch.stack([sx / (w - 1) * 2 - 1, sy / (w - 1) * 2 - 1], dim=-1)
    out = F.grid_sample(crops[:, None], grid, mode="bilinear", padding_mode="border", align_corners=True)[:, 0]
    return spec.normalise(out)


def extract_patches(
    image: np.ndarray | xr.DataArray,
    points_px: np.ndarray,
    *,
    source_pixel_A: float | None = None,
    spec: PatchSpec = PATCH,
    device: str | torch.device | None = None,
) -> np.ndarray:
    """Normalised patches around given column centres of one image (no augmentation).

    The path for experimental frames and for evaluation: raw signal in, the same patch
    definition out (any dark offset and gain drop out in the normalisation).

    Parameters
    ----------
    image
        (y, x) image; a DataArray with a ``pixel_size_A`` attribute needs no
        ``source_pixel_A``.
    points_px
        (N, 2) sub-pixel centres (x, y) in image pixels.
    source_pixel_A
        Image pixel, Angstrom.
    spec
        Patch definition.
    device
        Torch device; the result returns as a numpy array.

    Returns
    -------
    numpy.ndarray
        (N, size_px, size_px) float32.

    Raises
    ------
    ValueError
        If the pixel size is unknown or the points are not (N, 2).
    """
    if source_pixel_A is None:
        source_pixel_A = getattr(image, "attrs", {}).get("pixel_size_A")
    if source_pixel_A is None or not source_pixel_A > 0:
        raise ValueError(f"source_pixel_A={source_pixel_A!r}: give the image pixel size in Angstrom (positive)")
    points = np.asarray(points_px, dtype=float)
    if points.ndim != 2 or points.shape[1] != 2:
        raise ValueError(f"points_px has shape {points.shape}; expected (N, 2) as (x, y)")
    dev = resolve_device(device)
    # float64: raw frames carry ~1e5 counts of offset on a contrast of a few 1e4.
    values = np.asarray(image.values if isinstance(image, xr.DataArray) else image, dtype=np.float64)
    imgs = torch.as_tensor(values, device=dev)[None]
    idx = torch.zeros(len(points), dtype=torch.long, device=dev)
    out = cut_patches(imgs, idx, torch.as_tensor(points, dtype=torch.float64, device=dev), spec, float(source_pixel_A))
    return out.to(torch.float32).cpu().numpy()


class PatchSampler(IterableDataset):
    """Endless, augmented batches of patches cut from a dataset store.

    Parameters
    ----------
    dataset
        :func:`~tdmctx.defects.store.open_dataset` output (or a subset along ``image``).
    spec, augmentation
        Patch definition and augmentations.
    batch_size
        Patches per batch.
    batches_per_epoch
        Length of one pass (the data are sampled, not enumerated).
    images
        Indices along ``image`` to draw from (splits by image or case); default all.
    balance_classes
        Draw the five classes equally often (else sites uniformly).
    seed
        Seed of the sampler; each worker of a DataLoader offsets it by its id.
    device
        Torch device of the output batches.

    Yields
    ------
    dict
        The batch format of :mod:`tdmctx.defects.train`: ``image`` (B, 1, n, n) float32
        normalised patches, ``context`` (B, CONTEXT_DIM) float32 full contexts encoded by
        :func:`tdmctx.defects.models.encode_contexts`, ``label`` (B,) int64 class ids;
        plus ``image_index`` and ``site_index`` (B,) int64 into the dataset (for splits
        and bookkeeping).
    """

    def __init__(
        self,
        dataset: xr.Dataset,
        spec: PatchSpec = PATCH,
        augmentation: Augmentation = Augmentation(),
        *,
        batch_size: int = 256,
        batches_per_epoch: int = 100,
        images: Sequence[int] | None = None,
        balance_classes: bool = True,
        seed: int = 0,
        device: str | torch.device | None = None,
    ) -> None:
        super().__init__()
        if batch_size < 1 or batches_per_epoch < 1:
            raise ValueError(f"batch_size={batch_size!r} and batches_per_epoch={batches_per_epoch!r} must be >= 1")
        self.spec, self.augmentation = spec, augmentation
        self.batch_size, self.batches_per_epoch = int(batch_size), int(batches_per_epoch)
        self.balance_classes, self.seed = balance_classes, int(seed)
        self.device = resolve_device(device)
        self.pixel_size_A = float(dataset.attrs.get("pixel_size_A", 0.4))
        values = np.nan_to_num(np.asarray(dataset["intensity"].values, dtype=np.float32), nan=0.0)
        self._images = torch.as_tensor(values, device=self.device)
        from tdmctx.defects.models import encode_contexts

        self._context = encode_contexts(image_contexts(dataset)).to(self.device)
        site_image = np.asarray(dataset["site_image"].values)
        xy = np.stack([dataset["site_x_px"].values, dataset["site_y_px"].values], axis=1).astype(np.float32)
        labels = np.array([CLASS_IDS[str(v)] for v in dataset["site_label"].values], dtype=np.int64)
        half = _half_window(spec, self.pixel_size_A)
        valid = np.isfinite(np.asarray(dataset["intensity"].values))
        # Keep sites whose whole window lies on measured (non-padded) pixels.
        keep = np.ones(len(labels), dtype=bool)
        for i in np.unique(site_image):
            rows = np.where(valid[i].any(axis=1))[0]
            cols = np.where(valid[i].any(axis=0))[0]
            sel = site_image == i
            x, y = xy[sel, 0], xy[sel, 1]
            keep[sel] = (x - half >= cols[0]) & (x + half <= cols[-1]) & (y - half >= rows[0]) & (y + half <= rows[-1])
        if images is not None:
            keep &= np.isin(site_image, np.asarray(images))
        self._sites = np.where(keep)[0]
        if len(self._sites) == 0:
            raise ValueError("no usable site: the selected images hold no column far enough from their edges")
        self._site_image = torch.as_tensor(site_image, device=self.device)
        self._xy = torch.as_tensor(xy, device=self.device)
        self._labels = torch.as_tensor(labels, device=self.device)
        self._by_class = [self._sites[labels[self._sites] == k] for k in range(len(CLASS_NAMES))]
        self._intact_level = None
        if augmentation.defect_fill[1] > 0:
            self._intact_level = torch.as_tensor(_intact_levels(values, site_image, xy, labels), device=self.device)

    @property
    def class_counts(self) -> dict[str, int]:
        """Usable sites per class."""
        return {c: len(s) for c, s in zip(CLASS_NAMES, self._by_class)}

    def _draw_sites(self, rng: np.random.Generator) -> np.ndarray:
        if not self.balance_classes:
            return rng.choice(self._sites, self.batch_size)
        present = [s for s in self._by_class if len(s)]
        which = rng.integers(0, len(present), self.batch_size)
        return np.array([present[k][rng.integers(0, len(present[k]))] for k in which])

    def _tail_kernel(self) -> torch.Tensor:
        sigma_px = self.augmentation.tail_fwhm_A / (2.0 * math.sqrt(2.0 * math.log(2.0))) / self.pixel_size_A
        r = int(math.ceil(3 * sigma_px))
        u = torch.arange(-r, r + 1, dtype=torch.float32, device=self.device)
        g = torch.exp(-0.5 * (u / sigma_px) ** 2)
        return g / g.sum()

    def _noise(self, rng: np.random.Generator, b: int, ref: torch.Tensor | None = None,
               frac: torch.Tensor | None = None):
        aug, dev = self.augmentation, self.device
        gen = torch.Generator(device=dev).manual_seed(int(rng.integers(2**62)))

        def uniform(lo_hi) -> torch.Tensor:
            lo, hi = lo_hi
            return (torch.rand(b, 1, 1, generator=gen, device=dev) * (hi - lo) + lo).float()

        def fill(signal: torch.Tensor) -> torch.Tensor:
            # A Gaussian bump on the centre column of defect sites; its sigma (0.45 A) is
            # that of a simulated 80 kV column, its height a fraction of the window's contrast.
            half = (signal.shape[-1] - 1) / 2
            u = torch.arange(signal.shape[-1], device=dev, dtype=signal.dtype) - half
            dx = u[None, None, :] - frac[:, 0, None, None].to(signal.dtype)
            dy = u[None, :, None] - frac[:, 1, None, None].to(signal.dtype)
            sigma_px = 0.45 / self.pixel_size_A
            bump = torch.exp(-0.5 * (dx**2 + dy**2) / sigma_px**2)
            half_i = signal.shape[-1] // 2
            gap = (ref - signal[:, half_i, half_i]).clamp(min=0).nan_to_num(0.0)[:, None, None]
            return signal + uniform(aug.defect_fill) * gap * bump

        def tail(signal: torch.Tensor) -> torch.Tensor:
            g = self._tail_kernel().to(signal.dtype)
            r = (len(g) - 1) // 2
            x = F.pad(signal[:, None], (r, r, r, r), mode="replicate")
            x = F.conv2d(x, g[None, None, None, :])
            x = F.conv2d(x, g[None, None, :, None])[:, 0]
            f = uniform(aug.tail_fraction)
            return (1 - f) * signal + f * x

        def apply(crops: torch.Tensor) -> torch.Tensor:
            signal = crops.clamp(min=0)
            # Extra draws only when switched on, so that default batches stay as before.
            if aug.defect_fill[1] > 0 and ref is not None:
                signal = fill(signal)
            if aug.tail_fraction[1] > 0:
                signal = tail(signal)
            if aug.dose_e_per_A2 is not None:
                lo, hi = np.log(aug.dose_e_per_A2[0]), np.log(aug.dose_e_per_A2[1])
                dose = torch.exp(uniform((lo, hi)))
                signal = torch.poisson(signal * dose * self.pixel_size_A**2, generator=gen)
            mean = signal.mean(dim=(1, 2), keepdim=True).clamp(min=1e-12)
            signal = (signal / mean) ** uniform(aug.gamma) * mean
            signal = signal + uniform(aug.dark_offset) * mean
            signal = signal + uniform(aug.read_noise) * mean * torch.randn(signal.shape, generator=gen, device=dev)
            if aug.line_noise[1] > 0:
                rows = torch.randn(signal.shape[0], signal.shape[1], 1, generator=gen, device=dev)
                signal = signal + uniform(aug.line_noise) * mean * rows
            return signal

        return apply

    @property
    def usable_sites(self) -> np.ndarray:
        """Indices (along ``site``) of the sites whose window lies inside their image."""
        return self._sites.copy()

    def batch(self, rng: np.random.Generator, sites: np.ndarray | None = None) -> dict[str, torch.Tensor]:
        """One augmented batch with the generator ``rng``.

        Parameters
        ----------
        rng
            Draws the sites (unless given) and the read-out.
        sites
            Cut these sites (from :attr:`usable_sites`) instead of drawing ``batch_size``:
            fixed evaluation patches that still go through the training read-out.
        """
        sites = torch.as_tensor(self._batch_sites(rng, sites), device=self.device)
        geometry = self.draw_geometry(rng, len(sites))
        patches = self.cut(rng, sites, geometry)
        idx = self._site_image[sites]
        return {
            "image": patches[:, None].float(),
            "context": self._context[idx],
            "label": self._labels[sites],
            "image_index": idx,
            "site_index": sites,
        }

    def _batch_sites(self, rng: np.random.Generator, sites: np.ndarray | None) -> np.ndarray:
        if sites is None:
            return self._draw_sites(rng)
        if not np.isin(sites, self._sites).all():
            raise ValueError("sites holds indices that are not usable sites of this sampler (see usable_sites)")
        return np.asarray(sites)

    def draw_geometry(self, rng: np.random.Generator, n: int) -> dict[str, torch.Tensor | None]:
        """Random centre jitter (source pixels), rotation and mirror of ``n`` patches.

        Split from :meth:`cut` so that two simultaneously recorded channels of the same
        sites can share one geometry (:mod:`tdmctx.defects.two_channel`).
        """
        aug, dev = self.augmentation, self.device
        jitter = torch.as_tensor(rng.uniform(-aug.jitter_px, aug.jitter_px, (n, 2)), dtype=torch.float32, device=dev)
        return {
            "shift_px": jitter * self.spec.pixel_size_A / self.pixel_size_A,
            "angles_rad": torch.as_tensor(rng.uniform(0, 2 * np.pi, n), dtype=torch.float32, device=dev)
            if aug.rotate else None,
            "mirror": torch.as_tensor(rng.random(n) < 0.5, device=dev) if aug.mirror else None,
        }

    def cut(self, rng: np.random.Generator, sites: torch.Tensor, geometry: dict[str, torch.Tensor | None]) -> torch.Tensor:
        """(B, n, n) patches of ``sites`` with the given geometry and a fresh read-out (dose, noise)."""
        idx = self._site_image[sites]
        centres = self._xy[sites] + geometry["shift_px"]
        ref = self._intact_level[sites] if self._intact_level is not None else None
        noise = self._noise(rng, len(sites), ref, centres - torch.round(centres))
        return cut_patches(self._images, idx, centres, self.spec, self.pixel_size_A,
                           angles_rad=geometry["angles_rad"], mirror=geometry["mirror"], noise=noise)

    def set_epoch(self, epoch: int) -> None:
        """Draw other batches in ``epoch`` (as ``DistributedSampler.set_epoch``); training calls it."""
        self.epoch = int(epoch)

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        info = torch.utils.data.get_worker_info()
        # Every epoch, rank and worker draws its own stream: without the epoch every pass
        # repeats the same batches, without the rank every process of a torchrun job does.
        dist = torch.distributed
        rank = dist.get_rank() if dist.is_available() and dist.is_initialized() else 0
        worker = 0 if info is None else info.id
        rng = np.random.default_rng([self.seed, getattr(self, "epoch", 0), rank, worker])
        for _ in range(self.batches_per_epoch):
            yield self.batch(rng)

    def __len__(self) -> int:
        return self.batches_per_epoch


def patch_loader(dataset: xr.Dataset, *, num_workers: int = 0, **kwargs) -> DataLoader:
    """A torch :class:`~torch.utils.data.DataLoader` over :class:`PatchSampler` batches.

    ``kwargs`` go to :class:`PatchSampler` (``batch_size``, ``images``, ``seed``, ...).
    """
    return DataLoader(PatchSampler(dataset, **kwargs), batch_size=None, num_workers=num_workers)

"""Two simultaneously recorded detectors as one two-channel patch.

The detectors of one beam energy record at once: in the store, the cases of a system at one
energy share their structures and their distorted scan (:mod:`tdmctx.defects.cases`), so
image *k* of the HAADF case and image *k* of the MAADF case show the same columns at the
same pixels (variable ``structure``). A two-channel classifier sees both: a single heavy
atom scatters relatively more to high angles than two lighter ones, so the ratio of the
channels separates a metal column from a chalcogen pair whatever the absolute contrast,
which is exactly the information that :func:`~tdmctx.defects.baseline.metal_sites_two_channels`
uses on the real Ti-WSe2 fields (``adf2`` the higher-angle channel, ``adf1`` the lower).

Channel order is fixed, high angle first (:data:`CHANNELS`); the context handed to the
network leaves the detector angles unknown (one context slot cannot describe two
detectors, and the real fields' angles are unknown anyway).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import xarray as xr

from tdmctx.defects.models import hide_context_fields
from tdmctx.defects.patches import PATCH, Augmentation, PatchSampler, PatchSpec, extract_patches

__all__ = ["CHANNELS", "channel_pairs", "TwoChannelSampler", "two_channel_patches"]

#: Detectors of the two channels, in channel order: high angle, then medium angle.
CHANNELS: tuple[str, str] = ("HAADF", "MAADF")

_DETECTOR_FIELDS = ("detector_inner_mrad", "detector_outer_mrad")


def channel_pairs(dataset: xr.Dataset, detectors: Sequence[str] = CHANNELS) -> tuple[np.ndarray, np.ndarray]:
    """Image indices of the two detectors' images of every structure recorded by both.

    Returns
    -------
    first, second
        (P,) indices along ``image``, in the order of the first detector's images.

    Raises
    ------
    ValueError
        If ``detectors`` is not two distinct detector names of the store, or no structure
        was recorded by both.
    """
    names = [str(d) for d in detectors]
    present = sorted({str(d) for d in dataset["detector"].values})
    if len(names) != 2 or names[0] == names[1] or not set(names) <= set(present):
        raise ValueError(f"detectors={tuple(names)!r}: need two distinct detectors of the store {present}")
    structure = np.asarray(dataset["structure"].values).astype(str)
    detector = np.asarray(dataset["detector"].values).astype(str)
    second = {s: i for i, (s, d) in enumerate(zip(structure, detector)) if d == names[1]}
    first = [i for i, (s, d) in enumerate(zip(structure, detector)) if d == names[0] and s in second]
    if not first:
        raise ValueError(f"no structure of the store was recorded by both {names[0]} and {names[1]}")
    return np.array(first), np.array([second[structure[i]] for i in first])


class TwoChannelSampler(PatchSampler):
    """:class:`~tdmctx.defects.patches.PatchSampler` whose patches hold both detectors.

    Each patch is cut from the two images of one structure at the same site with one
    geometry (jitter, rotation, mirror), and each channel gets its own read-out (dose,
    noise). Batches have the sampler's format with ``image`` (B, 2, n, n), ``context``
    with the detector angles unknown, and ``image_index`` / ``site_index`` of the first
    channel.

    Parameters
    ----------
    dataset, spec, augmentation
        As for :class:`~tdmctx.defects.patches.PatchSampler`.
    images
        Image indices to draw from (either detector's images of a structure select it);
        default all.
    detectors
        The two detectors, in channel order (default :data:`CHANNELS`).
    **sampler_options
        ``batch_size``, ``batches_per_epoch``, ``balance_classes``, ``seed``, ``device`` of
        :class:`~tdmctx.defects.patches.PatchSampler`, for both channels.

    Raises
    ------
    ValueError
        If the detectors are not in the store, or the paired images list different sites.
    """

    def __init__(
        self,
        dataset: xr.Dataset,
        spec: PatchSpec = PATCH,
        augmentation: Augmentation = Augmentation(),
        *,
        images: Sequence[int] | None = None,
        detectors: Sequence[str] = CHANNELS,
        **sampler_options,
    ) -> None:
        first, second = channel_pairs(dataset, detectors)
        if images is not None:
            chosen = np.isin(first, np.asarray(images)) | np.isin(second, np.asarray(images))
            first, second = first[chosen], second[chosen]
            if not len(first):
                raise ValueError("images selects no structure recorded by both detectors")
        super().__init__(dataset, spec, augmentation, images=first, **sampler_options)
        self.detectors = tuple(str(d) for d in detectors)
        self._other = PatchSampler(dataset, spec, augmentation, images=second, **sampler_options)
        # Both samplers hold the same dataset-wide tensors (every image, site and level): keep one
        # copy of each, which halves the sampler's memory on the device.
        for name in ("_images", "_context", "_site_image", "_xy", "_labels", "_intact_level"):
            setattr(self._other, name, getattr(self, name))
        self._partner = self._match_sites(dataset, first, second)
        paired = self._sites[self._partner[self._sites] >= 0]
        labels = self._labels.cpu().numpy()
        self._sites = paired
        self._by_class = [paired[labels[paired] == k] for k in range(len(self._by_class))]
        self._context = hide_context_fields(self._context, _DETECTOR_FIELDS)

    @staticmethod
    def _match_sites(dataset: xr.Dataset, first: np.ndarray, second: np.ndarray) -> np.ndarray:
        """Per site of the dataset: the same column's site in the partner image, or -1."""
        site_image = np.asarray(dataset["site_image"].values)
        x = np.asarray(dataset["site_x_px"].values, dtype=np.float64)
        y = np.asarray(dataset["site_y_px"].values, dtype=np.float64)
        labels = np.asarray(dataset["site_label"].values).astype(str)
        partner = np.full(len(site_image), -1, dtype=np.int64)
        order = np.argsort(site_image, kind="stable")
        bounds = np.searchsorted(site_image[order], np.arange(dataset.sizes["image"] + 1))
        for a, b in zip(first, second):
            sa, sb = order[bounds[a]:bounds[a + 1]], order[bounds[b]:bounds[b + 1]]
            # The detectors share one scan: the same columns at the same pixels, listed alike.
            if len(sa) != len(sb) or not (np.allclose(x[sa], x[sb], atol=1e-3) and np.allclose(y[sa], y[sb], atol=1e-3)
                                          and np.array_equal(labels[sa], labels[sb])):
                raise ValueError(f"images {a} and {b} of one structure list different sites; "
                                 "was the store built with detectors that do not share a scan?")
            partner[sa] = sb
        return partner

    def partner_sites(self, sites: np.ndarray) -> np.ndarray:
        """The second channel's site of each (first-channel) site, indices along ``site``."""
        return self._partner[np.asarray(sites)]

    def batch(self, rng: np.random.Generator, sites: np.ndarray | None = None) -> dict[str, torch.Tensor]:
        """One augmented two-channel batch (see :meth:`PatchSampler.batch`)."""
        sites = self._batch_sites(rng, sites)
        first = torch.as_tensor(sites, device=self.device)
        second = torch.as_tensor(self.partner_sites(sites), device=self.device)
        geometry = self.draw_geometry(rng, len(sites))
        patches = torch.stack([self.cut(rng, first, geometry), self._other.cut(rng, second, geometry)], dim=1)
        idx = self._site_image[first]
        return {"image": patches.float(), "context": self._context[idx], "label": self._labels[first],
                "image_index": idx, "site_index": first}


def two_channel_patches(
    high: np.ndarray | xr.DataArray,
    low: np.ndarray | xr.DataArray,
    points_px: np.ndarray,
    *,
    source_pixel_A: float | None = None,
    spec: PatchSpec = PATCH,
    device: str | torch.device | None = None,
) -> np.ndarray:
    """(N, 2, n, n) normalised patches of two simultaneously recorded channels at the same centres.

    ``high`` is the higher-angle channel (``adf2`` of the Ti-WSe2 fields), ``low`` the
    lower-angle one (``adf1``); each is normalised on its own, as in training.
    """
    shape_high, shape_low = np.shape(high), np.shape(low)
    if shape_high != shape_low:
        raise ValueError(f"the channels have shapes {shape_high} and {shape_low}; they must be one field")
    kw = dict(source_pixel_A=source_pixel_A, spec=spec, device=device)
    return np.stack([extract_patches(high, points_px, **kw), extract_patches(low, points_px, **kw)], axis=1)

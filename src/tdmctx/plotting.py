"""One figure style for the whole book: colour-blind-safe palette, scale bars, class colours.

The palette is Paul Tol's *bright* qualitative scheme, which stays distinguishable under
the common forms of colour blindness; sequential images use ``cividis`` or ``viridis``
and diverging fields ``RdBu_r`` around zero.
"""

from __future__ import annotations

from collections.abc import Sequence

import matplotlib as mpl
import matplotlib.pyplot as plt
import numpy as np
from matplotlib.axes import Axes

__all__ = [
    "PALETTE",
    "CLASS_NAMES",
    "CLASS_COLORS",
    "IMAGE_CMAP",
    "DIVERGING_CMAP",
    "apply_style",
    "add_scalebar",
    "show_image",
]

#: Paul Tol's "bright" scheme: blue, red, green, yellow, cyan, purple, grey.
PALETTE: tuple[str, ...] = ("#4477AA", "#EE6677", "#228833", "#CCBB44", "#66CCEE", "#AA3377", "#BBBBBB")

#: Column classes in the order used everywhere (integer ids 0-4).
CLASS_NAMES: tuple[str, ...] = ("metal", "dopant", "X2", "V1", "V2")

#: One colour per column class, fixed across every figure of the book.
CLASS_COLORS: dict[str, str] = dict(zip(CLASS_NAMES, ("#4477AA", "#EE6677", "#CCBB44", "#228833", "#AA3377")))

IMAGE_CMAP = "cividis"
DIVERGING_CMAP = "RdBu_r"


def apply_style() -> None:
    """Set the book's matplotlib defaults (palette, fonts, figure resolution)."""
    mpl.rcParams.update(
        {
            "axes.prop_cycle": mpl.cycler(color=list(PALETTE)),
            "figure.dpi": 100,
            "savefig.dpi": 150,
            "image.cmap": IMAGE_CMAP,
            "axes.grid": False,
            "axes.spines.top": False,
            "axes.spines.right": False,
            "font.size": 10,
            "legend.frameon": False,
        }
    )


def _nice_length(target: float) -> float:
    """Largest 1-2-5 x 10^n value not above ``target``."""
    exponent = np.floor(np.log10(target))
    for mantissa in (5.0, 2.0, 1.0):
        value = mantissa * 10**exponent
        if value <= target:
            return float(value)
    return float(10**exponent)


def add_scalebar(
    ax: Axes,
    pixel_size_A: float,
    length_A: float | None = None,
    *,
    color: str = "white",
    loc: str = "lower right",
) -> None:
    """Draw a labelled scale bar on an image axis drawn in pixel units.

    Parameters
    ----------
    ax
        Axis showing an image with ``imshow`` in pixel coordinates.
    pixel_size_A
        Size of one image pixel, Angstrom.
    length_A
        Bar length in Angstrom; by default a 1-2-5 value near a fifth of the width.
    """
    from mpl_toolkits.axes_grid1.anchored_artists import AnchoredSizeBar

    if not pixel_size_A > 0:
        raise ValueError(f"pixel_size_A={pixel_size_A!r} must be positive")
    x0, x1 = ax.get_xlim()
    width_A = abs(x1 - x0) * pixel_size_A
    if length_A is None:
        length_A = _nice_length(width_A / 5)
    label = f"{length_A / 10:g} nm" if length_A >= 10 else f"{length_A:g} Å"
    bar = AnchoredSizeBar(
        ax.transData, length_A / pixel_size_A, label, loc, pad=0.4, color=color, frameon=False, size_vertical=max(1.0, 0.01 * abs(x1 - x0))
    )
    ax.add_artist(bar)


def show_image(
    ax: Axes,
    image: np.ndarray,
    pixel_size_A: float | None = None,
    *,
    title: str | None = None,
    cmap: str = IMAGE_CMAP,
    percentiles: Sequence[float] = (0.5, 99.5),
    colorbar_label: str | None = None,
):
    """Show a (y, x) image with robust contrast limits, no ticks, and a scale bar.

    Returns the ``AxesImage``.
    """
    image = np.asarray(image)
    lo, hi = np.nanpercentile(image, percentiles)
    im = ax.imshow(image, cmap=cmap, vmin=lo, vmax=hi, origin="upper", interpolation="nearest")
    ax.set_xticks([])
    ax.set_yticks([])
    if title:
        ax.set_title(title)
    if pixel_size_A is not None:
        add_scalebar(ax, pixel_size_A)
    if colorbar_label is not None:
        plt.colorbar(im, ax=ax, fraction=0.046, pad=0.04, label=colorbar_label)
    return im

"""``tdmctx classify``: classify the atomic columns of a user's ADF image of a doped TMD.

::

    tdmctx classify IMAGE --host WSe2 --dopant Ti --energy-kV 80 [--detector-mrad INNER OUTER]
                    [--points POINTS.npy] --output OUT.csv [--model context|image-only]
                    [--weights PATH] [--pixel-size-A A] [--device D]
                    [--metal-sublattice brighter|darker] [--priors EM|none]
                    [--unseen unknown|keep|error]

IMAGE is a dm3/dm4 file (calibrated), a TIFF (pixel size from its tags only when they are
unambiguous: ImageJ's length unit, or a centimetre resolution that gives an atomic-scale
pixel) or a ``.npy`` array; ``--pixel-size-A`` gives or overrides the pixel size. Context
flags left out are unknown to the model (never defaulted). Typed units (kV, a formula)
become the package's units (eV, element symbols) here and nowhere else.

Without ``--points`` the columns are found with :func:`tdmctx.defects.sites.find_sites`
(peaks plus a lattice fit, so that empty sites are found too); which sublattice holds the
metal comes from the detector rule (:func:`~tdmctx.defects.sites.metal_brighter_from_context`)
when the angles decide it, else from the model's own predictions
(:func:`~tdmctx.defects.sites.metal_group_from_proba`), unless ``--metal-sublattice
brighter|darker`` says it. The model vote is only as good as the model: give the detector
angles or the flag when you know them.

Class probabilities are adapted to the image's own class priors by EM unless
``--priors none`` (see :mod:`tdmctx.defects.classifier`).

Outputs: ``OUT.csv``, one row per site (input order with ``--points``): ``x_px``, ``y_px``,
``class``, ``p_metal`` ... ``p_V2``, ``entropy`` (nats), and without ``--points`` also
``sublattice``, ``has_peak``, ``full_patch``; and ``OUT.png`` beside it, the sites over the
image coloured by class and an entropy map. Both are written to temporary names and
renamed at the end, so that a failed run leaves nothing behind.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
import time
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from tdmctx.defects.context import Context

__all__ = ["register", "parse_host", "read_image", "build_context", "run_classify"]

# Length units of ImageJ's TIFF description -> Angstrom.
_UNIT_TO_A = {"nm": 10.0, "nanometer": 10.0, "a": 1.0, "å": 1.0, "angstrom": 1.0, "pm": 0.01,
              "um": 1e4, "µm": 1e4, "\u00b5m": 1e4, "micron": 1e4}
# A centimetre resolution tag is trusted only if it gives an atomic-resolution pixel, Angstrom.
_PLAUSIBLE_PIXEL_A = (0.005, 5.0)
_FORMULA = re.compile(r"^([A-Z][a-z]?)([A-Z][a-z]?)2$")
# Fewer given points cannot be split into sublattices (tdmctx.defects.baseline.split_sublattices).
_MIN_SUBLATTICE_POINTS = 4
# Fraction of nearest-neighbour bonds that must join the two sublattices for given points to
# be taken as a honeycomb (a clean one: 1; one sublattice alone: about 0.5).
_MIN_CROSSING = 0.9


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``tdmctx classify`` to the command line."""
    p = subparsers.add_parser(
        "classify",
        help="classify the atomic columns of an ADF-STEM image of a doped TMD monolayer",
        description="Classify the atomic columns of an ADF-STEM image of a doped TMD monolayer: one CSV row per "
                    "site (x_px, y_px, class, p_<class>, entropy) and an overlay PNG beside it. Context flags left "
                    "out are unknown to the model.",
    )
    p.add_argument("image", help="dm3/dm4, TIFF or .npy image")
    p.add_argument("--host", default=None, help="host formula such as WSe2 (default: unknown)")
    p.add_argument("--dopant", default=None, help="dopant element such as Ti (default: unknown)")
    p.add_argument("--energy-kV", type=float, default=None, help="beam energy, kV (default: unknown)")
    p.add_argument("--detector-mrad", type=float, nargs=2, metavar=("INNER", "OUTER"), default=None,
                   help="annular detector collection semi-angles, mrad (default: unknown)")
    p.add_argument("--points", default=None, help="(N, 2) .npy of (x, y) column centres in pixels (default: find them)")
    p.add_argument("--output", required=True, help="CSV to write; the overlay goes to the same name with .png")
    p.add_argument("--model", default="context", choices=("context", "image-only"), help="shipped model to use")
    p.add_argument("--weights", default=None, help="a model file written by ContextClassifier.save (instead of the shipped one)")
    p.add_argument("--metal-sublattice", default=None, choices=("brighter", "darker"),
                   help="which sublattice holds the metal (default: from the detector angles when they decide it, "
                        "else from the model's predictions)")
    p.add_argument("--no-sublattice", action="store_true",
                   help="do not restrict each site to the classes of its lattice sublattice (metal, dopant on the "
                        "metal sublattice; X2, V1, V2 on the other) before the prior correction")
    p.add_argument("--priors", default="EM", choices=("EM", "none"),
                   help="adapt the posteriors to this image's class priors estimated by EM (default), or keep the "
                        "class-balanced training priors")
    p.add_argument("--unseen", default="unknown", choices=("unknown", "keep", "error"),
                   help="a host or dopant the model was not trained on: classify with it unknown (default, with a "
                        "warning), keep it as given, or refuse")
    p.add_argument("--pixel-size-A", type=float, default=None, help="pixel size, Angstrom (needed for .npy)")
    p.add_argument("--device", default=None, help="'cpu' or 'cuda' (default: CUDA when available)")
    p.set_defaults(handler=_cmd_classify)


# -- input --------------------------------------------------------------------------------


def parse_host(formula: str) -> tuple[str, str]:
    """Metal and chalcogen symbols of a TMD formula such as ``"WSe2"``.

    Raises
    ------
    ValueError
        If ``formula`` is not ``<metal><chalcogen>2`` with real elements and S, Se or Te.
    """
    from tdmctx.defects.context import CHALCOGENS, element_symbol

    match = _FORMULA.match(str(formula).strip())
    if match is None:
        raise ValueError(f"--host {formula!r} is not a TMD formula; expected metal + chalcogen + 2, such as WSe2 or MoS2")
    metal = element_symbol(match.group(1), "--host metal")
    chalcogen = element_symbol(match.group(2), "--host chalcogen")
    if chalcogen not in CHALCOGENS:
        raise ValueError(f"--host {formula!r}: {chalcogen} is not a chalcogen; expected one of {CHALCOGENS}")
    return metal, chalcogen


def build_context(host: str | None, dopant: str | None, energy_kV: float | None, detector_mrad=None):
    """The :class:`~tdmctx.defects.context.Context` of command-line values (kV -> eV here)."""
    from tdmctx.defects.context import ENERGY_RANGE_EV, Context, element_symbol

    if energy_kV is not None:
        lo, hi = (e / 1e3 for e in ENERGY_RANGE_EV)
        if not (np.isfinite(energy_kV) and lo <= energy_kV <= hi):
            raise ValueError(f"--energy-kV {energy_kV:g} is out of range; expected a beam energy of {lo:g}-{hi:g} kV")
    metal, chalcogen = parse_host(host) if host is not None else (None, None)
    inner, outer = (None, None) if detector_mrad is None else (float(detector_mrad[0]), float(detector_mrad[1]))
    return Context(
        host_metal=metal,
        chalcogen=chalcogen,
        dopant=None if dopant is None else element_symbol(dopant, "--dopant"),
        energy_eV=None if energy_kV is None else float(energy_kV) * 1e3,
        detector_inner_mrad=inner,
        detector_outer_mrad=outer,
    )


def _tiff_pixel_size_A(page, description: str) -> float | None:
    """Pixel size from TIFF tags when unambiguous, else ``None``."""
    tags = page.tags
    if "XResolution" not in tags or "YResolution" not in tags:
        return None
    xres, yres = (tags[k].value for k in ("XResolution", "YResolution"))
    xres = xres[0] / xres[1] if isinstance(xres, tuple) else float(xres)
    yres = yres[0] / yres[1] if isinstance(yres, tuple) else float(yres)
    if not (xres > 0 and np.isclose(xres, yres, rtol=1e-4)):
        return None
    unit = re.search(r"^unit=(.+)$", description, flags=re.MULTILINE)
    if unit is not None:  # ImageJ: resolution in pixels per `unit`
        factor = _UNIT_TO_A.get(unit.group(1).strip().replace("\\u00B5", "µ").lower())
        return None if factor is None else factor / xres
    resunit = int(getattr(tags.get("ResolutionUnit"), "value", 1))
    if resunit == 3:  # centimetre; inch (2) is a print resolution, never a calibration here
        pixel = 1e8 / xres
        if _PLAUSIBLE_PIXEL_A[0] <= pixel <= _PLAUSIBLE_PIXEL_A[1]:
            return pixel
    return None


def read_image(path: str | os.PathLike, pixel_size_A: float | None = None) -> tuple[np.ndarray, float]:
    """Read a dm3/dm4, TIFF or ``.npy`` image and its pixel size.

    Parameters
    ----------
    path
        The image file.
    pixel_size_A
        Pixel size, Angstrom; overrides the file's calibration; required for ``.npy``
        and uncalibrated TIFFs.

    Returns
    -------
    image, pixel_size_A
        (y, x) float64 values (finite) and the pixel size, Angstrom.

    Raises
    ------
    FileNotFoundError
        If the file does not exist.
    ValueError
        For an unknown extension, an unreadable file, an image that is not 2-D or holds
        NaN, or a pixel size that is missing or not positive.
    """
    from tdmctx.defects.sites import as_image

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"IMAGE {str(path)!r} does not exist")
    suffix = path.suffix.lower()
    file_pixel = None
    if suffix in (".dm3", ".dm4"):
        from tdmctx.experimental.dm import read_dm

        data = read_dm(path)
        values, file_pixel = data.values, float(data.attrs["pixel_size_A"])
        if "pixel_size_y_A" in data.attrs and pixel_size_A is None:
            raise ValueError(f"IMAGE {path.name}: pixels are not square ({file_pixel:g} x {data.attrs['pixel_size_y_A']:g} A); "
                             "resample to square pixels first")
    elif suffix in (".tif", ".tiff"):
        import logging

        import tifffile

        # tifffile logs its complaints about a broken file as well as raising: keep the
        # user's error to the one line below.
        tiff_log = logging.getLogger("tifffile")
        level = tiff_log.level
        tiff_log.setLevel(logging.CRITICAL)
        try:
            with tifffile.TiffFile(path) as tif:
                page = tif.pages[0]
                values = page.asarray()
                description = str(getattr(page, "description", "") or "")
                file_pixel = _tiff_pixel_size_A(page, description)
        except Exception as exc:  # tifffile raises several types for broken files
            raise ValueError(f"IMAGE {path.name} cannot be read as a TIFF ({type(exc).__name__}: {exc})") from exc
        finally:
            tiff_log.setLevel(level)
    elif suffix == ".npy":
        try:
            values = np.load(path, allow_pickle=False)
        except Exception as exc:  # ValueError, OSError, EOFError for broken or pickled files
            raise ValueError(f"IMAGE {path.name} cannot be read as a .npy array ({type(exc).__name__}: {exc})") from exc
    else:
        raise ValueError(f"IMAGE {path.name} has extension {suffix!r}; expected .dm3, .dm4, .tif, .tiff or .npy")
    values = np.asarray(values)
    if values.ndim != 2:
        raise ValueError(f"IMAGE {path.name} holds an array of shape {values.shape}; expected one 2-D (y, x) image")
    if not np.issubdtype(values.dtype, np.number) or np.iscomplexobj(values):
        raise ValueError(f"IMAGE {path.name} holds {values.dtype} values; expected real intensities")
    if not np.all(np.isfinite(values)):
        raise ValueError(f"IMAGE {path.name} holds {int((~np.isfinite(values)).sum())} NaN or infinite pixel(s); "
                         "expected finite intensities everywhere")
    image = as_image(values)
    pixel = pixel_size_A if pixel_size_A is not None else file_pixel
    if pixel is None:
        raise ValueError(f"IMAGE {path.name} records no pixel size; give --pixel-size-A (Angstrom per pixel)")
    if not (np.isfinite(pixel) and pixel > 0):
        raise ValueError(f"--pixel-size-A {pixel!r} must be a positive length in Angstrom")
    return image, float(pixel)


def _read_points(path: str | os.PathLike, shape: tuple[int, int]) -> np.ndarray:
    from tdmctx.experimental.columns import check_points

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"--points {str(path)!r} does not exist")
    try:
        points = np.load(path, allow_pickle=False)
    except Exception as exc:
        raise ValueError(f"--points {path.name} cannot be read as a .npy array ({type(exc).__name__}: {exc})") from exc
    return check_points(points, shape, name=f"--points {path.name}")


# -- run ----------------------------------------------------------------------------------


def run_classify(
    image_path: str | os.PathLike,
    output: str | os.PathLike,
    *,
    context: Context | None = None,
    points_path: str | os.PathLike | None = None,
    model: str = "context",
    weights: str | os.PathLike | None = None,
    pixel_size_A: float | None = None,
    device: str | None = None,
    priors: str = "EM",
    metal_brighter: bool | None = None,
    unseen: str = "unknown",
    sublattice: bool = True,
) -> dict[str, Any]:
    """Classify the columns of one image and write ``output`` (CSV) and its ``.png`` overlay.

    The function behind ``tdmctx classify`` (arguments as the flags, ``context`` a
    :class:`~tdmctx.defects.context.Context`, ``metal_brighter`` from
    ``--metal-sublattice``, ``sublattice=False`` from ``--no-sublattice``). Everything is read
    and checked before anything is written.

    Each site is restricted to the classes of its sublattice (split from the lattice
    geometry; the metal one from ``metal_brighter``, the detector rule, or the model's vote)
    before the prior correction, as in chapter 03; with ``--points`` this needs at least
    four points.

    Returns
    -------
    dict
        ``csv``, ``png`` (paths), ``table`` (the DataFrame written), ``metal_rule`` (how
        the metal sublattice was decided, or ``None`` when no sublattice was used),
        ``context`` (the context the model was given, after ``unseen``), ``seconds``.
    """
    from tdmctx.defects.baseline import metal_sites
    from tdmctx.defects.classifier import PROBA_COLUMNS, Classifier
    from tdmctx.defects.context import Context
    from tdmctx.defects.sites import find_sites, metal_brighter_from_context, metal_group_from_proba

    start = time.perf_counter()
    context = Context() if context is None else context
    csv_path = Path(output)
    if csv_path.suffix.lower() != ".csv":
        raise ValueError(f"--output {str(csv_path)!r} must end in .csv (the overlay is written beside it as .png)")
    png_path = csv_path.with_suffix(".png")
    image, px = read_image(image_path, pixel_size_A)
    points = None if points_path is None else _read_points(points_path, image.shape)
    classifier = Classifier.load(weights, model=model, device=device)
    context = classifier.checked_context(context, unseen)  # refuse (unseen="error") before any work

    def classify(points_px: np.ndarray, refine: bool, groups: np.ndarray | None, metal_group: int | None):
        # The context was checked, and any low-contrast warning given, once above.
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=r"dopant \S+ scatters within", category=UserWarning)
            return classifier.classify_sites(image, points_px, pixel_size_A=px, context=context, refine=refine,
                                             priors=priors, unseen="keep", sublattice=groups, metal_group=metal_group)

    if metal_brighter is not None:
        brighter, source = metal_brighter, "--metal-sublattice"
    else:
        brighter, source = metal_brighter_from_context(context), "detector rule"
    metal_rule = None
    if points is not None:
        groups, metal_group = None, None
        if sublattice and len(points) >= _MIN_SUBLATTICE_POINTS:
            groups = _honeycomb_groups(points)
        if groups is not None and brighter is not None:
            metal_group = int(groups[metal_sites(points, image, brighter=brighter)][0])
        table = classify(points, True, groups, metal_group)
        if groups is not None:
            metal_rule = _metal_rule(brighter, source)
    else:
        sites = find_sites(image, px, metal_brighter=brighter)
        groups = sites.group if sublattice else None
        table = classify(sites.points_px, False, groups, sites.metal_group if sublattice else None)
        if sites.metal_group is None:
            metal_group = table.attrs.get("metal_group")
            if metal_group is None:
                metal_group = metal_group_from_proba(sites.group, table[list(PROBA_COLUMNS)].to_numpy())
            sites = sites.with_metal_group(metal_group)
        metal_rule = _metal_rule(brighter, source)
        extra = sites.to_frame()
        for name in ("sublattice", "has_peak", "full_patch"):
            table[name] = extra[name].to_numpy()
    if metal_rule == "model vote" and groups is not None:
        warnings.warn("the metal sublattice was taken from the model's vote: with the detector angles unknown, one "
                      "channel does not say whether the metal or the chalcogen columns are the brighter ones, and the "
                      "vote can pick the wrong sublattice (chapter 03: field 2, adf2); pass --detector-mrad or "
                      "--metal-sublattice to decide it", UserWarning, stacklevel=2)
    _write_outputs(table, image, px, csv_path, png_path)
    return {"csv": csv_path, "png": png_path, "table": table, "metal_rule": metal_rule, "context": context,
            "seconds": time.perf_counter() - start}


def _honeycomb_groups(points: np.ndarray) -> np.ndarray | None:
    """Sublattice ids of given points, or ``None`` (with a warning) when they are no honeycomb.

    In a TMD honeycomb every nearest-neighbour bond joins the two sublattices; points of one
    sublattice only (or another lattice) fail that test, and restricting them would be wrong.
    """
    from scipy.spatial import cKDTree

    from tdmctx.defects.baseline import split_sublattices

    groups = split_sublattices(points)
    dist, idx = cKDTree(points).query(points, k=2)
    # A nearest neighbour within 1.2 bonds of the typical one: a first-shell bond.
    bond = dist[:, 1] < 1.2 * np.median(dist[:, 1])
    crossing = float(np.mean(groups[bond] != groups[idx[bond, 1]])) if bond.any() else 0.0
    if crossing < _MIN_CROSSING:
        warnings.warn(f"the given points do not look like a honeycomb of metal and chalcogen sites (only {crossing:.0%} "
                      f"of nearest-neighbour bonds join the two sublattices; expected >= {_MIN_CROSSING:.0%}): "
                      "classified without the sublattice restriction", UserWarning, stacklevel=3)
        return None
    return groups


def _metal_rule(brighter: bool | None, source: str) -> str:
    return "model vote" if brighter is None else f"{source} ({'brighter' if brighter else 'darker'} sublattice)"


def _write_outputs(table, image: np.ndarray, pixel_size_A: float, csv_path: Path, png_path: Path) -> None:
    """Write both files under temporary names, then rename them into place."""
    folder = csv_path.parent
    created = not folder.exists()
    folder.mkdir(parents=True, exist_ok=True)
    tmp_csv = csv_path.with_name(f".{csv_path.name}.{os.getpid()}.tmp")
    tmp_png = png_path.with_name(f".{png_path.name}.{os.getpid()}.tmp")
    try:
        table.to_csv(tmp_csv, index=False, float_format="%.6g")
        _overlay(table, image, pixel_size_A).savefig(tmp_png, format="png", bbox_inches="tight")
        os.replace(tmp_png, png_path)
        os.replace(tmp_csv, csv_path)
    except BaseException:
        for tmp in (tmp_csv, tmp_png):
            tmp.unlink(missing_ok=True)
        if created and not any(folder.iterdir()):
            folder.rmdir()
        raise


def _overlay(table, image: np.ndarray, pixel_size_A: float):
    """Two panels: sites coloured by class over the image, and the entropy of each site."""
    import matplotlib as mpl
    from matplotlib.figure import Figure
    from matplotlib.lines import Line2D
    from scipy.spatial import cKDTree

    from tdmctx.defects.context import CLASS_NAMES
    from tdmctx.plotting import CLASS_COLORS, apply_style, show_image

    with mpl.rc_context():
        apply_style()
        fig = Figure(figsize=(12.5, 6.0))
        ax_class, ax_entropy = fig.subplots(1, 2)
        xy = table[["x_px", "y_px"]].to_numpy()
        # Markers a bit smaller than the column spacing, in points^2.
        spacing_px = float(np.median(cKDTree(xy).query(xy, k=2)[0][:, 1])) if len(xy) > 1 else 5.0
        points_per_px = 72 * 5.6 / max(image.shape)
        size = max(0.5, (0.6 * spacing_px * points_per_px) ** 2)
        show_image(ax_class, image, pixel_size_A, title="predicted class", cmap="gray")
        counts = table["class"].value_counts()
        handles = []
        for name in CLASS_NAMES:
            sel = (table["class"] == name).to_numpy()
            if sel.any():
                ax_class.scatter(xy[sel, 0], xy[sel, 1], s=size, c=CLASS_COLORS[name], linewidths=0)
            handles.append(Line2D([], [], marker="o", ls="", color=CLASS_COLORS[name], label=f"{name} ({counts.get(name, 0)})"))
        ax_class.legend(handles=handles, loc="upper left", bbox_to_anchor=(1.0, 1.0), title="class (sites)")
        show_image(ax_entropy, image, pixel_size_A, title="posterior entropy", cmap="gray")
        ax_entropy.images[0].set_alpha(0.5)
        dots = ax_entropy.scatter(xy[:, 0], xy[:, 1], s=size, c=table["entropy"].to_numpy(), cmap="viridis",
                                  vmin=0.0, vmax=float(np.log(len(CLASS_NAMES))), linewidths=0)
        fig.colorbar(dots, ax=ax_entropy, fraction=0.046, pad=0.04, label="entropy (nats)")
        fig.tight_layout()
    return fig


def _cmd_classify(args: argparse.Namespace) -> int:
    from tdmctx.defects.context import CLASS_NAMES

    context = build_context(args.host, args.dopant, args.energy_kV, args.detector_mrad)
    result = run_classify(
        args.image, args.output, context=context, points_path=args.points, model=args.model,
        weights=args.weights, pixel_size_A=args.pixel_size_A, device=args.device, priors=args.priors,
        unseen=args.unseen, metal_brighter=None if args.metal_sublattice is None else args.metal_sublattice == "brighter",
        sublattice=not args.no_sublattice,
    )
    table = result["table"]
    counts = table["class"].value_counts()
    classes = ", ".join(f"{name} {int(counts[name])}" for name in CLASS_NAMES if name in counts)
    unknown = [f for f, v in result["context"].to_dict().items() if v is None]
    note = f"; metal sublattice from {result['metal_rule']}" if result["metal_rule"] else ""
    print(
        f"{result['csv']}: {len(table)} sites ({classes}), mean entropy {table['entropy'].mean():.3f} nats; "
        f"overlay {result['png'].name}; context unknown: {', '.join(unknown) or 'none'}{note}; {result['seconds']:.1f} s",
        file=sys.stdout,
    )
    return 0

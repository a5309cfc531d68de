"""tdmctx: context-aware defect classification in ADF-STEM of doped TMDs, and iCGD ptychography."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("tdmctx")
except PackageNotFoundError:  # run from a source tree without installing (e.g. PYTHONPATH=src)
    __version__ = "0+unknown"

__all__ = ["__version__"]

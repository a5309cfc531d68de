"""Registry of the real input data and the cache folder for stage outputs.

Real inputs (experimental images, labels) are never part of the repository. They live in a
data folder found, in this order, from

1. an explicit ``root`` argument,
2. the ``TDMCTX_DATA`` environment variable,
3. ``../shared/data`` next to the repository checkout (found from the current working
   directory and from this file, so that notebooks run from ``notebooks/`` find it too).

Every file is checked against the sha256 sum in the manifest shipped inside the package,
so a truncated or replaced file is reported by name instead of failing later in a reader.

Stage outputs that later chapters reuse (dataset store, trained models, reconstructions)
go to :func:`cache_dir`: ``TDMCTX_CACHE`` or the user's cache directory.
"""

from __future__ import annotations

import hashlib
import json
import os
from functools import lru_cache
from importlib import resources
from pathlib import Path

__all__ = [
    "DataError",
    "MissingDataError",
    "CorruptDataError",
    "data_root",
    "candidate_roots",
    "fetch",
    "manifest",
    "verify",
    "cache_dir",
]

DATA_ENV = "TDMCTX_DATA"
CACHE_ENV = "TDMCTX_CACHE"


class DataError(RuntimeError):
    """Base class for problems with the registered input data."""


class MissingDataError(DataError, FileNotFoundError):
    """A registered file (or the whole data folder) cannot be found."""


class CorruptDataError(DataError, ValueError):
    """A registered file exists but its sha256 sum does not match the manifest."""


@lru_cache(maxsize=1)
def manifest() -> dict[str, str]:
    """Return the shipped manifest: relative path -> sha256 hex digest."""
    text = resources.files("tdmctx").joinpath("data_manifest/manifest.json").read_text()
    return dict(json.loads(text)["files"])


def candidate_roots(root: str | os.PathLike | None = None) -> list[Path]:
    """Return the places searched for the data folder, in order of preference."""
    places: list[Path] = []
    if root is not None:
        return [Path(root).expanduser()]
    env = os.environ.get(DATA_ENV)
    if env:
        places.append(Path(env).expanduser())
    # The repository root is the folder holding pyproject.toml; look from the working
    # directory upwards and from this source file upwards (editable installs).
    starts = [Path.cwd(), Path(__file__).resolve().parent]
    for start in starts:
        for folder in (start, *start.parents):
            if (folder / "pyproject.toml").is_file() or (folder / "_toc.yml").is_file():
                cand = (folder.parent / "shared" / "data").resolve()
                if cand not in places:
                    places.append(cand)
                break
    return places


def data_root(root: str | os.PathLike | None = None) -> Path:
    """Return the first existing data folder among :func:`candidate_roots`.

    Raises
    ------
    MissingDataError
        If none exists; the message lists every place looked at.
    """
    places = candidate_roots(root)
    for place in places:
        if place.is_dir():
            return place
    looked = "\n  ".join(str(p) for p in places) or "(nowhere: no candidates)"
    raise MissingDataError(
        f"no tdmctx data folder found. Looked in:\n  {looked}\n"
        f"Set {DATA_ENV}=/path/to/data or pass root=... (the folder that holds 'experimental/')."
    )


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


@lru_cache(maxsize=64)
def _verified(path: Path, size: int, mtime_ns: int, expected: str) -> bool:
    # Keyed on size and mtime so that a file changed on disk is hashed again.
    return _sha256(path) == expected


def fetch(name: str, root: str | os.PathLike | None = None, *, check: bool = True) -> Path:
    """Return the path of a registered file after checking its sha256 sum.

    Parameters
    ----------
    name
        Path relative to the data folder, e.g. ``"experimental/ti-wse2/field2_adf1.dm4"``.
    root
        Data folder; by default found as described in the module docstring.
    check
        Verify the checksum (cached per file size and modification time).

    Raises
    ------
    KeyError
        If ``name`` is not in the manifest.
    MissingDataError
        If the file is absent; the message names it and every place looked at.
    CorruptDataError
        If its checksum does not match the manifest.
    """
    files = manifest()
    if name not in files:
        known = ", ".join(sorted(files))
        raise KeyError(f"{name!r} is not a registered data file; known files: {known}")
    places = candidate_roots(root)
    for place in places:
        path = place / name
        if path.is_file():
            if check:
                stat = path.stat()
                if not _verified(path, stat.st_size, stat.st_mtime_ns, files[name]):
                    raise CorruptDataError(
                        f"{path} does not match its registered sha256 {files[name][:12]}... "
                        "(truncated, replaced or corrupt); restore the original file"
                    )
            return path
    looked = "\n  ".join(str(p / name) for p in places)
    raise MissingDataError(
        f"registered data file {name!r} is missing. Looked for:\n  {looked}\n"
        f"Set {DATA_ENV} to the folder that holds 'experimental/', or pass root=..."
    )


def verify(root: str | os.PathLike | None = None) -> dict[str, str]:
    """Check every registered file; return ``{name: "ok" | "missing" | "corrupt"}``."""
    status: dict[str, str] = {}
    for name in manifest():
        try:
            fetch(name, root)
            status[name] = "ok"
        except MissingDataError:
            status[name] = "missing"
        except CorruptDataError:
            status[name] = "corrupt"
    return status


def cache_dir(*parts: str, create: bool = True) -> Path:
    """Return (and create) a folder for stage outputs that later chapters reuse.

    ``TDMCTX_CACHE`` wins; otherwise ``$XDG_CACHE_HOME/tdmctx`` or ``~/.cache/tdmctx``.
    """
    base = os.environ.get(CACHE_ENV)
    if base:
        root = Path(base).expanduser()
    else:
        root = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")).expanduser() / "tdmctx"
    path = root.joinpath(*parts)
    if create:
        path.mkdir(parents=True, exist_ok=True)
    return path

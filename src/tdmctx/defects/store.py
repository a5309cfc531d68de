"""The dataset store: one zarr group per case, built in parallel, resumable, read as xarray.

Layout of a store folder::

    STORE/
      tdmctx-dataset.json      marker: format version, profile and the BuildConfig
      cases/
        WSe2-Ti_80kV-HAADF/    one consolidated zarr group per finished case
        .tmp-...               a case being written (ignored by readers)

A case is written under a temporary name and renamed into place when complete, so a
reader never sees half a case and an interrupted build leaves at most some temporary
folders, removed by the next build. A rerun skips the cases already in place.

Work is split into runs (a system at one energy, which yields the cases of every
detector at that energy) and handed to dask.distributed: a LocalCluster by default, or
the scheduler at a given address.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import uuid
import warnings
from pathlib import Path

import numpy as np
import xarray as xr
from tqdm.auto import tqdm

from tdmctx.defects.cases import case_id, simulate_run
from tdmctx.defects.conditions import get_condition
from tdmctx.defects.config import BuildConfig, profile_config
from tdmctx.defects.context import CONTEXT_FIELDS

__all__ = [
    "StoreError",
    "MARKER",
    "build_dataset",
    "open_dataset",
    "open_case",
    "completed_cases",
    "planned_cases",
    "write_case",
    "read_config",
]

#: Name of the marker file that identifies a dataset store.
MARKER = "tdmctx-dataset.json"
_FORMAT = 1


class StoreError(ValueError):
    """The store path holds something else, or a store built with other settings."""


# The installed xarray writes zarr v3 only while the project pins zarr<3, so groups are
# written and read here with zarr-python 2 directly, following xarray's own convention
# (an ``_ARRAY_DIMENSIONS`` attribute per array), which keeps them readable by
# ``xarray.open_zarr`` wherever the two libraries agree.
_DIMS = "_ARRAY_DIMENSIONS"


def _write_zarr(path: Path, dataset: xr.Dataset) -> None:
    import zarr

    group = zarr.open_group(str(path), mode="w")
    for name, var in {**dataset.coords, **dataset.data_vars}.items():
        values = np.asarray(var.values)
        if values.dtype.kind in "OU":
            values = values.astype(str)
        chunks = (1, *values.shape[1:]) if var.dims and var.dims[0] == "image" else True
        arr = group.create_dataset(name, data=values, chunks=chunks, overwrite=True)
        arr.attrs[_DIMS] = list(var.dims)
        arr.attrs.update({k: v for k, v in var.attrs.items()})
    group.attrs.update({k: (v.item() if isinstance(v, np.generic) else v) for k, v in dataset.attrs.items()})
    zarr.consolidate_metadata(str(path))


def _read_zarr(path: Path) -> xr.Dataset:
    import dask.array as da
    import zarr

    group = zarr.open_consolidated(str(path), mode="r")
    variables = {}
    for name, arr in group.arrays():
        attrs = dict(arr.attrs)
        dims = tuple(attrs.pop(_DIMS))
        data = da.from_zarr(arr) if arr.ndim >= 2 else arr[...]
        variables[name] = xr.Variable(dims, data, attrs)
    coords = {k: v for k, v in variables.items() if v.dims == (k,)}
    data_vars = {k: v for k, v in variables.items() if k not in coords}
    return xr.Dataset(data_vars, coords=coords, attrs=dict(group.attrs))


def _marker(path: Path) -> Path:
    return path / MARKER


def read_config(store: str | os.PathLike) -> BuildConfig:
    """Return the :class:`BuildConfig` recorded in a store.

    Raises
    ------
    FileNotFoundError
        If ``store`` is not a dataset store.
    """
    path = Path(store)
    if not _marker(path).is_file():
        raise FileNotFoundError(f"store={str(path)!r} is not a tdmctx dataset store (no {MARKER}); build it with build_dataset")
    meta = json.loads(_marker(path).read_text())
    return BuildConfig.from_json(meta["config"])


def _prepare(path: Path, config: BuildConfig, profile: str | None, overwrite: bool) -> None:
    """Create the store, or check that an existing one was built with the same settings."""
    if path.exists() and not path.is_dir():
        raise StoreError(f"store={str(path)!r} is a file; expected a folder for the dataset store")
    if path.is_dir() and any(path.iterdir()):
        if not _marker(path).is_file():
            raise StoreError(
                f"store={str(path)!r} holds other files and no {MARKER}; refusing to write a dataset into it. "
                "Pick an empty or new folder."
            )
        meta = json.loads(_marker(path).read_text())
        if meta.get("config") != config.to_json():
            if not overwrite:
                raise StoreError(
                    f"store={str(path)!r} was built with other settings (profile {meta.get('profile')!r}); "
                    "use another folder or pass overwrite=True to rebuild it"
                )
            # Only ever delete a folder that carries our marker.
            shutil.rmtree(path)
    (path / "cases").mkdir(parents=True, exist_ok=True)
    if not _marker(path).is_file():
        meta = {"format": _FORMAT, "profile": profile, "config": config.to_json()}
        tmp = path / f".{MARKER}.{uuid.uuid4().hex}"
        tmp.write_text(json.dumps(meta, indent=1))
        os.replace(tmp, _marker(path))


def completed_cases(store: str | os.PathLike) -> list[str]:
    """Identifiers of the cases fully written in a store (sorted)."""
    cases = Path(store) / "cases"
    if not cases.is_dir():
        return []
    return sorted(p.name for p in cases.iterdir() if p.is_dir() and not p.name.startswith(".") and (p / ".zmetadata").is_file())


def planned_cases(config: BuildConfig) -> list[str]:
    """Identifiers of every case a build with ``config`` produces."""
    return [case_id(s, c) for s in config.system_names() for c in config.condition_names()]


def write_case(store: str | os.PathLike, case: str, dataset: xr.Dataset) -> bool:
    """Write one case atomically; return False if it already existed.

    The group is written as ``cases/.tmp-<case>-<random>`` and renamed to
    ``cases/<case>`` once consolidated: readers see all of it or nothing.
    """
    cases = Path(store) / "cases"
    final = cases / case
    if final.exists():
        return False
    tmp = cases / f".tmp-{case}-{uuid.uuid4().hex[:8]}"
    _write_zarr(tmp, dataset)
    try:
        os.rename(tmp, final)
    except OSError:
        # Another worker finished the same case first: keep theirs.
        shutil.rmtree(tmp, ignore_errors=True)
        return False
    return True


def _run_and_write(store: str, system: str, energy_eV: float, config_json: str, device: str | None) -> list[str]:
    """Worker task: simulate one run and write its missing cases."""
    config = BuildConfig.from_json(config_json)
    done = set(completed_cases(store))
    cases = simulate_run(system, energy_eV, config, device=device)
    return [cid for cid, ds in cases.items() if cid not in done and write_case(store, cid, ds)]


def _runs_todo(path: Path, config: BuildConfig) -> list[tuple[str, float]]:
    done = set(completed_cases(path))
    todo = []
    for system in config.system_names():
        for energy in config.energies_eV():
            names = [c for c in config.condition_names() if get_condition(c).energy_eV == energy]
            if any(case_id(system, c) not in done for c in names):
                todo.append((system, energy))
    return todo


def build_dataset(
    store: str | os.PathLike,
    profile: str = "quick",
    *,
    config: BuildConfig | None = None,
    scheduler: str | None = None,
    n_workers: int | None = None,
    overwrite: bool = False,
    device: str | None = None,
    progress: bool = True,
    **overrides,
) -> xr.Dataset:
    """Build (or finish) a dataset store and return it opened.

    Parameters
    ----------
    store
        Folder of the store; created if missing.
    profile
        ``"quick"``, ``"medium"`` or ``"paper"`` (see :data:`~tdmctx.defects.config.PROFILES`).
    config
        Explicit settings, instead of a profile.
    scheduler
        ``None``: a dask LocalCluster with ``n_workers`` single-threaded processes;
        ``"tcp://host:port"``: an existing dask scheduler; ``"synchronous"``: run in
        this process, one run after the other (debugging, tests).
    n_workers
        Workers of the LocalCluster (default: CPU count, at most the number of runs).
    overwrite
        Rebuild a store that was made with different settings (its folder is deleted).
    device
        Simulation device (``None``: GPU when available).
    progress
        Show a progress bar over runs.
    **overrides
        Fields of the profile's :class:`BuildConfig` to replace.

    Returns
    -------
    xarray.Dataset
        :func:`open_dataset` of the finished store.

    Raises
    ------
    StoreError
        If the folder holds something else or a store built with other settings.
    """
    label = profile if config is None else "custom"
    if config is None:
        config = profile_config(profile, **overrides)
    elif overrides:
        config = config.with_overrides(**overrides)
    path = Path(store)
    _prepare(path, config, label, overwrite)
    for leftover in (path / "cases").glob(".tmp-*"):
        shutil.rmtree(leftover, ignore_errors=True)
    todo = _runs_todo(path, config)
    if todo:
        bar = tqdm(total=len(todo), desc="dataset runs", disable=not progress)
        if scheduler == "synchronous":
            for system, energy in todo:
                _run_and_write(str(path), system, energy, config.to_json(), device)
                bar.update()
        else:
            _run_distributed(path, todo, config, scheduler, n_workers, device, bar)
        bar.close()
    return open_dataset(path)


def _run_distributed(path: Path, todo, config: BuildConfig, scheduler, n_workers, device, bar) -> None:
    from distributed import Client, LocalCluster, as_completed

    cluster = None
    if scheduler is None:
        workers = n_workers or min(os.cpu_count() or 1, len(todo))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            cluster = LocalCluster(
                n_workers=workers, threads_per_worker=1, processes=True, dashboard_address=None, silence_logs=logging.ERROR
            )
        client = Client(cluster)
    else:
        client = Client(scheduler)
    try:
        futures = [
            client.submit(_run_and_write, str(path), s, e, config.to_json(), device, key=f"run-{s}-{e:g}-{uuid.uuid4().hex[:6]}", pure=False)
            for s, e in todo
        ]
        for future in as_completed(futures):
            future.result()  # re-raise a worker's error here, with its traceback
            bar.update()
    finally:
        client.close()
        if cluster is not None:
            cluster.close()


def open_case(store: str | os.PathLike, case: str) -> xr.Dataset:
    """Open one finished case lazily (images, site table, validation images, attrs).

    Raises
    ------
    FileNotFoundError
        If the case is not (yet) in the store.
    """
    path = Path(store) / "cases" / case
    if not (path / ".zmetadata").is_file():
        raise FileNotFoundError(f"case {case!r} is not finished in store {str(store)!r}; finished: {completed_cases(store)}")
    return _read_zarr(path)


_CASE_ATTRS = ("case_id", "system", "condition", "detector", "engine") + CONTEXT_FIELDS


def _repeat_attr(value, name: str, n: int) -> np.ndarray:
    # Cases store unknown context values as "" (zarr attrs have no None); numeric fields
    # come back as NaN, text fields as "".
    if name in ("energy_eV", "detector_inner_mrad", "detector_outer_mrad"):
        return np.full(n, np.nan if value == "" else float(value))
    return np.full(n, str(value))


def open_dataset(store: str | os.PathLike) -> xr.Dataset:
    """Open every finished case of a store as one lazy :class:`xarray.Dataset`.

    Dimensions ``image`` (with ``y``, ``x`` in Angstrom; images smaller than the largest
    are padded with NaN), ``site`` (one row per labelled column, ``site_image`` indexes
    ``image``) and ``case`` (``case_engine`` and the fast engine's errors ``case_fast_*`` per case). Each image carries
    its full context (``host_metal``, ``chalcogen``, ``dopant``, ``energy_eV``,
    ``detector_inner_mrad``, ``detector_outer_mrad``), its case and its ``structure`` (the
    same structure imaged by both detectors of one energy shares it).

    Raises
    ------
    FileNotFoundError
        If ``store`` is not a dataset store or holds no finished case.

    Notes
    -----
    ``store`` may also be a single ``.npz`` file written by
    :func:`tdmctx.defects.portable.export_dataset` (a store moved to another machine).
    """
    path = Path(store).expanduser()
    if path.suffix == ".npz":
        from tdmctx.defects.portable import open_exported

        return open_exported(path)
    read_config(path)
    names = completed_cases(path)
    if not names:
        raise FileNotFoundError(f"store={str(path)!r} holds no finished case yet; run build_dataset")
    images, sites, rows = [], [], []
    offset = 0
    for name in names:
        ds = open_case(path, name)
        n = ds.sizes["image"]
        img = ds[["intensity", "structure"]].assign({k: ("image", _repeat_attr(ds.attrs[k], k, n)) for k in _CASE_ATTRS})
        images.append(img)
        site = ds[[v for v in ds.data_vars if v.startswith("site_")]]
        sites.append(site.assign(site_image=site["site_image"] + offset))
        offset += n
        rows.append({"case_id": name, "case_engine": ds.attrs["engine"], **{f"case_{k}": ds.attrs[k] for k in ds.attrs if k.startswith("fast_")}})
    combined = xr.concat(images, dim="image", join="outer", fill_value=np.nan, data_vars="all", coords="minimal")
    site_table = xr.concat(sites, dim="site", data_vars="all")
    keys = sorted({k for r in rows for k in r})
    cases = xr.Dataset(
        {k: ("case", np.array([r.get(k, np.nan) for r in rows])) for k in keys if k != "case_id"},
        coords={"case": np.array([r["case_id"] for r in rows], dtype=str)},
    )
    out = xr.merge([combined, site_table, cases], combine_attrs="drop")
    config = read_config(path)
    # The profile and build seed travel with the data (also into a portable export), so that a
    # model card written on another machine can still name them.
    profile = json.loads(_marker(path).read_text()).get("profile") or "unknown"
    out.attrs = {"store": str(path), "pixel_size_A": float(config.scan.pixel_size_A), "profile": str(profile),
                 "build_seed": int(config.seed)}
    return out

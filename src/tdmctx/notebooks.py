"""Run the book's notebooks headless with papermill, under a named parameter profile.

The notebooks are jupytext percent scripts (``notebooks/NN_name.py``, the source of truth in
git). :func:`run_notebooks` converts each to a notebook, injects the profile's parameters
(``notebooks/profiles.yml``: profile -> notebook -> parameters) plus any overrides, executes
it with papermill in the ``notebooks/`` folder, and writes the executed
``notebooks/NN_name.ipynb`` that the book renders. A failing cell stops the run with an
error naming the notebook, the cell and the exception.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

__all__ = [
    "NotebookError",
    "NotebookRun",
    "find_root",
    "list_notebooks",
    "load_profiles",
    "run_notebooks",
    "register",
]

PROFILES_FILE = "profiles.yml"


class NotebookError(RuntimeError):
    """A notebook failed to execute; the message names it and the failing cell."""


@dataclass(frozen=True)
class NotebookRun:
    """Outcome of one executed notebook."""

    name: str
    output: Path
    seconds: float
    budget_s: float | None
    parameters: dict[str, Any]

    @property
    def over_budget(self) -> bool:
        return self.budget_s is not None and self.seconds > self.budget_s


def find_root(start: str | os.PathLike | None = None) -> Path:
    """Return the repository root (the folder holding ``_toc.yml`` and ``notebooks/``)."""
    here = Path(start or Path.cwd()).resolve()
    for folder in (here, *here.parents):
        if (folder / "_toc.yml").is_file() and (folder / "notebooks").is_dir():
            return folder
    raise FileNotFoundError(f"no tdmctx checkout (a folder with _toc.yml and notebooks/) at or above {here}")


def list_notebooks(root: str | os.PathLike) -> list[str]:
    """Names (``NN_name``) of the notebook scripts, in book order."""
    return sorted(p.stem for p in (Path(root) / "notebooks").glob("[0-9][0-9]_*.py"))


def load_profiles(root: str | os.PathLike) -> dict[str, Any]:
    """Read ``notebooks/profiles.yml``."""
    path = Path(root) / "notebooks" / PROFILES_FILE
    with open(path) as fh:
        config = yaml.safe_load(fh) or {}
    if "profiles" not in config:
        raise ValueError(f"{path}: expected a top-level 'profiles' mapping (profile -> notebook -> parameters)")
    return config


def _parameters(config: dict[str, Any], profile: str, name: str) -> dict[str, Any]:
    profiles = config["profiles"]
    if profile not in profiles:
        raise ValueError(f"profile={profile!r} is not defined; known profiles: {sorted(profiles)}")
    params = dict((profiles[profile] or {}).get(name) or {})
    params["profile"] = profile
    return params


def _execute(source: Path, output: Path, parameters: dict[str, Any], cwd: Path, log_output: bool) -> None:
    import jupytext
    import papermill as pm

    notebook = jupytext.read(source)
    tmp_in = output.with_name(f".{output.stem}.input.ipynb")
    tmp_out = output.with_name(f".{output.stem}.partial.ipynb")
    jupytext.write(notebook, tmp_in)
    try:
        pm.execute_notebook(
            str(tmp_in),
            str(tmp_out),
            parameters=parameters,
            cwd=str(cwd),
            kernel_name="python3",
            language="python",
            progress_bar=False,
            log_output=log_output,
            report_mode=False,
        )
    except pm.PapermillExecutionError as exc:
        failed = output.with_name(f"{output.stem}.failed.ipynb")
        os.replace(tmp_out, failed)
        raise NotebookError(
            f"notebook {source.stem} failed in cell {exc.exec_count} ({exc.ename}: {exc.evalue}); "
            f"the partly executed notebook is {failed}"
        ) from None
    finally:
        tmp_in.unlink(missing_ok=True)
    os.replace(tmp_out, output)


def run_notebooks(
    profile: str = "quick",
    only: list[str] | None = None,
    overrides: dict[str, Any] | None = None,
    *,
    root: str | os.PathLike | None = None,
    log_output: bool = False,
    quiet: bool = False,
) -> list[NotebookRun]:
    """Execute notebooks under a profile and write the executed ``.ipynb`` beside them.

    Parameters
    ----------
    profile
        Name of a profile in ``notebooks/profiles.yml`` (``quick``, ``paper``, ...).
    only
        Notebook names (``NN_name``, or a unique prefix such as ``00``) to run; all by default.
    overrides
        Parameters applied on top of the profile, to every selected notebook.
    root
        Repository root; found from the working directory by default.
    log_output
        Echo the notebooks' own output while they run.
    quiet
        Print nothing (by default one line per notebook with its time and budget).

    Returns
    -------
    list of NotebookRun

    Raises
    ------
    NotebookError
        On the first failing notebook (the message names it and the cell).
    ValueError
        For an unknown profile or notebook name.
    """
    def echo(message: str) -> None:
        if not quiet:
            print(message, flush=True)

    root = find_root(root)
    config = load_profiles(root)
    names = list_notebooks(root)
    if only:
        selected = []
        for item in only:
            matches = [n for n in names if n == item or n.startswith(item)]
            if len(matches) != 1:
                raise ValueError(f"--only {item!r} matches {matches or 'no notebook'}; notebooks: {names}")
            selected.append(matches[0])
        names = selected
    budgets = config.get("budgets_s", {}).get(profile, {}) or {}
    runs: list[NotebookRun] = []
    for name in names:
        params = _parameters(config, profile, name)
        params.update(overrides or {})
        source = root / "notebooks" / f"{name}.py"
        output = source.with_suffix(".ipynb")
        echo(f"[{profile}] {name} ...")
        start = time.perf_counter()
        _execute(source, output, params, source.parent, log_output)
        seconds = time.perf_counter() - start
        budget = budgets.get(name)
        run = NotebookRun(name, output, seconds, budget, params)
        note = "" if budget is None else f" (budget {budget:.0f} s{', OVER BUDGET' if run.over_budget else ''})"
        echo(f"[{profile}] {name}: {seconds:.1f} s{note}")
        runs.append(run)
    return runs


def _parse_value(text: str) -> Any:
    # YAML gives numbers, booleans, lists and null the way people type them.
    return yaml.safe_load(text)


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``tdmctx notebooks run|list`` to the command line."""
    parser = subparsers.add_parser("notebooks", help="run the book's notebooks headless with papermill")
    sub = parser.add_subparsers(dest="notebooks_command", required=True)
    run = sub.add_parser("run", help="execute notebooks under a profile into the book's build input")
    run.add_argument("--profile", default="quick", help="profile in notebooks/profiles.yml (default: quick)")
    run.add_argument("--only", action="append", metavar="NAME", help="run only this notebook (repeatable)")
    run.add_argument(
        "-p", "--parameter", nargs=2, action="append", metavar=("KEY", "VALUE"), default=[], help="override a parameter"
    )
    run.add_argument("--root", default=None, help="repository root (default: found from the working directory)")
    run.add_argument("--log-output", action="store_true", help="echo the notebooks' output while they run")
    run.set_defaults(handler=_cmd_run)
    lst = sub.add_parser("list", help="list the notebooks and their parameters under a profile")
    lst.add_argument("--profile", default="quick")
    lst.add_argument("--root", default=None)
    lst.set_defaults(handler=_cmd_list)


def _cmd_run(args: argparse.Namespace) -> int:
    overrides = {key: _parse_value(value) for key, value in args.parameter}
    try:
        runs = run_notebooks(args.profile, args.only, overrides, root=args.root, log_output=args.log_output)
    except NotebookError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    total = sum(r.seconds for r in runs)
    over = [r.name for r in runs if r.over_budget]
    print(f"{len(runs)} notebook(s) in {total:.1f} s" + (f"; over budget: {', '.join(over)}" if over else ""))
    return 0


def _cmd_list(args: argparse.Namespace) -> int:
    root = find_root(args.root)
    config = load_profiles(root)
    for name in list_notebooks(root):
        print(f"{name}: {_parameters(config, args.profile, name)}")
    return 0

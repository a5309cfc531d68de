"""Shared fixtures: repository paths, a private cache folder, and the built book."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session", autouse=True)
def _private_cache(tmp_path_factory):
    # Tests never touch the user's cache unless TDMCTX_CACHE is set on purpose (CI sets it
    # so that the notebooks' stage outputs are shared between the book build and tests).
    if "TDMCTX_CACHE" not in os.environ:
        os.environ["TDMCTX_CACHE"] = str(tmp_path_factory.mktemp("cache"))
    yield


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return ROOT


@pytest.fixture(scope="session")
def built_book(repo_root: Path) -> Path:
    """Run every notebook in the quick profile, build the book once, return the HTML folder."""
    bindir = Path(sys.executable).parent
    env = dict(os.environ, PATH=f"{bindir}{os.pathsep}{os.environ.get('PATH', '')}")
    run = subprocess.run(
        [sys.executable, "-m", "tdmctx", "notebooks", "run", "--profile", "quick"],
        cwd=repo_root, env=env, capture_output=True, text=True,
    )
    print(run.stdout)
    if run.returncode != 0:
        pytest.fail(f"notebooks failed in the quick profile:\n{run.stdout}\n{run.stderr[-4000:]}")
    build = subprocess.run(
        [str(bindir / "jupyter-book"), "build", ".", "--warningiserror", "--keep-going", "--all"],
        cwd=repo_root, env=env, capture_output=True, text=True,
    )
    if build.returncode != 0:
        warnings = [line for line in (build.stdout + build.stderr).splitlines() if "WARNING" in line or "ERROR" in line]
        pytest.fail("book build failed (warnings are errors):\n" + "\n".join(warnings[:50]) + "\n" + build.stdout[-3000:])
    return repo_root / "_build" / "html"

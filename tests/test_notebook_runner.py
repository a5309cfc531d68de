"""The papermill runner: profiles, parameter injection, failures that name the cell."""

from __future__ import annotations

import nbformat
import pytest
import yaml

from tdmctx.cli import main
from tdmctx.notebooks import NotebookError, find_root, list_notebooks, run_notebooks

NOTEBOOK = """# %% [markdown]
# # A tiny chapter

# %% tags=["parameters"]
profile = "quick"
n = 2
fail = False

# %%
result = n * 10
if fail:
    raise RuntimeError("asked to fail")
print(f"result={result} profile={profile}")
"""


@pytest.fixture
def tiny_repo(tmp_path):
    (tmp_path / "_toc.yml").write_text("format: jb-book\nroot: intro\n")
    nb = tmp_path / "notebooks"
    nb.mkdir()
    (nb / "00_tiny.py").write_text(NOTEBOOK)
    (nb / "01_other.py").write_text(NOTEBOOK)
    profiles = {
        "profiles": {"quick": {"00_tiny": {}}, "paper": {"00_tiny": {"n": 7}}},
        "budgets_s": {"quick": {"00_tiny": 600}},
    }
    (nb / "profiles.yml").write_text(yaml.safe_dump(profiles))
    return tmp_path


def _stdout(path):
    nb = nbformat.read(path, as_version=4)
    return "".join(o.get("text", "") for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", []))


def test_find_root_and_list(tiny_repo):
    assert find_root(tiny_repo / "notebooks") == tiny_repo
    assert list_notebooks(tiny_repo) == ["00_tiny", "01_other"]
    with pytest.raises(FileNotFoundError, match="no tdmctx checkout"):
        find_root(tiny_repo.parent)


def test_profile_and_overrides_are_injected(tiny_repo):
    runs = run_notebooks("paper", ["00"], root=tiny_repo, quiet=True)
    assert [r.name for r in runs] == ["00_tiny"]
    assert "result=70 profile=paper" in _stdout(runs[0].output)
    runs = run_notebooks("quick", ["00_tiny"], {"n": 3}, root=tiny_repo, quiet=True)
    assert "result=30 profile=quick" in _stdout(runs[0].output)
    assert runs[0].budget_s == 600 and not runs[0].over_budget


def test_failure_names_notebook_and_cell(tiny_repo):
    with pytest.raises(NotebookError) as info:
        run_notebooks("quick", ["00_tiny"], {"fail": True}, root=tiny_repo, quiet=True)
    message = str(info.value)
    assert "00_tiny" in message and "RuntimeError" in message and "asked to fail" in message and "cell" in message
    assert (tiny_repo / "notebooks" / "00_tiny.failed.ipynb").is_file()
    assert not (tiny_repo / "notebooks" / "00_tiny.ipynb").exists()


def test_bad_selection(tiny_repo):
    with pytest.raises(ValueError, match="profile='huge'"):
        run_notebooks("huge", root=tiny_repo, quiet=True)
    with pytest.raises(ValueError, match="matches"):
        run_notebooks("quick", ["0"], root=tiny_repo, quiet=True)


def test_cli_run_and_exit_codes(tiny_repo, capsys):
    assert main(["notebooks", "run", "--root", str(tiny_repo), "--only", "01_other", "-p", "n", "4"]) == 0
    assert "result=40" in _stdout(tiny_repo / "notebooks" / "01_other.ipynb")
    assert main(["notebooks", "run", "--root", str(tiny_repo), "--only", "00_tiny", "-p", "fail", "true"]) == 1
    assert "00_tiny" in capsys.readouterr().err
    assert main(["notebooks", "run", "--root", str(tiny_repo), "--profile", "nope"]) == 2


def test_cli_data_verify(capsys):
    assert main(["data", "verify"]) == 0
    out = capsys.readouterr().out
    assert out.count("ok ") == 9

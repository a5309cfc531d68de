"""The install is what the README promises: pins agree, the two commands come first, CI runs them."""

from __future__ import annotations

import re
import tomllib

import yaml
from packaging.requirements import Requirement
from packaging.version import Version


def _pins(repo_root):
    pins = {}
    for line in (repo_root / "constraints.txt").read_text().splitlines():
        line = line.split("#")[0].strip()
        if "==" in line:
            name, version = line.split("==")
            pins[re.sub(r"[-_.]+", "-", name).lower()] = Version(version)
    return pins


def test_constraints_satisfy_pyproject(repo_root):
    project = tomllib.loads((repo_root / "pyproject.toml").read_text())["project"]
    pins = _pins(repo_root)
    requirements = list(project["dependencies"])
    for extra in project["optional-dependencies"].values():
        requirements += extra
    for text in requirements:
        req = Requirement(text)
        name = re.sub(r"[-_.]+", "-", req.name).lower()
        assert name in pins, f"{req.name} is a dependency but not pinned in constraints.txt"
        assert pins[name] in req.specifier, f"constraints.txt pins {req.name}=={pins[name]}, outside {req.specifier}"


def test_required_pins(repo_root):
    pins = _pins(repo_root)
    assert pins["numpy"].major >= 2
    assert pins["py4dstem"] == Version("0.14.16")
    assert pins["abtem"].release[:2] == (1, 0)
    assert pins["jupyter-book"].major < 2
    assert pins["torch"] == Version("2.13.0")


def test_readme_opens_with_the_two_commands(repo_root):
    readme = (repo_root / "README.md").read_text()
    block = re.search(r"```bash\n(.*?)```", readme, re.S).group(1)
    commands = [line.split("#")[0].strip() for line in block.splitlines() if line.strip()]
    assert commands[:2] == ["make book", "make test"]
    assert readme.index("```bash") < 20, "the commands must open the README"
    ci = (repo_root / ".ci" / "run").read_text()
    assert re.search(r"^make test$", ci, re.M)


def test_environment_yml_installs_the_package_with_the_pins(repo_root):
    env = yaml.safe_load((repo_root / "environment.yml").read_text())
    pip = next(d for d in env["dependencies"] if isinstance(d, dict))["pip"]
    assert "-c constraints.txt" in pip and any(p.startswith("-e .") for p in pip)
    assert "python=3.11" in env["dependencies"]

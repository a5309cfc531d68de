"""The data registry: discovery order, checksums, clear errors, the cache folder."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from tdmctx import data

FILE = "experimental/ti-wse2/field2_points.npy"


def test_manifest_lists_every_shared_file():
    names = data.manifest()
    assert len(names) == 9
    assert all(len(digest) == 64 for digest in names.values())
    assert "experimental/ti-wse2/LICENSE" in names


def test_shared_data_verify_ok():
    status = data.verify()
    assert set(status.values()) == {"ok"}, status


def test_explicit_root_and_env_order(tmp_path, monkeypatch):
    source = data.fetch(FILE)
    (tmp_path / "experimental/ti-wse2").mkdir(parents=True)
    shutil.copy(source, tmp_path / FILE)
    monkeypatch.setenv(data.DATA_ENV, str(tmp_path))
    assert data.candidate_roots()[0] == tmp_path
    assert data.fetch(FILE) == tmp_path / FILE
    other = tmp_path / "other"
    other.mkdir()
    # An explicit root wins over the environment variable and is the only place searched.
    with pytest.raises(data.MissingDataError) as info:
        data.fetch(FILE, root=other)
    assert str(other / FILE) in str(info.value)


def test_missing_file_names_every_place(tmp_path, monkeypatch):
    # Search two empty folders only, so that the shared data cannot be found.
    monkeypatch.setattr(data, "candidate_roots", lambda root=None: [tmp_path / "a", tmp_path / "b"])
    with pytest.raises(FileNotFoundError) as info:
        data.fetch(FILE)
    message = str(info.value)
    assert FILE in message
    assert str(tmp_path / "a" / FILE) in message and str(tmp_path / "b" / FILE) in message
    assert data.DATA_ENV in message


def test_default_search_finds_shared_folder_beside_checkout(repo_root, monkeypatch):
    monkeypatch.delenv(data.DATA_ENV, raising=False)
    monkeypatch.chdir(repo_root / "notebooks")
    assert (repo_root.parent / "shared" / "data").resolve() in data.candidate_roots()


def test_corrupt_file_is_reported(tmp_path):
    (tmp_path / "experimental/ti-wse2").mkdir(parents=True)
    target = tmp_path / FILE
    shutil.copy(data.fetch(FILE), target)
    with open(target, "r+b") as fh:
        fh.seek(200)
        fh.write(b"\x00\x01\x02")
    with pytest.raises(data.CorruptDataError, match="field2_points.npy"):
        data.fetch(FILE, root=tmp_path)
    assert data.verify(tmp_path)[FILE] == "corrupt"
    assert data.verify(tmp_path)["experimental/ti-wse2/LICENSE"] == "missing"


def test_truncated_file_is_reported(tmp_path):
    (tmp_path / "experimental/ti-wse2").mkdir(parents=True)
    source = data.fetch(FILE)
    (tmp_path / FILE).write_bytes(Path(source).read_bytes()[:-10])
    with pytest.raises(data.CorruptDataError):
        data.fetch(FILE, root=tmp_path)


def test_unknown_name():
    with pytest.raises(KeyError, match="not a registered data file"):
        data.fetch("experimental/nothing.npy")


def test_data_root_error_lists_places(tmp_path):
    with pytest.raises(data.MissingDataError, match="no tdmctx data folder"):
        data.data_root(tmp_path / "absent")


def test_cache_dir_honours_env(tmp_path, monkeypatch):
    monkeypatch.setenv(data.CACHE_ENV, str(tmp_path / "c"))
    path = data.cache_dir("dataset", "quick")
    assert path == tmp_path / "c" / "dataset" / "quick" and path.is_dir()

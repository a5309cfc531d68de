"""End to end: every notebook in the quick profile, the book with warnings as errors, pages in a browser."""

from __future__ import annotations

import functools
import http.server
import re
import shutil
import subprocess
import threading
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
import yaml

pytestmark = pytest.mark.slow


def _toc_files(repo_root: Path) -> list[str]:
    toc = yaml.safe_load((repo_root / "_toc.yml").read_text())
    files = [toc["root"]]

    def walk(entries):
        for entry in entries or []:
            if "file" in entry:
                files.append(entry["file"])
            walk(entry.get("sections"))
            walk(entry.get("chapters"))

    for part in toc.get("parts", []):
        walk(part.get("chapters"))
    walk(toc.get("chapters"))
    return files


class _Images(HTMLParser):
    def __init__(self):
        super().__init__()
        self.sources: list[str] = []

    def handle_starttag(self, tag, attrs):
        if tag == "img":
            self.sources.append(dict(attrs).get("src", ""))


def _images(html: str) -> list[str]:
    parser = _Images()
    parser.feed(html)
    return [s for s in parser.sources if s and not s.startswith("data:")]


def test_every_toc_page_is_built_with_its_figures(built_book, repo_root):
    files = _toc_files(repo_root)
    assert "notebooks/00_experimental_data" in files
    for name in files:
        page = built_book / f"{name}.html"
        assert page.is_file(), f"{name} is in _toc.yml but {page} was not built"
        html = page.read_text()
        for src in _images(html):
            assert (page.parent / src).is_file(), f"{name}: image {src} is missing from the build"
        if name.startswith("notebooks/"):
            assert len(_images(html)) >= 2, f"{name}: expected figures in the rendered notebook"
            assert "Traceback" not in html, f"{name}: a cell printed a traceback"
    assert (built_book / "index.html").is_file()


def test_notebooks_have_parameters_and_profiles(repo_root):
    import jupytext

    profiles = yaml.safe_load((repo_root / "notebooks" / "profiles.yml").read_text())
    for script in sorted((repo_root / "notebooks").glob("[0-9][0-9]_*.py")):
        nb = jupytext.read(script)
        tagged = [c for c in nb.cells if "parameters" in c.metadata.get("tags", [])]
        assert len(tagged) == 1, f"{script.name}: needs exactly one cell tagged 'parameters'"
        assert 'profile = "quick"' in tagged[0].source
        assert "seed" in tagged[0].source, f"{script.name}: the parameters cell must set a seed"
        for profile in ("quick", "paper"):
            assert script.stem in profiles["profiles"][profile], f"{script.stem} missing from profile {profile}"
        assert f"--only {script.stem}" in nb.cells[0].source, f"{script.name}: first cell must give the rerun command"


class _RecordingHandler(http.server.SimpleHTTPRequestHandler):
    log: list[tuple[str, int]] = []

    def log_request(self, code="-", size="-"):
        self.log.append((self.path, int(code) if str(code).isdigit() else 0))

    def log_message(self, *args):  # keep pytest output clean
        pass


@pytest.fixture
def served_book(built_book):
    handler = functools.partial(_RecordingHandler, directory=str(built_book))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    _RecordingHandler.log = []
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


def _chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser")


CHROMIUM_FLAGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-quic",
    "--no-first-run", "--disable-component-update", "--disable-sync", "--hide-scrollbars",
]


@pytest.mark.skipif(_chromium() is None, reason="Debian's chromium is not installed (.ci/run installs it)")
def test_pages_render_in_headless_chromium(served_book, repo_root, tmp_path):
    browser = _chromium()
    for name in _toc_files(repo_root):
        url = f"{served_book}/{name}.html"
        _RecordingHandler.log = []
        profile = tmp_path / re.sub(r"\W", "_", name)
        dom = subprocess.run(
            [browser, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", "--virtual-time-budget=5000", "--dump-dom", url],
            capture_output=True, text=True, timeout=120,
        ).stdout
        text = re.sub(r"<[^>]+>", " ", re.sub(r"<(script|style)[^>]*>.*?</\1>", " ", dom, flags=re.S))
        assert len(text.split()) > 40, f"{name}: the page rendered (almost) blank"
        assert "<h1" in dom, f"{name}: no title on the page"
        # Chromium asks for /favicon.ico on its own; the book has none, and that is no broken page.
        failed = [(path, code) for path, code in _RecordingHandler.log if code >= 400 and path != "/favicon.ico"]
        assert not failed, f"{name}: the browser could not load {failed}"
        images = [path for path, code in _RecordingHandler.log if re.search(r"\.(png|jpe?g|svg|gif)$", path)]
        assert len(images) >= len(_images(dom)) - len([s for s in _images(dom) if s.startswith("http")])

    # One screenshot of a chapter: a page that draws nothing is a single flat colour.
    shot = tmp_path / "chapter.png"
    subprocess.run(
        [browser, *CHROMIUM_FLAGS, f"--user-data-dir={tmp_path / 'shot'}", "--window-size=1200,2400",
         "--virtual-time-budget=5000", f"--screenshot={shot}", f"{served_book}/notebooks/00_experimental_data.html"],
        capture_output=True, timeout=120,
    )
    from PIL import Image

    pixels = np.asarray(Image.open(shot).convert("L"), dtype=float)
    assert pixels.std() > 10, "the chapter's screenshot is blank"
    # Figures are dark-ish images on a white page: a good share of non-white pixels.
    assert (pixels < 200).mean() > 0.05

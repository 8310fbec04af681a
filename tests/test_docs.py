"""The documentation: the MkDocs site under docs/ builds in strict mode (every link, anchor and
API-reference docstring resolves), the README stays short and its relative links point at
files that exist."""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path
from urllib.parse import unquote

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
README_MAX_LINES = 300
LINK = re.compile(r"\]\(([^)\s]+)\)")
HEADING = re.compile(r"^#{1,6}\s+(.*?)\s*#*\s*$")


def _relative_links(text: str) -> list[str]:
    """Targets of markdown links and images, leaving out web addresses and in-page anchors."""
    return [
        target
        for target in LINK.findall(text)
        if not re.match(r"^[a-z][a-z0-9+.-]*:", target, flags=re.I) and not target.startswith("#")
    ]


def test_mkdocs_builds_in_strict_mode(tmp_path: Path) -> None:
    if importlib.util.find_spec("mkdocs") is None:
        pytest.skip("mkdocs is not installed (pip install -e '.[dev]' installs it)")
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}
    result = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path / "site")],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert result.returncode == 0, f"mkdocs build --strict failed:\n{result.stderr}"
    assert (tmp_path / "site" / "index.html").is_file()
    assert (tmp_path / "site" / "reference" / "index.html").is_file()


def test_readme_is_short() -> None:
    n_lines = len(README.read_text(encoding="utf-8").splitlines())
    assert n_lines <= README_MAX_LINES, (
        f"README.md has {n_lines} lines (at most {README_MAX_LINES}): move detail to docs/"
    )


def test_readme_relative_links_point_at_files() -> None:
    links = _relative_links(README.read_text(encoding="utf-8"))
    assert links, "the README links to no file at all"
    missing = [link for link in links if not (ROOT / unquote(link.split("#", 1)[0])).exists()]
    assert not missing, f"README.md links to files that do not exist: {missing}"


def test_readme_anchors_into_docs_exist() -> None:
    """A README link such as docs/usage.md#from-the-shell names a heading of that page (the
    anchor MkDocs gives it), so GitHub and the site both land on it."""
    toc = pytest.importorskip("markdown.extensions.toc", reason="markdown is not installed")
    broken = []
    for link in _relative_links(README.read_text(encoding="utf-8")):
        path, _, anchor = link.partition("#")
        if not anchor or not path.endswith(".md"):
            continue
        page = ROOT / unquote(path)
        slugs = set()
        in_code = False
        for line in page.read_text(encoding="utf-8").splitlines():
            if line.startswith("```"):
                in_code = not in_code
            match = None if in_code else HEADING.match(line)
            if match:
                slugs.add(toc.slugify(match.group(1).replace("`", ""), "-"))
        if anchor not in slugs:
            broken.append(link)
    assert not broken, f"README.md links to headings that do not exist: {broken}"

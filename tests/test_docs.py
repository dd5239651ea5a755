"""The documentation cannot rot: the mkdocs site builds with --strict, the Python code blocks of
README.md and docs/*.md run, and every module, file and page they name exists."""

from __future__ import annotations

import importlib
import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
FENCE = re.compile(r"^```python\n(.*?)^```", re.S | re.M)
SKIP = "<!-- skip -->"
FOLDERS = ("st2chip/", "converters/", "targets/", "tests/", "benchmarks/", "examples/", "docs/", "requirements/")


def python_blocks(text: str) -> list[tuple[int, str]]:
    """The ```python blocks of a Markdown page (fences at column 0), in order, as (first line, code).

    A block whose preceding line is ``<!-- skip -->`` is left out (for runs too long for the suite).
    """
    blocks = []
    for match in FENCE.finditer(text):
        before = text[:match.start()].rstrip().splitlines()
        if before and before[-1].strip() == SKIP:
            continue
        blocks.append((text.count("\n", 0, match.start(1)) + 1, match.group(1)))
    return blocks


def run_page(page: Path) -> None:
    """Run a page's blocks in order in one fresh namespace; a traceback names the page and its line."""
    namespace: dict = {"__name__": "__docs__"}
    for line, code in python_blocks(page.read_text()):
        exec(compile("\n" * (line - 1) + code, str(page), "exec"), namespace)


def named_in_backticks(text: str) -> set[str]:
    """Dotted module paths (``st2chip.x.y``) and repository paths (``targets/engine.py``) a page names."""
    words = {word.rstrip(".,;:") for span in re.findall(r"`([^`\n]+)`", text)
             for word in re.findall(r"[A-Za-z_][\w./*<>{}-]*", span)}
    return {w for w in words if w.startswith("st2chip.") or w.startswith(FOLDERS)}


def exists(name: str) -> bool:
    """Whether a dotted name imports (module, then attributes) or a path (glob patterns allowed) exists."""
    if "/" in name:
        pattern = re.split(r"[*<{]", name)[0]
        return (ROOT / name).exists() or any(ROOT.glob(pattern + "*"))
    parts = name.split(".")
    for cut in range(len(parts), 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:cut]))
        except ImportError:
            continue
        for attr in parts[cut:]:
            if not hasattr(obj, attr):
                return False
            obj = getattr(obj, attr)
        return True
    return False


def test_python_blocks_are_collected_in_order_and_skip_is_honoured() -> None:
    text = "intro\n```python\na = 1\n```\n<!-- skip -->\n```python\nlong()\n```\n```sh\nls\n```\n```python\nb = a\n```\n"
    assert python_blocks(text) == [(3, "a = 1\n"), (13, "b = a\n")]


def test_a_failing_block_names_its_page_and_line(tmp_path) -> None:
    page = tmp_path / "page.md"
    page.write_text("# t\n\n```python\nx = 1\nraise ValueError(x)\n```\n")
    with pytest.raises(ValueError) as info:
        run_page(page)
    assert (info.traceback[-1].path, info.traceback[-1].lineno + 1) == (page, 5)


@pytest.mark.parametrize("page", [p for p in PAGES if python_blocks(p.read_text())], ids=lambda p: p.name)
def test_python_blocks_run(page: Path, tmp_path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MPLBACKEND", "Agg")
    run_page(page)


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_named_modules_and_files_exist(page: Path) -> None:
    missing = sorted(name for name in named_in_backticks(page.read_text()) if not exists(name))
    assert not missing, f"{page.name} names what the tree does not have: {missing}"


def test_readme_links_resolve_and_it_stays_short() -> None:
    text = (ROOT / "README.md").read_text()
    links = [link.split("#")[0] for link in re.findall(r"\]\(([^)\s]+)\)", text) if "://" not in link]
    assert links and not [link for link in links if not (ROOT / link).exists()]
    assert len(text.splitlines()) <= 300


def test_site_builds_strictly(tmp_path) -> None:
    assert importlib.util.find_spec("mkdocs"), "the docs tools are missing: pip install -r requirements/docs.txt"
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}
    done = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--config-file",
                           str(ROOT / "mkdocs.yml"), "--site-dir", str(tmp_path / "site")],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert (tmp_path / "site" / "api" / "index.html").exists()

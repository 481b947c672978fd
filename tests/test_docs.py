"""The documentation site: the generated references match the code, every page's Python
blocks run as written (```python runs; ```py is shown only), and the site builds with
--strict (skipped without the docs extra)."""

from __future__ import annotations

import importlib.util
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"


def _generator():
    spec = importlib.util.spec_from_file_location(
        "gen_reference", ROOT / "tools" / "gen_reference.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_generated_references_are_the_committed_pages():
    """docs/configuration.md lists every config field, in order, with default, range and help;
    docs/cli.md every command's --help. Regenerate with python tools/gen_reference.py."""
    gen = _generator()
    for name, make in gen.PAGES.items():
        assert (DOCS / name).read_text(encoding="utf-8") == make(), f"{name} is stale"
    from sparseavg.config import field_specs

    table = (DOCS / "configuration.md").read_text(encoding="utf-8")
    rows = re.findall(r"^\| `([^`]+)` \| `([^`]*)` \|", table, flags=re.M)
    assert rows == [(f.key, repr(f.default)) for f in field_specs()]
    cli = (DOCS / "cli.md").read_text(encoding="utf-8")
    for command in ("run", "demo", "report", "inspect", "export", "analyze", "study"):
        assert f"## `sparseavg {command}`" in cli


PAGES_WITH_CODE = sorted(p.name for p in DOCS.glob("*.md") if "```python\n" in p.read_text())


@pytest.mark.parametrize("page", PAGES_WITH_CODE)
def test_every_pages_python_blocks_run(page, tmp_path, monkeypatch, capsys, one_thread):
    blocks = re.findall(r"```python\n(.*?)```", (DOCS / page).read_text(), flags=re.S)
    monkeypatch.chdir(tmp_path)  # blocks that write runs/ write them here
    namespace: dict = {}
    for block in blocks:  # later blocks of a page continue from the earlier ones
        exec(compile(block, str(DOCS / page), "exec"), namespace)
    if page == "python-api.md":
        assert re.search(r"0\.\d{3} at 20% sparsity", capsys.readouterr().out)


def test_the_pages_with_code_are_the_expected_ones():
    assert PAGES_WITH_CODE == ["own-model.md", "python-api.md"]


def test_the_site_builds_strictly(tmp_path):
    pytest.importorskip("mkdocs")
    pytest.importorskip("mkdocstrings")
    pytest.importorskip("material")
    done = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "-q", "-d", str(tmp_path / "site")],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env={**__import__("os").environ, "NO_MKDOCS_2_WARNING": "1"},
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert (tmp_path / "site" / "configuration" / "index.html").is_file()

"""docs/recipes.md's "Checked against" table: a row per recipe, and the tests it names exist."""

import ast
import re
from pathlib import Path

from sparseavg.recipes import RECIPES

ROOT = Path(__file__).resolve().parent.parent
DOC = ROOT / "docs" / "recipes.md"


def _table_rows() -> list[list[str]]:
    text = DOC.read_text(encoding="utf-8")
    section = text.split("## Checked against", 1)[1].split("\n## ", 1)[0]
    rows = [line for line in section.splitlines() if line.startswith("| `")]
    return [[cell.strip() for cell in row.strip("|").split("|")] for row in rows]


def _test_names(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    return {node.name for node in tree.body if isinstance(node, ast.FunctionDef)}


def test_every_recipe_has_a_checked_against_row() -> None:
    named = {name for row in _table_rows() for name in re.findall(r"`([^`]+)`", row[0])}
    assert named == set(RECIPES)


def test_every_test_the_table_names_exists() -> None:
    pattern = r"`(test_\w+\.py)(?:::(\w+))?`"
    cited = [ref for row in _table_rows() for ref in re.findall(pattern, row[2])]
    assert cited
    for filename, test in cited:
        path = ROOT / "tests" / filename
        assert path.is_file(), filename
        if test:
            assert test in _test_names(path), f"{filename}::{test}"

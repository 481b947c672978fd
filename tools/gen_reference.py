"""Write the documentation pages generated from the code, so that they cannot drift from it:
``docs/configuration.md`` from the config schema (:func:`sparseavg.config.field_specs`) and
``docs/cli.md`` from the command line's argument parsers.

    python tools/gen_reference.py          # rewrite both pages
    python tools/gen_reference.py --check  # exit 1 if a committed page differs

``tests/test_docs.py`` runs the check.
"""

from __future__ import annotations

import argparse
import functools
import sys
from pathlib import Path

DOCS = Path(__file__).resolve().parents[1] / "docs"
#: the width of the CLI help in docs/cli.md (argparse would take the terminal's)
HELP_WIDTH = 100


def _cell(text: str) -> str:
    """``text`` in a markdown table cell (a bar would end the cell)."""
    return text.replace("|", "\\|")


def configuration_page() -> str:
    """Every config field: its key, default and help (which names its type, range and
    allowed values), in the schema's order."""
    from sparseavg.config import field_specs

    rows = [
        f"| `{f.key}` | `{f.default!r}` | {_cell(f.allowed)} | {_cell(f.help)} |"
        for f in field_specs()
    ]
    return "\n".join(
        [
            "# Configuration reference",
            "",
            "Every field of a config, generated from the schema (`src/sparseavg/config.py`) by "
            "`python tools/gen_reference.py`; a test fails when this page and the schema differ. "
            "A run's config is one TOML file plus `--set key=value` overrides (values in TOML); "
            "a value outside what a field accepts is refused before anything is written. "
            "`sparseavg run --help` prints the same list.",
            "",
            "| field | default | accepts | meaning |",
            "|---|---|---|---|",
            *rows,
            "",
        ]
    )


def _helps(parser: argparse.ArgumentParser) -> list[tuple[str, str]]:
    """``(command, help text)`` of the parser and of each of its subcommands, at a fixed
    width."""
    out = []

    def fixed(p: argparse.ArgumentParser) -> str:
        p.formatter_class = functools.partial(p.formatter_class, width=HELP_WIDTH)  # type: ignore[call-arg]
        return p.format_help()

    out.append(("sparseavg", fixed(parser)))
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                out.append((f"sparseavg {name}", fixed(sub)))
    return out


def cli_page() -> str:
    """``--help`` of ``sparseavg`` and of every subcommand."""
    from sparseavg.cli.main import build_parser

    parts = [
        "# Command-line reference",
        "",
        "The `--help` of every command, generated from the argument parsers by "
        "`python tools/gen_reference.py`; a test fails when this page and the parsers differ.",
        "",
    ]
    for command, text in _helps(build_parser()):
        parts += [f"## `{command}`", "", "```text", text.rstrip(), "```", ""]
    return "\n".join(parts)


PAGES = {"configuration.md": configuration_page, "cli.md": cli_page}


def main(argv: list[str] | None = None) -> int:
    check = "--check" in (argv if argv is not None else sys.argv[1:])
    stale = []
    for name, make in PAGES.items():
        text = make()
        path = DOCS / name
        if check:
            if not path.is_file() or path.read_text(encoding="utf-8") != text:
                stale.append(name)
        else:
            path.write_text(text, encoding="utf-8")
    if stale:
        print(f"stale: {', '.join(stale)}: run python tools/gen_reference.py", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

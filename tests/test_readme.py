"""The README's Python examples run as written, and its field table matches the config."""

import re
from pathlib import Path

from sparseavg.config import field_help

README = Path(__file__).resolve().parents[1] / "README.md"


def _python_blocks() -> list[str]:
    return re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)


def test_readme_python_examples_run(capsys):
    blocks = _python_blocks()
    assert len(blocks) >= 2
    namespace: dict = {}
    for block in blocks:  # later blocks continue from the earlier ones
        exec(compile(block, str(README), "exec"), namespace)
    out = capsys.readouterr().out
    assert re.search(r"0\.\d{3} at 20% sparsity", out)
    mask, model = namespace["mask"], namespace["model"]
    for name, p in model.named_parameters():
        if name in mask:
            assert bool((p[~mask[name]] == 0).all())


def test_readme_lists_every_config_field():
    text = README.read_text()
    for key, default, _ in field_help():
        assert f"| `{key}` | `{default}` |" in text, key
    # and nothing else: the table under "Config fields" is exactly the fields, in order (an
    # empty field_help would pass the loop above)
    table = text.split("### Config fields\n\n", 1)[1].split("\n\n")[0]
    rows = re.findall(r"^\| `([^`]+)` \| `([^`]*)` \|", table, flags=re.M)
    assert len(rows) == len(table.splitlines()) - 2  # every row but the two header lines
    assert rows == [(key, default) for key, default, _ in field_help()]

"""The README's Python examples run as written."""

import re
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"


def _python_blocks() -> list[str]:
    return re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)


def test_readme_python_examples_run(capsys, tmp_path, monkeypatch, one_thread):
    blocks = _python_blocks()
    assert len(blocks) == 2  # attach, then sparseavg.swamp on the user's model
    monkeypatch.chdir(tmp_path)  # the sparseavg.swamp block writes runs/ where it runs
    namespace: dict = {}
    for block in blocks:  # later blocks continue from the earlier ones
        exec(compile(block, str(README), "exec"), namespace)
    out = capsys.readouterr().out
    mask, model = namespace["mask"], namespace["model"]
    for name, p in model.named_parameters():
        if name in mask:
            assert bool((p[~mask[name]] == 0).all())
    # sparseavg.swamp on the user's MLP: 20*64 + 64*2 weights, keep 80 % per cycle
    result = namespace["result"]
    assert result.path.resolve().parent == (tmp_path / "runs").resolve()
    assert [r["alive"] for r in result.headline] == [1408, 1126, 901, 721]
    lines = re.findall(r"^cycle (\d): (\d+) weights alive, accuracy (0\.\d{3})$", out, re.M)
    assert [(c, a) for c, a, _ in lines] == [
        ("0", "1408"),
        ("1", "1126"),
        ("2", "901"),
        ("3", "721"),
    ]
    assert float(lines[0][2]) >= 0.9  # the toy task is learned; chance is about 0.5
    final_mask = namespace["final_mask"]
    assert final_mask.num_alive == 721
    state = namespace["state"]
    assert all(int((state[n][~final_mask[n]] != 0).sum()) == 0 for n in final_mask)

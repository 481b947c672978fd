"""The scripts in examples/ run, each on a tiny budget, and do what they say they show."""

import importlib.util
import re
from pathlib import Path
from types import ModuleType

import torch

from sparseavg import Mask
from sparseavg.utils.files import load_tensors

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def _load(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(f"example_{name}", EXAMPLES / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_every_example_has_a_main_and_is_tested():
    scripts = sorted(p.stem for p in EXAMPLES.glob("*.py"))
    assert scripts == ["custom_model_swamp", "own_loop", "soup_from_checkpoints"]
    tested = Path(__file__).read_text()
    for name in scripts:
        assert f'_load("{name}")' in tested, name
        text = (EXAMPLES / f"{name}.py").read_text()
        assert "\ndef main(" in text and '\nif __name__ == "__main__":\n    main()\n' in text


def test_own_loop_keeps_the_pruned_weights_at_zero(capsys, one_thread):
    example = _load("own_loop")
    result = example.main(epochs=1, finetune_epochs=1, sparsity=0.9, max_batches=4)
    out = capsys.readouterr().out
    assert result["nonzero_pruned"] == 0
    assert "pruned weights that are nonzero: 0\n" in out
    # 90 % of the 78,336 linear weights, exactly: the mask report's total line
    assert result["sparsity"] == 70502 / 78336
    assert re.search(r"^total\s+7834\s+78336\s+90\.00%$", out, flags=re.M)
    assert all(0 <= result[k] <= 1 for k in ("dense", "pruned", "sparse"))
    assert f"after fine-tuning:           {result['sparse']:.3f}\n" in out


def test_custom_model_swamp_prints_accuracy_by_sparsity(tmp_path, capsys, one_thread):
    example = _load("custom_model_swamp")
    result = example.main(
        epochs=2, cycles=2, particles=2, train_size=256, runs_dir=tmp_path, progress=False
    )
    out = capsys.readouterr().out
    # the prunable set, by pattern: embeddings, attention in/out projections, feed-forward
    assert "prunable: 9 tensors, 17,408 weights\n" in out
    assert "  encoder.layers.1.self_attn.in_proj_weight (96, 32)\n" in out
    assert "head.weight" not in out
    headline = result.headline
    assert [(r["cycle"], r["alive"]) for r in headline] == [(0, 17408), (1, 13926), (2, 11141)]
    table = re.findall(r"^\| (\d) \| ([\d.]+) \| ([\d,]+) \| ([\d.]+) \| ([\d.]+) \|$", out, re.M)
    assert [(c, s, a) for c, s, a, _, _ in table] == [
        ("0", "0.0", "17,408"),
        ("1", "20.0", "13,926"),
        ("2", "36.0", "11,141"),
    ]
    assert [float(t[3]) for t in table] == [round(100 * r["accuracy"], 2) for r in headline]
    _, mask = result.load()
    assert list(mask) == [
        "embed.weight",
        *(
            f"encoder.layers.{i}.{p}"
            for i in (0, 1)
            for p in (
                "self_attn.in_proj_weight",
                "self_attn.out_proj.weight",
                "linear1.weight",
                "linear2.weight",
            )
        ),
    ]


def test_soup_from_checkpoints_keeps_the_mask(tmp_path, capsys, one_thread):
    example = _load("soup_from_checkpoints")
    folder = tmp_path / "soup"
    result = example.main(
        epochs=1, finetune_epochs=1, max_batches=4, bn_batches=2, checkpoint_dir=folder
    )
    out = capsys.readouterr().out
    assert sorted(p.name for p in folder.iterdir()) == [
        "ingredient_0.pt",
        "ingredient_1.pt",
        "ingredient_2.pt",
        "mask.safetensors",
    ]
    mask = Mask(load_tensors(folder / "mask.safetensors"))
    assert result["sparsity"] == mask.sparsity == round(0.8 * mask.num_total) / mask.num_total
    states = [torch.load(folder / f"ingredient_{k}.pt", weights_only=True) for k in range(3)]
    assert all(example.nonzero_pruned(s, mask) == 0 for s in states)
    assert not torch.equal(states[0]["0.weight"], states[1]["0.weight"])  # seeds differ
    assert result["nonzero_pruned"] == 0
    assert "pruned weights that are nonzero in the soups: 0\n" in out
    # greedy: best held-out candidate first, every accepted one keeps the score from falling
    scores = result["candidate_scores"]
    assert result["selected"][0] == max(range(3), key=lambda i: (scores[i], -i))
    lines = [f"ingredient_{k}.pt: {a:.3f}" for k, a in enumerate(result["ingredients"])]
    lines.append(f"uniform soup of 3: {result['uniform']:.3f}")
    assert out.splitlines()[:4] == lines
    assert f": {result['greedy']:.3f} (held out:" in out

"""Tests of sparseavg.experiment.report on hand-built run directories."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from sparseavg.experiment.report import (
    Cell,
    find_runs,
    headline_rows,
    load_run,
    markdown_table,
    plot_accuracy_vs_sparsity,
    summarize,
    write_report,
)

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _config(
    recipe: str,
    seed: int,
    *,
    count: int = 1,
    lr: float = 0.1,
    device: str = "cpu",
    model: str = "conv1d",
    dataset: str = "mnist1d",
    cycles: int = 2,
) -> str:
    return f"""recipe = "{recipe}"
seed = {seed}

[data]
dataset = "{dataset}"

[model]
name = "{model}"

[train]
epochs = 3
lr = {lr}

[pruning]
cycles = {cycles}

[ingredients]
count = {count}

[execution]
device = "{device}"
"""


def _row(
    recipe: str,
    seed: int,
    cycle: int,
    role: str,
    accuracy: float,
    *,
    sparsity: float | None = None,
    lineage: int = 0,
    ingredient: int | None = None,
    dropped: bool = False,
    **extra: Any,
) -> dict[str, Any]:
    if sparsity is None:
        sparsity = 1.0 - 0.8**cycle
    return extra | {
        "run": f"{recipe}-mnist1d-conv1d-x",
        "recipe": recipe,
        "dataset": "mnist1d",
        "model": "conv1d",
        "seed": seed,
        "cycle": cycle,
        "lineage": lineage,
        "role": role,
        "ingredient": ingredient,
        "sparsity": sparsity,
        "alive": 100,
        "total": 200,
        "accuracy": accuracy,
        "loss": 0.1,
        "seconds": 1.0,
        "selected": None,
        "dropped": dropped,
    }


def _make_run(
    parent: Path, name: str, config: str, rows: list[dict[str, Any]] | None, raw: str | None = None
) -> Path:
    d = parent / name
    d.mkdir(parents=True)
    (d / "config.toml").write_text(config)
    if raw is not None:
        (d / "results.jsonl").write_text(raw)
    elif rows is not None:
        (d / "results.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return d


def _table_rows(table: str) -> list[list[str]]:
    lines = [ln for ln in table.splitlines() if ln.startswith("|")]
    return [[c.strip() for c in ln.strip("|").split("|")] for ln in lines]


def test_mean_and_std_over_two_seeds(tmp_path: Path) -> None:
    for seed, acc in [(0, 0.90), (1, 0.92)]:
        rows = [_row("imp", seed, 0, "combined", 0.95), _row("imp", seed, 1, "combined", acc)]
        _make_run(tmp_path, f"imp-{seed}", _config("imp", seed, device=f"cuda:{seed}"), rows)
    runs = find_runs([tmp_path])
    assert len({r.group_key for r in runs}) == 1

    summary = [s for s in summarize(runs) if s.cycle == 1]
    assert len(summary) == 1
    s = summary[0]
    assert (s.group, s.role, s.headline, s.seeds) == ("imp", "combined", True, (0, 1))
    assert s.accuracy.n == 2
    assert s.accuracy.mean == pytest.approx(0.91)
    assert s.accuracy.std == pytest.approx(0.0141421356, rel=1e-6)
    assert s.sparsity == Cell(mean=pytest.approx(0.2), std=pytest.approx(0.0), n=2)

    table = markdown_table(runs)
    rows = _table_rows(table)
    assert rows[0] == ["sparsity %", "imp"]
    assert rows[2] == ["0.0", "95.00 ± 0.00"]
    assert rows[3] == ["20.0", "91.00 ± 1.41"]
    assert "n (seeds) = imp 2." in table


def test_the_demo_names_the_largest_gap_between_two_seeds_of_a_method(tmp_path: Path) -> None:
    from sparseavg.experiment.demo import seed_spread

    accuracies = {"imp": [(0.95, 0.90), (0.95, 0.93)], "swamp": [(0.96, 0.91), (0.96, 0.96)]}
    for recipe, by_seed in accuracies.items():
        for seed, (dense, sparse) in enumerate(by_seed):
            rows = [
                _row(recipe, seed, 0, "combined", dense),
                _row(recipe, seed, 1, "combined", sparse),
            ]
            _make_run(
                tmp_path, f"{recipe}-{seed}", _config(recipe, seed, device=f"cuda:{seed}"), rows
            )
    # swamp at 20 %: 91 vs 96, the largest of the four cells (imp there: 90 vs 93)
    text = seed_spread(find_runs([tmp_path]))
    assert (
        text == "the two seeds of one method differ by up to 5.0 points: swamp at 20.0 % sparsity"
    )
    one = find_runs([tmp_path / "imp-0"])
    assert seed_spread(one) == "one seed per method"


def test_cell_single_value_has_zero_std() -> None:
    assert Cell.of([0.5]) == Cell(mean=0.5, std=0.0, n=1)


def test_two_recipes_two_columns_and_ingredient_column(tmp_path: Path) -> None:
    _make_run(tmp_path, "imp", _config("imp", 0), [_row("imp", 0, 1, "combined", 0.90)])
    swamp_rows = [
        _row("swamp", 0, 1, "ingredient", 0.80, ingredient=0),
        _row("swamp", 0, 1, "ingredient", 0.84, ingredient=1),
        _row("swamp", 0, 1, "ingredient", 0.10, ingredient=2, dropped=True),
        _row("swamp", 0, 1, "combined", 0.93),
    ]
    _make_run(tmp_path, "swamp", _config("swamp", 0, count=3), swamp_rows)
    runs = find_runs([tmp_path / "imp", tmp_path / "swamp"])
    rows = _table_rows(markdown_table(runs))
    assert rows[0] == ["sparsity %", "imp", "swamp", "swamp (ingredients)"]
    # one seed: no "±"; the dropped ingredient (0.10) is left out of the ingredient mean
    assert rows[2] == ["20.0", "90.00", "93.00", "82.00"]

    ingredient = [s for s in summarize(runs) if s.role == "ingredient"]
    assert len(ingredient) == 1
    assert ingredient[0].accuracy.n == 2
    assert ingredient[0].accuracy.mean == pytest.approx(0.82)
    assert not ingredient[0].headline


def test_ensemble_headline_is_its_ensemble_rows(tmp_path: Path) -> None:
    rows = [
        _row("ensemble", 0, 1, "ingredient", 0.85, lineage=0, ingredient=0),
        _row("ensemble", 0, 1, "combined", 0.85, lineage=0),
        _row("ensemble", 0, 1, "ingredient", 0.87, lineage=1, ingredient=0),
        _row("ensemble", 0, 1, "combined", 0.87, lineage=1),
        _row("ensemble", 0, 1, "ensemble", 0.95),
    ]
    d = _make_run(tmp_path, "ens", _config("ensemble", 0, count=2), rows)
    run = load_run(d)
    head = headline_rows(run)
    assert [(r["role"], r["accuracy"]) for r in head] == [("ensemble", 0.95)]

    summary = {s.role: s for s in summarize([run])}
    assert summary["ensemble"].headline and summary["ensemble"].accuracy.mean == 0.95
    assert not summary["combined"].headline
    assert summary["combined"].accuracy.mean == pytest.approx(0.86)  # mean over lineages
    rows_out = _table_rows(markdown_table([run]))
    assert rows_out[0] == ["sparsity %", "ensemble", "ensemble (ingredients)"]
    assert rows_out[2] == ["20.0", "95.00", "86.00"]


def test_headline_without_ensemble_is_combined_lineage_zero(tmp_path: Path) -> None:
    rows = [
        _row("imp", 0, 2, "combined", 0.80),
        _row("imp", 0, 1, "combined", 0.90),
        _row("imp", 0, 1, "combined", 0.70, lineage=1),
        _row("imp", 0, 1, "ingredient", 0.60, ingredient=0),
    ]
    run = load_run(_make_run(tmp_path, "imp", _config("imp", 0), rows))
    assert [(r["cycle"], r["accuracy"]) for r in headline_rows(run)] == [(1, 0.90), (2, 0.80)]


def test_empty_results_contribute_nothing(tmp_path: Path) -> None:
    _make_run(tmp_path, "imp-0", _config("imp", 0), [_row("imp", 0, 1, "combined", 0.90)])
    _make_run(tmp_path, "imp-1", _config("imp", 1), None, raw="")  # empty file
    _make_run(tmp_path, "imp-2", _config("imp", 2), None)  # no file at all
    runs = find_runs([tmp_path])
    assert [len(r.rows) for r in runs] == [1, 0, 0]
    summary = summarize(runs)
    assert len(summary) == 1 and summary[0].accuracy.n == 1 and summary[0].seeds == (0,)
    assert _table_rows(markdown_table(runs))[2] == ["20.0", "90.00"]

    only_empty = [r for r in runs if not r.rows]
    assert summarize(only_empty) == []
    assert "No results yet" in markdown_table(only_empty)
    report, plot = write_report(only_empty, tmp_path / "out")
    assert report.is_file() and plot.read_bytes().startswith(PNG_MAGIC)


def test_group_key_ignores_seed_and_execution_only(tmp_path: Path) -> None:
    a = load_run(_make_run(tmp_path, "a", _config("imp", 0, device="cpu"), []))
    b = load_run(_make_run(tmp_path, "b", _config("imp", 7, device="cuda"), []))
    c = load_run(_make_run(tmp_path, "c", _config("imp", 0, lr=0.05), []))
    assert a.group_key == b.group_key
    assert a.group_key != c.group_key
    assert len(a.group_key) == 8 and int(a.group_key, 16) >= 0
    assert (a.recipe, a.seed, b.seed, a.name) == ("imp", 0, 7, "a")


def test_labels_stay_unique_when_groups_share_a_recipe(tmp_path: Path) -> None:
    specs = [("a", {"lr": 0.1}), ("b", {"lr": 0.05}), ("c", {"model": "mlp"})]
    for name, kw in specs:
        _make_run(tmp_path, name, _config("imp", 0, **kw), [_row("imp", 0, 1, "combined", 0.9)])
    runs = find_runs([tmp_path])
    header = _table_rows(markdown_table(runs))[0]
    keys = [r.group_key for r in runs]
    assert header == ["sparsity %", f"imp #{keys[0]}", f"imp #{keys[1]}", "imp (mlp, mnist1d)"]


def test_malformed_line_names_file_and_line(tmp_path: Path) -> None:
    good = json.dumps(_row("imp", 0, 1, "combined", 0.9))
    d = _make_run(tmp_path, "bad", _config("imp", 0), None, raw=f"{good}\n\n{{not json\n")
    with pytest.raises(ValueError, match=r"results\.jsonl, line 3"):
        load_run(d)
    with pytest.raises(ValueError, match="line 3"):
        find_runs([tmp_path])


def test_missing_config_is_a_clear_error(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match=r"config\.toml"):
        load_run(tmp_path / "empty")
    with pytest.raises(FileNotFoundError, match="empty"):
        find_runs([tmp_path / "empty"])
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "config.toml").write_text("recipe = [\n")
    with pytest.raises(ValueError, match=r"bad.config\.toml"):
        load_run(bad)


def test_find_runs_on_parent_and_on_run_dirs(tmp_path: Path) -> None:
    parent = tmp_path / "runs"
    a = _make_run(parent, "imp-a", _config("imp", 0), [])
    b = _make_run(parent, "swamp-b", _config("swamp", 0), [])
    (parent / "not-a-run").mkdir()
    assert [r.path for r in find_runs([parent])] == [a, b]
    assert [r.name for r in find_runs([b, parent])] == ["swamp-b", "imp-a"]  # no duplicates


def test_find_runs_looks_into_folders_of_runs_and_orders_methods_as_the_demo(
    tmp_path: Path,
) -> None:
    """`report runs/` found nothing in runs/demo/<run> and listed methods alphabetically
    (ensemble, imp, sms, swamp); it now looks 3 levels down and orders by recipe as the demo
    does: imp, swamp, sms, ensemble."""
    demo = tmp_path / "runs" / "demo"
    names = {r: _make_run(demo, f"{r}-x", _config(r, 0), []) for r in ("ensemble", "sms", "swamp")}
    imp = _make_run(tmp_path / "runs" / "study" / "deeper", "imp-x", _config("imp", 0), [])
    assert [r.path for r in find_runs([tmp_path / "runs"])] == [
        imp,
        names["swamp"],
        names["sms"],
        names["ensemble"],
    ]
    too_deep = tmp_path / "far" / "a" / "b" / "c"
    _make_run(too_deep, "imp-y", _config("imp", 0), [])
    with pytest.raises(FileNotFoundError, match="3 levels down"):
        find_runs([tmp_path / "far"])


def test_plot_is_png_written_atomically(tmp_path: Path) -> None:
    for seed, acc in [(0, 0.90), (1, 0.92)]:
        rows = [_row("imp", seed, c, "combined", acc - 0.01 * c) for c in range(4)]
        _make_run(tmp_path / "runs", f"imp-{seed}", _config("imp", seed), rows)
    runs = find_runs([tmp_path / "runs"])
    out = tmp_path / "plots"
    out.mkdir()
    path = out / "acc.png"
    plot_accuracy_vs_sparsity(runs, path)
    assert path.read_bytes().startswith(PNG_MAGIC)
    assert sorted(p.name for p in out.iterdir()) == ["acc.png"]


def test_write_report(tmp_path: Path) -> None:
    for seed in (1, 0):
        rows = [_row("swamp", seed, c, "combined", 0.9) for c in range(3)]
        _make_run(tmp_path / "runs", f"swamp-{seed}", _config("swamp", seed, count=2), rows)
    runs = find_runs([tmp_path / "runs"])
    out = tmp_path / "report"
    report, plot = write_report(runs, out)
    assert (report, plot) == (out / "report.md", out / "accuracy_vs_sparsity.png")
    assert plot.read_bytes().startswith(PNG_MAGIC)
    text = report.read_text()
    assert text.startswith("# sparseavg report (conv1d, mnist1d)")
    assert "swamp: epochs=3, ingredients=2, cycles=2, seeds=[0, 1]" in text
    assert "| 36.0 | 90.00 ± 0.00 |\n" in text
    assert "(ingredients)" not in text  # no ingredient rows written, so no column
    for run in runs:
        assert str(run.path) in text
    assert sorted(p.name for p in out.iterdir()) == ["accuracy_vs_sparsity.png", "report.md"]


def test_differing_sparsity_is_marked(tmp_path: Path) -> None:
    _make_run(tmp_path, "imp", _config("imp", 0), [_row("imp", 0, 1, "combined", 0.9)])
    oneshot = [_row("one-shot", 0, 1, "combined", 0.8, sparsity=0.5)]
    _make_run(tmp_path, "one-shot", _config("one-shot", 0, cycles=1), oneshot)
    table = markdown_table(find_runs([tmp_path]))
    assert _table_rows(table)[2] == ["35.0*", "90.00", "80.00"]
    assert "cycle 1: 20.0–50.0" in table


def test_rows_marked_headline_are_the_headline(tmp_path: Path) -> None:
    """Runs whose rows carry ``headline`` take exactly the marked rows, of any role; the other
    rows of each role form that role's series, and the ingredient column stays as it was."""
    rows = [
        _row("swamp", 0, 0, "combined", 0.90, headline=True),
        _row("swamp", 0, 1, "ingredient", 0.80, ingredient=0, headline=False),
        _row("swamp", 0, 1, "ingredient", 0.84, ingredient=1, headline=False),
        _row("swamp", 0, 1, "average", 0.70, sparsity=0.0, headline=False),
        _row("swamp", 0, 1, "reprune", 0.88, headline=True),
        _row("swamp", 0, 1, "combined", 0.60, lineage=0, headline=False),
    ]
    run = load_run(_make_run(tmp_path, "swamp", _config("swamp", 0, count=2), rows))
    assert [(r["cycle"], r["role"], r["accuracy"]) for r in headline_rows(run)] == [
        (0, "combined", 0.90),
        (1, "reprune", 0.88),
    ]
    summary = [(s.cycle, s.role, s.headline, s.accuracy.mean) for s in summarize([run])]
    assert summary == [
        (0, "combined", True, 0.90),
        (1, "reprune", True, 0.88),
        (1, "combined", False, 0.60),
        (1, "ingredient", False, pytest.approx(0.82)),
        (1, "average", False, 0.70),
    ]
    table = _table_rows(markdown_table([run]))
    assert table[0] == ["sparsity %", "swamp", "swamp (ingredients)"]
    assert table[2:] == [["0.0", "90.00", "–"], ["20.0", "88.00", "82.00"]]


def test_a_run_with_headline_keys_but_none_true_has_no_headline(tmp_path: Path) -> None:
    rows = [_row("imp", 0, 1, "combined", 0.9, headline=False)]
    run = load_run(_make_run(tmp_path, "imp", _config("imp", 0), rows))
    assert headline_rows(run) == []
    assert [(s.role, s.headline) for s in summarize([run])] == [("combined", False)]


def test_without_headline_keys_ensemble_rows_win_over_combined(tmp_path: Path) -> None:
    rows = [
        _row("ensemble", 0, 1, "combined", 0.85, lineage=0),
        _row("ensemble", 0, 1, "combined", 0.87, lineage=1),
        _row("ensemble", 0, 1, "ensemble", 0.95),
        _row("ensemble", 0, 2, "combined", 0.80, lineage=0),
    ]
    run = load_run(_make_run(tmp_path, "ens", _config("ensemble", 0, count=2), rows))
    # cycle 2 has no ensemble row: the rule is per run, so its combined row is not headline
    assert [(r["cycle"], r["role"]) for r in headline_rows(run)] == [(1, "ensemble")]


def test_reports_read_the_typed_config(tmp_path: Path) -> None:
    """A config file that leaves fields out reads with their defaults (and the recipe's)."""
    run = load_run(_make_run(tmp_path, "swamp", 'recipe = "swamp"\nseed = 3\n', []))
    assert (run.recipe, run.seed) == ("swamp", 3)
    assert run.settings.ingredients.count == 4 and run.settings.train.swa
    assert run.config == run.settings.to_dict()


def test_a_config_that_fails_the_schema_names_the_file(tmp_path: Path) -> None:
    d = _make_run(tmp_path, "imp", 'recipe = "imp"\n[train]\nlr = -1.0\n', [])
    with pytest.raises(ValueError, match=r"imp.config\.toml: train\.lr: -1\.0 is outside"):
        load_run(d)

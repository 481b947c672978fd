"""``sparseavg export``: the sparse file beside the dense one and the line that compares them,
``--onnx``, and nothing written when a check fails."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

from fake_runs import FAKE, make_run, member_model
from sparseavg.cli.main import main
from sparseavg.config import Config
from sparseavg.data import Split
from sparseavg.experiment.export import format_bytes
from sparseavg.experiment.rundir import RunDir
from sparseavg.experiment.runinfo import read_run
from sparseavg.experiment.task import load_data, make_model
from sparseavg.pruning import load_sparse
from sparseavg.utils.files import load_tensors, save_tensors

LENET = {**FAKE, "model": {"name": "lenet300_100"}}


def files(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*")}


def assert_refused(capsys, before: set[str], root: Path, *fragments: str, rc: int) -> None:
    out, err = capsys.readouterr()
    assert rc == 2 and out == ""
    assert len(err.splitlines()) == 1 and err.startswith("sparseavg: error: "), err
    for fragment in fragments:
        assert fragment in err, (fragment, err)
    assert files(root) == before


@pytest.mark.parametrize(
    ("n", "text"),
    [
        (0, "0 B"),
        (999, "999 B"),
        (1000, "1.0 kB"),
        (61_234, "61.2 kB"),
        (999_949, "999.9 kB"),
        (999_950, "1.0 MB"),
        (413_500_000, "413.5 MB"),
        (2_500_000_000, "2.5 GB"),
    ],
)
def test_sizes_are_written_in_decimal_units(n, text):
    assert format_bytes(n) == text


def test_export_writes_a_sparse_file_a_fifth_of_the_dense_one(tmp_path, capsys):
    run = make_run(tmp_path / "runs", LENET, sparsity=0.9)
    out = tmp_path / "export" / "model.safetensors"
    assert main(["export", str(run), "--cycle", "0", "--out", str(out)]) == 0
    lines = capsys.readouterr().out.splitlines()
    sparse = tmp_path / "export" / "model.sparse.safetensors"
    assert lines[:-1] == [
        f"state    {out}",
        f"mask     {tmp_path / 'export' / 'model.mask.safetensors'}",
        f"sparse   {sparse}",
        f"summary  {tmp_path / 'export' / 'model.json'}",
    ]
    # LeNet-300-100 on MNIST-1D (40 inputs), 90 % of each layer pruned: 4,300 alive float32
    # values (17,200 bytes), bitmasks of where they are (5,375) and of which pruned weights are
    # -0.0 (4,838), 410 biases (1,640): 29,053 bytes, and 1.5 kB of header
    assert lines[-1] == "sparse file: 30.6 kB (17.6 % of the dense 174.2 kB)"
    assert sparse.stat().st_size / out.stat().st_size < 0.20
    dense = load_tensors(out)
    back = load_sparse(sparse)
    assert list(back) == list(dense)  # the names in the dense file's (sorted) order
    assert back.keys() == member_model(read_run(run).config, 0).state_dict().keys()
    assert all(torch.equal(back[k].view(torch.int32), dense[k].view(torch.int32)) for k in dense)


def test_export_refuses_weights_alive_where_the_mask_prunes_and_writes_nothing(tmp_path, capsys):
    run = make_run(tmp_path / "runs", sparsity=0.5)
    config = read_run(run).config
    save_tensors(run / "cycle_00/combined.safetensors", member_model(config, 0).state_dict())
    RunDir(run, run_id=config.digest()).write_manifest(run / "cycle_00")
    before = files(tmp_path)
    rc = main(["export", str(run), "--cycle", "0", "--out", str(tmp_path / "m.safetensors")])
    assert_refused(capsys, before, tmp_path, "non-zero values where the mask prunes", rc=rc)


def test_onnx_without_the_package_names_the_extra_and_writes_nothing(tmp_path, capsys, monkeypatch):
    run = make_run(tmp_path / "runs", sparsity=0.5)
    monkeypatch.setitem(sys.modules, "onnx", None)  # import onnx fails as if not installed
    before = files(tmp_path)
    out = tmp_path / "m.safetensors"
    rc = main(["export", str(run), "--cycle", "0", "--out", str(out), "--onnx"])
    assert_refused(capsys, before, tmp_path, 'pip install "sparseavg[onnx]"', rc=rc)


def _torch_logits(config: Config, state: dict[str, torch.Tensor], x: torch.Tensor):
    data = load_data(config, torch.device("cpu"))
    model = make_model(config, data, 0)
    model.load_state_dict(state)
    with torch.no_grad():
        return model.eval()(x)


def test_onnx_gives_torchs_logits_for_any_batch_size(tmp_path, capsys):
    ort = pytest.importorskip("onnxruntime")
    onnx = pytest.importorskip("onnx")
    run = make_run(tmp_path / "runs", sparsity=0.9)
    out = tmp_path / "m.safetensors"
    assert main(["export", str(run), "--cycle", "0", "--out", str(out), "--onnx"]) == 0
    assert f"onnx     {tmp_path / 'm.onnx'}" in capsys.readouterr().out.splitlines()
    model = onnx.load(str(tmp_path / "m.onnx"))
    [graph_input] = model.graph.input
    dims = [d.dim_param or d.dim_value for d in graph_input.type.tensor_type.shape.dim]
    assert graph_input.name == "input" and dims == ["batch", 1, 40]
    config = read_run(run).config
    test = load_data(config, torch.device("cpu")).test
    assert isinstance(test, Split)
    session = ort.InferenceSession(str(tmp_path / "m.onnx"), providers=["CPUExecutionProvider"])
    for batch in (128, 7):
        x = test.x[:batch]
        [logits] = session.run(["logits"], {"input": x.numpy()})
        expected = _torch_logits(config, load_sparse(tmp_path / "m.sparse.safetensors"), x)
        assert logits.shape == (batch, 10)
        torch.testing.assert_close(torch.from_numpy(logits), expected, rtol=0, atol=1e-5)
        assert float(expected.abs().max()) > 0.01  # logits that are not all near zero


# -- writes outside and all or nothing (issue 16, item 4) ----------------------------------------


def _contents(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in root.rglob("*") if p.is_file()}


@pytest.mark.parametrize(
    "rel", ["cycle_00/mask.safetensors", "cycle_00/combined.pt", "export.safetensors"]
)
def test_an_export_into_the_run_directory_is_refused_and_the_run_is_unchanged(
    tmp_path, capsys, rel
):
    run = make_run(tmp_path / "runs", sparsity=0.5)
    before = _contents(tmp_path)
    listed = files(tmp_path)
    rc = main(["export", str(run), "--cycle", "0", "--out", str(run / rel)])
    assert_refused(capsys, listed, tmp_path, f"is inside the run directory {run}", rc=rc)
    assert _contents(tmp_path) == before
    assert main(["export", str(run), "--cycle", "0", "--out", str(tmp_path / "m.pt")]) == 0


def test_an_export_into_another_run_or_through_a_link_is_refused(tmp_path, capsys):
    run = make_run(tmp_path / "runs", sparsity=0.5)
    other = make_run(tmp_path / "runs", {**FAKE, "seed": 1})
    (tmp_path / "link").symlink_to(run / "cycle_00")
    before = files(tmp_path)
    for out, inside in (
        (other / "cycle_00" / "m.safetensors", other),
        (tmp_path / "link" / "mask.safetensors", run),
    ):
        rc = main(["export", str(run), "--cycle", "0", "--out", str(out)])
        assert_refused(capsys, before, tmp_path, f"inside the run directory {inside}", rc=rc)
    # a folder of the user's that holds a config.toml is no run directory
    (tmp_path / "project").mkdir()
    (tmp_path / "project" / "config.toml").write_text("[mine]\n")
    assert main(["export", str(run), "--cycle", "0", "--out", str(tmp_path / "project/m.pt")]) == 0


def test_an_export_that_fails_part_way_leaves_every_file_as_it_was(tmp_path, capsys, monkeypatch):
    from sparseavg.experiment import export

    run = make_run(tmp_path / "runs", sparsity=0.5)
    out = tmp_path / "out"
    out.mkdir()
    (out / "m.safetensors").write_bytes(b"an earlier export")  # restored after the failure

    def unwritable(path, text):
        raise PermissionError(13, "Permission denied", str(path))

    monkeypatch.setattr(export, "atomic_write_text", unwritable)  # m.json, written last
    before = _contents(tmp_path)
    rc = main(["export", str(run), "--cycle", "0", "--out", str(out / "m.safetensors")])
    _, err = capsys.readouterr()
    assert rc == 2 and "Permission denied" in err and len(err.splitlines()) == 1
    assert _contents(tmp_path) == before  # no m.mask/m.sparse left, no temporary file
    assert sorted(p.name for p in out.iterdir()) == ["m.safetensors"]

"""A run killed with SIGKILL at random points and rerun each time ends exactly like an
uninterrupted run, and no partial file is ever left where a whole one is expected."""

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from engine_helpers import final_weights, only_run, rows, same_weights, tiny_args
from sparseavg.utils.files import load_tensors

pytestmark = pytest.mark.skipif(os.name != "posix", reason="needs SIGKILL")

ROOT = Path(__file__).resolve().parents[1]


def _cmd(runs: Path) -> list[str]:
    args = tiny_args(
        "swamp", runs, "--set", "ingredients.count=2", "--set", "train.epochs=3", cycles=2
    )
    return [sys.executable, "-m", "sparseavg", *args]


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT / "src") + os.pathsep + env.get("PYTHONPATH", "")
    return env


def _check_every_file_is_whole(run: Path) -> None:
    for f in run.rglob("*"):
        if not f.is_file() or f.name.startswith("."):
            continue
        if f.suffix == ".safetensors":
            load_tensors(f)
        elif f.suffix == ".json":
            json.loads(f.read_text())
        elif f.suffix == ".jsonl":
            for line in f.read_text().splitlines():
                json.loads(line)
        elif f.suffix == ".pt":
            import torch

            torch.load(f, weights_only=True)


def test_sigkill_at_random_points_then_resume_equals_uninterrupted(tmp_path):
    started = time.perf_counter()
    subprocess.run(_cmd(tmp_path / "ref"), env=_env(), check=True, capture_output=True)
    duration = time.perf_counter() - started
    reference = only_run(tmp_path / "ref")

    rng = random.Random(1234)
    runs = tmp_path / "killed"
    kills = 0
    for _ in range(5):
        proc = subprocess.Popen(
            _cmd(runs), env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        time.sleep(rng.uniform(0.3, duration / 4))
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
            kills += 1
        proc.wait()
        if runs.exists() and any(runs.iterdir()):
            _check_every_file_is_whole(only_run(runs))
    final = subprocess.run(_cmd(runs), env=_env(), capture_output=True, text=True)
    assert final.returncode == 0, final.stderr
    assert kills >= 3
    resumed = only_run(runs)
    assert rows(resumed) == rows(reference)
    assert same_weights(final_weights(resumed), final_weights(reference))
    assert not list(resumed.rglob(".*.tmp")) and not (resumed / "run.lock").exists()

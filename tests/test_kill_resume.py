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


def _files(runs: Path) -> dict[Path, int]:
    """Every file below ``runs`` (temporaries and the lock aside) with its modification time."""
    if not runs.exists():
        return {}
    return {
        f: f.stat().st_mtime_ns
        for f in runs.rglob("*")
        if f.is_file() and not f.name.startswith(".") and f.name != "run.lock"
    }


def _new(before: dict[Path, int], runs: Path, name: str | None = None) -> bool:
    """Whether a file (named ``name``, if given) was written below ``runs`` since ``before``."""
    try:
        now = _files(runs)
    except FileNotFoundError:  # a file went away while we looked
        return False
    return any(before.get(f) != t and (name is None or f.name == name) for f, t in now.items())


def test_sigkill_at_random_points_then_resume_equals_uninterrupted(tmp_path):
    subprocess.run(_cmd(tmp_path / "ref"), env=_env(), check=True, capture_output=True)
    reference = only_run(tmp_path / "ref")
    expected = final_weights(reference)
    assert list(expected) == ["cycle_02/combined.safetensors"]  # the comparison is not vacuous

    # A kill at a fixed delay mostly lands while the interpreter starts, before the run has
    # written anything. So each attempt first waits for progress of its own: a random moment
    # after it wrote any file, or the moment it wrote an epoch checkpoint, so that the next
    # attempt resumes inside an ingredient's training.
    rng = random.Random(1234)
    runs = tmp_path / "killed"
    kills = mid_training = 0
    for attempt in range(4):
        before = _files(runs)
        proc = subprocess.Popen(
            _cmd(runs), env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        name = "checkpoint.pt" if attempt % 2 else None
        deadline = time.monotonic() + 120
        try:
            while proc.poll() is None and not _new(before, runs, name):
                assert time.monotonic() < deadline, "no progress in 120 s"
                time.sleep(0.01)
            if name is None:
                time.sleep(rng.uniform(0.0, 1.0))
        finally:
            if proc.poll() is None:
                proc.send_signal(signal.SIGKILL)
                kills += 1
            proc.wait()
        if runs.exists() and any(runs.iterdir()):
            run = only_run(runs)
            _check_every_file_is_whole(run)
            mid_training += any(run.rglob("checkpoint.pt"))
    final = subprocess.run(_cmd(runs), env=_env(), capture_output=True, text=True)
    assert final.returncode == 0, final.stderr
    # every attempt was killed; at least one left an epoch checkpoint to resume from (the
    # ingredient may finish in the instant between its checkpoint and the kill, rarely twice)
    assert kills == 4 and mid_training >= 1, (kills, mid_training)
    resumed = only_run(runs)
    assert rows(resumed) == rows(reference)
    assert same_weights(final_weights(resumed), expected)
    assert not list(resumed.rglob(".*.tmp")) and not (resumed / "run.lock").exists()

import os
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))

if os.environ.get("PYTEST_XDIST_WORKER"):
    # `make test` spreads the tests over the cores (pytest-xdist): one torch thread per worker
    # and per process a test starts, or the workers' threads fight over the same cores (a tiny
    # run is ~2x slower with two threads on a busy 2-core machine)
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    torch.set_num_threads(1)


@pytest.fixture(scope="session", autouse=True)
def _hermetic_data_dir(tmp_path_factory):
    """Tests (and the subprocesses they start) read and cache data in a fresh directory, never
    in the user's ~/.cache."""
    if "SPARSEAVG_DATA" not in os.environ:
        os.environ["SPARSEAVG_DATA"] = str(tmp_path_factory.mktemp("data"))
    yield


@pytest.fixture
def one_thread():
    """One torch thread for the test, restored afterwards: the tiny models of the examples and
    integrations run ~5x slower with two threads on a busy 2-core machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)

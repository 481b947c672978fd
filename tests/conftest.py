import os
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))


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

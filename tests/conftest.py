import os
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))


@pytest.fixture(scope="session", autouse=True)
def _hermetic_data_dir(tmp_path_factory):
    """Tests (and the subprocesses they start) read and cache data in a fresh directory, never
    in the user's ~/.cache."""
    if "SPARSEAVG_DATA" not in os.environ:
        os.environ["SPARSEAVG_DATA"] = str(tmp_path_factory.mktemp("data"))
    yield

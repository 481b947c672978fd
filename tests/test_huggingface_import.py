"""The Hugging Face integration is optional: checked everywhere, transformers or not."""

import subprocess
import sys

import pytest


def test_the_module_names_the_extra_when_transformers_is_missing(monkeypatch):
    monkeypatch.setitem(sys.modules, "transformers", None)  # makes `import transformers` fail
    monkeypatch.delitem(sys.modules, "sparseavg.integrations.huggingface", raising=False)
    with pytest.raises(ImportError, match=r"pip install 'sparseavg\[transformers\]'"):
        import sparseavg.integrations.huggingface  # noqa: F401


def test_import_sparseavg_does_not_import_transformers():
    code = (
        "import sys, sparseavg, sparseavg.integrations; "
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('transformers', 'accelerate')))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout
    assert out.strip() == "[]"

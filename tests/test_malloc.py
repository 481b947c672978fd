import platform
import sys

import pytest

from sparseavg.utils import malloc


def test_tune_glibc_malloc_applies_on_glibc_and_is_idempotent():
    first = malloc.tune_glibc_malloc()
    assert malloc.tune_glibc_malloc() == first
    if sys.platform.startswith("linux") and platform.libc_ver()[0] == "glibc":
        assert first


def test_tune_glibc_malloc_is_a_no_op_off_linux(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setattr(malloc.sys, "platform", "darwin")
    assert malloc.tune_glibc_malloc() is False

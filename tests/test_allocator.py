import platform

import pytest

from lmgolf.allocator import apply_cpu_malloc, keep_freed_memory
from lmgolf.config import load_config
from lmgolf.errors import LmgolfError


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="glibc's mallopt only")
def test_keep_freed_memory_is_applied_on_glibc():
    assert keep_freed_memory() is True


def test_keep_freed_memory_changes_nothing_off_glibc(monkeypatch):
    monkeypatch.setattr(platform, "libc_ver", lambda: ("", ""))
    assert keep_freed_memory() is False


def test_apply_cpu_malloc_changes_nothing_for_system_or_off_cpu(monkeypatch):
    calls = []
    monkeypatch.setattr("lmgolf.allocator.keep_freed_memory", lambda: calls.append(1) or True)
    assert apply_cpu_malloc("system", "cpu") is False and apply_cpu_malloc("reuse", "cuda") is False
    assert calls == []
    assert apply_cpu_malloc("reuse", "cpu") is True and calls == [1]


def test_cpu_malloc_accepts_only_reuse_or_system():
    assert load_config("cpu-demo", ["train.cpu_malloc=system"]).train.cpu_malloc == "system"
    with pytest.raises(LmgolfError, match="train.cpu_malloc"):
        load_config("cpu-demo", ["train.cpu_malloc=jemalloc"]).validate()

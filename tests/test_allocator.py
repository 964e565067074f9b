"""glibc malloc settings for large tensors (``models.allocator``)."""

from __future__ import annotations

import ctypes
import sys

import pytest

from models import allocator

glibc = pytest.mark.skipif(
    not sys.platform.startswith("linux") or not hasattr(ctypes.CDLL(None), "mallinfo2"),
    reason="glibc (2.33+) only",
)


class _MallInfo2(ctypes.Structure):
    _fields_ = [
        (name, ctypes.c_size_t)
        for name in (
            "arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks",
            "fordblks", "keepcost",
        )
    ]  # fmt: skip


@pytest.fixture
def glibc_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    """An environment without the user's own malloc settings or the opt-out."""
    for name in (*allocator.SETTINGS, allocator.OPT_OUT, "GLIBC_TUNABLES"):
        monkeypatch.delenv(name, raising=False)


def _mapped_blocks() -> int:
    libc = ctypes.CDLL(None)
    libc.mallinfo2.restype = _MallInfo2
    return libc.mallinfo2().hblks


@glibc
def test_a_tuned_process_serves_large_blocks_from_the_heap(glibc_defaults: None) -> None:
    """A 96 MiB block (a batch's activations) is no longer mapped afresh on each allocation."""
    assert allocator.tune.__wrapped__() is True
    libc = ctypes.CDLL(None)
    libc.malloc.restype, libc.malloc.argtypes = ctypes.c_void_p, [ctypes.c_size_t]
    libc.free.argtypes = [ctypes.c_void_p]
    before = _mapped_blocks()
    block = libc.malloc(96 * allocator.MIB)
    try:
        assert block and _mapped_blocks() == before  # glibc's default maps it (hblks + 1)
    finally:
        libc.free(block)


@pytest.mark.parametrize(
    "env",
    [
        {allocator.OPT_OUT: "0"},
        {"MALLOC_TOP_PAD_": "0"},
        {"GLIBC_TUNABLES": "glibc.malloc.mmap_threshold=65536"},
    ],
)
def test_a_users_own_malloc_settings_are_kept(
    env: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    assert allocator.tune.__wrapped__() is False

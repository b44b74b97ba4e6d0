"""Memory the OS gets back: the mmap pages of converted weights, and glibc's heap.

Loading converts each float32 table (read with torch.load(mmap=True)) to the mode's precision;
without these calls the dropped originals and the temporary copies would stay in RSS. Linux /
glibc only, through ctypes (no package does madvise / malloc_trim / mallopt); a no-op elsewhere.
"""
from __future__ import annotations

import ctypes
import sys

import torch

_PAGE = 4096
_libc = None


def _glibc():
    global _libc
    if _libc is None:
        _libc = ctypes.CDLL(None, use_errno=True)
        _libc.madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
    return _libc


def release_pages(t: torch.Tensor) -> None:
    """Tell the OS the file-backed (mmap) pages under `t` are no longer needed (MADV_DONTNEED).

    Only for tensors read with torch.load(mmap=True) (private, never written file mappings):
    the pages simply drop out of this process's RSS and would be re-read from the file if
    touched again. A no-op elsewhere."""
    if not sys.platform.startswith("linux") or t.device.type != "cpu":
        return
    try:
        st = t.untyped_storage()
        start, n = st.data_ptr(), st.nbytes()
        lo = -(-start // _PAGE) * _PAGE
        hi = (start + n) // _PAGE * _PAGE
        if hi > lo:
            _glibc().madvise(lo, hi - lo, 4)  # MADV_DONTNEED
    except Exception:  # pragma: no cover - best effort only
        pass


def trim_heap() -> None:
    """Hand freed heap memory back to the OS (glibc keeps freed multi-MB blocks after its mmap
    threshold has grown, which would count the temporary conversion copies in RSS)."""
    if not sys.platform.startswith("linux"):
        return
    try:
        _glibc().malloc_trim(0)
    except Exception:  # pragma: no cover - not glibc
        pass


_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3
_tuned = False


def tune_allocator() -> None:
    """Keep the engine's big temporaries (NAR activations, attention scores: 10-30 MB each) on
    glibc's heap instead of fresh mmaps: every new mapping costs a page fault per 4 KB on first
    touch, which made a [633, 4096] ReLU 10x slower than in a warm loop. Blocks up to 32 MB (the
    largest mmap threshold glibc accepts) come from the heap, and up to 256 MB of freed heap is
    kept for reuse rather than trimmed; `trim_heap` still hands memory back after loading. Setting
    either value turns off glibc's own threshold adjustment, so both are set. Linux/glibc only."""
    global _tuned
    if _tuned or not sys.platform.startswith("linux"):
        return
    _tuned = True
    try:
        _glibc().mallopt(_M_MMAP_THRESHOLD, 32 * 1024 * 1024)
        _glibc().mallopt(_M_TRIM_THRESHOLD, 256 * 1024 * 1024)
    except Exception:  # pragma: no cover - not glibc
        pass

"""The state of a shared machine when a benchmark runs. The AR decode step streams its weights
once a token, so its speed is the memory bandwidth the machine's neighbours leave (25-53 GB/s
within minutes here): each run records a plain read of the int8 weights' size next to its
figures, so runs can be compared."""
from __future__ import annotations

import os
import time

INT8_WEIGHT_BYTES = 151_000_000  # the AR's int8 decoder matrices, what one int8 decode row reads


def read_gb_s(nbytes: int = INT8_WEIGHT_BYTES, threads: int = 2, rounds: int = 3) -> float:
    """Best of `rounds` plain reads of `nbytes` (a 64-bit sum over `threads` threads), in GB/s."""
    import torch

    old = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        x = torch.ones(nbytes // 8, dtype=torch.int64)
        best = float("inf")
        for _ in range(rounds):
            t = time.perf_counter()
            x.sum()
            best = min(best, time.perf_counter() - t)
        return round(nbytes / best / 1e9, 1)
    finally:
        torch.set_num_threads(old)


def snapshot(threads: int = 2) -> dict:
    """Load averages, the read bandwidth now, and which inner loop the bf16 Linears run here
    (core/native.py times vdpbf16ps against float32 FMAs: the faster one differs between CPUs)."""
    from core import native

    return {"load_avg": [round(v, 2) for v in os.getloadavg()], "read_gb_s": read_gb_s(threads=threads),
            "bf16_dot": native.bf16_dot()}


def line(start: dict, end: dict) -> str:
    """One line for a results table: the bandwidth and load at the start and the end of the run."""
    return (f"machine: memory read {start['read_gb_s']} -> {end['read_gb_s']} GB/s, "
            f"load {start['load_avg'][0]} -> {end['load_avg'][0]} (start -> end of the run); "
            f"bf16 Linears on {start.get('bf16_dot') or 'no native kernels'}")

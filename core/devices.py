"""The torch device a run uses, checked before anything loads.

torch accepts "cuda" on a CPU-only build and fails later, deep in a model's first `.to()`, with
"Torch not compiled with CUDA enabled". Checking up front turns that (and a GPU index that does not
exist, or a device torch cannot name) into one StudioError that says what to do.
"""
from __future__ import annotations

import torch

from core.errors import StudioError

_USE = "Use --device cpu, cuda, cuda:N or mps."


def resolve_device(device: str | torch.device, allow_meta: bool = False) -> torch.device:
    """`device` as a torch.device that this process can use, else a StudioError (a ValueError).
    "meta" (shapes only, no data) only where `allow_meta`: the engine's schema check uses it, a
    run that makes audio cannot."""
    name = repr(str(device) if isinstance(device, torch.device) else device)
    name = name if len(name) <= 40 else name[:37] + "..."
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError, ValueError):
        raise StudioError(f"Unknown device {name}.", _USE) from None
    if dev.type == "cpu" or (dev.type == "meta" and allow_meta):
        return dev
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            why = ("this torch build has no CUDA support" if torch.version.cuda is None
                   else "no CUDA GPU is visible (check the driver and CUDA_VISIBLE_DEVICES)")
            raise StudioError(f"Device {name} is not available: {why} (torch {torch.__version__}).",
                              "Use --device cpu, or install a CUDA build of torch (README: 'On a GPU').")
        n = torch.cuda.device_count()
        if dev.index is not None and dev.index >= n:
            raise StudioError(f"Device {name} does not exist: this machine has {n} CUDA GPU(s).",
                              f"Use cuda:0{f' .. cuda:{n - 1}' if n > 1 else ''}.")
        return dev
    if dev.type == "mps":
        if not torch.backends.mps.is_available():
            raise StudioError(f"Device {name} is not available: MPS needs Apple silicon and a "
                              "torch build with MPS.", "Use --device cpu.")
        return dev
    raise StudioError(f"Device {name} is not supported.", _USE)

"""How tensors and q-nets cross into ``engine._C``: the one place that turns them into
numpy views and kernel flags, used by the cpu backend and the native graph search.
Imports nothing of the high-level API."""

from __future__ import annotations

import numpy as np
import torch


def to_numpy(t: torch.Tensor) -> np.ndarray:
    """A C-contiguous numpy view of a CPU tensor (copied only when not contiguous);
    bfloat16 travels as its raw 16 bits (uint16)."""
    t = t.detach()
    if not t.is_contiguous():
        t = t.contiguous()
    if t.dtype == torch.bfloat16:
        t = t.view(torch.uint16)
    return t.numpy()


def qnet_args(weights, biases, config) -> dict:
    """``weights``, ``biases`` and ``flags`` as every ``engine._C`` q-net entry point takes
    them (numpy views, no copies of contiguous tensors). float16 weights travel as they
    are: the native call converts them to float32 itself, with the GIL released (a torch
    conversion here would run on torch's intra-op threads, whose barriers cost
    milliseconds when another process keeps a core busy, and numpy's is slow)."""
    return {"weights": [to_numpy(w) for w in weights], "biases": [to_numpy(b) for b in biases],
            "flags": config.kernel_flags()}

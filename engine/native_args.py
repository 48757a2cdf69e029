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
    them. float16 weights become float32 (the kernels compute in float32 and pack float32
    or bfloat16 panels); one pass over the weights, small next to any scoring call."""
    def conv(t):
        return to_numpy(t.float() if t.dtype == torch.float16 else t)

    return {"weights": [conv(w) for w in weights], "biases": [conv(b) for b in biases],
            "flags": config.kernel_flags()}

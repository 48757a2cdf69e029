"""Compressed document vectors on the GPU backends: which dtypes are stored compressed,
and the check of their per-row ``scales``.

A compressed vector is ``data`` (torch.int8, or torch.float8_e4m3fn) of shape (n, d) plus
``scales`` float32 (n,); the value it stands for is ``data.float() * scales[:, None]``.
The kernels read ``data`` as it is stored and multiply each row's first-layer accumulator
by its scale (the first layer is linear), so no dequantized copy of the corpus exists.
"""

from __future__ import annotations

import torch

from ..quant import is_quantized


def check_scales(vectors: torch.Tensor, scales) -> torch.Tensor | None:
    """``scales`` as the kernels read it (float32, (n,), unit stride, on the vectors'
    device), or None for uncompressed vectors.

    Raises ValueError when int8/float8_e4m3fn vectors come without scales, when scales
    come with vectors of another dtype, or when their dtype, shape or device is wrong;
    TypeError when scales is not a tensor. The values themselves (finite, >= 0) are the
    storage's to check when it loads them: checking them here would cost a device
    synchronisation per call."""
    quant = is_quantized(vectors.dtype)
    if scales is None:
        if quant:
            raise ValueError(f"{vectors.dtype} vectors need scales= (float32, one per row: the value of a "
                             "row is data.float() * scale)")
        return None
    if not quant:
        raise ValueError(f"scales= is only for int8 or float8_e4m3fn vectors; these vectors are {vectors.dtype}")
    if not isinstance(scales, torch.Tensor):
        raise TypeError(f"scales must be a torch.Tensor, got {type(scales).__name__}")
    if scales.dtype != torch.float32:
        raise ValueError(f"scales must be float32, got {scales.dtype}")
    n = vectors.shape[0]
    if scales.dim() != 1 or scales.shape[0] != n:
        raise ValueError(f"scales must have shape ({n},) (one per vector), got {tuple(scales.shape)}")
    if scales.device != vectors.device:
        raise ValueError(f"scales are on {scales.device} but the vectors are on {vectors.device}")
    return scales if scales.stride(0) == 1 or n <= 1 else scales.contiguous()

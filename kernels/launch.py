"""Launch parameters shared by the Triton q-net kernels: mode flags, tile sizes, the
persistent program count and the per-program scratch tiles."""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import triton


def interpreting() -> bool:
    """True under ``TRITON_INTERPRET=1`` (kernels then run on CPU tensors)."""
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


# Block shapes of the fused small-tile kernels (dense and gather) shipped for GPUs, the
# one to use without autotuning first. Every one is compiled ahead of time for sm_80 and
# sm_90 in CI (engine.kernels.aot).
TILE_CONFIGS = tuple(
    triton.Config({"BK": bk, "BH": bh}, num_warps=w, num_stages=s)
    for bk, bh, w, s in ((64, 64, 4, 2), (64, 128, 4, 3), (64, 128, 8, 3), (32, 128, 8, 2),
                         (64, 256, 8, 2), (128, 64, 8, 3))
)
TILE_INTERPRETER_CONFIG = triton.Config({"BK": 16, "BH": 16}, num_warps=1, num_stages=1)


def autotune_configs(shipped=TILE_CONFIGS, interpreter=TILE_INTERPRETER_CONFIG) -> list:
    """The configurations the autotuner tries: ``shipped`` on a GPU (each costs a compile),
    the first ``N`` of them with ``HYPENCODER_TRITON_AUTOTUNE=N`` (0 or 1: the first one
    alone, no autotuning); ``[interpreter]`` when interpreting, where every extra config
    would be another slow interpreted run. Read when a kernel module is imported."""
    if interpreting():
        return [interpreter]
    limit = os.environ.get("HYPENCODER_TRITON_AUTOTUNE", "").strip()
    if limit:
        return list(shipped[: max(1, int(limit))])
    return list(shipped)


GPU_BLOCK_N = 64


def block_n(device: torch.device) -> int:
    """Documents per tile. Fixed per launch rather than autotuned: the fused top-k writes
    ``min(k, BN)`` candidates per tile, so its output shape depends on it."""
    if interpreting():
        return 16
    return int(os.environ.get("HYPENCODER_TRITON_BN", str(GPU_BLOCK_N)))


def num_programs(tiles: int, device: torch.device) -> int:
    """A persistent grid: about two programs per SM, each looping over tiles, so the
    scratch is sized by the machine, not by the corpus."""
    if device.type != "cuda":
        return max(1, min(tiles, 2))
    sms = torch.cuda.get_device_properties(device).multi_processor_count
    return max(1, min(tiles, 2 * sms))


_SCRATCH: dict = {}


def scratch(programs: int, bn: int, width: int, dtype: torch.dtype, device: torch.device):
    """``(xs, ys)``: per-program tiles (programs, BN, width) of the compute dtype and of
    float32. Zero-filled once (no NaN garbage behind masked lanes) and reused across calls
    on the same stream; only grows."""
    key = (device, dtype)
    have = _SCRATCH.get(key)
    need = programs * bn * width
    if have is None or have[0].numel() < need:
        have = (torch.zeros(need, dtype=dtype, device=device),
                torch.zeros(need, dtype=torch.float32, device=device))
        _SCRATCH[key] = have
    return have


def qnet_flags(packed, config) -> dict:
    """The compile-time flags of a q-net launch: the activation and whether any layer
    normalises (from ``QNetConfig.kernel_flags``; each layer's own operations travel in
    the packed ``meta`` table) and the precision (from the weights' dtype)."""
    flags = config.kernel_flags()
    return dict(
        ACT_RELU=flags["relu"],
        LAYER_NORM=flags["layer_norm"],
        IEEE=packed.w.dtype == torch.float32,
        UPCAST=interpreting(),
    )


@dataclass
class Plan:
    """One launch over ``rows`` scored rows per query: unit-stride vectors (float8_e4m3fn
    ones as their bytes, see ``kernels.doc_decode``), their per-row scales (a stand-in
    pointer when uncompressed), tile size, tiles per query, persistent program count,
    the scratch tiles, the layer norm's ``eps`` and the compile-time flags
    (:func:`qnet_flags` plus ``SCALED`` and ``FP8``)."""

    vectors: torch.Tensor
    scales: torch.Tensor
    bn: int
    nblocks: int
    programs: int
    width: int
    xs: torch.Tensor
    ys: torch.Tensor
    eps: float
    flags: dict


def doc_operands(vectors: torch.Tensor, scales):
    """``(vectors, scales, flags)`` as the kernels read compressed documents: e4m3 rows as
    uint8 bytes, ``SCALED`` and ``FP8``. ``scales`` None: uncompressed vectors."""
    fp8 = vectors.dtype == torch.float8_e4m3fn
    if fp8:
        vectors = vectors.view(torch.uint8)
    return vectors, scales, dict(SCALED=scales is not None, FP8=fp8)


def plan(packed, config, vectors: torch.Tensor, rows: int, scales=None) -> Plan:
    vectors = vectors if vectors.stride(1) == 1 else vectors.contiguous()
    vectors, scales, doc_flags = doc_operands(vectors, scales)
    dev = vectors.device
    bn = block_n(dev)
    nblocks = triton.cdiv(rows, bn)
    programs = num_programs(packed.w.shape[0] * nblocks, dev)
    width = max(packed.max_width, vectors.shape[1])
    xs, ys = scratch(programs, bn, width, packed.w.dtype, dev)
    return Plan(vectors, scales if scales is not None else ys, bn, nblocks, programs, width, xs, ys,
                config.kernel_flags()["eps"], {**qnet_flags(packed, config), **doc_flags})

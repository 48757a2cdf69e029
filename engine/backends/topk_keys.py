"""The 64-bit sort keys of the fused top-k scans, and the merge that follows them.

A candidate (score, id) is packed into one int64 whose signed order is "better first":
the high 32 bits hold the score's IEEE bits mapped to an order-preserving integer (minus
2^31 so the signed compare works), the low 32 bits hold ``2^32 - 1 - id`` so that of
equal scores the lower id sorts higher. One integer top-k then gives both the order and
the tie rule the contract asks for, which a float top-k with separate ids cannot.
The Triton and CUDA kernels build the same keys; an unused slot holds ``PAD_KEY``.
Scores are finite (inputs are validated) and -0.0 is folded onto +0.0 before encoding.
"""

from __future__ import annotations

import torch

PAD_KEY = -(1 << 63)
_LOW = (1 << 32) - 1
MAX_IDS = 1 << 32  # ids must fit the low half


def encode(scores: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    """Reference encoder (the kernels do the same in registers)."""
    bits = (scores.float() + 0.0).view(torch.int32).to(torch.int64)
    key32 = torch.where(bits < 0, (~bits) & _LOW, (bits | (1 << 31)) & _LOW)
    return ((key32 - (1 << 31)) << 32) | (_LOW - ids.to(torch.int64))


def decode(keys: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(scores float32, ids int64)``; padding slots give ``(-inf, -1)``."""
    pad = keys == PAD_KEY
    key32 = (keys >> 32) + (1 << 31)  # 0 .. 2^32 - 1
    bits = torch.where(key32 >= (1 << 31), key32 - (1 << 31), (~key32) & _LOW)
    bits = torch.where(bits >= (1 << 31), bits - (1 << 32), bits).to(torch.int32)
    scores = bits.view(torch.float32).clone()
    ids = _LOW - (keys & _LOW)
    scores[pad] = float("-inf")
    ids[pad] = -1
    return scores, ids


def merge_topk(running: torch.Tensor | None, cands: torch.Tensor, k: int) -> torch.Tensor:
    """Best ``k`` keys of ``running`` (Q, k') and ``cands`` (Q, c), best first."""
    allk = cands if running is None else torch.cat([running, cands], dim=1)
    kk = min(k, allk.shape[1])
    return torch.topk(allk, kk, dim=1, largest=True, sorted=True).values


def finish(keys: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Decode the merged keys and pad to ``k`` columns with (-inf, -1)."""
    Q, have = keys.shape
    if have < k:
        keys = torch.cat([keys, keys.new_full((Q, k - have), PAD_KEY)], dim=1)
    return decode(keys)

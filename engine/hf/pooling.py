"""Document vectors from a transformer's last hidden state."""

from __future__ import annotations

import torch

POOLING_TYPES = ("cls", "mean")


def pool(states: torch.Tensor, attention_mask: torch.Tensor, pooling_type: str) -> torch.Tensor:
    """``states`` (n, T, D), ``attention_mask`` (n, T) -> (n, D).

    ``cls`` takes each document's first unmasked token (position 0 with right padding, the
    first real token with a left-padding tokenizer). ``mean`` averages over the unmasked
    tokens only. (The reference sums over every position, padding included, before
    dividing by the unmasked count; the two agree for unpadded inputs, and only this one
    is independent of how documents are batched.)
    """
    if pooling_type == "cls":
        first = attention_mask.ne(0).int().argmax(dim=1)  # the first maximum: the first real token
        return states[torch.arange(states.shape[0], device=states.device), first]
    if pooling_type == "mean":
        m = attention_mask.to(states.dtype).unsqueeze(-1)
        # Sum in float32: a long document's sum can overflow float16.
        total = (states.float() * m.float()).sum(dim=1)
        count = m.float().sum(dim=1).clamp_min(1.0)
        return (total / count).to(states.dtype)
    raise ValueError(f"pooling_type must be one of {POOLING_TYPES}, got {pooling_type!r}")

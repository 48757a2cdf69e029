"""Merging top-k lists of several shards into one, with the engine's tie rule."""

from __future__ import annotations

import torch

INT64_MAX = 2**63 - 1


def merge_topk(scores: torch.Tensor, rows: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The best ``k`` of candidate lists laid side by side.

    Args:
        scores: ``(Q, m)`` float32. rows: ``(Q, m)`` int64 global rows, -1 for an empty
            slot (its score is ignored). Each row appears at most once per query.
        k: results per query (>= 0).

    Returns:
        ``(scores (Q, k), rows (Q, k))``: by score descending, equal scores by the lower
        row (the rule of one index), empty slots last as ``-inf`` / ``-1``.
    """
    Q, m = scores.shape
    valid = rows >= 0
    # Sort by row first, then stably by score: equal scores stay in row order, and empty
    # slots (row "infinity", score -inf) fall behind every document.
    by_row = torch.argsort(torch.where(valid, rows, INT64_MAX), dim=1, stable=True)
    s = torch.where(valid, scores, float("-inf")).gather(1, by_row)
    r = torch.where(valid, rows, -1).gather(1, by_row)
    order = torch.argsort(s, dim=1, descending=True, stable=True)[:, :k]
    s, r = s.gather(1, order), r.gather(1, order)
    if k > m:
        s = torch.cat([s, s.new_full((Q, k - m), float("-inf"))], dim=1)
        r = torch.cat([r, r.new_full((Q, k - m), -1)], dim=1)
    return s.contiguous(), r.contiguous()

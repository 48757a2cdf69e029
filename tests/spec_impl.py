"""An independent, deliberately plain implementation of the q-net spec
(docs/hypencoder.md): one document at a time, explicit loops over layers, layer
norm written out. Tests compare the engine's scorers to it."""

from __future__ import annotations

import torch


def layer_norm(v: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    mu = v.mean()
    var = ((v - mu) ** 2).mean()
    return (v - mu) / torch.sqrt(var + eps)


def qnet_score_one(weights, biases, x, *, residual=True, residual_on_last=False,
                   layer_norm_on=True, ln_before_residual=True, relu=True) -> float:
    """Score of one q-net (weights[i]: (in, out), biases[i]: (out,)) on one vector x (d,)."""
    x = x.double()
    L = len(biases)
    for i in range(L):
        y = x @ weights[i].double() + biases[i].double()
        if relu:
            y = torch.clamp(y, min=0)
        res = residual and (residual_on_last or i < L - 1)
        if layer_norm_on and (ln_before_residual or not res):
            y = layer_norm(y)
        if res:
            y = y + x
            if layer_norm_on and not ln_before_residual:
                y = layer_norm(y)
        x = y
    return float(x @ weights[L].double()[:, 0])


def spec_scores(qnets, vectors, **flags) -> torch.Tensor:
    """(Q, n) scores, float64 loops over every (query, document)."""
    Q, n = qnets.num_queries, vectors.shape[0]
    out = torch.empty(Q, n, dtype=torch.float64)
    for q in range(Q):
        ws = [w[q] for w in qnets.weights]
        bs = [b[q] for b in qnets.biases]
        for j in range(n):
            out[q, j] = qnet_score_one(ws, bs, vectors[j], **flags)
    return out

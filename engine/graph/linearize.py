"""The gradient of q-nets with respect to their input, in closed form (torch twin of
``csrc/graph/linearize.cpp``): one forward pass keeping the relu masks and layer-norm
statistics, then the backward pass through residuals, layer norms, relus and weights.
The cost is that of scoring one document per query; no autograd.

``relaxed=True`` lets every relu pass the gradient (slope 1 where it is inactive): the
fallback direction when the true gradient vanishes, e.g. at a point where every unit of a
layer is off, so that a q-net that only responds far from the corpus mean still gets a
direction pointing where it responds.
"""

from __future__ import annotations

import torch


def _ln(y: torch.Tensor, eps: float):
    mu = y.mean(-1, keepdim=True)
    var = (y - mu).pow(2).mean(-1, keepdim=True)
    sigma = torch.sqrt(var + eps)
    return (y - mu) / sigma, sigma


def _ln_back(g: torch.Tensor, y: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    return (g - g.mean(-1, keepdim=True) - y * (g * y).mean(-1, keepdim=True)) / sigma


def linearize(qnets, at: torch.Tensor, relaxed: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """Gradients of the q-nets at ``at``.

    Args:
        qnets: :class:`engine.QNet` of Q q-nets reading d-wide vectors.
        at: ``(d,)`` (one point for every q-net) or ``(Q, d)``, any float dtype.
        relaxed: take every relu's slope as 1.

    Returns:
        ``(w, ok)``: ``(Q, d)`` float32 gradients on the q-nets' device, and ``(Q,)`` bool:
        the gradient is finite and not zero.
    """
    Q, d = qnets.num_queries, qnets.dim
    cfg = qnets.config
    L = qnets.num_layers
    x = at.to(qnets.device, torch.float32).expand(Q, d).reshape(Q, 1, d)
    saved = []
    for i in range(L):
        z = torch.baddbmm(qnets.biases[i].float().unsqueeze(1), x, qnets.weights[i].float())
        relu = cfg.activation == "relu"
        mask = torch.ones_like(z) if (not relu or relaxed) else (z > 0).float()
        y = torch.relu(z) if relu else z
        ln_before, res, ln_after = cfg.layer_ops(i, L)
        nb = sb = na = sa = None
        if ln_before:
            y, sb = _ln(y, cfg.eps)
            nb = y
        if res:
            y = y + x
        if ln_after:
            y, sa = _ln(y, cfg.eps)
            na = y
        saved.append((mask, nb, sb, na, sa, res))
        x = y
    g = qnets.weights[L].float().transpose(1, 2)  # (Q, 1, h_L)
    for i in range(L - 1, -1, -1):
        mask, nb, sb, na, sa, res = saved[i]
        if na is not None:
            g = _ln_back(g, na, sa)
        g_res = g if res else None
        if nb is not None:
            g = _ln_back(g, nb, sb)
        g = torch.bmm(g * mask, qnets.weights[i].float().transpose(1, 2))
        if g_res is not None:
            g = g + g_res
    w = g.reshape(Q, d)
    ok = torch.isfinite(w).all(1) & (w != 0).any(1)
    return w, ok

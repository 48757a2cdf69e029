"""Reference backend in plain PyTorch: the ground truth every kernel is tested against.

Computes in float32 whatever the input dtypes, with one batched matmul per layer.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..qnet_config import QNetConfig


def is_available() -> tuple[bool, str]:
    return True, "ok"


def supports(device: torch.device) -> bool:
    return True


def _activate(y: torch.Tensor, config: QNetConfig) -> torch.Tensor:
    return torch.relu(y) if config.activation == "relu" else y


def apply_qnet(weights, biases, config: QNetConfig, x: torch.Tensor) -> torch.Tensor:
    """Run q-nets on ``x`` of shape ``(Q, m, d)`` (float32); returns ``(Q, m)`` scores."""
    L = len(biases)
    for i in range(L):
        y = torch.baddbmm(biases[i].float().unsqueeze(1), x, weights[i].float())
        y = _activate(y, config)
        res = config.has_residual(i, L)
        if config.layer_norm and (config.layer_norm_before_residual or not res):
            y = F.layer_norm(y, y.shape[-1:], eps=config.eps)
        if res:
            y = y + x
            if config.layer_norm and not config.layer_norm_before_residual:
                y = F.layer_norm(y, y.shape[-1:], eps=config.eps)
        x = y
    return torch.bmm(x, weights[L].float()).squeeze(-1)


# Activations of one chunk stay under this many floats (64 MiB), so scoring a large
# corpus never materialises (Q, n, h) at once.
_CHUNK_ELEMS = 1 << 24


def score_dense(weights, biases, config, vectors, out=None):
    Q, n = weights[0].shape[0], vectors.shape[0]
    if out is None:
        out = torch.empty(Q, n, dtype=torch.float32, device=vectors.device)
    width = max(w.shape[1] for w in weights)
    chunk = max(1, _CHUNK_ELEMS // max(1, Q * width))
    for s in range(0, n, chunk):
        x = vectors[s : s + chunk].float().unsqueeze(0).expand(Q, -1, -1)
        out[:, s : s + chunk] = apply_qnet(weights, biases, config, x)
    return out


def score_gather(weights, biases, config, vectors, ids, out=None):
    x = vectors[ids.long()].float()  # (Q, m, d)
    s = apply_qnet(weights, biases, config, x)
    if out is not None:
        out.copy_(s)
        return out
    return s

"""Reference backend in plain PyTorch: the ground truth every kernel is tested against.

Computes in float32 whatever the input dtypes. A score is a function of the q-net and the
document vector only: documents are scored one query at a time, in tiles of a fixed
number of rows (the last tile padded with zeros), so every matrix product has the same
shape whatever the corpus size, the block, the document's position or the other queries
of the batch. A matrix product of one shape computes each row the same way, so
identical vectors get bit-identical scores and the tie rule (lower row first) holds.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..qnet_config import QNetConfig

# Rows per tile: small on CPU, where padding the last tile costs compute; larger on GPUs,
# where each product is a kernel launch.
_TILE_ROWS = {"cpu": 256}
_TILE_ROWS_OTHER = 4096


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
        ln_before, res, ln_after = config.layer_ops(i, L)
        y = _activate(torch.baddbmm(biases[i].float().unsqueeze(1), x, weights[i].float()), config)
        if ln_before:
            y = F.layer_norm(y, y.shape[-1:], eps=config.eps)
        if res:
            y = y + x
        if ln_after:
            y = F.layer_norm(y, y.shape[-1:], eps=config.eps)
        x = y
    return torch.bmm(x, weights[L].float()).squeeze(-1)


def _score_rows(weights, biases, config, q: int, rows: torch.Tensor, out: torch.Tensor) -> None:
    """Scores of q-net ``q`` for ``rows`` (m, d) into ``out`` (m,), a fixed-shape tile at a time."""
    tile_rows = _TILE_ROWS.get(rows.device.type, _TILE_ROWS_OTHER)
    w = [t[q : q + 1].float() for t in weights]
    b = [t[q : q + 1].float() for t in biases]
    tile = torch.zeros(1, tile_rows, rows.shape[1], dtype=torch.float32, device=rows.device)
    for s in range(0, rows.shape[0], tile_rows):
        part = rows[s : s + tile_rows]
        tile[0, : len(part)] = part
        tile[0, len(part):] = 0
        out[s : s + len(part)] = apply_qnet(w, b, config, tile)[0, : len(part)]


def score_dense(weights, biases, config, vectors, out=None):
    Q, n = weights[0].shape[0], vectors.shape[0]
    if out is None:
        out = torch.empty(Q, n, dtype=torch.float32, device=vectors.device)
    for q in range(Q):
        _score_rows(weights, biases, config, q, vectors, out[q])
    return out


def score_gather(weights, biases, config, vectors, ids, out=None):
    if out is None:
        out = torch.empty(tuple(ids.shape), dtype=torch.float32, device=vectors.device)
    for q in range(ids.shape[0]):
        _score_rows(weights, biases, config, q, vectors[ids[q].long()], out[q])
    return out

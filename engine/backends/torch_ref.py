"""Reference backend in plain PyTorch: the ground truth every kernel is tested against.

Computes in float32 whatever the input dtypes; int8 / float8 e4m3 rows are dequantised
(``data.float() * scale``, engine/quant.py) as they enter a tile. A score is a function of the q-net and the
document vector only: documents are scored in tiles of a fixed number of rows (the last
tile padded with zeros), so every matrix product has the same shape whatever the corpus
size, the block or the document's position, and identical vectors get bit-identical
scores (which makes the tie rule, lower row first, hold). A product of one shape rounds
each row the same way wherever the row sits and however many queries are batched
(tests/test_score_position.py checks this), except a one-column product, which takes a
matrix-vector path: the output layer is therefore computed as a product with
``_OUT_COLUMNS`` columns, all but the first zero.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..qnet_config import QNetConfig
from ..quant import check_scales, dequantize

# Rows per tile: small on CPU, where padding the last tile costs compute; larger on GPUs,
# where each product is a kernel launch.
_TILE_ROWS = {"cpu": 512}
_TILE_ROWS_OTHER = 4096
_OUT_COLUMNS = 16
# Queries scored together: their float32 weights and one tile's activations stay under this.
_GROUP_BYTES = 256 << 20


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
    w_out = F.pad(weights[L].float(), (0, _OUT_COLUMNS - 1))  # (Q, h, 16), columns 1.. zero
    return torch.bmm(x, w_out)[..., 0]


def _tiles(weights, biases, config, m: int, device):
    """``(queries, rows, tile_rows, float32 weights, float32 biases)`` for every group of
    queries and every tile of ``m`` rows."""
    tile_rows = _TILE_ROWS.get(torch.device(device).type, _TILE_ROWS_OTHER)
    Q = weights[0].shape[0]
    per_query = 4 * (sum(w[0].numel() for w in weights) + tile_rows * max(w.shape[1] for w in weights) * 3)
    group = max(1, _GROUP_BYTES // per_query)
    for q0 in range(0, Q, group):
        qs = slice(q0, min(q0 + group, Q))
        w = [t[qs].float() for t in weights]
        b = [t[qs].float() for t in biases]
        for s in range(0, m, tile_rows):
            yield qs, slice(s, min(s + tile_rows, m)), tile_rows, w, b


def _rows(vectors, scales, rows):
    """Rows ``rows`` of ``vectors`` in float32: dequantised (``data.float() * scale``) when
    ``scales`` are given."""
    if scales is None:
        return vectors[rows].float()
    return dequantize(vectors, scales, rows)


def score_dense(weights, biases, config, vectors, out=None, *, scales=None):
    """``scales``: (n,) float32, required for int8 / float8_e4m3 ``vectors`` (row i is
    ``vectors[i].float() * scales[i]``), refused (ValueError) otherwise."""
    scales = check_scales(vectors, scales, check_values=False)
    Q, n, d = weights[0].shape[0], vectors.shape[0], vectors.shape[1]
    if out is None:
        out = torch.empty(Q, n, dtype=torch.float32, device=vectors.device)
    for qs, rows, tile_rows, w, b in _tiles(weights, biases, config, n, vectors.device):
        tile = torch.zeros(1, tile_rows, d, dtype=torch.float32, device=vectors.device)
        tile[0, : rows.stop - rows.start] = _rows(vectors, scales, rows)
        s = apply_qnet(w, b, config, tile.expand(w[0].shape[0], -1, -1))
        out[qs, rows] = s[:, : rows.stop - rows.start]
    return out


def score_gather(weights, biases, config, vectors, ids, out=None, *, scales=None):
    """As :func:`score_dense`; row ``ids[q, j]`` takes scale ``scales[ids[q, j]]``."""
    scales = check_scales(vectors, scales, check_values=False)
    m, d = ids.shape[1], vectors.shape[1]
    if out is None:
        out = torch.empty(tuple(ids.shape), dtype=torch.float32, device=vectors.device)
    for qs, rows, tile_rows, w, b in _tiles(weights, biases, config, m, vectors.device):
        tile = torch.zeros(w[0].shape[0], tile_rows, d, dtype=torch.float32, device=vectors.device)
        tile[:, : rows.stop - rows.start] = _rows(vectors, scales, ids[qs, rows].long())
        out[qs, rows] = apply_qnet(w, b, config, tile)[:, : rows.stop - rows.start]
    return out

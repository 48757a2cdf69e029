"""Bridge to the C++ search loops in csrc/graph (``engine._C.graph_*``).

Tensors travel as numpy views (bfloat16 as uint16); float16 q-net weights become float32
(the kernels take float32 or bfloat16 weights). Threads: ``torch.get_num_threads()``.
"""

from __future__ import annotations

import numpy as np
import torch

_ERR = None


def _module():
    global _ERR
    try:
        from .. import _C
    except ImportError as e:  # the extension was not built
        _ERR = str(e)
        return None
    if not hasattr(_C, "graph_paper_search"):
        _ERR = "engine._C was built without csrc/graph"
        return None
    return _C


def available() -> bool:
    return _module() is not None


def require():
    if _module() is None:
        raise RuntimeError(f"the C++ graph search is not available: {_ERR}")


def _np(t: torch.Tensor) -> np.ndarray:
    t = t.contiguous()
    if t.dtype == torch.bfloat16:
        t = t.view(torch.uint16)
    return t.numpy()


def _qnet(qnets):
    def conv(t):
        return _np(t.float() if t.dtype == torch.float16 else t)

    c = qnets.config
    flags = {
        "relu": c.activation == "relu",
        "layer_norm": bool(c.layer_norm),
        "residual": bool(c.residual),
        "residual_on_last": bool(c.residual_on_last),
        "layer_norm_before_residual": bool(c.layer_norm_before_residual),
        "eps": float(c.eps),
    }
    return [conv(w) for w in qnets.weights], [conv(b) for b in qnets.biases], flags


def _graph(index) -> np.ndarray:
    g = index.graph
    return _np(g if g.dtype == torch.int32 else g.to(torch.int32))


def paper_search(index, qnets, k, *, num_entry_points, ncandidates, max_iter, early_stop):
    from .common import entry_points

    _C = _module()
    w, b, flags = _qnet(qnets)
    ent = entry_points(index, num_entry_points)
    s, i, scored, steps = _C.graph_paper_search(
        w, b, flags, _np(index.vectors), _graph(index), _np(ent), int(k), int(ncandidates),
        int(max_iter), bool(early_stop), torch.get_num_threads())
    return (torch.from_numpy(s), torch.from_numpy(i),
            {"documents_scored": torch.from_numpy(scored), "steps": torch.from_numpy(steps)})


def beam_search(qnets, index, ef, width, max_steps, *, shared_entries=None, entries=None, init=None):
    """See :func:`engine.graph.beam.beam_torch`; returns (scores, ids, scored, steps)."""
    _C = _module()
    Q = qnets.num_queries
    w, b, flags = _qnet(qnets)
    empty_i = np.zeros((Q, 0), dtype=np.int64)
    sh = _np(shared_entries) if shared_entries is not None else np.zeros(0, dtype=np.int64)
    en = _np(entries) if entries is not None else empty_i
    if init is not None:
        init_s, init_i = _np(init[0].float()), _np(init[1])
    else:
        init_s, init_i = np.zeros((Q, 0), dtype=np.float32), empty_i
    s, i, scored, steps = _C.graph_beam_search(
        w, b, flags, _np(index.vectors), _graph(index), sh, en, init_s, init_i, int(ef), int(width),
        int(max_steps), torch.get_num_threads())
    return torch.from_numpy(s), torch.from_numpy(i), torch.from_numpy(scored), torch.from_numpy(steps)


def linear_topk(index, w: torch.Tensor, m: int) -> torch.Tensor:
    """Ids ``(Q, min(m, n))`` of the documents with the largest ``x . w_q``, best first,
    ties by lower id: one C++ pass over the stored vectors (no float32 copy)."""
    _C = _module()
    _, ids = _C.graph_linear_topk(_np(index.vectors), _np(w.float()), int(m), torch.get_num_threads())
    return torch.from_numpy(ids)


def rows_topk(index, ids: torch.Tensor, w: torch.Tensor, m: int) -> torch.Tensor:
    """Ids ``(Q, min(m, S))`` of the rows among ``ids[q]`` ((Q, S) int64, distinct) with the
    largest ``x . w_q``, best first, ties by lower id: reads only those S rows, each dot
    product bit-identical to :func:`linear_topk`'s."""
    _C = _module()
    _, out = _C.graph_rows_topk(_np(index.vectors), _np(ids.to(torch.int64)), _np(w.float()), int(m),
                                torch.get_num_threads())
    return torch.from_numpy(out)

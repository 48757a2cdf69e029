"""The native implementation of graph search: each preset is one call into the C++ loop
of ``engine._C`` (csrc/graph), which runs the whole search of a query batch (packing each
q-net once, linearisation, candidates, beam, second pass) with the GIL released.

Tensors travel as numpy views (bfloat16 as uint16); float16 q-net weights become float32
(the CPU kernels take float32 or bfloat16 weights). CPU tensors only.
"""

from __future__ import annotations

import numpy as np
import torch

from ..native_args import bf16_requested
from ..native_args import qnet_args
from ..native_args import to_numpy
from .common import corpus_mean, entry_points

NAME = "native"


def _module():
    try:
        from .. import _C
    except ImportError as e:  # the extension was not built
        return None, str(e)
    if not hasattr(_C, "graph_default_search"):
        return None, "engine._C was built without csrc/graph"
    return _C, ""


def availability() -> tuple[bool, str]:
    mod, why = _module()
    return mod is not None, why or "ok"


def _graph(index) -> np.ndarray:
    g = index.graph
    return to_numpy(g if g.dtype == torch.int32 else g.to(torch.int32))


def _qnet_args(weights, biases, config):
    # The q-net in float32 (flag bf16 off): graph search sets the precision of its candidate
    # scoring itself (``bf16`` of default_search) and returns scores computed in float32.
    args = qnet_args(weights, biases, config)
    args["flags"]["bf16"] = False
    return args


def _scales(index):
    """The row scales of an int8 / float8_e4m3 index as the native search takes them (None
    for float storage)."""
    sc = getattr(index, "scales", None)
    return None if sc is None else to_numpy(sc)


def _result(out):
    s, i, st = out
    st = torch.from_numpy(st)
    counters = {"documents_scored": st[:, 0], "steps": st[:, 1], "linear_rows": st[:, 2],
                "coded_rows": st[:, 3], "fallback": st[:, 4]}
    return torch.from_numpy(s), torch.from_numpy(i), counters


def _allow(allow):
    """The allow bitmap (None, or bool (1 or Q, n)) as the uint8 array of _C."""
    return None if allow is None else allow.contiguous().view(torch.uint8).numpy()


def paper_search(index, qnets, k: int, p, num_threads: int, allow=None):
    _C, _ = _module()
    w, b, flags = _qnet_args(qnets.weights, qnets.biases, qnets.config).values()
    ent = entry_points(index, p.num_entry_points)
    return _result(_C.graph_paper_search(w, b, flags, to_numpy(index.vectors), _graph(index), to_numpy(ent), int(k),
                                         p.ncandidates, p.max_iter, p.early_stop, num_threads,
                                         scales=_scales(index), allow=_allow(allow)))


def bf16_dot() -> bool:
    """Whether the active CPU kernels have a bf16 dot product (the bf16 candidate scoring
    runs at about twice the float32 rate there)."""
    _C, _ = _module()
    return _C is not None and _C.cpu_has_bf16_kernel()


def bf16_candidates(weight_dtype, vector_dtype) -> bool:
    """Whether ``precision="auto"`` scores the candidates in bf16: the CPU precision policy
    asks for bf16 for these dtypes and the kernels have a bf16 dot product."""
    return bf16_requested(weight_dtype, vector_dtype) and bf16_dot()


def default_search(index, qnets, k: int, p, use_codes: bool, bf16: bool, num_threads: int, allow=None):
    _C, _ = _module()
    w, b, flags = _qnet_args(qnets.weights, qnets.biases, qnets.config).values()
    n = len(index)
    ef_lin = p.ef_lin()
    keep = p.shortlist_rows(n) if p.passes > 1 else ef_lin
    codes = index.codes.native() if use_codes else None
    residual = use_codes and index.codes.residual is not None
    rerank = p.rerank_rows(n, keep, residual) if use_codes else 0
    residual_rows = p.residual_rows_(n, keep) if residual else 0
    samples = entry_points(index, p.num_samples, salt=1)
    return _result(_C.graph_default_search(
        w, b, flags, to_numpy(index.vectors), _graph(index), to_numpy(corpus_mean(index)), to_numpy(samples), codes,
        int(k), p.ef, ef_lin, p.width, p.max_steps, p.passes, keep, rerank, residual_rows, bool(bf16), num_threads,
        scales=_scales(index), allow=_allow(allow)))

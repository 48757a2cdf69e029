"""``graph_search``: validate, choose the implementation once, run one preset.

Presets (the typed parameters are in :mod:`.params`):

- ``"paper"``: the paper's algorithm exactly (Killingback et al., SIGIR 2025): 10,000
  random entry points, then neighbour expansion of the best 50 per step.
- ``"default"``: a q-net is close to linear over the region of document space that
  matters, so its gradient ``w`` at the corpus mean (closed form, :mod:`.linearize`)
  ranks documents by ``x . w`` much as the q-net does, at the cost of a dot product.
  Per query: (1) linearise; where the gradient vanishes or is not finite, take the
  relaxed one (every relu passing), and with no direction at all start from a fixed
  sample of documents; (2) linear candidates: the index's compressed codes
  (:mod:`.codes`) give the best ``rerank`` estimates of ``x . w``, re-ranked exactly on
  the stored rows (or an exact scan of every row, ``candidates="scan"``); (3) the q-net
  scores the best ``ef_lin`` of them and a best-first beam search with the q-net on the
  neighbour graph refines them (list ``ef``, the speed/recall knob); (4) with
  ``passes=2``, linearise again at the best document found, rank the first pass's top
  ``shortlist`` rows by the new direction and continue the beam from its best ``ef_lin``;
  (5) with ``precision="bf16"`` the candidates were scored in bf16: score the final list
  again exactly, so that every returned score is the q-net's own.

Implementations (same names and semantics): :mod:`.native` (the C++ loop of
``engine._C``, CPU tensors, the cpu backend's kernels) and :mod:`.torch_impl` (batched
torch ops on any device, scoring through the chosen backend). ``impl="auto"`` picks the
native one for CPU tensors when the backend is ``"auto"`` or ``"cpu"``, the torch one
otherwise; an explicit conflict (``impl="native"`` with ``backend="torch"``, or with
CUDA tensors) raises.

Filters (``allow``, a :class:`engine.search.filters.RowFilter`: allow-lists and deleted
rows): the walk goes through every document, only allowed ones enter the results, and
the linear candidates are allowed rows only. A query whose allowed share of the index is
under ``filter_exact_below`` is searched exactly over its allowed rows instead, and so is
a query whose graph search returned fewer than ``min(k, allowed)`` results; such queries
are flagged ``exact`` in the per-query stats.

Path of a default search on CPU: ``Index.search`` (validation) -> this module (typed
parameters from :mod:`.params`, the implementation chosen once) -> :mod:`.native` (numpy
views of the arrays, the index's cached entry points and mean from :mod:`.common`) -> one
call into C++ for the whole query batch. The search work runs in 3 modules and crosses
into C++ once; before this layout it went through 8 modules and crossed into C++ 4 times
(the linear scan, the beam, the shortlist and the second beam, each repacking the q-net).
"""

from __future__ import annotations

import torch

from .. import backends, threads
from . import native, torch_impl
from .params import PerQuery, make_params

IMPLS = ("auto", "native", "torch")
_COUNTERS = ("documents_scored", "steps", "linear_rows", "coded_rows", "fallback")


def _filtered(run, index, qnets, k: int, rf, exact_below: float, backend: str, num_threads: int):
    """A filtered graph search: the graph for the queries whose allowed share reaches
    ``exact_below``, exact search over the allowed rows for the others and for those the
    graph left short of ``min(k, allowed)`` results. Returns ``(scores, ids, counters,
    exact (Q,) bool)``."""
    from ..search.filtered import filtered_exact_search

    Q, n, dev = qnets.num_queries, len(index), qnets.device
    s = torch.full((Q, k), float("-inf"), device=dev)
    i = torch.full((Q, k), -1, dtype=torch.int64, device=dev)
    counters = {f: torch.zeros(Q, dtype=torch.int64) for f in _COUNTERS}
    counts = rf.counts
    exact = (counts.double() < exact_below * n) | (counts <= k)

    def part(sel):  # the q-nets and filter of some queries (no copy when all)
        if sel.numel() == Q:
            return qnets, rf
        return qnets[sel.to(dev)], rf.select(sel)

    g = (~exact).nonzero()[:, 0]
    if g.numel():
        gs, gi, gc = run(*part(g))
        s[g.to(dev)], i[g.to(dev)] = gs.to(dev), gi.to(dev)
        for f in _COUNTERS:
            counters[f][g] = gc[f].cpu()
        filled = (gi >= 0).sum(1).cpu()
        exact[g[filled < counts[g].clamp_max(k)]] = True  # the walk met too few allowed documents
    e = exact.nonzero()[:, 0]
    if e.numel():
        qe, rfe = part(e)
        es, ei = filtered_exact_search(qe, index.vectors, k, rfe, backend=backend,
                                       num_threads=num_threads if backend == "cpu" else None)
        s[e.to(dev)], i[e.to(dev)] = es, ei
        counters["documents_scored"][e] += counts[e]
    return s, i, counters, exact


def _choose(impl: str, backend: str, device: torch.device):
    """(implementation module, backend name, backend object or None) for this search."""
    if impl not in IMPLS:
        raise ValueError(f"impl must be one of {IMPLS}, got {impl!r}")
    native_ok, why = native.availability()
    if impl == "auto":
        impl = "native" if device.type == "cpu" and backend in ("auto", "cpu") and native_ok else "torch"
    if impl == "native":
        if device.type != "cpu":
            raise ValueError(f"impl='native' runs on CPU tensors only; these are on {device}")
        if backend not in ("auto", "cpu"):
            raise ValueError(f"impl='native' scores with the cpu backend's kernels; backend={backend!r} conflicts "
                             "(use impl='torch' or backend='cpu')")
        if not native_ok:
            raise RuntimeError(f"the native graph search is not available: {why}")
        backends.get_backend("cpu", device)  # the same availability rules as exact search
        return native, "cpu", None
    be = backends.get_backend(backend, device)
    return torch_impl, backends.backend_name(be), be


def graph_search(index, qnets, k: int, *, backend: str = "auto", impl: str = "auto", preset: str = "default",
                 params=None, num_threads: int | None = None, allow=None, **options):
    """Approximate top-``k`` of ``index`` for every q-net over its neighbour graph.

    Args:
        index: :class:`engine.Index` with a graph (and, for ``candidates="codes"``, codes).
        qnets: Q q-nets on the index's device. k: results per query (> 0).
        backend: scoring backend (``"auto"``, ``"cpu"``, ``"torch"``, ...).
        impl: ``"auto"``, ``"native"`` or ``"torch"`` (see the module docstring).
        preset: ``"default"`` or ``"paper"``.
        params: :class:`DefaultSearchParams` / :class:`PaperSearchParams`, or keyword
            options of the same names (``ef=64``).
        num_threads: threads of the native implementation (None: the engine-wide
            number, :mod:`engine.threads`).
        allow: None or a :class:`engine.search.filters.RowFilter` (validated by the
            caller): the rows each query may return.

    Returns:
        ``(scores (Q, k) float32, ids (Q, k) int64, stats dict)``: unfilled slots hold
        ``-inf`` / ``-1``; the stats fields of :class:`engine.results.SearchStats`.

    Raises:
        ValueError / TypeError: bad options, a missing graph or codes, conflicting
        ``backend`` and ``impl``.
    """
    p = make_params(preset, params, **options)
    nt = threads.resolve(num_threads)
    if index.graph is None:
        raise ValueError("graph search needs a graph: call index.build_graph() first")
    if index.vectors.device != qnets.device:
        raise ValueError(f"q-nets are on {qnets.device} but the index is on {index.vectors.device}")
    mod, be_name, be = _choose(impl, backend, qnets.device)
    Q, n = qnets.num_queries, len(index)
    candidates = precision = None
    if preset == "default":
        precision = p.precision
        if precision == "auto":  # the CPU precision policy (engine.native_args) decides
            bf16 = mod is native and native.bf16_candidates(qnets.dtype, index.vectors.dtype)
            precision = "bf16" if bf16 else "exact"
        candidates = p.candidates
        if candidates == "auto":
            candidates = "codes" if getattr(index, "codes", None) is not None else "scan"
        if candidates == "codes" and getattr(index, "codes", None) is None:
            raise ValueError("candidates='codes' needs the index's codes: build them with index.build_codes() "
                             "(index.build_graph() builds both)")
    def run(qn, rf):
        mask = None if rf is None else rf.mask
        if preset == "paper":
            return mod.paper_search(index, qn, k, p, nt if be is None else be, allow=mask)
        return mod.default_search(index, qn, k, p, candidates == "codes", precision == "bf16",
                                  nt if be is None else be, allow=mask)

    exact = torch.zeros(Q, dtype=torch.bool)
    if Q == 0 or n == 0:  # nothing to search: what exact search returns
        s = torch.full((Q, k), float("-inf"), device=qnets.device)
        i = torch.full((Q, k), -1, dtype=torch.int64, device=qnets.device)
        zero = torch.zeros(Q, dtype=torch.int64)
        counters = {f: zero for f in _COUNTERS}
    elif allow is None:
        s, i, counters = run(qnets, None)
    else:
        s, i, counters, exact = _filtered(run, index, qnets, k, allow, p.filter_exact_below, be_name, nt)
    per = PerQuery(**{f: counters[f].cpu().tolist() for f in _COUNTERS}, exact=exact.tolist())
    stats = {
        "preset": preset,
        "impl": mod.NAME,
        "backend": be_name,
        "candidates": candidates,
        "precision": precision,
        "documents_scored": int(sum(per.documents_scored)),
        "steps": float(sum(per.steps)) / max(1, Q),
        "linear_rows": int(sum(per.linear_rows)),
        "coded_rows": int(sum(per.coded_rows)),
        "fallbacks": int(sum(per.fallback)),
        "per_query": per,
        "params": p,
    }
    return s, i, stats

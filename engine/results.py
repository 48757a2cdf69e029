"""What a search returns: :class:`SearchResult` (the top-k) and :class:`SearchStats`."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch


@dataclass
class SearchStats:
    """What a search reports.

    mode: ``"exact"`` or ``"graph"``. backend: the scoring backend that ran (``"cpu"``,
    ``"torch"``, ...). impl: the implementation of the search loop (``"native"``: the C++
    loop of ``engine._C``; ``"torch"``: torch ops on any device; for exact search the
    backend's own scan or ``"stream"``). seconds: wall time of the call.
    documents_scored: q-net evaluations over all queries. For graph search also: preset,
    candidates (``"codes"``, ``"scan"`` or ``None`` for the paper preset), precision (how
    the default scored its candidates: ``"exact"`` or ``"bf16"``), linear_rows (stored rows read for exact ``x . w``), coded_rows (documents whose compressed codes
    were scanned), steps (mean beam steps per query), fallbacks (queries whose q-net had a
    degenerate gradient), per_query (the counters of each query) and params (the typed
    search parameters used).
    filtered: whether an allow-list or the index's deleted rows restricted the search.
    exact: per query (a list of Q bools), whether its results are the exact top-k of the
    rows it may return: always True for exact search; for graph search True where a
    filter sent the query to exact search (see ``filter_exact_below``), False where the
    results are the graph search's approximation.
    """

    mode: str
    backend: str
    impl: str
    seconds: float = 0.0
    documents_scored: int = 0
    preset: str | None = None
    candidates: str | None = None
    precision: str | None = None
    linear_rows: int = 0
    coded_rows: int = 0
    steps: float = 0.0
    fallbacks: int = 0
    per_query: object | None = None
    params: object | None = None
    filtered: bool = False
    exact: list | None = None


@dataclass
class SearchResult:
    """Top-k of a batch of queries.

    scores: ``(Q, k)`` float32, best first. ids: ``(Q, k)`` int64 row indices into the
    index (use :meth:`Index.external_ids` for the stored ids). Slots that no document
    filled (``k`` larger than the corpus, or than what a graph search reached) hold score
    ``-inf`` and id ``-1``. ``stats``: :class:`SearchStats`.
    """

    scores: torch.Tensor
    ids: torch.Tensor
    stats: SearchStats = field(default_factory=lambda: SearchStats("exact", "", ""))

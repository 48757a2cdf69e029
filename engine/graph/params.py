"""Typed parameters and statistics of graph search (in the manner of faiss's
``SearchParametersHNSW``): one frozen dataclass per algorithm, validated on construction.

``Index.search(..., mode="graph", ef=64)`` builds them from keyword options; a
``params=DefaultSearchParams(...)`` object may be passed instead.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, fields

import numpy as np

CANDIDATES = ("auto", "codes", "scan")

# Filtered search: below this share of the index allowed for a query, the query is
# searched exactly over its allowed rows. Measured by bench/bench_filter.py on the Debian
# set (docs/search.md, "Filters"): the default preset's filtered recall@10 stays at its
# unfiltered level at every selectivity down to 0.2%, and exact search of the allowed rows
# becomes the faster one below about 2%; the paper preset takes 160-220 ms whatever the
# filter, which exact search beats below about 30% (where the paper's recall@10 is 0.62-0.66).
FILTER_EXACT_BELOW_DEFAULT = 0.02
FILTER_EXACT_BELOW_PAPER = 0.3
PRECISIONS = ("auto", "exact", "bf16")


def _int(name: str, v, lo: int = 1) -> int:
    if isinstance(v, bool) or not isinstance(v, (int, np.integer)):
        raise TypeError(f"{name} must be an int, got {type(v).__name__}")
    if not lo <= v <= 1 << 40:
        raise ValueError(f"{name} must be in [{lo}, 2^40], got {v}")
    return int(v)


def _number(name: str, v, lo: float, hi: float, lo_open: bool = False) -> float:
    if isinstance(v, bool) or not isinstance(v, (int, float, np.integer, np.floating)):
        raise TypeError(f"{name} must be a number, got {type(v).__name__}")
    v = float(v)
    if not math.isfinite(v) or v < lo or v > hi or (lo_open and v == lo):
        raise ValueError(f"{name} must be in {'(' if lo_open else '['}{lo}, {hi}], got {v}")
    return v


@dataclass(frozen=True)
class DefaultSearchParams:
    """The default graph search (see :mod:`engine.graph.default`).

    ef: the speed/recall knob: the q-net's candidate list (raised to ``k`` when smaller).
    candidates: where the linear candidates come from: ``"codes"`` (the index's compressed
        codes, then an exact re-rank), ``"scan"`` (an exact pass over every stored row) or
        ``"auto"`` (codes when the index has them).
    rerank: code estimates re-ranked exactly (default: ``rerank_factor * ef_lin`` or
        ``rerank_share * n``, whichever is larger, at least 1024 and at most n). The share
        grows the list with the corpus, as the documents whose code estimate comes near
        the top's do (at 8.8M x 768 and ef 48, 44,000 rows instead of 32,768 lifted
        recall@10 from 0.944 to 0.956 for a few ms; see bench/RESULTS.md).
    The defaults were chosen on the measurements of bench/RESULTS.md ("Graph search at
    scale"); ``ef`` alone moves along the latency-recall curve.
    residual_rows: with codes that have a second level (``ResidualBits``), the best
        first-level estimates estimated again with both levels, of which the best
        ``rerank`` are re-ranked exactly (default: ``residual_factor`` times the rerank
        default above; the exact re-rank then defaults to ``residual_rerank`` times it).
        0 (or any value not above ``rerank``): the first level alone. Ignored by codes
        without a second level.
    lin_factor: linear candidates scored by the q-net, ``ef_lin = lin_factor * ef``.
    width: documents expanded per beam step; max_steps: beam steps on the neighbour graph
        per pass. 0 by default: with ``lin_factor * ef`` linear candidates, the second
        level of the codes and the second pass, the steps' extra documents bought no
        recall@10 at 1M and 8.8M (at 1M, ef 32 / 48 / 64: the same recall@10 with 2 steps,
        for 2-3 ms more) and cost the Debian set more than a larger ``ef`` does; steps still
        add a little recall@100 (bench/RESULTS.md, "Graph search at scale").
    passes: 2 linearises again at the best document found and continues from the first
        list under the new direction; 1 stops after the first pass.
    shortlist: rows of the first linear list kept for the second pass, as a share of n
        (at least ``8 * ef_lin``).
    num_samples: documents scored when a q-net has no usable direction at all.
    filter_exact_below: with an allow-list or deleted rows, a query whose allowed rows are
        fewer than this share of the index (0..1) is searched exactly over them instead:
        a selective filter leaves the graph walk too few allowed documents to find the
        top-k (docs/search.md has the measurement behind the default); 0 never, 1 always.
    precision: how candidates are scored by the q-net during the search: ``"exact"``
        (float32 arithmetic on the stored values), ``"bf16"`` (weights and activations
        rounded to bfloat16, about twice the throughput where the CPU has a bf16 dot product;
        the final list is then scored again in float32, so every returned score is exact and
        only the choice of candidates sees the rounding) or ``"auto"``: the CPU precision
        policy (``engine.native_args``: ``HYPENCODER_CPU_PRECISION``) decides, bf16 under
        its ``auto`` when the vectors or q-nets are bf16 or float16 and the CPU has a bf16
        dot product, else exact.
    """

    ef: int = 16
    candidates: str = "auto"
    rerank: int | None = None
    rerank_factor: float = 32.0
    rerank_share: float = 0.005
    residual_rows: int | None = None
    residual_factor: float = 2.0
    residual_rerank: float = 0.667
    lin_factor: float = 12.0
    width: int = 2
    max_steps: int = 0
    passes: int = 2
    shortlist: float = 0.001
    num_samples: int = 1024
    precision: str = "auto"
    filter_exact_below: float = FILTER_EXACT_BELOW_DEFAULT

    def __post_init__(self):
        _int("ef", self.ef)
        if self.candidates not in CANDIDATES:
            raise ValueError(f"candidates must be one of {CANDIDATES}, got {self.candidates!r}")
        if self.rerank is not None:
            _int("rerank", self.rerank)
        _number("rerank_factor", self.rerank_factor, 0.0, 1e6, lo_open=True)
        _number("rerank_share", self.rerank_share, 0.0, 1.0)
        if self.residual_rows is not None:
            _int("residual_rows", self.residual_rows, 0)
        _number("residual_factor", self.residual_factor, 0.0, 1e6, lo_open=True)
        _number("residual_rerank", self.residual_rerank, 0.0, 1.0, lo_open=True)
        _number("lin_factor", self.lin_factor, 0.0, 1e6, lo_open=True)
        _int("width", self.width)
        _int("max_steps", self.max_steps, 0)
        if _int("passes", self.passes) > 2:
            raise ValueError(f"passes must be 1 or 2, got {self.passes}")
        _number("shortlist", self.shortlist, 0.0, 1.0)
        _int("num_samples", self.num_samples)
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {PRECISIONS}, got {self.precision!r}")
        _number("filter_exact_below", self.filter_exact_below, 0.0, 1.0)

    def ef_lin(self) -> int:
        return max(1, int(math.ceil(self.lin_factor * self.ef)))

    def _first_level(self, n: int) -> int:
        return max(1024, int(self.rerank_factor * self.ef_lin()), int(math.ceil(self.rerank_share * n)))

    def rerank_rows(self, n: int, keep: int, residual: bool = False) -> int:
        """Rows re-ranked exactly (``residual``: the codes have a second level)."""
        if self.rerank is not None:
            r = self.rerank
        elif residual:
            r = int(math.ceil(self.residual_rerank * self._first_level(n)))
        else:
            r = self._first_level(n)
        return max(1, min(n, max(r, keep)))

    def residual_rows_(self, n: int, keep: int) -> int:
        """First-level estimates estimated again with the second level (0: none)."""
        r = self.residual_rows if self.residual_rows is not None else int(self.residual_factor * self._first_level(n))
        return max(0, min(n, r))

    def shortlist_rows(self, n: int) -> int:
        return max(1, min(n, max(int(math.ceil(self.shortlist * n)), 8 * self.ef_lin())))


@dataclass(frozen=True)
class PaperSearchParams:
    """The paper's algorithm (``preset="paper"``), with the official code's defaults.

    filter_exact_below: as for :class:`DefaultSearchParams` (its own measured default)."""

    num_entry_points: int = 10_000
    ncandidates: int = 50
    max_iter: int = 16
    early_stop: bool = True
    filter_exact_below: float = FILTER_EXACT_BELOW_PAPER

    def __post_init__(self):
        _int("num_entry_points", self.num_entry_points)
        _int("ncandidates", self.ncandidates)
        _int("max_iter", self.max_iter)
        if not isinstance(self.early_stop, bool):
            raise TypeError(f"early_stop must be a bool, got {type(self.early_stop).__name__}")
        _number("filter_exact_below", self.filter_exact_below, 0.0, 1.0)


PRESETS = {"default": DefaultSearchParams, "paper": PaperSearchParams}


def make_params(preset: str, params=None, **options):
    """The parameters of ``preset`` from a params object or keyword options (not both)."""
    if preset not in PRESETS:
        raise ValueError(f"preset must be one of {tuple(PRESETS)}, got {preset!r}")
    cls = PRESETS[preset]
    if params is not None:
        if options:
            raise TypeError("pass either params= or keyword options, not both")
        if not isinstance(params, cls):
            raise TypeError(f"params for preset {preset!r} must be {cls.__name__}, got {type(params).__name__}")
        return params
    known = {f.name for f in fields(cls)}
    unknown = sorted(set(options) - known)
    if unknown:
        raise TypeError(f"unknown options for preset {preset!r}: {unknown}; valid: {sorted(known)}")
    return cls(**options)


@dataclass
class PerQuery:
    """Per-query counters of a graph search (lists of Q ints)."""

    documents_scored: list = field(default_factory=list)
    steps: list = field(default_factory=list)
    linear_rows: list = field(default_factory=list)
    coded_rows: list = field(default_factory=list)
    fallback: list = field(default_factory=list)
    exact: list = field(default_factory=list)  # True: searched exactly over its allowed rows (a filter)

"""``ShardedSearcher``: one rank's shards of a sharded index, searched together with the
other ranks of a ``torch.distributed`` group.

A search, on every rank: (1) agree on the request: the q-nets, ``k``, mode and options of
rank ``src`` are broadcast, or, with ``src=None``, every rank gives its own and the ranks
check that they are the same; (2) search the local shards with the local engine (exact or
graph) and merge them; (3) one ``all_gather`` of every rank's top-k (global rows, scores
and a status word) and a merge into the global top-k with the engine's tie rule (score,
then lower global row). A rank whose search failed sets its status and every rank
raises, naming it; a rank that died or stalls makes the collective fail on the others
within the timeout (see :mod:`.comm`). Every rank returns the same complete result or
raises: a partial result is never returned.

Cost per search: the local search of the largest shard, plus one all_gather of
``16 * Q * k'`` bytes per rank (``k' = min(k, rows of the largest rank)``), plus, with
``src`` set, a broadcast of the q-nets.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass, field

import numpy as np
import torch

from ..devices import as_device
from ..qnet import QNet
from ..qnet_config import QNetConfig
from ..results import SearchResult, SearchStats
from .comm import Comm, ShardedSearchError
from .manifest import ShardCheckError, ShardedManifest, open_shard, read_sharded_manifest
from .merge import merge_topk

_HEADER = 6  # status, documents_scored, linear_rows, coded_rows, fallbacks, seconds (float64 bits)
_DTYPE_NAMES = {torch.float32: "float32", torch.float16: "float16", torch.bfloat16: "bfloat16"}


@dataclass
class ShardedSearchStats(SearchStats):
    """:class:`engine.results.SearchStats` of a sharded search. Counters (documents_scored,
    linear_rows, coded_rows, fallbacks) are sums over every rank; backend, impl, preset,
    candidates and params are this rank's. Also: ranks and shards; shard_seconds: each
    rank's search of its own shards; request_seconds: agreeing on the request (with the
    q-net broadcast); gather_seconds: this rank's all_gather of the results (it includes
    waiting for the slowest rank); merge_seconds: the global merge."""

    ranks: int = 1
    shards: int = 1
    shard_seconds: list = field(default_factory=list)
    request_seconds: float = 0.0
    gather_seconds: float = 0.0
    merge_seconds: float = 0.0


def shards_of_rank(num_shards: int, size: int, rank: int) -> range:
    """The shards rank ``rank`` of ``size`` serves: a contiguous block, every shard served
    once (a rank serves none when there are fewer shards than ranks)."""
    return range(rank * num_shards // size, (rank + 1) * num_shards // size)


def _fingerprint(qnets: QNet) -> list[int]:
    """Integers that differ for different q-nets (shapes aside) with near certainty: a
    position-weighted sum of the bits of up to 4,096 values of each tensor. Exact integer
    arithmetic, so equal q-nets give equal sums on every rank."""
    out = []
    for t in qnets.weights + qnets.biases:
        flat = t.reshape(-1)
        sample = flat[:: max(1, flat.numel() // 4096)]
        bits = sample.view(torch.int32 if sample.element_size() == 4 else torch.int16).to(torch.int64)
        out.append(int((bits * torch.arange(1, bits.numel() + 1, device=bits.device)).sum()))
    return out


class ShardedSearcher:
    """This rank's shards of a sharded index (see :mod:`engine.distributed`).

    Open with :meth:`open` on every rank; :meth:`search` and :meth:`external_ids` are
    collectives: every rank of the group calls them, in the same order. Without
    torch.distributed initialised (and no group), one process serves every shard.

    Attributes: ``manifest`` (:class:`ShardedManifest`), ``rank`` and ``size`` (in the
    group), ``local`` (shard number -> :class:`engine.Index`), ``device`` (where the
    local shards' vectors are and results are returned).
    """

    def __init__(self, manifest: ShardedManifest, comm: Comm, local: dict, device: torch.device):
        self.manifest, self.comm, self.local, self.device = manifest, comm, local, device
        shards = manifest.shards
        self._rank_rows = [sum(shards[i].count for i in shards_of_rank(len(shards), comm.size, r))
                           for r in range(comm.size)]

    @property
    def rank(self) -> int:
        return self.comm.rank

    @property
    def size(self) -> int:
        return self.comm.size

    def __len__(self) -> int:
        return self.manifest.count

    @property
    def dim(self) -> int:
        return self.manifest.dim

    def __repr__(self) -> str:
        return (f"ShardedSearcher(n={self.manifest.count}, dim={self.dim}, shards={len(self.manifest.shards)}, "
                f"rank {self.rank} of {self.size} serving shards {sorted(self.local)})")

    # ------------------------------------------------------------------ opening
    @classmethod
    def open(cls, path, *, group=None, device=None, verify: bool = False, populate: bool = False,
             timeout: float | None = None) -> "ShardedSearcher":
        """Open the sharded index at ``path`` on every rank of ``group`` (a collective).

        Each rank opens its shards (:func:`shards_of_rank`, memory-mapped) and checks them
        against the manifest (:func:`engine.distributed.manifest.open_shard`; ``verify``
        also checks every file's SHA-256; ``populate`` maps every page at once, as a
        service that wants no page faults in its searches does); the ranks check that
        they read the same manifest. ``device``: where the local shards' vectors go
        (default: stay memory-mapped on the CPU). ``timeout``: seconds any one collective
        of this searcher may take (None: the group's timeout).

        Raises :class:`ShardCheckError` (a ``ValueError``) on every rank when any rank's
        shard fails its checks (naming the rank, the shard and why), and
        :class:`ShardedSearchError` when a rank is unreachable.
        """
        comm = Comm(group, timeout)
        error, m, local, dev = None, None, {}, torch.device("cpu")
        try:
            dev = as_device(device) if device is not None else dev
            m = read_sharded_manifest(path)
            for i in shards_of_rank(len(m.shards), comm.size, comm.rank):
                ix = open_shard(m, i, verify=verify, populate=populate)
                local[i] = ix if ix.device == dev else ix.to(dev)
        except Exception as e:  # reported to every rank below
            error = e
        digests = comm.check_all(error, "opening the shards", ShardCheckError, m.sha256 if m else None)
        if len(set(digests)) > 1:
            raise ShardCheckError("the ranks opened different sharded manifests: " + ", ".join(
                f"rank {r}: {d[:16]}..." for r, d in enumerate(digests)))
        return cls(m, comm, local, dev)

    def check_all(self, error: BaseException | None, what: str) -> None:
        """A collective: every rank states whether its part of ``what`` succeeded
        (``error`` None); if any failed, every rank raises :class:`ShardedSearchError`
        naming the ranks and why. For work a program does on some ranks only (reading
        the q-nets on rank 0) before a search, so that a failure there cannot leave
        the other ranks waiting."""
        self.comm.check_all(error, what)

    # ------------------------------------------------------------------ the request
    def _check_options(self, mode: str, options: dict) -> dict:
        if mode == "exact":
            unknown = sorted(set(options) - {"block_size"})
            if unknown:
                raise TypeError(f"unexpected options for exact search: {unknown}")
            if options.get("block_size") is not None:
                from ..search.exact import check_block_size

                check_block_size(options["block_size"], 1)
            return dict(options)
        from ..graph.params import make_params
        from ..graph.search import IMPLS

        opts = dict(options)
        impl, preset = opts.pop("impl", "auto"), opts.pop("preset", "default")
        if impl not in IMPLS:
            raise ValueError(f"impl must be one of {IMPLS}, got {impl!r}")
        p = make_params(preset, opts.pop("params", None), **opts)
        missing = [i for i, s in enumerate(self.manifest.shards) if s.count and not s.graph]
        if missing:
            raise ValueError(f"graph search needs a graph in every non-empty shard; shards {missing} have none "
                             "(build them with `python -m engine shard ... --graph R`)")
        return {"impl": impl, "preset": preset, **dataclasses.asdict(p)}

    def _check_request(self, qnets, k, mode, backend, options) -> tuple[QNet, dict]:
        from ..index import check_search_args

        qnets, backend = check_search_args(qnets, k, mode, backend, self.dim)
        request = {"k": int(k), "mode": mode, "backend": backend, "options": self._check_options(mode, options),
                   "queries": qnets.num_queries, "dims": qnets.vector_dimensions,
                   "dtype": _DTYPE_NAMES[qnets.dtype], "config": qnets.config.to_dict()}
        return qnets, request

    def _agree(self, qnets, k, mode, backend, options, src) -> tuple[QNet, dict]:
        """The request every rank runs (a collective)."""
        comm = self.comm
        if src is None:  # every rank gives its own: they must be the same
            error, request = None, None
            try:
                qnets, request = self._check_request(qnets, k, mode, backend, options)
                request["fingerprint"] = _fingerprint(qnets)
            except Exception as e:
                error = e
            requests = comm.check_all(error, "checking the search request", ValueError, request)
            if any(r != requests[0] for r in requests):
                raise ValueError("the ranks ask for different searches (q-nets, k, mode or options); pass the same "
                                 "on every rank, or src=RANK to broadcast one rank's: " + "; ".join(
                                     f"rank {r}: {q['queries']} q-nets, k={q['k']}, mode={q['mode']}"
                                     for r, q in enumerate(requests)))
            return qnets.to(self.device), request
        if isinstance(src, bool) or not isinstance(src, int) or not 0 <= src < comm.size:
            # Every rank gets the same src, so every rank raises here.
            raise ValueError(f"src must be None or a rank in 0..{comm.size - 1}, got {src!r}")
        meta = error = None
        if comm.rank == src:
            try:
                qnets, request = self._check_request(qnets, k, mode, backend, options)
                meta = {"request": request}
            except Exception as e:
                meta = {"error": [type(e).__name__, str(e)]}
                error = e
        meta = comm.broadcast_json(meta, src, "broadcasting the search request")
        if "error" in meta:
            if comm.rank == src:
                raise error
            kind = {"TypeError": TypeError, "ValueError": ValueError}.get(meta["error"][0], ShardedSearchError)
            raise kind(f"rank {src}'s search request was refused: {meta['error'][1]}")
        request = meta["request"]
        return self._broadcast_qnets(qnets if comm.rank == src else None, request, src), request

    def _broadcast_qnets(self, qnets: QNet | None, request: dict, src: int) -> QNet:
        if self.comm.size == 1:
            return qnets.to(self.device)
        dims, Q = request["dims"], request["queries"]
        dtype = {v: k for k, v in _DTYPE_NAMES.items()}[request["dtype"]]
        shapes = [(Q, a, b) for a, b in zip(dims[:-1], dims[1:])] + [(Q, b) for b in dims[1:-1]]
        sizes = [int(np.prod(s)) for s in shapes]
        if qnets is not None:
            flat = torch.cat([t.reshape(-1) for t in qnets.weights + qnets.biases])
        else:
            flat = torch.empty(sum(sizes), dtype=dtype)
        if flat.numel():  # as bytes: every backend moves uint8
            flat = self.comm.broadcast(flat.view(torch.uint8), src, "broadcasting the q-nets").view(dtype)
        parts = [p.reshape(s) for p, s in zip(torch.split(flat, sizes), shapes)]
        L = len(dims) - 2
        out = QNet(parts[:L + 1], parts[L + 1:], QNetConfig.from_dict(request["config"]), check_finite=False)
        return out.to(self.device)

    # ------------------------------------------------------------------ search
    def _search_local(self, qnets: QNet, request: dict, width: int):
        """This rank's merged top-``width`` over its shards, and its counters."""
        Q, k = qnets.num_queries, request["k"]
        scores = torch.full((Q, width), float("-inf"), device=qnets.device)
        rows = torch.full((Q, width), -1, dtype=torch.int64, device=qnets.device)
        counters = [0, 0, 0, 0]
        stats = None
        for i, index in sorted(self.local.items()):
            if len(index) == 0:
                continue
            r = index.search(qnets, min(k, len(index)), mode=request["mode"], backend=request["backend"],
                             **request["options"])
            off = self.manifest.shards[i].offset
            scores, rows = merge_topk(torch.cat([scores, r.scores], 1),
                                      torch.cat([rows, torch.where(r.ids >= 0, r.ids + off, -1)], 1), width)
            st = r.stats
            for j, v in enumerate((st.documents_scored, st.linear_rows, st.coded_rows, st.fallbacks)):
                counters[j] += int(v)
            stats = stats or st
        return scores, rows, counters, stats

    def search(self, qnets: QNet | None, k: int | None, *, mode: str = "exact", backend: str = "auto",
               src: int | None = 0, **options) -> SearchResult:
        """Top-``k`` of the whole sharded index for each q-net: a collective.

        Args:
            qnets, k, mode, backend, options: as :meth:`engine.Index.search` (options:
                ``block_size`` for exact search; the graph search's ``impl``, ``preset``,
                ``params`` or its keyword options). With ``src`` a rank, they are taken
                from that rank and broadcast (on the others they are ignored and may be
                None); with ``src=None`` every rank passes the same (checked).

        Returns:
            On every rank the same :class:`engine.SearchResult`: ``scores`` (Q, k) float32
            and ``ids`` (Q, k) int64 *global* rows (map them with :meth:`external_ids`),
            best first, ties by the lower global row, ``-inf`` / ``-1`` in unfilled slots,
            on this rank's ``device``; ``stats``: :class:`ShardedSearchStats`.

        Raises:
            ValueError / TypeError: a refused request, on every rank.
            ShardedSearchError: a rank's search failed, or a rank died or stalled past the
            timeout, on every rank that is still running.
        """
        comm = self.comm
        t0 = time.perf_counter()
        qnets, request = self._agree(qnets, k, mode, backend, options, src)
        t1 = time.perf_counter()
        Q, k = request["queries"], request["k"]
        width = min(k, max(self._rank_rows))  # no rank holds more candidates than its rows
        error, local_stats = None, None
        try:
            scores, rows, counters, local_stats = self._search_local(qnets, request, width)
        except Exception as e:  # every rank learns of it from the status word
            error = e
            scores = torch.full((Q, width), float("-inf"))
            rows = torch.full((Q, width), -1, dtype=torch.int64)
            counters = [0, 0, 0, 0]
        t2 = time.perf_counter()
        header = torch.tensor([int(error is not None), *counters, 0], dtype=torch.int64)
        header[5:6] = torch.tensor([t2 - t1], dtype=torch.float64).view(torch.int64)
        packed = torch.cat([header, rows.reshape(-1).cpu(),
                            scores.reshape(-1).cpu().view(torch.int32).to(torch.int64)])
        parts = comm.all_gather(packed, "gathering the shards' results")
        t3 = time.perf_counter()
        parts = [p.cpu() for p in parts]
        if any(int(p[0]) for p in parts):
            comm.check_all(error, "the search of the shards")
        n = Q * width
        all_rows = torch.cat([p[_HEADER:_HEADER + n].view(Q, width) for p in parts], 1)
        all_scores = torch.cat([p[_HEADER + n:].to(torch.int32).view(torch.float32).view(Q, width)
                                for p in parts], 1)
        out_s, out_r = merge_topk(all_scores, all_rows, k)
        t4 = time.perf_counter()
        totals = torch.stack([p[1:5] for p in parts]).sum(0).tolist()
        ls = local_stats or SearchStats(request["mode"], "none", "none")
        stats = ShardedSearchStats(
            request["mode"], ls.backend, ls.impl, seconds=t4 - t0, documents_scored=totals[0],
            preset=ls.preset, candidates=ls.candidates, linear_rows=totals[1], coded_rows=totals[2],
            fallbacks=totals[3], params=ls.params, ranks=comm.size, shards=len(self.manifest.shards),
            shard_seconds=[float(p[5:6].view(torch.float64)) for p in parts], request_seconds=t1 - t0,
            gather_seconds=t3 - t2, merge_seconds=t4 - t3)
        return SearchResult(out_s.to(self.device), out_r.to(self.device), stats)

    # ------------------------------------------------------------------ ids
    def external_ids(self, ids) -> list:
        """Map global rows (any shape, -1 for padding) to the stored ids (None for
        padding; the rows themselves when the index stores no ids): a collective, each
        rank mapping the rows of its own shards. Nested lists follow the shape of ``ids``.

        Raises ``TypeError`` / ``ValueError`` (on every rank) for rows that are not
        integers or lie outside ``-1 .. count - 1``."""
        error, found = None, []
        try:
            arr = ids.detach().cpu().numpy() if isinstance(ids, torch.Tensor) else np.asarray(ids)
            if arr.dtype.kind not in "iu" and not (arr.size == 0 and arr.dtype.kind == "f"):
                raise TypeError(f"row indices must be integers, got dtype {arr.dtype}")
            flat = arr.reshape(-1).astype(np.int64)
            bad = flat[(flat < -1) | (flat >= self.manifest.count)]
            if bad.size:
                raise ValueError(f"row index {int(bad[0])} out of range for {self.manifest.count} documents")
            if self.manifest.ids == "none":
                found = [[j, int(r)] for j, r in enumerate(flat) if r >= 0]
            else:
                for i, index in self.local.items():
                    off = self.manifest.shards[i].offset
                    sel = np.flatnonzero((flat >= off) & (flat < off + len(index)))
                    found += [[int(j), x] for j, x in zip(sel, index.external_ids(flat[sel] - off))]
        except Exception as e:
            error = e
        if self.manifest.ids == "none":  # every rank maps every row itself
            if error is not None:
                raise error
            parts = [found]
        else:
            parts = self.comm.check_all(error, "mapping rows to ids", ValueError, found)
        out = np.empty(arr.shape, dtype=object)
        view = out.reshape(-1)
        for part in parts:
            for j, x in part:
                view[j] = x
        return out.tolist()

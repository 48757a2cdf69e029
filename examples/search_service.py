"""An example search service: a Hypencoder checkpoint and an index behind HTTP (FastAPI on
uvicorn).

    python examples/search_service.py --checkpoint CKPT --index IDX [--host 127.0.0.1 --port 8000]

Endpoints:

- ``POST /search`` ``{"query": "text"}`` or ``{"queries": [...]}``, optional ``"k"`` (1..1000,
  default 10) and ``"mode"`` (``"graph"``, the default when the index has a graph, or
  ``"exact"``): ``{"results": [[{"id", "score"}, ...] per query], "index_version", "took_ms"}``.
- ``GET /health``: ``{"status": "ok", "index": {...}, "model": {...}}``.
- ``GET /metrics``: the search latency histogram (cumulative counts per bucket of
  milliseconds, as Prometheus reads them), count, sum, p50 and p99 of the latest 10,000.
- ``POST /reload``: reopen the index now. The service also watches the index path and
  reopens it when a save replaces it (``Index.save`` replaces the directory atomically).

Hot swap without dropped requests: a request takes the current index once and uses it to
the end; a new version is opened and warmed up (one search) off the request path and then
swapped in by one assignment, so requests in flight finish on the old version, which is
freed when the last of them does, and requests that arrive meanwhile get the new one.

Threads: FastAPI runs these handlers on its thread pool, many requests at once; the
engine releases the GIL in its native calls, torch in its operators. Each worker thread
tokenises with its own copy of the tokenizer (a fast tokenizer is not safe to call from
two threads at once). ``--torch-threads`` (default 1) sets torch's intra-op threads: one
per request scales over concurrent requests better than several per request on a small
machine; ``--engine-threads`` sets the engine's (default: its own default).
"""

from __future__ import annotations

import argparse
import bisect
import collections
import contextlib
import copy
import os
import threading
import time
from typing import Literal

import torch
from fastapi import FastAPI, HTTPException
from pydantic import BaseModel, Field

import engine

BUCKETS_MS = (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000)


class SearchRequest(BaseModel):
    query: str | None = None
    queries: list[str] | None = Field(default=None, max_length=256)
    k: int = Field(default=10, ge=1, le=1000)
    mode: Literal["graph", "exact"] | None = None


class LatencyHistogram:
    """Cumulative counts per bucket of milliseconds, and percentiles of the latest values."""

    def __init__(self, buckets=BUCKETS_MS, keep: int = 10_000) -> None:
        self.buckets = tuple(buckets)
        self.counts = [0] * (len(self.buckets) + 1)
        self.total = 0.0
        self.recent = collections.deque(maxlen=keep)
        self.lock = threading.Lock()

    def add(self, ms: float) -> None:
        with self.lock:
            self.counts[bisect.bisect_left(self.buckets, ms)] += 1
            self.total += ms
            self.recent.append(ms)

    def snapshot(self) -> dict:
        with self.lock:
            counts, total, recent = list(self.counts), self.total, sorted(self.recent)
        cum, out = 0, {}
        for le, c in zip([*map(str, self.buckets), "+Inf"], counts):
            cum += c
            out[le] = cum

        def pct(p):
            return recent[min(len(recent) - 1, int(p * len(recent)))] if recent else None

        return {"buckets_ms": out, "count": cum, "sum_ms": total, "p50_ms": pct(0.50), "p99_ms": pct(0.99)}


class LiveIndex:
    """The index the service searches, reopened when a save replaces its directory."""

    def __init__(self, path: str, warm) -> None:
        self.path = path
        self.warm = warm  # warm(index): one search, so that its caches are built before use
        self.lock = threading.Lock()  # one reload at a time
        self.version = 0
        self.index, self.ident = None, None
        self.reload()

    def _ident(self):
        st = os.stat(self.path)
        return (st.st_dev, st.st_ino, st.st_mtime_ns)

    def reload(self) -> bool:
        """Open the index at the path if it changed (or on first use); True if swapped."""
        with self.lock:
            ident = self._ident()
            if ident == self.ident:
                return False
            index = engine.Index.load(self.path)
            self.warm(index)
            self.index, self.ident = index, ident  # one assignment: requests see old or new
            self.version += 1
            return True

    def watch(self, every: float, stop: threading.Event) -> None:
        while not stop.wait(every):
            try:
                self.reload()
            except (OSError, ValueError):  # a save in progress, or no index there now
                pass


class Encoder:
    """The model's query encoder, with a tokenizer per thread."""

    def __init__(self, model) -> None:
        self.model = model
        self.local = threading.local()

    def __call__(self, texts: list[str]) -> "engine.QNet":
        m = getattr(self.local, "model", None)
        if m is None:
            m = copy.copy(self.model)  # shares the networks (read-only at inference)
            m.tokenizer = copy.deepcopy(self.model.tokenizer)
            self.local.model = m
        return m.encode_queries(texts)


def create_app(checkpoint: str, index_path: str, *, reload_every: float = 1.0) -> FastAPI:
    model = engine.HypencoderModel.from_pretrained(checkpoint, device="cpu")
    encode = Encoder(model)
    warm_q = encode(["warm up"])

    def warm(index) -> None:
        if index.dim != model.dim:
            raise ValueError(f"the index holds {index.dim}-d vectors, the model's q-nets read {model.dim}-d")
        index.search(warm_q, 1, mode="graph" if index.graph is not None else "exact")

    live = LiveIndex(index_path, warm)
    latency = LatencyHistogram()
    stop = threading.Event()
    watcher = threading.Thread(target=live.watch, args=(reload_every, stop), daemon=True)

    @contextlib.asynccontextmanager
    async def lifespan(app):
        if reload_every > 0:
            watcher.start()
        yield
        stop.set()

    app = FastAPI(title="Hypencoder search", lifespan=lifespan)

    @app.get("/health")
    def health() -> dict:
        idx = live.index
        return {"status": "ok",
                "index": {"path": live.path, "version": live.version, "documents": len(idx), "dim": idx.dim,
                          "graph": idx.graph is not None},
                "model": {"vector_dimensions": model.vector_dimensions},
                "engine_threads": engine.get_num_threads(), "torch_threads": torch.get_num_threads()}

    @app.get("/metrics")
    def metrics() -> dict:
        return {"search_latency": latency.snapshot()}

    @app.post("/reload")
    def reload() -> dict:
        try:
            swapped = live.reload()
        except (OSError, ValueError) as e:
            raise HTTPException(status_code=503, detail=f"cannot open the index: {e}") from None
        return {"swapped": swapped, "index_version": live.version}

    @app.post("/search")
    def search(req: SearchRequest) -> dict:
        t0 = time.perf_counter()
        if (req.query is None) == (req.queries is None):
            raise HTTPException(status_code=422, detail="give either 'query' or 'queries'")
        texts = [req.query] if req.query is not None else req.queries
        if not texts:
            raise HTTPException(status_code=422, detail="'queries' is empty")
        idx, version = live.index, live.version  # this request's index, whatever happens meanwhile
        mode = req.mode or ("graph" if idx.graph is not None else "exact")
        if mode == "graph" and idx.graph is None:
            raise HTTPException(status_code=422, detail="the index has no graph: use mode 'exact'")
        try:
            r = idx.search(encode(texts), req.k, mode=mode)
        except ValueError as e:
            raise HTTPException(status_code=422, detail=str(e)) from None
        ids = idx.external_ids(r.ids)
        results = [[{"id": i, "score": float(s)} for i, s in zip(row_ids, row_s) if i is not None]
                   for row_ids, row_s in zip(ids, r.scores.tolist())]
        ms = (time.perf_counter() - t0) * 1e3
        latency.add(ms)
        return {"results": results, "index_version": version, "mode": mode, "took_ms": ms}

    return app


def main(argv=None) -> None:
    import uvicorn

    ap = argparse.ArgumentParser(description="Hypencoder search service (see the module docstring)")
    ap.add_argument("--checkpoint", required=True)
    ap.add_argument("--index", required=True)
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=8000)
    ap.add_argument("--reload-every", type=float, default=1.0, help="seconds between checks of the index path")
    ap.add_argument("--torch-threads", type=int, default=1)
    ap.add_argument("--engine-threads", type=int, default=None)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.torch_threads)
    if args.engine_threads is not None:
        engine.set_num_threads(args.engine_threads)
    app = create_app(args.checkpoint, args.index, reload_every=args.reload_every)
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning")


if __name__ == "__main__":
    main()

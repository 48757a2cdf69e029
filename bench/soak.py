"""Soak test: N searching threads for M minutes against an index that another process
keeps replacing with new versions.

- A writer process builds a new version of a synthetic index (new vectors, graph and
  codes) and saves it atomically over the same path every ``--version-seconds``.
- Searcher threads share one ``Index``: when the path names a new directory, the first
  thread to notice reopens it and swaps it in (the others keep searching the old one
  meanwhile). Each search is random: exact or graph, k in {1, 10, 100}, a batch of 1, 2, 4
  or 8 q-nets, num_threads 1, 2 or the engine default.
- A sample of the searches (``--check-every``) is checked on the index object that
  answered it: the same search again on one thread must give the same result bit for bit
  (no race, no dependence on threads); an exact result must match the torch reference
  (the same scores rank by rank, to float32 rounding); a graph result's scores must be
  the q-nets' true scores of its ids, best first, without repeats. Graph recall@k
  against exact is reported, not judged.
- A monitor samples the process's resident memory (anonymous and file-backed) every few
  seconds.

Prints errors (exceptions), wrong results, versions seen, searches, p50/p99 latency per
mode, and RSS over time; exits non-zero on any error or wrong result, or when anonymous
RSS in the last quarter of the run exceeds its level after the first quarter by more than
``--rss-growth-mb``.

    python -m bench.soak --threads 4 --minutes 2          # the CI run
    python -m bench.soak --threads 4 --minutes 10         # the long soak of bench/RESULTS.md
"""

from __future__ import annotations

import argparse
import gc
import multiprocessing
import os
import random
import shutil
import sys
import tempfile
import threading
import time

import numpy as np
import torch

import engine
from engine.backends import torch_ref


# ---------------------------------------------------------------------- the writer
def build_version(v: int, n: int, dim: int) -> "engine.Index":
    x = engine.synthetic.vectors(n, dim, seed=1000 + v)
    idx = engine.Index.from_vectors(x, ids=np.arange(n, dtype=np.int64) + v * 10_000_000)
    return idx.build_graph(16)


def writer(path: str, n: int, dim: int, every: float, stop_at: float, versions) -> None:
    torch.set_num_threads(1)
    v = 1
    while time.time() < stop_at:
        t0 = time.time()
        v += 1
        build_version(v, n, dim).save(path)
        versions.value = v
        time.sleep(max(0.0, every - (time.time() - t0)))


# ---------------------------------------------------------------------- memory
def rss_mb() -> tuple[float, float]:
    """(anonymous, file-backed) resident MiB of this process."""
    anon = file = 0.0
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("RssAnon:"):
                anon = int(line.split()[1]) / 1024
            elif line.startswith("RssFile:"):
                file = int(line.split()[1]) / 1024
    return anon, file


# ---------------------------------------------------------------------- checks
def same(a, b) -> bool:
    return torch.equal(a.ids, b.ids) and torch.equal(a.scores, b.scores)


def check(idx, q, k: int, mode: str, r) -> tuple[str | None, float | None]:
    """(what is wrong or None, graph recall@k or None) for result r of this search."""
    again = idx.search(q, k, mode=mode, num_threads=1)
    if not same(r, again):
        return f"{mode} k={k} Q={q.num_queries}: differs from the same search on one thread", None
    ref_s, ref_i = idx.search(q, k, backend="torch").scores, None
    if mode == "exact":
        if not torch.allclose(r.scores, ref_s, rtol=1e-4, atol=1e-4 * float(ref_s[torch.isfinite(ref_s)].abs().max())):
            return f"exact k={k} Q={q.num_queries}: scores differ from the torch reference", None
        return None, None
    ids = r.ids
    valid = ids >= 0
    true = torch_ref.score_gather(q.weights, q.biases, q.config, idx.vectors, ids.clamp(min=0))
    tol = 1e-4 * float(true.abs().max()) + 1e-5
    if not torch.allclose(r.scores[valid], true[valid], rtol=1e-4, atol=tol):
        return f"graph k={k}: a score is not the q-net's score of its document", None
    for row, ok in zip(ids, valid):
        got = row[ok].tolist()
        if len(set(got)) != len(got):
            return f"graph k={k}: a document listed twice", None
    if not bool((r.scores[:, :-1] >= r.scores[:, 1:]).all()):
        return f"graph k={k}: not best first", None
    ex = idx.search(q, k, num_threads=1).ids
    hit = sum(len(set(a[a >= 0].tolist()) & set(b[b >= 0].tolist())) for a, b in zip(ids, ex))
    return None, hit / max(1, int((ex >= 0).sum()))


# ---------------------------------------------------------------------- the run
def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--threads", type=int, default=4)
    ap.add_argument("--minutes", type=float, default=2.0)
    ap.add_argument("--n", type=int, default=10000, help="documents per index version")
    ap.add_argument("--dim", type=int, default=64)
    ap.add_argument("--version-seconds", type=float, default=15.0, help="a new version this often")
    ap.add_argument("--check-every", type=int, default=10, help="check one search in this many")
    ap.add_argument("--rss-growth-mb", type=float, default=64.0)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--dir", default=None, help="where the index lives (default: a temporary directory)")
    args = ap.parse_args(argv)

    work = args.dir or tempfile.mkdtemp(prefix="hypencoder-soak-")
    path = os.path.join(work, "index")
    dims = [args.dim, args.dim, args.dim, 1]
    print(f"soak: {args.threads} threads x {args.minutes} min, n={args.n} d={args.dim}, a new version every "
          f"{args.version_seconds:.0f} s; load average {os.getloadavg()[0]:.2f} on {os.cpu_count()} CPUs", flush=True)
    build_version(1, args.n, args.dim).save(path)
    start = time.time()
    stop_at = start + args.minutes * 60
    ctx = multiprocessing.get_context("spawn")
    versions = ctx.Value("i", 1)
    wp = ctx.Process(target=writer, args=(path, args.n, args.dim, args.version_seconds, stop_at, versions))
    wp.start()

    state = {"index": engine.Index.load(path), "ino": os.stat(path).st_ino}
    swap = threading.Lock()
    seen = {state["index"].external_ids(torch.tensor([0]))[0] // 10_000_000}
    lat = {"exact": [], "graph": []}
    errors, wrong, recalls = [], [], []
    counts = {"searches": 0, "checked": 0, "reopened": 0}
    rss = []
    lock = threading.Lock()
    done = threading.Event()

    def current():
        try:
            ino = os.stat(path).st_ino
        except OSError:
            return state["index"]
        if ino != state["ino"]:
            with swap:
                if ino != state["ino"]:
                    idx = engine.Index.load(path)
                    state["index"], state["ino"] = idx, ino
                    with lock:
                        counts["reopened"] += 1
                        seen.add(idx.external_ids(torch.tensor([0]))[0] // 10_000_000)
        return state["index"]

    def searcher(t: int) -> None:
        rng = random.Random(args.seed * 1000 + t)
        i = 0
        while time.time() < stop_at:
            i += 1
            try:
                idx = current()
                Q = rng.choice([1, 1, 2, 4, 8])
                q = engine.synthetic.qnets(Q, dims, seed=rng.randrange(1 << 30), corpus_seed=1000)
                k = rng.choice([1, 10, 100])
                mode = rng.choice(["exact", "graph"])
                nt = rng.choice([1, 2, None])
                t0 = time.perf_counter()
                r = idx.search(q, k, mode=mode, num_threads=nt)
                dt = time.perf_counter() - t0
                with lock:
                    lat[mode].append(dt / Q)
                    counts["searches"] += 1
                if i % args.check_every == 0:
                    bad, rec = check(idx, q, k, mode, r)
                    with lock:
                        counts["checked"] += 1
                        if bad:
                            wrong.append(bad)
                        if rec is not None:
                            recalls.append(rec)
            except Exception as e:
                with lock:
                    errors.append(f"{type(e).__name__}: {e}")

    def monitor() -> None:
        while not done.is_set():
            rss.append((time.time() - start, *rss_mb()))
            done.wait(5.0)

    mon = threading.Thread(target=monitor, daemon=True)
    mon.start()
    ts = [threading.Thread(target=searcher, args=(t,)) for t in range(args.threads)]
    for th in ts:
        th.start()
    for th in ts:
        th.join()
    done.set()
    mon.join()
    wp.join(timeout=120)
    if wp.exitcode != 0:
        errors.append(f"the writer process exited with {wp.exitcode}")
    # Index versions still mapped once the searchers are done: one (the current) unless
    # replaced versions are kept alive.
    gc.collect()
    alive = {os.path.dirname(line.split(None, 5)[5].replace(" (deleted)", "").strip())
             for line in open("/proc/self/maps") if work in line and len(line.split(None, 5)) == 6}
    if args.dir is None:
        shutil.rmtree(work, ignore_errors=True)

    # ------------------------------------------------------------------ report
    elapsed = time.time() - start
    print(f"\n{counts['searches']} searches in {elapsed:.0f} s, {counts['checked']} checked; "
          f"{versions.value} versions written, {len(seen)} searched, {counts['reopened']} reopens; "
          f"versions still mapped at the end: {len(alive)}")
    print(f"{'mode':6s} {'searches':>9s} {'p50 ms/query':>13s} {'p99 ms/query':>13s}")
    for mode, xs in lat.items():
        if xs:
            a = np.array(xs) * 1e3
            print(f"{mode:6s} {len(xs):9d} {np.percentile(a, 50):13.2f} {np.percentile(a, 99):13.2f}")
    if recalls:
        print(f"graph recall@k against exact (checked searches): mean {np.mean(recalls):.3f}")
    print(f"\nRSS over time (MiB)\n{'t (s)':>6s} {'anon':>8s} {'file':>8s}")
    for t, anon, file in rss:
        print(f"{t:6.0f} {anon:8.1f} {file:8.1f}")
    q1 = [a for t, a, _ in rss if t <= elapsed / 4]
    q4 = [a for t, a, _ in rss if t >= 3 * elapsed / 4]
    growth = (np.mean(q4) - max(q1)) if q1 and q4 else 0.0
    print(f"anonymous RSS, last quarter's mean minus first quarter's peak: {growth:+.1f} MiB "
          f"(limit {args.rss_growth_mb:.0f})")
    print(f"errors: {len(errors)}, wrong results: {len(wrong)}; load average {os.getloadavg()[0]:.2f}")
    for e in (errors + wrong)[:20]:
        print("  ", e)
    ok = not errors and not wrong and growth <= args.rss_growth_mb and counts["searches"] > 0
    print("soak: PASS" if ok else "soak: FAIL")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())

"""Latency under load: the Debian set's default graph search at batch 1, on a quiet
machine and beside one CPU-bound neighbour process, in the same run.

For each engine thread count (1, and the engine's default), the 64 stored dev q-nets are
searched one at a time (k = 10, the default preset), ``--rounds`` times each, first with
nothing else of ours running, then while a neighbour process spins on one core. Prints
p50 / p99 / max per case, the machine's load average at each phase (other processes on
the machine count: rerun when it is high), and the target: p99 beside the neighbour at
most twice the quiet p50 of one thread.

The index (``engine.Index.from_vectors(docs).build_graph(32)``, about a minute or two) is
built once and cached outside the repository (``--index-cache``). The documents are
indexed without external ids: doc_ids.txt repeats some package names.

    python -m bench.bench_load [--rounds 5] [--index-cache DIR] [--autogroup-nice -10]

On a machine shared with other users' jobs, ``--autogroup-nice -10`` runs the measurement
(and its neighbour) in a session of its own whose scheduler group has that nice value
(Linux; root for a negative one): the scheduler shares the CPUs between such groups first,
so the other jobs then take a small share for the minute the measurement lasts.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time

import numpy as np

import engine
from engine.backends import cpu as cpu_backend

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT_DATA = os.path.join(REPO, "..", "shared", "data", "debian-minilm")
DEFAULT_CACHE = os.path.expanduser("~/.cache/hypencoder-engine/debian-graph32")


def in_own_autogroup(nice: int | None, module: str) -> int | None:
    """Reruns ``python -m module`` with this process's arguments in a new session whose
    autogroup has ``nice``, and returns its exit code; None when ``nice`` is None or this
    already is that child."""
    if nice is None or os.environ.get("_HYPENCODER_AUTOGROUP") == str(nice):
        return None

    def enter():
        with open("/proc/self/autogroup", "w") as f:
            f.write(str(nice))

    env = dict(os.environ, _HYPENCODER_AUTOGROUP=str(nice))
    return subprocess.run([sys.executable, "-m", module, *sys.argv[1:]], env=env, cwd=REPO, start_new_session=True,
                          preexec_fn=enter).returncode


def debian_index(data: str, cache: str) -> "engine.Index":
    """The cached Debian-set index with graph (degree 32) and codes, built if missing."""
    try:
        idx = engine.Index.load(cache)
        if idx.graph is not None and idx.codes is not None:
            return idx
    except (OSError, ValueError):
        pass
    print(f"building the Debian index into {cache} (once)...", flush=True)
    v = np.load(os.path.join(data, "docs.f16.npy"))
    t0 = time.time()
    idx = engine.Index.from_vectors(v).build_graph(32)
    print(f"built in {time.time() - t0:.0f} s", flush=True)
    os.makedirs(os.path.dirname(cache), exist_ok=True)
    idx.save(cache)
    return engine.Index.load(cache)


def latencies(idx, q, rounds: int, threads: int) -> np.ndarray:
    """Milliseconds of every batch-1 default graph search, q-nets in turn."""
    idx.search(q[0], 10, mode="graph", num_threads=threads)  # warm: caches, pool
    out = []
    for _ in range(rounds):
        for j in range(q.num_queries):
            qj = q[j]
            t0 = time.perf_counter()
            idx.search(qj, 10, mode="graph", num_threads=threads)
            out.append(time.perf_counter() - t0)
    return np.array(out) * 1e3


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=5, help="passes over the 64 q-nets per case")
    ap.add_argument("--data", default=DEFAULT_DATA)
    ap.add_argument("--index-cache", default=DEFAULT_CACHE)
    ap.add_argument("--threads", type=int, nargs="*", default=None,
                    help="engine thread counts to measure (default: 1 and the engine's default)")
    ap.add_argument("--autogroup-nice", type=int, default=None, help="see the module docstring")
    args = ap.parse_args()
    code = in_own_autogroup(args.autogroup_nice, "bench.bench_load")
    if code is not None:
        sys.exit(code)

    idx = debian_index(args.data, args.index_cache)
    q = engine.QNet.load(os.path.join(args.data, "qnets.dev64.safetensors"))
    counts = args.threads or sorted({1, engine.get_num_threads()})
    rows = {}
    loads = {}
    for cond in ("quiet", "neighbour"):
        nb = None
        if cond == "neighbour":
            nb = subprocess.Popen([sys.executable, "-c", "while True: pass"])
            time.sleep(0.5)
        try:
            loads[cond] = [os.getloadavg()[0]]
            for nt in counts:
                rows[(cond, nt)] = latencies(idx, q, args.rounds, nt)
            loads[cond].append(os.getloadavg()[0])
        finally:
            if nb is not None:
                nb.kill()
                nb.wait()
    group = f", autogroup nice {args.autogroup_nice}" if args.autogroup_nice is not None else ""
    print(f"Debian set (n = {len(idx)}, d = {idx.dim}), default graph search, k = 10, batch 1, "
          f"{q.num_queries} q-nets x {args.rounds} rounds; {os.cpu_count()} CPUs, ISA "
          f"{cpu_backend.isa()}{group}")
    for cond in ("quiet", "neighbour"):
        print(f"load average during '{cond}': {loads[cond][0]:.2f} at start, {loads[cond][1]:.2f} at end")
    print(f"\n{'case':24s} {'p50 ms':>8s} {'p99 ms':>8s} {'max ms':>8s}")
    for (cond, nt), lat in rows.items():
        name = f"{cond}, {nt} thread{'s' if nt > 1 else ''}"
        print(f"{name:24s} {np.percentile(lat, 50):8.2f} {np.percentile(lat, 99):8.2f} {lat.max():8.2f}")
    base = np.percentile(rows[("quiet", 1)], 50)
    print(f"\ntarget: p99 beside the neighbour <= 2 x quiet p50 of one thread = {2 * base:.2f} ms")
    for nt in counts:
        p99 = np.percentile(rows[("neighbour", nt)], 99)
        print(f"  {nt} thread{'s' if nt > 1 else ''}: {p99:.2f} ms ({p99 / base:.2f} x): "
              f"{'met' if p99 <= 2 * base else 'NOT met'}")


if __name__ == "__main__":
    main()

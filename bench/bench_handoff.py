"""When does handing work to a helper thread pay? The measurement behind the hand-off
threshold of csrc/parallel.h (kMinPartMicros).

For each operation and size, the latency of one call on the calling thread alone against
the same call split over two threads (the threshold forced to 0, HYPENCODER_HANDOFF_US=0,
so every call is split), on a quiet machine and beside one CPU-bound neighbour process.
Operations: scoring m documents with one Debian-set q-net (d 384, two hidden layers,
prepacked: the graph search's beam step), the exact re-rank of S stored rows by x . w,
and the scan of the codes of n documents. The estimated work (the unit of the threshold)
is printed with each row.

    python -m bench.bench_handoff [--reps 200] [--autogroup-nice -10]

Needs ../shared/data/debian-minilm and an index built by bench/bench_load.py (its
--index-cache). Prints the machine's load average with the figures: rerun when high.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

import numpy as np

from bench.bench_load import DEFAULT_CACHE, DEFAULT_DATA, REPO, in_own_autogroup


def measure(index_path: str, data: str, reps: int) -> list[dict]:
    """Runs in a child with HYPENCODER_HANDOFF_US=0: every split is taken."""
    import engine
    from engine import _C
    from engine.native_args import qnet_args, to_numpy

    idx = engine.Index.load(index_path)
    q = engine.QNet.load(os.path.join(data, "qnets.dev64.safetensors"))[0]
    a = qnet_args(q.weights, q.biases, q.config)
    packed = _C.cpu_pack_qnets(**a, num_threads=1)
    v = to_numpy(idx.vectors)
    n, d = v.shape
    rng = np.random.default_rng(0)
    w = rng.standard_normal((1, d)).astype(np.float32)
    codes = idx.codes.native()
    flops = sum(2 * t.shape[1] * t.shape[2] for t in q.weights)
    rows = []

    def timed(fn):
        fn()
        lat = []
        for _ in range(reps):
            t0 = time.perf_counter()
            fn()
            lat.append(time.perf_counter() - t0)
        lat = np.array(lat) * 1e6
        return float(np.percentile(lat, 50)), float(np.percentile(lat, 99))

    for m in (32, 64, 128, 256, 512, 1024):
        ids = np.sort(rng.choice(n, m, replace=False)).astype(np.int64)[None]
        out = np.empty((1, m), np.float32)
        est = m * flops / 90e3
        for nt in (1, 2):
            p50, p99 = timed(lambda: _C.cpu_score_gather(**a, vectors=v, ids=ids, out=out, num_threads=nt,
                                                         packed=packed))
            rows.append({"op": f"score {m} docs", "est_us": est, "threads": nt, "p50": p50, "p99": p99})
    for S in (2000, 8000, 32000):
        ids = np.sort(rng.choice(n, min(S, n), replace=False)).astype(np.int64)[None]
        est = ids.size * d * v.itemsize / 16e3
        for nt in (1, 2):
            p50, p99 = timed(lambda: _C.graph_rows_topk(v, ids, w, 128, nt))
            rows.append({"op": f"rerank {ids.size} rows", "est_us": est, "threads": nt, "p50": p50, "p99": p99})
    nblocks = codes[0].shape[0]
    for frac in (0.25, 1.0):
        nb = max(1, int(nblocks * frac))
        sub = (np.ascontiguousarray(codes[0][:nb]),) + codes[1:]
        nn = min(n, nb * 32)
        est = nn * codes[0].shape[1] / 11e3
        for nt in (1, 2):
            p50, p99 = timed(lambda: _C.graph_codes_topk(sub, v[:nn], w, 2000, 500, nt))
            rows.append({"op": f"codes scan {nn} docs", "est_us": est, "threads": nt, "p50": p50, "p99": p99})
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--reps", type=int, default=200)
    ap.add_argument("--data", default=DEFAULT_DATA)
    ap.add_argument("--index-cache", default=DEFAULT_CACHE)
    ap.add_argument("--autogroup-nice", type=int, default=None, help="as bench_load.py's")
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print(json.dumps(measure(args.index_cache, args.data, args.reps)))
        return
    code = in_own_autogroup(args.autogroup_nice, "bench.bench_handoff")
    if code is not None:
        sys.exit(code)
    if not os.path.isdir(args.index_cache):
        sys.exit(f"no index at {args.index_cache}: run python -m bench.bench_load first (it builds and caches it)")
    env = dict(os.environ, HYPENCODER_HANDOFF_US="0")
    cmd = [sys.executable, "-m", "bench.bench_handoff", "--child", "--reps", str(args.reps), "--data", args.data,
           "--index-cache", args.index_cache]
    results = {}
    for cond in ("quiet", "neighbour"):
        nb = subprocess.Popen([sys.executable, "-c", "while True: pass"]) if cond == "neighbour" else None
        try:
            load = os.getloadavg()[0]
            out = subprocess.run(cmd, env=env, cwd=REPO, check=True, capture_output=True, text=True).stdout
        finally:
            if nb is not None:
                nb.kill()
                nb.wait()
        results[cond] = (load, json.loads(out.strip().splitlines()[-1]))
    group = f", autogroup nice {args.autogroup_nice}" if args.autogroup_nice is not None else ""
    print(f"load average at start: quiet {results['quiet'][0]:.2f}, neighbour {results['neighbour'][0]:.2f} "
          f"({os.cpu_count()} CPUs{group}); latencies in us")
    print(f"{'operation':26s} {'est. work':>9s} | {'quiet 1 thr':>13s} {'quiet 2 thr':>13s} | "
          f"{'neighbour 1 thr':>15s} {'neighbour 2 thr':>15s}")
    print(f"{'':26s} {'us':>9s} | {'p50/p99':>13s} {'p50/p99':>13s} | {'p50/p99':>15s} {'p50/p99':>15s}")
    q, b = results["quiet"][1], results["neighbour"][1]
    for i in range(0, len(q), 2):
        cells = [f"{r['p50']:.0f}/{r['p99']:.0f}" for r in (q[i], q[i + 1], b[i], b[i + 1])]
        print(f"{q[i]['op']:26s} {q[i]['est_us']:9.0f} | {cells[0]:>13s} {cells[1]:>13s} | "
              f"{cells[2]:>15s} {cells[3]:>15s}")


if __name__ == "__main__":
    main()

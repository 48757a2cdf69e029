"""Build (and cache under /tmp) the R = 32 graph of the synthetic 1M x 768 corpus of
bench_graph.py case (b), and report its neighbour recall against exact on 1,000 rows.

    nohup python bench/build_graph_syn1m.py > /tmp/graph_syn1m.log 2>&1 &
"""

import time

import torch

import graph_data as gd

if __name__ == "__main__":
    x, _ = gd.synthetic(1_000_000, 768, 2, 1)
    t = time.perf_counter()
    idx = gd.index_with_graph("syn1m", x, 32)
    print(f"graph ready in {time.perf_counter() - t:.0f} s: {idx.graph_params}", flush=True)
    print(f"neighbour recall@32 vs exact on 1,000 rows: {gd.graph_recall(idx, 1000):.3f}", flush=True)

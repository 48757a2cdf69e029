"""How large the second pass's shortlist must be (issue 4, ``shortlist`` option).

With ``passes=2`` the default search ranks only the first scan's top S documents by the
first linearisation ``w1`` (gradient at the corpus mean) under the second one ``w2``
(gradient at the best document of pass 1), instead of scanning the corpus again. This
prints, per ``ef`` (``ef_lin = 4 ef``) and shortlist fraction S/n:

- containment: share of the true top-``ef_lin`` by ``w2`` (full scan) inside the top S
  by ``w1``;
- recall@10 against exact search of the whole default search (``passes=2``) with that
  shortlist, next to ``shortlist=0`` (full rescan) in the same run.

    python bench/check_graph_shortlist.py --case debian --queries 16
    python bench/check_graph_shortlist.py --case syn1m --queries 8
"""

from __future__ import annotations

import argparse

import torch

from engine.graph import native
from engine.graph.beam import BEAM_DEFAULTS, corpus_mean, linearise, shortlist_size

import graph_data as gd

FRACS = (0.005, 0.01, 0.02, 0.05)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--case", choices=["debian", "syn1m"], default="debian")
    ap.add_argument("--queries", type=int, default=16)
    ap.add_argument("--efs", type=int, nargs="+", default=[16, 32, 64])
    args = ap.parse_args(argv)
    native.require()
    if args.case == "debian":
        x, q = gd.debian(64)
    else:
        x, q = gd.synthetic(1_000_000, 768, 2, args.queries)
    idx = gd.index_with_graph(args.case, x, 32)
    nq = args.queries
    q = q[:nq]
    _, truth, _ = gd.exact_truth(args.case, idx, q, 100)
    n = len(idx)
    lf = BEAM_DEFAULTS["lin_factor"]
    print(f"### shortlist check: {args.case}, n = {n:,}, {nq} queries, default shortlist "
          f"{BEAM_DEFAULTS['shortlist']}, S = max(frac * n, 8 * ef_lin)\n")
    cols = [f"S/n {f}" for f in FRACS]
    print("| ef | ef_lin | measure | shortlist=0 | " + " | ".join(cols) + " |")
    print("|---|---|---|---|" + "---|" * len(cols))
    w1 = linearise(q, corpus_mean(idx))
    s_max = max(shortlist_size(n, int(lf * max(args.efs)), f) for f in FRACS)
    l1 = native.linear_topk(idx, w1, s_max).tolist()
    for ef in args.efs:
        ef_lin = int(lf * ef)
        r1 = idx.search(q, 10, mode="graph", ef=ef, passes=1)
        w2 = linearise(q, idx.vectors[r1.ids[:, 0]].float())
        l2 = native.linear_topk(idx, w2, ef_lin).tolist()
        cont = []
        for f in FRACS:
            S = shortlist_size(n, ef_lin, f)
            cont.append(sum(len(set(a[:S]) & set(b)) for a, b in zip(l1, l2)) / (ef_lin * nq))
        print(f"| {ef} | {ef_lin} | containment | 1 | " + " | ".join(f"{c:.3f}" for c in cont) + " |")
        rec = []
        for f in (0.0,) + FRACS:
            r = idx.search(q, 10, mode="graph", ef=ef, passes=2, shortlist=f)
            rec.append(gd.recall(r.ids, truth, 10))
        print(f"| {ef} | {ef_lin} | recall@10 | " + " | ".join(f"{v:.3f}" for v in rec) + " |", flush=True)


if __name__ == "__main__":
    main()

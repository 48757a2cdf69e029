"""Do synthetic q-nets behave like trained ones? The measurements of docs/search.md
("Synthetic q-nets") on the real set, repeated on synthetic data.

For each kind of q-net: the share of the exact top-10 found in the top-M documents by the
first-order linearisation at the corpus mean (M = 100 / 300 / 1000), and the mean L2
distance between a query's exact top-10 documents relative to random pairs. Trained
q-nets (debian-minilm): 0.78 / 0.94 / 0.997 and 3.10 / 3.90 = 0.79; random Gaussian
q-nets: 0.34 / 0.55 / 0.76.

    python -m bench.check_synthetic_qnets [--queries 32]
"""

from __future__ import annotations

import argparse
import time

import torch

import engine
from bench import graph_data as gd
from engine.graph.linearize import linearize


def measure(name: str, vectors: torch.Tensor, qnets: engine.QNet, ms=(100, 300, 1000)) -> dict:
    x = vectors.float()
    t = time.perf_counter()
    scores = engine.score(qnets, x)  # exact, (Q, n)
    top10 = scores.topk(10, dim=1).indices
    w, _ = linearize(qnets, x.mean(0))
    lin = w @ x.T
    row = {"q-nets": name}
    for m in ms:
        cand = lin.topk(m, dim=1).indices
        row[f"lin top-{m}"] = sum(len(set(a.tolist()) & set(b.tolist())) for a, b in zip(top10, cand)) / top10.numel()
    # Spread of the top-10 relative to random pairs.
    g = torch.Generator().manual_seed(0)
    pairs = torch.randint(0, len(x), (2, 4000), generator=g)
    rand = (x[pairs[0]] - x[pairs[1]]).norm(dim=1).mean().item()
    top = torch.stack([torch.cdist(x[t_], x[t_]).sum() / 90 for t_ in top10]).mean().item()
    row["top-10 spread"] = top / rand
    # How peaked the score distribution is around its top (trained: a few strong matches).
    row["score std"] = scores.std(dim=1).mean().item()
    row["sec"] = time.perf_counter() - t
    return row


def random_qnets(Q: int, dims, seed: int, wstd=0.7, bstd=3.0):
    g = torch.Generator().manual_seed(seed)
    ws = [torch.randn(Q, a, b, generator=g) * wstd for a, b in zip(dims[:-1], dims[1:])]
    bs = [torch.randn(Q, b, generator=g) * bstd for b in dims[1:-1]]
    return engine.QNet(ws, bs)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--queries", type=int, default=32)
    ap.add_argument("--n", type=int, default=58285, help="synthetic corpus size")
    args = ap.parse_args(argv)
    Q = args.queries
    torch.manual_seed(0)
    rows = []
    xr, qr = gd.debian(Q)
    rows.append(measure("trained (debian-minilm)", xr, qr))
    rows.append(measure("random Gaussian (debian docs)", xr, random_qnets(Q, [384, 384, 384, 1], 1)))
    xs = engine.synthetic.vectors(args.n, 384, seed=0)
    rows.append(measure("engine.synthetic.qnets (synthetic docs)", xs, engine.synthetic.qnets(Q, [384, 384, 384, 1], seed=1, corpus_seed=0)))
    rows.append(measure("random Gaussian (synthetic docs)", xs, random_qnets(Q, [384, 384, 384, 1], 2)))
    cols = list(rows[0])
    print("| " + " | ".join(cols) + " |")
    print("|" + "---|" * len(cols))
    for r in rows:
        print("| " + " | ".join(f"{r[c]:.3f}" if isinstance(r[c], float) else str(r[c]) for c in cols) + " |")


if __name__ == "__main__":
    main()

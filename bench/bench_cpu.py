"""Benchmark of the "cpu" backend's fused kernels against the best PyTorch implementation.

Prints one table: for L in {2, 6}, d in {384, 768}, Q in {1, 8}, dense scoring and gather
scoring (m = 512 and 4096), in bf16 (weights and vectors) and fp32: documents/s and
GFLOP/s of the cpu backend and of PyTorch in the same dtype (per-layer matmul over blocks),
the ratio, the ratio against PyTorch in fp32, and the kernel's fraction of this machine's
fp32 GEMM peak, measured in the same run with a large torch.matmul. Then it times exact
top-k search for one query over a synthetic 1M x 768 bf16 memory-mapped index.

Timings alternate between the implementations and keep the best of several repetitions,
because the development machine is shared.

    python bench/bench_cpu.py            # full table (several minutes on 2 cores)
    python bench/bench_cpu.py --quick    # a subset, small sizes
"""

from __future__ import annotations

import argparse
import os
import platform
import tempfile
import time

import numpy as np
import torch
import torch.nn.functional as F

from engine import QNet, QNetConfig
from engine.backends import cpu


def best_of(fns, reps, max_time=4.0):
    """Best wall time of each fn over `reps` interleaved repetitions (so that load from
    other processes hits all alike); stops early, after two, once max_time has passed."""
    for f in fns:
        f()  # warm up
    best = [float("inf")] * len(fns)
    t_end = time.perf_counter() + max_time
    for r in range(reps):
        for i, f in enumerate(fns):
            t = time.perf_counter()
            f()
            best[i] = min(best[i], time.perf_counter() - t)
        if r >= 1 and time.perf_counter() > t_end:
            break
    return best


def gemm_peak(dtype, size, reps):
    a = torch.randn(size, size).to(dtype)
    b = torch.randn(size, size).to(dtype)
    (t,) = best_of([lambda: torch.matmul(a, b)], reps)
    return 2 * size**3 / t / 1e9


def make_qnet(Q, d, L, dtype, seed=0):
    g = torch.Generator().manual_seed(seed)
    ws = [torch.randn(Q, d, d, generator=g) / d**0.5 for _ in range(L)] + [torch.randn(Q, d, 1, generator=g) / d**0.5]
    bs = [torch.randn(Q, d, generator=g) * 0.1 for _ in range(L)]
    return QNet([w.to(dtype) for w in ws], [b.to(dtype) for b in bs], QNetConfig())


def torch_qnet(weights, biases, config, x):
    """The q-nets on x (Q, b, d) or (b, d) in x's dtype: one (b)addmm per layer."""
    L = len(biases)
    Q = weights[0].shape[0]
    for i in range(L):
        if x.dim() == 2 and Q == 1:
            y = torch.addmm(biases[i][0], x, weights[i][0])
        else:
            xx = x if x.dim() == 3 else x.expand(Q, -1, -1)
            y = torch.baddbmm(biases[i].unsqueeze(1), xx, weights[i])
        y = torch.relu_(y)
        y = F.layer_norm(y, y.shape[-1:], eps=config.eps)
        if config.has_residual(i, L):
            y = y + x
        x = y
    if x.dim() == 2:
        x = x.unsqueeze(0).expand(Q, -1, -1)
    return torch.bmm(x, weights[L]).squeeze(-1)


def torch_dense(qn, vec, block=4096):
    out = torch.empty(qn.num_queries, vec.shape[0], dtype=torch.float32)
    for s in range(0, vec.shape[0], block):
        out[:, s : s + block] = torch_qnet(qn.weights, qn.biases, qn.config, vec[s : s + block])
    return out


def torch_gather(qn, vec, ids):
    x = vec[ids.reshape(-1)].view(ids.shape[0], ids.shape[1], -1)
    if ids.shape[0] == 1:
        x = x[0]
    return torch_qnet(qn.weights, qn.biases, qn.config, x).float()


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="a subset at small sizes")
    ap.add_argument("--threads", type=int, default=None, help="threads (default torch.get_num_threads())")
    ap.add_argument("--reps", type=int, default=None)
    ap.add_argument("--exact-n", type=int, default=None, help="documents of the exact-search index")
    ap.add_argument("--exact-layers", type=int, nargs="+", default=[2], help="q-net depths for exact search")
    ap.add_argument("--markdown", action="store_true", help="print the table as markdown")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    nt = torch.get_num_threads()
    reps = args.reps or (3 if args.quick else 5)
    work = 0.3e9 if args.quick else 0.6e9  # FLOPs per timed call (sets n for dense)

    print(f"# machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, "
          f"torch {torch.__version__}, {nt} threads, cpu backend ISA {cpu.isa()} "
          f"(supported: {', '.join(cpu.supported_isas())})")
    peak32 = gemm_peak(torch.float32, 1536 if args.quick else 2048, reps)
    peak16 = gemm_peak(torch.bfloat16, 1024, max(2, reps // 2))
    print(f"# GEMM peak (torch.matmul, same run): fp32 {peak32:.1f} GFLOP/s, bf16 {peak16:.1f} GFLOP/s")

    Ls = (2, 6)
    ds = (384, 768)
    Qs = (1, 8)
    ms = (512, 4096)
    dtypes = (torch.bfloat16, torch.float32)
    if args.quick:
        Ls, Qs, ms = (2, 6), (1,), (512,)
    cols = ("op", "dtype", "L", "d", "Q", "n|m", "cpu docs/s", "cpu GFLOP/s", "torch docs/s",
            "torch GFLOP/s", "ratio", "vs fp32 torch", "% fp32 peak")
    rows = []
    for L in Ls:
        for d in ds:
            if args.quick and (L, d) not in ((2, 384), (6, 768)):
                continue
            for Q in Qs:
                qn32 = make_qnet(Q, d, L, torch.float32)
                fpd = qn32.flops_per_document()
                n = max(256, int(work / (Q * fpd)))
                vec32 = torch.randn(n, d)
                cases = [("dense", None)] + [("gather", m) for m in ms]
                for op, m in cases:
                    ids = None if m is None else torch.randint(0, n, (Q, m))
                    t_ref32 = None
                    for dt in dtypes:
                        qn, vec = qn32.to(dtype=dt), vec32.to(dt)
                        W, B, C = qn.weights, qn.biases, qn.config
                        if op == "dense":
                            f_cpu = lambda: cpu.score_dense(W, B, C, vec)
                            f_t = lambda: torch_dense(qn, vec)
                            f_t32 = lambda: torch_dense(qn32, vec32)
                            items = n
                        else:
                            # torch in bf16 runs at ~1 GFLOP/s on CPUs without native bf16:
                            # it is timed on the first m_t ids (its docs/s does not depend
                            # on m at these sizes) so that the table finishes.
                            m_t = m if dt == torch.float32 else max(64, min(m, int(work / (Q * fpd))))
                            ids_t = ids[:, :m_t]
                            f_cpu = lambda: cpu.score_gather(W, B, C, vec, ids)
                            f_t = lambda: torch_gather(qn, vec, ids_t)
                            f_t32 = lambda: torch_gather(qn32, vec32, ids)
                            items = m
                        fns = [f_cpu, f_t] if (dt == torch.float32 or t_ref32 is not None) else [f_cpu, f_t, f_t32]
                        ts = best_of(fns, reps)
                        if op == "gather" and dt != torch.float32:
                            ts[1] *= m / m_t  # per-document time of the truncated run
                        if len(ts) == 3:
                            t_ref32 = ts[2]
                        if dt == torch.float32:
                            t_ref32 = ts[1]
                        flops = Q * items * fpd
                        rows.append((op, str(dt).replace("torch.", ""), L, d, Q, items,
                                     Q * items / ts[0], flops / ts[0] / 1e9, Q * items / ts[1],
                                     flops / ts[1] / 1e9, ts[1] / ts[0], t_ref32 / ts[0],
                                     100 * flops / ts[0] / 1e9 / peak32))
                        print_row(rows[-1], cols, header=len(rows) == 1, md=args.markdown)

    # Exact search: one query over a synthetic memory-mapped bf16 index.
    n_ex = args.exact_n or (100_000 if args.quick else 1_000_000)
    d = 768
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "index.bf16")
        mm = np.memmap(path, dtype=np.uint16, mode="w+", shape=(n_ex, d))
        chunk = 65536
        g = torch.Generator().manual_seed(0)
        for s in range(0, n_ex, chunk):
            e = min(n_ex, s + chunk)
            mm[s:e] = torch.randn(e - s, d, generator=g).bfloat16().view(torch.uint16).numpy()
        mm.flush()
        del mm
        index = np.memmap(path, dtype=np.uint16, mode="r", shape=(n_ex, d))
        print(f"\n# exact top-10 search, 1 query, memory-mapped {n_ex} x {d} bf16 index")
        for L in args.exact_layers:
            qn = make_qnet(1, d, L, torch.bfloat16)
            t0 = time.perf_counter()
            s, i = cpu.exact_topk(qn.weights, qn.biases, qn.config, index, 10)
            t = time.perf_counter() - t0
            fl = n_ex * qn.flops_per_document()
            print(f"L={L}: {t:.2f} s, {n_ex / t:,.0f} docs/s, {fl / t / 1e9:.1f} GFLOP/s "
                  f"({100 * fl / t / 1e9 / peak32:.0f}% of fp32 GEMM peak); best id {int(i[0, 0])}")
        del index


def print_row(r, cols, header, md):
    fmt = []
    for v in r:
        if isinstance(v, float):
            fmt.append(f"{v:,.0f}" if v >= 1000 else f"{v:.2f}")
        else:
            fmt.append(str(v))
    if md:
        if header:
            print("| " + " | ".join(cols) + " |")
            print("|" + "---|" * len(cols))
        print("| " + " | ".join(fmt) + " |", flush=True)
    else:
        w = [6, 8, 2, 4, 2, 6, 11, 11, 12, 13, 6, 13, 11]
        if header:
            print("  ".join(c.rjust(x) for c, x in zip(cols, w)))
        print("  ".join(c.rjust(x) for c, x in zip(fmt, w)), flush=True)


if __name__ == "__main__":
    main()

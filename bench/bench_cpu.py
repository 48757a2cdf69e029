"""Benchmark of the "cpu" backend's fused kernels against the best PyTorch implementation.

Prints, for L in {2, 6}, d in {384, 768}, Q in {1, 8}, dense scoring and gather scoring
(m = 512 and 4096), in bf16 (weights and vectors) and fp32: documents/s and GFLOP/s of the
cpu backend and of the best PyTorch implementation timed in the same run, the ratio, and
the kernel's fraction of this machine's peak, three ways: the plain fp32 GEMM peak
(torch.matmul 2048^3, best of several), the theoretical FMA peak (a register-only FMA
loop, ``cpu.fma_peak_gflops``) and, for bf16 rows, the bf16 GEMM peak (torch.matmul
2048^3 in bf16: oneDNN, AMX tiles where the CPU has them). The peaks are measured at the
start, between groups of rows and at the end; the table divides by the largest reading of
each. The cpu backend runs its default precision policy: bf16 rows take its bfloat16
kernel (AMX, AVX512-BF16) where the CPU has one, fp32 rows its exact fp32 kernel; the
header names both. ``--isa`` runs the table under another instruction set.

Dense rows score ``work / FLOPs per document`` documents (a few hundred for d = 768,
L = 6), unless ``--dense-n`` says how many; ``--targets`` uses 16,384 (at a few hundred
documents torch's bf16 GEMM does not reach its AMX rate: that measures call overhead).

PyTorch candidates per row, the best (fastest) one is the baseline:
  * ``native``: per-layer (b)addmm over blocks in the row's dtype;
  * ``fp32`` (bf16 rows only): the weights converted to fp32 once, outside the timing (as
    the cpu backend's packed weights are cached), the documents converted per call, then
    MKL fp32; torch's own bf16 matmul runs at ~1 GFLOP/s on CPUs without native bf16, so
    this is the best torch can do there. On such CPUs (bf16 GEMM peak under half the fp32
    one) ``native`` bf16 is timed on a prefix of the documents (its docs/s does not depend
    on n at these sizes) so that the table finishes; elsewhere on all of them.
The cpu backend is timed warm (its packed-weight cache holds the q-net, as in graph
search or any repeated scoring); the ``cold`` lines time a first call with a new q-net
(the cache cleared before each call, so packing is included).

Then a single-thread section (``--single``, on by default): the acceptance shapes timed
with one thread and ``time.thread_time`` (CPU time of this thread only), so that load from
other processes on the machine hurts less than in the wall-clock two-thread table, with
single-thread GEMM and FMA peaks measured the same way. Then exact top-k search for one
query over a synthetic 1M x 768 bf16 memory-mapped index.

Timings alternate between the implementations (interleaved repetitions) and keep the best
of each, because the development machine is shared.

    python bench/bench_cpu.py --markdown   # full table (several minutes on 2 cores)
    python bench/bench_cpu.py --quick      # a subset, small sizes
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


def cpu_model() -> str:
    """The CPU's model name, family and model (Linux), else what platform knows."""
    info = {}
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                k, _, v = line.partition(":")
                info.setdefault(k.strip(), v.strip())
    except OSError:
        pass
    if "model name" in info:
        return f"{info['model name']} (family {info.get('cpu family', '?')}, model {info.get('model', '?')})"
    return platform.processor() or platform.machine()


def best_of(fns, reps, max_time=4.0, clock=time.perf_counter):
    """Best time of each fn over `reps` interleaved repetitions (so that load from other
    processes hits all alike); stops early, after two, once max_time has passed."""
    for f in fns:
        f()  # warm up
    best = [float("inf")] * len(fns)
    t_end = time.perf_counter() + max_time
    for r in range(reps):
        for i, f in enumerate(fns):
            t = clock()
            f()
            best[i] = min(best[i], clock() - t)
        if r >= 1 and time.perf_counter() > t_end:
            break
    return best


class Peaks:
    """Largest GEMM and FMA peak readings so far (load from other processes only lowers a
    reading, so the largest is the closest to the machine's)."""

    def __init__(self, gemm_size, reps, clock=time.perf_counter, threads=None):
        self.a = torch.randn(gemm_size, gemm_size)
        self.b = torch.randn(gemm_size, gemm_size)
        self.a16, self.b16 = self.a.bfloat16(), self.b.bfloat16()
        self.reps, self.clock, self.threads = reps, clock, threads
        self.gemm = self.fma = self.gemm_bf16 = 0.0

    def measure(self):
        n = self.a.shape[0]
        (t, t16) = best_of([lambda: torch.matmul(self.a, self.b), lambda: torch.matmul(self.a16, self.b16)],
                           self.reps, clock=self.clock)
        self.gemm = max(self.gemm, 2 * n**3 / t / 1e9)
        self.gemm_bf16 = max(self.gemm_bf16, 2 * n**3 / t16 / 1e9)
        self.fma = max(self.fma, cpu.fma_peak_gflops(self.threads, seconds=0.6))
        return self


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


def torch_dense_f32(qn32, vec, block=4096):
    """Dense scores with fp32 weights (converted beforehand) from documents of any dtype."""
    out = torch.empty(qn32.num_queries, vec.shape[0], dtype=torch.float32)
    for s in range(0, vec.shape[0], block):
        out[:, s : s + block] = torch_qnet(qn32.weights, qn32.biases, qn32.config, vec[s : s + block].float())
    return out


def torch_gather_f32(qn32, vec, ids):
    x = vec[ids.reshape(-1)].float().view(ids.shape[0], ids.shape[1], -1)
    if ids.shape[0] == 1:
        x = x[0]
    return torch_qnet(qn32.weights, qn32.biases, qn32.config, x)


def fmt_row(r):
    out = []
    for v in r:
        if isinstance(v, float):
            out.append(f"{v:,.0f}" if v >= 1000 else f"{v:.2f}")
        else:
            out.append(str(v))
    return out


def time_row(op, dt, qn, qn32_conv, vec, ids, items, reps, work, clock=time.perf_counter, nt=None, max_time=6.0,
             slow_bf16=True):
    """(cpu time, cold cpu time or None, best torch time, name of the best torch variant)
    for one row; with ``slow_bf16`` torch native bf16 is timed on a prefix of the
    documents (see the module docstring) and scaled."""
    W, B, C = qn.weights, qn.biases, qn.config
    kw = {} if nt is None else {"num_threads": nt}
    Q = qn.num_queries
    fpd = qn.flops_per_document()
    if op == "dense":
        f_cpu = lambda: cpu.score_dense(W, B, C, vec, **kw)
        n_t = items if dt == torch.float32 or not slow_bf16 else max(64, min(items, int(work / 8 / (Q * fpd))))
        vec_t = vec[:n_t]
        f_nat = lambda: torch_dense(qn, vec_t)
        f_f32 = lambda: torch_dense_f32(qn32_conv, vec)
    else:
        n_t = items if dt == torch.float32 or not slow_bf16 else max(64, min(items, int(work / 8 / (Q * fpd))))
        ids_t = ids[:, :n_t]
        f_cpu = lambda: cpu.score_gather(W, B, C, vec, ids, **kw)
        f_nat = lambda: torch_gather(qn, vec, ids_t)
        f_f32 = lambda: torch_gather_f32(qn32_conv, vec, ids)

    def f_cold():
        cpu.clear_pack_cache()
        f_cpu()

    fns = [f_cpu, f_nat] + ([f_f32] if dt != torch.float32 else [])
    ts = best_of(fns, reps, clock=clock, max_time=max_time)
    ts[1] *= items / n_t
    names = ["native", "fp32"]
    j = min(range(1, len(ts)), key=lambda i: ts[i])
    return ts[0], ts[j], names[j - 1], f_cold


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="a subset at small sizes")
    ap.add_argument("--threads", type=int, default=None, help="threads (default torch.get_num_threads())")
    ap.add_argument("--reps", type=int, default=None)
    ap.add_argument("--exact-n", type=int, default=None, help="documents of the exact-search index (0: skip)")
    ap.add_argument("--exact-layers", type=int, nargs="+", default=[2], help="q-net depths for exact search")
    ap.add_argument("--no-single", action="store_true", help="skip the single-thread section")
    ap.add_argument("--targets", action="store_true",
                    help="only the acceptance rows (gather m=512 d=384 L=2 Q=1; dense d=768 L=6 Q=1 and Q=8), "
                         "each with 25x the repetitions over up to 30 s, peaks re-measured after every row")
    ap.add_argument("--markdown", action="store_true", help="print the table as markdown")
    ap.add_argument("--dense-n", type=int, default=None,
                    help="documents of the dense rows (default: from the work per call; 16384 with --targets)")
    ap.add_argument("--isa", default=None, help="the cpu backend's instruction set (default: automatic)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.isa:
        cpu.set_isa(args.isa)
    if args.targets and args.dense_n is None:
        args.dense_n = 16384
    nt = torch.get_num_threads()
    reps = args.reps or (3 if args.quick else 8)
    work = 0.3e9 if args.quick else 0.6e9  # FLOPs per timed call (sets n for dense)

    print(f"# machine: {cpu_model()}, {os.cpu_count()} CPUs, "
          f"torch {torch.__version__}, {nt} threads, cpu backend ISA {cpu.isa()} "
          f"(supported: {', '.join(cpu.supported_isas())}); load average at start "
          f"{', '.join(f'{x:.1f}' for x in os.getloadavg())}")
    print(f"# cpu backend kernels (precision {cpu.precision()}): fp32 rows {cpu.kernel_name(False)}, bf16 rows "
          f"{cpu.kernel_name(cpu.uses_bf16(torch.bfloat16, torch.bfloat16))}; amx: {cpu.isa_status('amx')}")
    peaks = Peaks(1536 if args.quick else 2048, max(3, reps // 2)).measure()
    print(f"# peaks at start: fp32 GEMM {peaks.gemm:.1f} GFLOP/s, FMA {peaks.fma:.1f} GFLOP/s, "
          f"bf16 GEMM {peaks.gemm_bf16:.1f} GFLOP/s", flush=True)

    Ls, ds, Qs, ms = (2, 6), (384, 768), (1, 8), (512, 4096)
    dtypes = (torch.bfloat16, torch.float32)
    if args.quick:
        Qs, ms = (1,), (512,)
    targets = (("gather", 2, 384, 1, 512), ("dense", 6, 768, 1, None), ("dense", 6, 768, 8, None))
    n_peaks = 2 + len(Ls) * len(ds)
    cols = ("op", "dtype", "L", "d", "Q", "n or m", "cpu docs/s", "cpu GFLOP/s", "torch best", "torch GFLOP/s",
            "ratio", "% GEMM peak", "% FMA peak", "% bf16 GEMM peak")
    rows, cold = [], []
    for L in Ls:
        for d in ds:
            if args.quick and (L, d) not in ((2, 384), (6, 768)):
                continue
            for Q in Qs:
                qn32 = make_qnet(Q, d, L, torch.float32)
                fpd = qn32.flops_per_document()
                n = max(256, int(work / (Q * fpd)), args.dense_n or 0)
                vec32 = torch.randn(n, d)
                for op, m in [("dense", None)] + [("gather", m) for m in ms]:
                    if args.targets and (op, L, d, Q, m) not in targets:
                        continue
                    ids = None if m is None else torch.randint(0, n, (Q, m))
                    items = n if m is None else m
                    # The acceptance rows get more repetitions, to catch quiet moments.
                    target = (op, L, d, Q, m) in targets[:2] or args.targets
                    mult, mt = (25, 30.0) if args.targets else (4, 20.0)
                    for dt in dtypes:
                        qn, vec = qn32.to(dtype=dt), vec32.to(dt)
                        t_cpu, t_t, name, f_cold = time_row(op, dt, qn, qn.to(dtype=torch.float32), vec, ids,
                                                            items, reps * (mult if target else 1), work,
                                                            max_time=mt if target else 6.0,
                                                            slow_bf16=peaks.gemm_bf16 < 0.5 * peaks.gemm)
                        flops = Q * items * fpd
                        rows.append([op, str(dt).replace("torch.", ""), L, d, Q, items, Q * items / t_cpu,
                                     flops / t_cpu / 1e9, name, flops / t_t / 1e9, t_t / t_cpu])
                        if (op, L, d, Q, m) in targets:
                            (tc,) = best_of([f_cold], max(3, reps // 2))
                            cold.append((rows[-1][:6], flops / tc / 1e9, tc, t_cpu))
                        print("  " + " ".join(fmt_row(rows[-1])), flush=True)
                        if args.targets:
                            peaks.measure()
                            n_peaks += 1
            peaks.measure()  # between groups of rows
    peaks.measure()
    print(f"\n# peaks (largest of {n_peaks} readings through the run): "
          f"fp32 GEMM {peaks.gemm:.1f} GFLOP/s, FMA {peaks.fma:.1f} GFLOP/s, bf16 GEMM {peaks.gemm_bf16:.1f} "
          f"GFLOP/s; "
          f"load average at end {', '.join(f'{x:.1f}' for x in os.getloadavg())}")
    for r in rows:
        r += [100 * r[7] / peaks.gemm, 100 * r[7] / peaks.fma, 100 * r[7] / peaks.gemm_bf16 if r[1] == "bfloat16" else ""]
    print_table(rows, cols, args.markdown)
    if cold:
        print("\n# cold calls (packed-weight cache cleared before each call: packing included)")
        for key, g, tc, tw in cold:
            print(f"{' '.join(map(str, key))}: cold {g:.1f} GFLOP/s ({tc * 1e3:.2f} ms) vs warm "
                  f"{tw * 1e3:.2f} ms")

    if not args.no_single:
        single_thread_section(args, reps, work)
    if not args.targets:
        exact_section(args, peaks)


def single_thread_section(args, reps, work):
    """The acceptance shapes on one thread, timed by this thread's CPU time."""
    prev = torch.get_num_threads()
    torch.set_num_threads(1)
    clk = time.thread_time
    try:
        peaks = Peaks(1024, max(3, reps), clock=clk, threads=1).measure()
        shapes = [("gather", 2, 384, 1, 512), ("dense", 6, 768, 1, None)]
        if not args.quick:
            shapes += [("gather", 6, 768, 1, 512), ("dense", 2, 384, 1, None)]
        cols = ("op", "dtype", "L", "d", "Q", "n or m", "cpu docs/s", "cpu GFLOP/s", "torch best", "torch GFLOP/s",
                "ratio", "% GEMM peak", "% FMA peak", "% bf16 GEMM peak")
        rows = []
        for op, L, d, Q, m in shapes:
            qn32 = make_qnet(Q, d, L, torch.float32)
            fpd = qn32.flops_per_document()
            n = max(256, int(work / 4 / (Q * fpd))) if m is None else 50_000
            vec32 = torch.randn(n, d)
            ids = None if m is None else torch.randint(0, n, (Q, m))
            items = n if m is None else m
            for dt in (torch.bfloat16, torch.float32):
                qn, vec = qn32.to(dtype=dt), vec32.to(dt)
                t_cpu, t_t, name, _ = time_row(op, dt, qn, qn.to(dtype=torch.float32), vec, ids, items,
                                               max(10, 2 * reps), work / 4, clock=clk, nt=1,
                                               slow_bf16=peaks.gemm_bf16 < 0.5 * peaks.gemm)
                flops = Q * items * fpd
                rows.append([op, str(dt).replace("torch.", ""), L, d, Q, items, Q * items / t_cpu,
                             flops / t_cpu / 1e9, name, flops / t_t / 1e9, t_t / t_cpu])
                print("  " + " ".join(fmt_row(rows[-1])), flush=True)
        peaks.measure()
        print(f"\n# single thread, time.thread_time (CPU time of the calling thread); peaks on one thread: "
              f"fp32 GEMM (1024^3) {peaks.gemm:.1f} GFLOP/s, FMA {peaks.fma:.1f} GFLOP/s, bf16 GEMM (1024^3) "
              f"{peaks.gemm_bf16:.1f} GFLOP/s")
        for r in rows:
            r += [100 * r[7] / peaks.gemm, 100 * r[7] / peaks.fma,
                  100 * r[7] / peaks.gemm_bf16 if r[1] == "bfloat16" else ""]
        print_table(rows, cols, args.markdown)
    finally:
        torch.set_num_threads(prev)


def exact_section(args, peaks):
    n_ex = args.exact_n if args.exact_n is not None else (100_000 if args.quick else 1_000_000)
    if n_ex <= 0:
        return
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
                  f"({100 * fl / t / 1e9 / peaks.gemm:.0f}% of fp32 GEMM peak, "
                  f"{100 * fl / t / 1e9 / peaks.fma:.0f}% of FMA peak); best id {int(i[0, 0])}")
        del index


def print_table(rows, cols, md):
    for i, r in enumerate(rows):
        print_row(r, cols, header=i == 0, md=md)


def print_row(r, cols, header, md):
    fmt = fmt_row(r)
    if md:
        if header:
            print("| " + " | ".join(cols) + " |")
            print("|" + "---|" * len(cols))
        print("| " + " | ".join(fmt) + " |", flush=True)
    else:
        w = [6, 8, 2, 4, 2, 6, 11, 11, 10, 13, 6, 11, 10, 16]
        if header:
            print("  ".join(c.rjust(x) for c, x in zip(cols, w)))
        print("  ".join(c.rjust(x) for c, x in zip(fmt, w)), flush=True)


if __name__ == "__main__":
    main()

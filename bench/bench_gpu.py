"""GPU benchmark of the fused q-net backends (issue 5): every figure is measured in this
run, against a baseline measured in the same run, on the device named in the output.

Tables (L = 6, d = 768, bfloat16, synthetic structured data generated on the device):
  1. the device's dense bf16 GEMM peak (torch.matmul, 8192^3), the yardstick;
  2. dense scoring TFLOP/s at 1M and 8.8M documents: torch (bmm per layer, the
     reference), triton, cuda; speed-up over the reference and share of the GEMM peak;
  3. gather throughput (m = 4,096 and 65,536 candidates per query);
  4. exact top-1000 search time per query over 8.8M documents.

    python bench/bench_gpu.py [--out DIR] [--quick]

``--quick`` shrinks the corpus (for a smoke run). Writes ``bench_gpu.md`` and
``bench_gpu.json`` to ``--out`` (default ``$OUT`` or the working directory).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from engine import backends, synthetic  # noqa: E402
from engine.backends import torch_ref  # noqa: E402
from engine.search.exact import exact_search  # noqa: E402

L, D = 6, 768
DTYPE = torch.bfloat16


def timeit(fn, repeat=3, budget_s=20.0):
    """Median seconds of ``fn`` after one warm-up; fewer repeats if one call is slow."""
    fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
        if sum(times) > budget_s:
            break
    times.sort()
    return times[len(times) // 2]


def gemm_peak_tflops():
    n = 8192
    a = torch.randn(n, n, device="cuda", dtype=DTYPE)
    b = torch.randn(n, n, device="cuda", dtype=DTYPE)
    t = timeit(lambda: torch.matmul(a, b), repeat=10)
    return 2 * n**3 / t / 1e12


def corpus(n, seed=0):
    """Structured vectors (clusters, decaying spectrum, shared mean: engine.synthetic's
    model) drawn on the device."""
    return synthetic.vectors(n, D, seed=seed, dtype=DTYPE, device="cuda")


def run_backend(name):
    ok, why = backends.availability(name)
    if not ok:
        return None, why
    try:
        return backends.get_backend(name, torch.device("cuda")), "ok"
    except RuntimeError as e:
        return None, str(e)


def md_table(headers, rows):
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(str(c) for c in r) + " |" for r in rows]
    return "\n".join(lines)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default=os.environ.get("OUT", "."))
    ap.add_argument("--quick", action="store_true", help="small corpus: a smoke run")
    args = ap.parse_args()
    if not torch.cuda.is_available():
        print("bench_gpu: no CUDA device; nothing measured")
        return 2
    os.makedirs(args.out, exist_ok=True)
    dev_name = torch.cuda.get_device_name()
    big = 1 << 16 if args.quick else 8_800_000
    mid = 1 << 15 if args.quick else 1_000_000
    report = {"device": dev_name, "torch": torch.__version__, "L": L, "d": D, "dtype": str(DTYPE)}
    md = [f"Device: **{dev_name}** (torch {torch.__version__}, CUDA {torch.version.cuda}); "
          f"L = {L}, d = {D}, {DTYPE}; every figure measured in this run."]
    t0 = time.time()

    peak = gemm_peak_tflops()
    report["gemm_peak_tflops"] = peak
    md.append(f"\nDense bf16 GEMM peak (torch.matmul 8192^3): **{peak:.0f} TFLOP/s**")

    qn_all = synthetic.qnets(8, [D] * (L + 1) + [1], seed=1).to("cuda", DTYPE)
    flops_doc = qn_all.flops_per_document()
    names = ("torch", "triton", "cuda")
    mods = {n: run_backend(n) for n in names}
    for n, (m, why) in mods.items():
        print(f"backend {n}: {why}", flush=True)
    vecs = corpus(big)
    print(f"corpus {big} x {D} generated ({time.time() - t0:.0f} s)", flush=True)

    # Warm-up on a small slice first: Triton autotunes (and the CUDA extension builds) on
    # the first call of a shape, and should not do it on 8.8M rows.
    small = vecs[: 1 << 16]
    for n, (m, _) in mods.items():
        if m is not None:
            m.score_dense(qn_all[:1].weights, qn_all[:1].biases, qn_all.config, small)
            m.score_gather(qn_all[:1].weights, qn_all[:1].biases, qn_all.config, small,
                           torch.zeros(1, 4096, dtype=torch.int64, device="cuda"))
            if hasattr(m, "exact_topk"):
                m.exact_topk(qn_all[:1].weights, qn_all[:1].biases, qn_all.config, small, 1000)
    torch.cuda.synchronize()
    print(f"warm-up done ({time.time() - t0:.0f} s)", flush=True)

    # Dense scan.
    rows, report["dense"] = [], []
    for n_docs, Q in ((mid, 4), (big, 1)):
        qn, v = qn_all[:Q], vecs[:n_docs]
        out = torch.empty(Q, n_docs, dtype=torch.float32, device="cuda")
        ref_t = None
        for name in names:
            m, why = mods[name]
            if m is None:
                rows.append([f"{n_docs:,}", Q, name, "n/a", "", "", why[:60]])
                continue
            t = timeit(lambda: m.score_dense(qn.weights, qn.biases, qn.config, v, out))
            tf = Q * n_docs * flops_doc / t / 1e12
            ref_t = t if name == "torch" else ref_t
            sp = f"{ref_t / t:.2f}x" if ref_t else ""
            rows.append([f"{n_docs:,}", Q, name, f"{t * 1e3:.1f}", f"{tf:.0f}", sp, f"{100 * tf / peak:.0f}%"])
            report["dense"].append({"n": n_docs, "Q": Q, "backend": name, "seconds": t, "tflops": tf})
            print(rows[-1], flush=True)
    md.append("\n### Dense scoring\n\n" + md_table(
        ["documents", "Q", "backend", "ms", "TFLOP/s", "vs torch", "of GEMM peak"], rows))

    # Gather.
    rows, report["gather"] = [], []
    Q = 8
    g = torch.Generator(device="cuda").manual_seed(5)
    for m_c in (4096, 65536):
        ids = torch.randint(0, big, (Q, m_c), device="cuda", generator=g)
        out = torch.empty(Q, m_c, dtype=torch.float32, device="cuda")
        ref_t = None
        for name in names:
            m, why = mods[name]
            if m is None:
                rows.append([m_c, Q, name, "n/a", "", "", why[:60]])
                continue
            t = timeit(lambda: m.score_gather(qn_all.weights, qn_all.biases, qn_all.config, vecs, ids, out), repeat=10)
            ref_t = t if name == "torch" else ref_t
            rate = Q * m_c / t
            rows.append([m_c, Q, name, f"{t * 1e3:.2f}", f"{rate / 1e6:.1f}",
                         f"{rate * flops_doc / 1e12:.0f}", f"{ref_t / t:.2f}x" if ref_t else ""])
            report["gather"].append({"m": m_c, "Q": Q, "backend": name, "seconds": t})
            print(rows[-1], flush=True)
    md.append("\n### Gather scoring\n\n" + md_table(
        ["m per query", "Q", "backend", "ms", "M docs/s", "TFLOP/s", "vs torch"], rows))

    # Exact top-1000 over the whole corpus, one query.
    rows, report["exact"] = [], []
    qn = qn_all[:1]
    ref_ids = None
    for name in names:
        m, why = mods[name]
        if m is None:
            rows.append([name, "n/a", why[:60]])
            continue
        res = {}

        def run():
            res["r"] = exact_search(qn, vecs, 1000, backend=name, block_size=1 << 20)

        t = timeit(run, repeat=3)
        ids = res["r"][1]
        agree = ""
        if ref_ids is None:
            ref_ids = ids
        else:  # overlap with the first backend's top-1000 (bf16 rounding reorders near-ties)
            agree = f"{len(set(ids[0].tolist()) & set(ref_ids[0].tolist())) / 10:.1f}%"
        rows.append([name, f"{t * 1e3:.0f}", agree])
        report["exact"].append({"backend": name, "seconds_per_query": t})
        print(rows[-1], flush=True)
    md.append(f"\n### Exact top-1000 over {big:,} documents (1 query)\n\n" + md_table(
        ["backend", "ms / query", "top-1000 overlap with torch"], rows))
    md.append(f"\nMeasured auto choices: {backends.auto_choices() or 'none made'}")
    md.append(f"\nTotal bench time {time.time() - t0:.0f} s.")

    text = "\n".join(md)
    print("\n" + text)
    with open(os.path.join(args.out, "bench_gpu.md"), "w") as f:
        f.write(text + "\n")
    with open(os.path.join(args.out, "bench_gpu.json"), "w") as f:
        json.dump(report, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())

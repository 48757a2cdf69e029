"""GPU benchmark of the q-net backends: every figure is measured in this run, against
baselines measured in the same run, on the device named in the output.

The baseline is what a user would write: **bf16 cuBLAS per layer** (``torch.matmul`` in
bfloat16 for each layer, then the same epilogue in torch: bias, relu, layer norm,
residual). The yardstick is the device's **measured bf16 GEMM peak** (torch.matmul
8192^3). Tables, in order (the most wanted first, so a run cut short keeps them):

  1. the measured bf16 GEMM peak, and cuBLAS on one q-net layer's shape (8192 x 768 x 768);
  2. warm-up of each backend (the CUDA build and the Triton compiles and autotuning);
  3. exact top-1000 over 8.8M x 768 documents with a 6-layer q-net, one query;
     then the same scan over the corpus stored compressed (int8 and fp8 e4m3, one
     float32 scale per row) against bf16 storage, per GPU backend;
  4. dense scoring TFLOP/s at 8.8M (Q = 1) and 1M (Q = 4) documents: each backend
     against the bf16 per-layer baseline and against the GEMM peak, with its error
     against the float32 reference on the first 4,096 documents (the Triton layer path
     with and without its CUDA graph replay: the difference is the launch overhead);
  5. gather scoring (m = 4,096 and 65,536 candidates per query, Q = 8), bf16 storage and,
     for the gathering kernels, compressed storage (its error includes the compression's);
  6. the Triton layer GEMM alone against cuBLAS on the layer shape.

Each row is printed and appended to ``bench_gpu.md`` (and ``bench_gpu.jsonl``) in
``--out`` as soon as it is measured. ``--budget`` seconds bound the run: once spent, the
remaining rows say so instead of running.

    python3 bench/bench_gpu.py [--out DIR] [--budget S] [--dry-run]

``--dry-run``: the same steps on CPU tensors at small sizes (L = 2, d = 16, Triton
interpreted, one timed call each), to check the script runs; its figures mean nothing.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

DRY = "--dry-run" in sys.argv
if DRY:  # before anything imports triton
    os.environ["TRITON_INTERPRET"] = "1"

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from engine import backends, synthetic  # noqa: E402
from engine.backends import topk_keys, torch_ref  # noqa: E402
from engine.search.exact import exact_search  # noqa: E402

DTYPE = torch.bfloat16
# (label, registry name, environment): the engine paths measured.
PATHS = (
    ("triton layers", "triton", {"HYPENCODER_TRITON_DENSE": "layers"}),
    ("triton layers, no graph", "triton", {"HYPENCODER_TRITON_DENSE": "layers", "HYPENCODER_TRITON_GRAPHS": "0"}),
    ("triton tile", "triton", {"HYPENCODER_TRITON_DENSE": "tile"}),
    ("cuda (WMMA)", "cuda", {}),
    ("torch fp32 reference", "torch", {}),
)
BASELINE = "bf16 cuBLAS per layer"


# ------------------------------------------------------------------------- baseline
def per_layer(x, weights, biases, config):
    """The baseline's q-nets on ``x`` ((C, d) shared by the queries, or (Q, C, d)): one
    ``torch.matmul`` per layer in the q-nets' dtype (cuBLAS on a GPU), the epilogue in
    torch; returns (Q, C) float32 scores."""
    L = len(biases)
    for i in range(L):
        ln_before, res, ln_after = config.layer_ops(i, L)
        y = torch.matmul(x, weights[i]) + biases[i][:, None, :]
        if config.activation == "relu":
            y = torch.relu(y)
        if ln_before:
            y = F.layer_norm(y, y.shape[-1:], eps=config.eps)
        if res:
            y = y + x
        if ln_after:
            y = F.layer_norm(y, y.shape[-1:], eps=config.eps)
        x = y
    return torch.matmul(x, weights[L]).squeeze(-1).float()


def per_layer_bf16(weights, biases, config, vectors, out, chunk=1 << 16):
    """The dense baseline, chunks of ``chunk`` documents; fills ``out`` (Q, n) float32."""
    for s in range(0, vectors.shape[0], chunk):
        out[:, s : s + chunk] = per_layer(vectors[s : s + chunk], weights, biases, config)
    return out


def per_layer_gather(weights, biases, config, vectors, ids, out):
    Q, m = ids.shape
    return out.copy_(per_layer(vectors[ids.reshape(-1)].view(Q, m, -1), weights, biases, config))


def per_layer_topk(qn, vecs, k, block=1 << 22):
    running = None
    out = torch.empty(qn.num_queries, min(block, vecs.shape[0]), device=vecs.device)
    for s in range(0, vecs.shape[0], block):
        part = vecs[s : s + block]
        sc = per_layer_bf16(qn.weights, qn.biases, qn.config, part, out[:, : part.shape[0]])
        ids = torch.arange(s, s + part.shape[0], device=vecs.device).expand(qn.num_queries, -1)
        running = topk_keys.merge_topk(running, topk_keys.encode(sc, ids), k)
    return topk_keys.finish(running, k)


# ------------------------------------------------------------------------- plumbing
class Report:
    """Markdown tables and JSON lines written row by row (flushed) into ``out_dir``."""

    def __init__(self, out_dir):
        os.makedirs(out_dir, exist_ok=True)
        self.md = open(os.path.join(out_dir, "bench_gpu.md"), "w", buffering=1)
        self.jsonl = open(os.path.join(out_dir, "bench_gpu.jsonl"), "w", buffering=1)
        self.table_name = ""

    def text(self, line=""):
        print(line, flush=True)
        self.md.write(line + "\n")
        self.md.flush()

    def table(self, name, title, headers):
        self.table_name = name
        self.text(f"\n### {title}\n")
        self.text("| " + " | ".join(headers) + " |")
        self.text("|" + "---|" * len(headers))

    def row(self, cells, **record):
        self.text("| " + " | ".join(str(c) for c in cells) + " |")
        self.jsonl.write(json.dumps({"table": self.table_name, **record}) + "\n")
        self.jsonl.flush()


class Clock:
    def __init__(self, device, budget):
        self.device = device
        self.t0 = time.perf_counter()
        self.budget = budget

    def elapsed(self):
        return time.perf_counter() - self.t0

    def spent(self):
        return self.budget is not None and self.elapsed() > self.budget

    def sync(self):
        if self.device.type == "cuda":
            torch.cuda.synchronize()

    def time(self, fn, repeat=3, limit_s=15.0):
        """Median seconds of ``fn`` after one warm-up call; fewer repeats when slow. A dry
        run times one call: it checks that the steps run, not how fast."""
        if DRY:
            repeat = 1
        else:
            fn()
            self.sync()
        times = []
        for _ in range(repeat):
            t = time.perf_counter()
            fn()
            self.sync()
            times.append(time.perf_counter() - t)
            if sum(times) > limit_s:
                break
        times.sort()
        return times[len(times) // 2]


class Env:
    """Set environment variables for a block (the Triton path of a row)."""

    def __init__(self, env):
        self.env, self.saved = env, {}

    def __enter__(self):
        for k, v in self.env.items():
            self.saved[k] = os.environ.get(k)
            os.environ[k] = v

    def __exit__(self, *exc):
        for k, v in self.saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def quantize_rows(vecs, dtype, chunk=1 << 20):
    """``(data, scales)`` per the storage contract: symmetric per row, scale = max|x| /
    127 (int8) or / 448 (float8_e4m3fn), 0 for a zero row; chunk by chunk on the vectors'
    device, so no float32 copy of the corpus exists."""
    qmax = 127.0 if dtype == torch.int8 else 448.0
    data = torch.empty(vecs.shape, dtype=dtype, device=vecs.device)
    scales = torch.empty(vecs.shape[0], dtype=torch.float32, device=vecs.device)
    for s in range(0, vecs.shape[0], chunk):
        x = vecs[s : s + chunk].float()
        sc = x.abs().amax(dim=1) / qmax
        y = x / torch.where(sc > 0, sc, torch.ones_like(sc))[:, None]
        data[s : s + chunk] = y.round().clamp(-127, 127).to(dtype) if dtype == torch.int8 else y.to(dtype)
        scales[s : s + chunk] = sc
    return data, scales


# The backends with compressed-storage kernels, and the storages measured.
COMPRESSED_PATHS = ("triton layers", "triton tile", "cuda (WMMA)")
STORAGES = (("int8", torch.int8), ("fp8 e4m3", torch.float8_e4m3fn))


def backend_or_reason(name, device):
    ok, why = backends.availability(name)
    if not ok:
        return None, why
    try:
        return backends.get_backend(name, device), "ok"
    except RuntimeError as e:
        return None, str(e)


def short(e: BaseException) -> str:
    return f"{type(e).__name__}: {str(e).splitlines()[0][:120] if str(e) else ''}"


def rel_err(got, ref) -> float:
    return float((got.float() - ref.float()).abs().max()) / max(1.0, float(ref.abs().max()))


# ------------------------------------------------------------------------- main
def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default=os.environ.get("OUT", "."))
    ap.add_argument("--budget", type=float, default=None, help="seconds; later rows are skipped once spent")
    ap.add_argument("--dry-run", action="store_true", help="CPU tensors, small sizes, Triton interpreted")
    ap.add_argument("--n", type=int, default=8_800_000, help="documents of the big corpus")
    args = ap.parse_args(argv)
    if not DRY and not torch.cuda.is_available():
        print("bench_gpu: no CUDA device; nothing measured (--dry-run runs the steps on the CPU)")
        return 2
    dev = torch.device("cpu" if DRY else "cuda")
    L, D = (2, 16) if DRY else (6, 768)
    big, mid = (400, 200) if DRY else (args.n, 1_000_000)
    k_exact = 10 if DRY else 1000
    peak_n, layer_rows = (256, 64) if DRY else (8192, 8192)
    rep = Report(args.out)
    clock = Clock(dev, args.budget)
    name = "CPU (dry run: figures mean nothing)" if DRY else torch.cuda.get_device_name()
    rep.text(f"Device: **{name}**; torch {torch.__version__}, CUDA {torch.version.cuda}; "
             f"q-nets L = {L}, d = {D}, {DTYPE}; {time.strftime('%Y-%m-%d %H:%M')}. Every figure is "
             "measured in this run.")

    # 1. Yardsticks.
    rep.table("gemm", "bf16 GEMM (torch.matmul: cuBLAS)", ["shape", "ms", "TFLOP/s"])
    a = torch.randn(peak_n, peak_n, device=dev, dtype=DTYPE)
    t = clock.time(lambda: torch.matmul(a, a), repeat=10)
    peak = 2 * peak_n**3 / t / 1e12
    rep.row([f"{peak_n}^3 (the peak)", f"{t * 1e3:.2f}", f"{peak:.1f}"], shape="peak", seconds=t, tflops=peak)
    x = torch.randn(layer_rows, D, device=dev, dtype=DTYPE)
    w = torch.randn(D, D, device=dev, dtype=DTYPE)
    t = clock.time(lambda: torch.matmul(x, w), repeat=20)
    layer_tf = 2 * layer_rows * D * D / t / 1e12
    rep.row([f"{layer_rows} x {D} x {D} (one layer)", f"{t * 1e3:.3f}", f"{layer_tf:.1f}"],
            shape="layer", seconds=t, tflops=layer_tf)
    del a, x, w

    qn_all = synthetic.qnets(8, [D] * (L + 1) + [1], seed=1).to(dev, DTYPE)
    flops_doc = qn_all.flops_per_document()
    t = time.perf_counter()
    vecs = synthetic.vectors(big, D, seed=0, dtype=DTYPE, device=dev)
    clock.sync()
    rep.text(f"\nCorpus: {big:,} x {D} {DTYPE} drawn on {dev} in {time.perf_counter() - t:.1f} s; "
             f"{flops_doc / 1e6:.2f} MFLOP per document and query.")

    # 2. Warm-up: builds, compiles and autotunes on a slice, not on the big corpus.
    rep.table("warmup", "Warm-up (build, compile, autotune) per backend", ["backend", "s", "status"])
    mods = {}
    small, q1 = vecs[: min(big, 1 << 16)], qn_all[:1]
    ids0 = torch.zeros(1, 64, dtype=torch.int64, device=dev)
    for label, reg, env in PATHS:
        be, why = backend_or_reason(reg, dev)
        if be is None:
            rep.row([label, "", f"n/a: {why[:100]}"], backend=label, status=why)
            continue
        t = time.perf_counter()
        try:
            with Env(env):
                be.score_dense(q1.weights, q1.biases, q1.config, small)
                be.score_gather(q1.weights, q1.biases, q1.config, small, ids0)
                if hasattr(be, "exact_topk"):
                    be.exact_topk(q1.weights, q1.biases, q1.config, small, k_exact)
            clock.sync()
            mods[label] = (be, env)
            rep.row([label, f"{time.perf_counter() - t:.1f}", "ok"], backend=label,
                    seconds=time.perf_counter() - t, status="ok")
        except Exception as e:  # a failed build or compile: the row says why, the run goes on
            rep.row([label, f"{time.perf_counter() - t:.1f}", f"FAILED {short(e)}"], backend=label, status=short(e))

    def skipped(row_head, headers, **rec):
        rep.row(row_head + ["skipped: time budget spent"] + [""] * (len(headers) - len(row_head) - 1), **rec)

    # 3. Exact top-k over the whole corpus, one query.
    headers = ["backend", "ms / query", "TFLOP/s", "of GEMM peak", f"top-{k_exact} overlap with baseline"]
    rep.table("exact", f"Exact top-{k_exact} over {big:,} documents, 1 query", headers)
    qn = qn_all[:1]
    res = {}
    t = clock.time(lambda: res.__setitem__("base", per_layer_topk(qn, vecs, k_exact)))
    tf = big * flops_doc / t / 1e12
    base_ids = set(res["base"][1][0].tolist())
    rep.row([BASELINE, f"{t * 1e3:.1f}", f"{tf:.0f}", f"{100 * tf / peak:.0f}%", ""], backend=BASELINE, seconds=t)
    for label, (be, env) in mods.items():
        if clock.spent():
            skipped([label], headers, backend=label)
            continue
        try:
            with Env(env):
                t = clock.time(lambda: res.__setitem__("r", exact_search(qn, vecs, k_exact, backend=be.name)))
            tf = big * flops_doc / t / 1e12
            overlap = len(set(res["r"][1][0].tolist()) & base_ids) / k_exact
            rep.row([label, f"{t * 1e3:.1f}", f"{tf:.0f}", f"{100 * tf / peak:.0f}%", f"{100 * overlap:.1f}%"],
                    backend=label, seconds=t, overlap=overlap)
        except Exception as e:
            rep.row([label, "", "", "", f"FAILED {short(e)}"], backend=label, status=short(e))

    # 3b. The same scan over compressed storage, against bf16 storage on the same backend.
    headers = ["backend", "storage", "ms / query", "M docs/s", "vs bf16 storage", "corpus GB",
               f"top-{k_exact} overlap with bf16 storage"]
    rep.table("exact_compressed", f"Exact top-{k_exact} over {big:,} documents, 1 query: compressed storage",
              headers)
    stored = {}
    for sname, sdtype in STORAGES:
        try:
            stored[sname] = quantize_rows(vecs, sdtype)
        except Exception as e:  # e.g. out of memory: the rows say so
            rep.row(["", sname, "", "", "", "", f"FAILED to compress: {short(e)}"], storage=sname, status=short(e))
    qn = qn_all[:1]
    for label in COMPRESSED_PATHS:
        if label not in mods:
            continue
        be, env = mods[label]
        base_t, base_ids = None, None
        for sname, sdtype in (("bf16", DTYPE),) + STORAGES:
            if clock.spent():
                skipped([label, sname], headers, backend=label, storage=sname)
                continue
            data, kw = (vecs, {}) if sname == "bf16" else (stored.get(sname, (None,))[0], {})
            if data is None:
                continue
            if sname != "bf16":
                kw = {"scales": stored[sname][1]}
            try:
                with Env(env):
                    t = clock.time(lambda: res.__setitem__(
                        "r", be.exact_topk(qn.weights, qn.biases, qn.config, data, k_exact, **kw)))
                ids_now = set(res["r"][1][0].tolist())
                if sname == "bf16":
                    base_t, base_ids = t, ids_now
                gb = (data.numel() * data.element_size() + sum(v.numel() * 4 for v in kw.values())) / 1e9
                rel = f"{base_t / t:.2f}x" if base_t else ""
                overlap = len(ids_now & base_ids) / k_exact if base_ids else None
                rep.row([label, sname, f"{t * 1e3:.1f}", f"{big / t / 1e6:.0f}", rel, f"{gb:.2f}",
                         "" if overlap is None else f"{100 * overlap:.1f}%"],
                        backend=label, storage=sname, seconds=t, speedup=None if not base_t else base_t / t,
                        overlap=overlap)
            except Exception as e:
                rep.row([label, sname, "", "", "", "", f"FAILED {short(e)}"], backend=label, storage=sname,
                        status=short(e))

    # 4. Dense scoring.
    headers = ["documents", "Q", "backend", "ms", "TFLOP/s", f"vs {BASELINE}", "of GEMM peak",
               "max rel. error (first 4,096 docs vs fp32)"]
    rep.table("dense", "Dense scoring", headers)
    for n_docs, Q in ((big, 1), (mid, 4)):
        qn, v = qn_all[:Q], vecs[:n_docs]
        out = torch.empty(Q, n_docs, dtype=torch.float32, device=dev)
        check = v[:4096]
        ref = torch_ref.score_dense(qn.weights, qn.biases, qn.config, check)
        t_base = clock.time(lambda: per_layer_bf16(qn.weights, qn.biases, qn.config, v, out))
        tf = Q * n_docs * flops_doc / t_base / 1e12
        err = rel_err(per_layer_bf16(qn.weights, qn.biases, qn.config, check, out[:, :4096].clone()), ref)
        rep.row([f"{n_docs:,}", Q, BASELINE, f"{t_base * 1e3:.1f}", f"{tf:.0f}", "1.00x", f"{100 * tf / peak:.0f}%",
                 f"{err:.1e}"], n=n_docs, Q=Q, backend=BASELINE, seconds=t_base, tflops=tf, error=err)
        for label, (be, env) in mods.items():
            if clock.spent():
                skipped([f"{n_docs:,}", Q, label], headers, n=n_docs, Q=Q, backend=label)
                continue
            try:
                with Env(env):
                    t = clock.time(lambda: be.score_dense(qn.weights, qn.biases, qn.config, v, out))
                    err = rel_err(be.score_dense(qn.weights, qn.biases, qn.config, check), ref)
                tf = Q * n_docs * flops_doc / t / 1e12
                rep.row([f"{n_docs:,}", Q, label, f"{t * 1e3:.1f}", f"{tf:.0f}", f"{t_base / t:.2f}x",
                         f"{100 * tf / peak:.0f}%", f"{err:.1e}"],
                        n=n_docs, Q=Q, backend=label, seconds=t, tflops=tf, error=err)
            except Exception as e:
                rep.row([f"{n_docs:,}", Q, label, "", "", "", "", f"FAILED {short(e)}"],
                        n=n_docs, Q=Q, backend=label, status=short(e))

    # 5. Gather scoring.
    headers = ["m per query", "Q", "backend", "ms", "M docs/s", f"vs {BASELINE}", "max rel. error vs fp32"]
    rep.table("gather", "Gather scoring", headers)
    g = torch.Generator(device=dev).manual_seed(5)
    for m in ((16, 48) if DRY else (4096, 65536)):
        Q = 8
        ids = torch.randint(0, big, (Q, m), device=dev, generator=g)
        out = torch.empty(Q, m, dtype=torch.float32, device=dev)
        ref = torch_ref.score_gather(qn_all.weights, qn_all.biases, qn_all.config, vecs, ids)
        t_base = clock.time(lambda: per_layer_gather(qn_all.weights, qn_all.biases, qn_all.config, vecs, ids, out),
                            repeat=10)
        rep.row([m, Q, BASELINE, f"{t_base * 1e3:.2f}", f"{Q * m / t_base / 1e6:.1f}", "1.00x",
                 f"{rel_err(out, ref):.1e}"], m=m, Q=Q, backend=BASELINE, seconds=t_base)
        for label, (be, env) in mods.items():
            if label.startswith("triton layers"):  # gathers run the tile kernel whatever the dense path
                continue
            if clock.spent():
                skipped([m, Q, label], headers, m=m, Q=Q, backend=label)
                continue
            try:
                with Env(env):
                    t = clock.time(lambda: be.score_gather(qn_all.weights, qn_all.biases, qn_all.config, vecs,
                                                           ids, out), repeat=10)
                rep.row([m, Q, label, f"{t * 1e3:.2f}", f"{Q * m / t / 1e6:.1f}", f"{t_base / t:.2f}x",
                         f"{rel_err(out, ref):.1e}"], m=m, Q=Q, backend=label, seconds=t)
            except Exception as e:
                rep.row([m, Q, label, "", "", "", f"FAILED {short(e)}"], m=m, Q=Q, backend=label, status=short(e))
        for label in COMPRESSED_PATHS[1:]:  # the gathering kernels, on compressed storage
            if label not in mods:
                continue
            be, env = mods[label]
            for sname, (data, scales) in stored.items():
                row = [m, Q, f"{label}, {sname} storage"]
                if clock.spent():
                    skipped(row, headers, m=m, Q=Q, backend=label, storage=sname)
                    continue
                try:
                    with Env(env):
                        t = clock.time(lambda: be.score_gather(qn_all.weights, qn_all.biases, qn_all.config, data,
                                                               ids, out, scales=scales), repeat=10)
                    rep.row(row + [f"{t * 1e3:.2f}", f"{Q * m / t / 1e6:.1f}", f"{t_base / t:.2f}x",
                                   f"{rel_err(out, ref):.1e} (vs bf16 storage)"],
                            m=m, Q=Q, backend=label, storage=sname, seconds=t)
                except Exception as e:
                    rep.row(row + ["", "", "", f"FAILED {short(e)}"], m=m, Q=Q, backend=label, storage=sname,
                            status=short(e))
    del stored

    # 6. The Triton layer GEMM alone on the layer shape (the wgmma decision's input).
    headers = ["kernel", "ms", "TFLOP/s", "of cuBLAS on this shape", "of GEMM peak"]
    rep.table("layer_gemm", f"One layer: {layer_rows} x {D} x {D}, bias + relu + statistics", headers)
    rep.row(["torch.matmul (no epilogue)", "", f"{layer_tf:.0f}", "100%", f"{100 * layer_tf / peak:.0f}%"],
            kernel="cublas", tflops=layer_tf)
    if "triton layers" in mods and not clock.spent():
        from engine.kernels import qnet_layers

        x = vecs[:layer_rows]
        try:
            t = clock.time(lambda: qnet_layers.layer_gemm(x, q1.weights[0], q1.biases[0]), repeat=20)
            tf = 2 * layer_rows * D * D / t / 1e12
            rep.row(["triton layer GEMM + epilogue", f"{t * 1e3:.3f}", f"{tf:.0f}", f"{100 * tf / layer_tf:.0f}%",
                     f"{100 * tf / peak:.0f}%"], kernel="triton", seconds=t, tflops=tf)
        except Exception as e:
            rep.row(["triton layer GEMM + epilogue", "", "", "", f"FAILED {short(e)}"], kernel="triton",
                    status=short(e))
    rep.text(f"\nMeasured auto choices: {backends.auto_choices() or 'none made'}. "
             f"Total bench time {clock.elapsed():.0f} s.")
    return 0


if __name__ == "__main__":
    sys.exit(main())

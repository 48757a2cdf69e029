"""Compile every shipped Triton kernel configuration ahead of time, without a GPU.

The Triton interpreter (how the tests run the kernels on a CPU) accepts code the
compiler refuses: a plain Python global read inside ``@triton.jit``, a construct a
backend cannot lower, a configuration whose shared memory exceeds the device's. This
module runs Triton's own compiler (``triton.compile`` on an ``ASTSource`` for a
``GPUTarget``, all the way to a cubin with the ptxas Triton ships) on every launch
variant the kernel modules declare, for each GPU architecture asked (sm_80 and sm_90 in
CI), and checks each result's shared memory against that architecture's limit.

A kernel module declares its variants with ``aot_variants() -> list[Variant]``: a kernel,
example arguments built by the module's own launch code (on CPU tensors: only dtypes and
values matter) and the autotune configurations it ships. Run::

    TRITON_INTERPRET=0 python -m engine.kernels.aot [--arch 80 90] [--jobs 2]
        [--module engine.kernels.qnet_dense ...] [--file some_kernels.py ...]

Prints one line per compilation and exits 1 if any failed (the compiler's message
follows the failing line). ``--file`` compiles the variants of a Python file outside the
package (how the tests show that a bad kernel is caught).
"""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import importlib
import importlib.util
import multiprocessing
import os
import sys
import tempfile
import time
import traceback
from dataclasses import dataclass, field

# Kernel modules whose variants CI compiles.
SHIPPED_MODULES = ("engine.kernels.qnet_dense", "engine.kernels.qnet_gather", "engine.kernels.qnet_layers")
ARCHS = (80, 90)
# Opt-in shared memory per block: A100 (sm_80) and H100/H200 (sm_90).
SMEM_LIMIT = {80: 166912, 86: 101376, 89: 101376, 90: 232448}

_DTYPES = {"bfloat16": "bf16", "float16": "fp16", "float32": "fp32", "int64": "i64",
           "int32": "i32", "int16": "i16", "int8": "i8", "uint8": "u8", "bool": "i1"}


@dataclass
class Variant:
    """One way a kernel is launched: ``args`` maps every parameter name to an example
    value (tensors, TensorDescriptors, ints, floats, bools; constexpr parameters to their
    values, except those a configuration sets), ``configs`` the ``triton.Config`` list
    compiled with it."""

    kernel: object
    args: dict
    configs: list
    label: str = ""
    extra: dict = field(default_factory=dict)
    # PTX instructions the compiled code must contain, per architecture (e.g. wgmma on
    # sm_90): a design choice checked, not hoped for.
    expect_ptx: dict = field(default_factory=dict)


def example_inputs(dtype, config=None, dims=(64, 64, 64, 1), n: int = 256, pad: int = 1):
    """``(packed q-nets, config, vectors)`` on the CPU for building example arguments:
    two random q-nets of widths ``dims`` and ``n`` vectors, all of ``dtype``."""
    import torch

    from ..backends.qnet_pack import pack_qnet
    from ..qnet_config import QNetConfig

    config = config or QNetConfig()
    g = torch.Generator().manual_seed(0)
    ws = [torch.randn(2, a, b, generator=g).to(dtype) for a, b in zip(dims[:-1], dims[1:])]
    bs = [torch.randn(2, b, generator=g).to(dtype) for b in dims[1:-1]]
    vectors = torch.randn(n, dims[0], generator=g).to(dtype)
    return pack_qnet(ws, bs, config, pad=pad), config, vectors


def compressed(vectors, dtype):
    """``(data, scales)``: example compressed documents of ``vectors`` (int8 or
    float8_e4m3fn; only dtypes and shapes matter here)."""
    import torch

    scales = torch.ones(vectors.shape[0])
    return vectors.float().clamp(-100, 100).to(dtype), scales


def _jit_fn(kernel):
    from triton.runtime.jit import JITFunction

    fn = kernel
    while not isinstance(fn, JITFunction) and hasattr(fn, "fn"):
        fn = fn.fn  # an Autotuner (or Heuristics) wraps the JITFunction
    if not isinstance(fn, JITFunction):
        raise TypeError(f"{kernel!r} is not a compiled @triton.jit function (is TRITON_INTERPRET set?)")
    return fn


def _dtype_name(dtype) -> str:
    name = str(dtype).replace("torch.", "")
    if name not in _DTYPES:
        raise TypeError(f"no Triton type for {dtype}")
    return _DTYPES[name]


def type_of(value) -> str:
    """The Triton signature type of a runtime argument."""
    import torch

    if isinstance(value, torch.Tensor):
        return "*" + _dtype_name(value.dtype)
    if type(value).__name__ == "TensorDescriptor":
        shape = ",".join(str(int(s)) for s in value.block_shape)
        return f"tensordesc<{_dtype_name(value.base.dtype)}[{shape}]>"
    if isinstance(value, bool):
        return "i1"
    if isinstance(value, int):
        return "i32" if -(2**31) <= value < 2**31 else "i64"
    if isinstance(value, float):
        return "fp32"
    raise TypeError(f"no Triton type for argument {value!r}")


def _aligned(value) -> bool:
    """Whether the runtime would mark the argument divisible by 16 (as Triton's launcher
    does for 16-byte aligned pointers and for integers that are multiples of 16)."""
    import torch

    if isinstance(value, torch.Tensor):
        return value.data_ptr() % 16 == 0
    return isinstance(value, int) and not isinstance(value, bool) and value % 16 == 0


def compile_variant(variant: Variant, config, arch: int):
    """Compile one variant with one configuration for ``sm_<arch>``; returns the compiled
    kernel (its ``metadata`` holds the shared memory). Raises what the compiler raises."""
    import triton
    from triton.backends.compiler import GPUTarget

    fn = _jit_fn(variant.kernel)
    values = dict(variant.args)
    values.update(config.kwargs)
    if getattr(config, "pre_hook", None) is not None:  # as the autotuner does before a launch
        config.pre_hook(values)
    missing = [a for a in fn.arg_names if a not in values]
    if missing:
        raise TypeError(f"variant {variant.label!r} gives no value for {missing}")
    signature, constexprs, attrs = {}, {}, {}
    for i, name in enumerate(fn.arg_names):
        value = values[name]
        if i in fn.constexprs:
            signature[name] = "constexpr"
            constexprs[name] = value
        else:
            signature[name] = type_of(value)
            if _aligned(value):
                attrs[(i,)] = [["tt.divisibility", 16]]
    src = triton.compiler.ASTSource(fn=fn, signature=signature, constexprs=constexprs, attrs=attrs)
    options = {"num_warps": config.num_warps, "num_stages": config.num_stages}
    if getattr(config, "num_ctas", 1) != 1:
        options["num_ctas"] = config.num_ctas
    if getattr(config, "maxnreg", None) is not None:
        options["maxnreg"] = config.maxnreg
    options.update(variant.extra)
    return triton.compile(src, target=GPUTarget("cuda", arch, 32), options=options)


def _config_text(config) -> str:
    kw = " ".join(f"{k}={v}" for k, v in config.kwargs.items())
    return f"{kw} w{config.num_warps} s{config.num_stages}".strip()


def _load_source(source: str):
    if source.endswith(".py"):
        spec = importlib.util.spec_from_file_location(f"aot_file_{abs(hash(source))}", source)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module
    return importlib.import_module(source)


_VARIANTS: dict = {}


def variants_of(source: str) -> list:
    """The variants a module (dotted name) or Python file (path) declares."""
    if source not in _VARIANTS:
        _VARIANTS[source] = list(_load_source(source).aot_variants())
    return _VARIANTS[source]


def _job(source: str, vi: int, ci: int, arch: int):
    """Compile one (variant, config, arch) in a worker:
    ``(kernel name, config text, arch, seconds, shared bytes, error or None)``."""
    t0 = time.perf_counter()
    v = variants_of(source)[vi]
    config = v.configs[ci]
    name = f"{source.rsplit('/', 1)[-1]}:{getattr(_jit_fn(v.kernel), '__name__', '?')}[{v.label}]"
    try:
        compiled = compile_variant(v, config, arch)
    except Exception as e:  # the compiler's message is the point of the check
        detail = "".join(traceback.format_exception_only(type(e), e)).strip()
        return name, _config_text(config), arch, time.perf_counter() - t0, 0, detail
    shared = int(compiled.metadata.shared)
    limit = SMEM_LIMIT.get(arch)
    err = None
    if limit is not None and shared > limit:
        err = f"needs {shared} bytes of shared memory; sm_{arch} allows {limit}"
    missing = [i for i in v.expect_ptx.get(arch, ()) if i not in compiled.asm.get("ptx", "")]
    if missing:
        err = f"the PTX lacks {missing}"
    return name, _config_text(config), arch, time.perf_counter() - t0, shared, err


def plan_jobs(sources, archs) -> list:
    jobs = []
    for source in sources:
        for vi, v in enumerate(variants_of(source)):
            for ci in range(len(v.configs)):
                for arch in archs:
                    jobs.append((source, vi, ci, arch))
    return jobs


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description="Compile every shipped Triton kernel configuration for GPU targets.")
    ap.add_argument("--arch", type=int, nargs="+", default=list(ARCHS), help="compute capabilities (80 90)")
    ap.add_argument("--jobs", type=int, default=min(2, os.cpu_count() or 1), help="parallel compilations")
    ap.add_argument("--module", nargs="*", default=None, help="kernel modules (default: the shipped ones)")
    ap.add_argument("--file", nargs="*", default=[], help="Python files declaring aot_variants()")
    args = ap.parse_args(argv)
    if os.environ.get("TRITON_INTERPRET", "0") not in ("", "0"):
        print("aot: TRITON_INTERPRET is set; the compiler needs TRITON_INTERPRET=0", file=sys.stderr)
        return 2
    os.environ.setdefault("TRITON_DEFAULT_FP_FUSION", "1")  # the default of Triton <= 3.9, stated
    if os.environ.get("TRITON_CACHE_DIR"):
        return _run(args)
    # A private cache: every run compiles from scratch (and measures it), and nothing is
    # left in the user's cache.
    with tempfile.TemporaryDirectory(prefix="hyp_aot_cache_") as cache:
        os.environ["TRITON_CACHE_DIR"] = cache
        try:
            return _run(args)
        finally:
            del os.environ["TRITON_CACHE_DIR"]


def _run(args) -> int:
    sources = (SHIPPED_MODULES if args.module is None and not args.file else tuple(args.module or ())) + tuple(args.file)
    t0 = time.perf_counter()
    try:
        jobs = plan_jobs(sources, args.arch)
    except Exception as e:  # a module that does not even import or declare its variants
        print(f"aot: FAILED to collect the variants: {type(e).__name__}: {e}", file=sys.stderr)
        traceback.print_exc()
        return 1
    import triton

    print(f"aot: triton {triton.__version__}: {len(jobs)} compilations ({len(sources)} sources, "
          f"sm_{' sm_'.join(map(str, args.arch))}, {args.jobs} jobs)", flush=True)
    failed = 0
    busy = 0.0
    ctx = multiprocessing.get_context("fork")
    with cf.ProcessPoolExecutor(max_workers=max(1, args.jobs), mp_context=ctx) as pool:
        for name, cfg, arch, secs, shared, err in pool.map(_job, *zip(*jobs)) if jobs else ():
            busy += secs
            status = "ok    " if err is None else "FAILED"
            print(f"aot: {status} {name} {cfg} sm_{arch} {secs:5.1f} s shared {shared} B", flush=True)
            if err is not None:
                failed += 1
                print("      " + err.replace("\n", "\n      "), flush=True)
    wall = time.perf_counter() - t0
    print(f"aot: {len(jobs) - failed} of {len(jobs)} compiled, {failed} failed; {busy:.0f} s of "
          f"compilation, {wall:.0f} s wall", flush=True)
    return 1 if failed or not jobs else 0


if __name__ == "__main__":
    sys.exit(main())

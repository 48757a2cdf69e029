"""The shared test grid of the kernel backends: which backends, shapes, dtypes and input
layouts every kernel is checked on, and the helpers the kernel tests share.

A kernel backend is a registry backend plus the environment that selects one of its
paths (the Triton backend's fused small-tile kernels, its layer-by-layer GEMMs with
pointer loads or TMA descriptors). Each runs on its device: the CPU for ``cpu`` and for
Triton under ``TRITON_INTERPRET=1``, else CUDA. A backend that cannot run here is
skipped with the reason; so is a shape too large to interpret.

The grid (tests/test_kernels.py runs it): every shape in every dtype with plain inputs,
and one shape in every dtype with each input layout: ``out=`` (a preallocated result
that must be filled and returned) and ``strided`` (vectors a column slice of a wider
tensor, ids and the result with non-unit column strides).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import pytest
import torch

from engine import backends
from engine.qnet import QNet
from engine.qnet_config import QNetConfig

INTERPRET = os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


def triton_device() -> torch.device:
    """The device the Triton tests of a module run on (the CPU under TRITON_INTERPRET=1);
    skips the calling module where the backend cannot run. Call at module level."""
    ok, why = backends.availability("triton")
    if not ok:
        pytest.skip(f"triton backend unavailable: {why}", allow_module_level=True)
    if not INTERPRET and not torch.cuda.is_available():
        pytest.skip("TRITON_INTERPRET is off and there is no CUDA device", allow_module_level=True)
    return torch.device("cpu" if INTERPRET else "cuda")

# Tolerance relative to the largest reference score: fp32 is exact up to summation order;
# fp16/bf16 round the activations at every layer as any half-precision kernel must.
TOL = {torch.float32: 1e-5, torch.float16: 5e-3, torch.bfloat16: 3e-2}
DTYPES = (torch.float32, torch.float16, torch.bfloat16)
LAYOUTS = ("plain", "out", "strided")
# (L, d, n): ragged widths and partial tiles; the last two are too slow to interpret.
SHAPES = ((1, 16, 1), (2, 40, 37), (3, 48, 70), (0, 24, 33), (6, 768, 300), (2, 384, 4099))
LAYOUT_SHAPE = (2, 40, 37)
TOPK_KS = (1, 5, 16, 20)  # below, at and above the 16-row interpreted tile
FLAG_DTYPES = (torch.float32, torch.bfloat16)
INTERPRETED_MAX_WIDTH = 64
# HYPENCODER_KERNEL_GRID=quick: the same kinds of case with fewer compilations, for the
# time-boxed check on a GPU (bench/gpu_check.sh), where each new specialisation compiles.
if os.environ.get("HYPENCODER_KERNEL_GRID", "full") == "quick":
    DTYPES = (torch.float32, torch.bfloat16)
    SHAPES = ((2, 40, 37), (6, 768, 300))
    TOPK_KS = (5, 20)
    FLAG_DTYPES = (torch.bfloat16,)


@dataclass(frozen=True)
class KernelBackend:
    label: str
    name: str  # the registry's name
    env: tuple = ()  # (variable, value) pairs that select the path
    fused_topk: bool = True
    gather: bool = True  # False: the path has no gather of its own (it is another path's)
    grid_only: bool = False  # True: a variant of loads only, run on the dense grid alone

    @property
    def interpreted(self) -> bool:
        return self.name == "triton" and INTERPRET

    @property
    def device(self) -> torch.device:
        return torch.device("cpu" if self.name == "cpu" or self.interpreted else "cuda")

    def skip_reason(self) -> str | None:
        ok, why = backends.availability(self.name)
        if not ok:
            return f"backend {self.name!r} unavailable: {why}"
        if self.device.type == "cuda" and not torch.cuda.is_available():
            return "no CUDA device"
        return None


KERNEL_BACKENDS = (
    KernelBackend("cpu", "cpu"),
    KernelBackend("triton-tile", "triton", (("HYPENCODER_TRITON_DENSE", "tile"),)),
    KernelBackend("triton-layers", "triton",
                  (("HYPENCODER_TRITON_DENSE", "layers"), ("HYPENCODER_TRITON_TMA", "0")), gather=False),
    KernelBackend("triton-layers-tma", "triton",
                  (("HYPENCODER_TRITON_DENSE", "layers"), ("HYPENCODER_TRITON_TMA", "1")), gather=False,
                  grid_only=True),
    KernelBackend("cuda", "cuda"),
)


def backend_params(select=lambda kb: not kb.grid_only) -> list:
    """``pytest.param`` per kernel backend (``select`` filters; by default the backends
    that run every test), skipped with the reason when it cannot run here."""
    out = []
    for kb in KERNEL_BACKENDS:
        if not select(kb):
            continue
        why = kb.skip_reason()
        out.append(pytest.param(kb, id=kb.label, marks=pytest.mark.skip(reason=why) if why else ()))
    return out


def activate(kb: KernelBackend, monkeypatch) -> torch.device:
    """Set the backend's environment for the test; returns its device."""
    for var, value in kb.env:
        monkeypatch.setenv(var, value)
    return kb.device


def skip_if_too_slow(kb: KernelBackend, *widths) -> None:
    if kb.interpreted and max(widths) > INTERPRETED_MAX_WIDTH:
        pytest.skip(f"{max(widths)} wide is too slow to interpret (runs compiled on a GPU)")


def dense_cases() -> list:
    """(L, d, n, dtype, layout): every shape x dtype plain, one shape x dtype x layout."""
    cases = [(L, d, n, dt, "plain") for (L, d, n) in SHAPES for dt in DTYPES]
    cases += [(*LAYOUT_SHAPE, dt, lay) for dt in DTYPES for lay in LAYOUTS if lay != "plain"]
    return [pytest.param(*c, id=f"L{c[0]}-d{c[1]}-n{c[2]}-{str(c[3])[6:]}-{c[4]}") for c in cases]


def make_qnet(Q, dims, dtype, device, config=None, seed=0) -> QNet:
    g = torch.Generator().manual_seed(seed)
    ws = [torch.randn(Q, a, b, generator=g) / a**0.5 for a, b in zip(dims[:-1], dims[1:])]
    bs = [torch.randn(Q, b, generator=g) * 0.5 for b in dims[1:-1]]
    return QNet([w.to(device, dtype) for w in ws], [b.to(device, dtype) for b in bs], config or QNetConfig())


def make_vectors(n, d, dtype, device, layout="plain", seed=1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    v = torch.randn(n, d, generator=g).to(device, dtype)
    if layout != "strided":
        return v
    wide = torch.zeros(n, 2 * d + 3, dtype=dtype, device=device)
    wide[:, 3 : d + 3] = v  # row stride 2d + 3, an unaligned start
    return wide[:, 3 : d + 3]


def make_out(shape, device, layout):
    """The ``out=`` argument of a layout: None, a dense tensor, or one with column
    stride 2; prefilled with NaN so that an unwritten entry fails."""
    if layout == "plain":
        return None
    if layout == "out":
        return torch.full(shape, float("nan"), device=device)
    return torch.full((shape[0], 2 * shape[1]), float("nan"), device=device)[:, ::2]


def make_ids(Q, m, n, id_dtype, device, layout="plain", seed=3) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, n, (Q, m if layout != "strided" else 2 * m), generator=g)  # repeats included
    ids = ids.to(device, id_dtype)
    return ids[:, ::2] if layout == "strided" else ids


def computed_dtype(kb: KernelBackend, dtype) -> torch.dtype:
    """The precision a backend computes inputs of ``dtype`` in, whose tolerance applies:
    the cpu backend takes its bfloat16 kernel for half-precision inputs where the CPU has
    one (the precision policy of engine.native_args), float16 ones included."""
    if kb.name == "cpu":
        from engine.backends import cpu

        if cpu.uses_bf16(dtype, dtype):
            return torch.bfloat16
    return dtype


def assert_close(got, ref, dtype) -> None:
    scale = max(1.0, float(ref.abs().max())) if ref.numel() else 1.0
    err = float((got.float().cpu() - ref.float().cpu()).abs().max()) if ref.numel() else 0.0
    assert err <= TOL[dtype] * scale, f"max error {err} > {TOL[dtype]} x {scale}"


def ref_topk(q: QNet, v, k):
    """The reference's top-k: stable sort, so ties go to the lower index."""
    from engine.backends import torch_ref

    s = torch_ref.score_dense(q.weights, q.biases, q.config, v)
    ss, si = torch.sort(s, dim=1, descending=True, stable=True)
    return ss[:, :k], si[:, :k], s

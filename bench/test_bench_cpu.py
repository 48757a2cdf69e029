"""pytest-benchmark microbenchmarks of the cpu backend's kernels (with the PyTorch
reference beside them). Not part of the test suite's default command; run with

    python -m pytest bench/test_bench_cpu.py --benchmark-only -q
"""

from __future__ import annotations

import pytest
import torch

from engine import QNet, QNetConfig
from engine.backends import cpu, torch_ref

pytestmark = pytest.mark.skipif(not cpu.is_available()[0], reason="cpu backend unavailable")


def _qnet(Q, d, L, dtype):
    g = torch.Generator().manual_seed(0)
    ws = [torch.randn(Q, d, d, generator=g) / d**0.5 for _ in range(L)] + [torch.randn(Q, d, 1, generator=g) / d**0.5]
    bs = [torch.randn(Q, d, generator=g) * 0.1 for _ in range(L)]
    return QNet([w.to(dtype) for w in ws], [b.to(dtype) for b in bs], QNetConfig())


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("impl", ["cpu", "torch"])
def test_dense_d768_L6(benchmark, impl, dtype):
    qn = _qnet(1, 768, 6, dtype)
    vec = torch.randn(512, 768).to(dtype)
    be = cpu if impl == "cpu" else torch_ref
    benchmark(be.score_dense, qn.weights, qn.biases, qn.config, vec, None)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=["fp32", "fp16"])
@pytest.mark.parametrize("impl", ["cpu", "torch"])
def test_gather_m512_d384_L2(benchmark, impl, dtype):
    qn = _qnet(1, 384, 2, torch.float32)
    vec = torch.randn(50_000, 384).to(dtype)
    ids = torch.randint(0, 50_000, (1, 512))
    if impl == "cpu":
        benchmark(cpu.score_gather, qn.weights, qn.biases, qn.config, vec, ids, None)
    else:
        # torch's best on CPUs without fast half/bf16 matmul: gather, convert to fp32, MKL.
        benchmark(lambda: torch_ref.score_dense(qn.weights, qn.biases, qn.config, vec[ids[0]].float()))


def test_exact_topk_100k_d384_L2(benchmark):
    qn = _qnet(1, 384, 2, torch.bfloat16)
    vec = torch.randn(100_000, 384).bfloat16()
    benchmark.pedantic(cpu.exact_topk, (qn.weights, qn.biases, qn.config, vec, 10), rounds=3, iterations=1)

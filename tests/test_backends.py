"""The backend protocol, the measured automatic choice on CUDA devices and the CUDA
backend's float32 fallback, with fake backends and a fake clock (the real timing needs a
GPU; the CUDA kernel tests cover it there)."""

import types

import torch

from engine import backends
from engine.backends import auto
from engine.backends.protocol import Backend, ExactTopK
from engine.qnet_config import QNetConfig


def fake(name, seconds, calls, fail=False):
    def score_dense(weights, biases, config, vectors, out=None):
        calls.append(name)
        if fail:
            raise RuntimeError("broken build")
        return seconds

    return types.SimpleNamespace(name=name, score_dense=score_dense, exact_topk=score_dense)


def test_measures_once_per_shape_and_keeps_the_fastest(monkeypatch):
    calls = []
    monkeypatch.setattr(auto, "_CHOICES", {})
    proxy = auto.MeasuredAuto((fake("cuda", 2.0, calls), fake("triton", 1.0, calls),
                               fake("torch", 5.0, calls, fail=True)),
                              timer=lambda fn: fn())  # "seconds" = the fake's return value
    w = [torch.zeros(2, 8, 8), torch.zeros(2, 8, 1)]
    v = torch.zeros(100, 8)
    assert proxy.score_dense(w, [torch.zeros(2, 8)], QNetConfig(), v) == 1.0
    assert calls == ["cuda", "triton", "torch", "triton"]  # each measured, then the winner
    calls.clear()
    proxy.score_dense(w, [torch.zeros(2, 8)], QNetConfig(), torch.zeros(120, 8))  # same octave
    assert calls == ["triton"]
    (key, (best, times)), = backends.auto_choices().items()
    assert best == "triton" and set(times) == {"cuda", "triton"}  # the broken one left out


def test_auto_on_cpu_is_the_first_runnable_backend():
    be = backends.get_backend("auto", "cpu")
    assert not isinstance(be, auto.MeasuredAuto)
    assert be.name == backends.resolve_name("auto", "cpu") in backends.AUTO_ORDER["cpu"]


def test_every_backend_implements_the_protocol():
    for name in backends.BACKENDS:
        ok, why = backends.availability(name)
        if not ok and "failed to load" in why:  # an optional dependency missing
            continue
        be = backends._load(name)
        assert isinstance(be, Backend) and be.name == name
        assert isinstance(be.availability(), tuple)
        # The fused scans are declared by the backends that have one.
        assert isinstance(be, ExactTopK) == (name in ("cpu", "triton", "cuda"))
    measured = auto.MeasuredAuto(())
    assert isinstance(measured, Backend) and isinstance(measured, ExactTopK)
    assert measured.name == "auto" and measured.availability() == (True, "ok")


def test_cuda_float32_fallback_survives_failing_triton_kernels(monkeypatch):
    """Float32 q-nets on the CUDA backend go to Triton; a Triton failure of any kind (a
    compile error is not a RuntimeError) is reported once and the reference takes over.
    Run on CPU tensors with a fake failing Triton backend."""
    import warnings

    import pytest

    from engine.backends import cuda, torch_ref

    calls = []

    class Broken:
        name = "triton"

        def score_dense(self, *args):
            calls.append("dense")
            raise NameError("Cannot access global variable X from within @jit'ed function")

        def exact_topk(self, weights, biases, config, vectors, k, block_size=None):
            raise ValueError("k is too large")  # bad input: passed on, not a kernel failure

    real = backends.get_backend
    monkeypatch.setattr(backends, "get_backend", lambda n, d: Broken() if n == "triton" else real(n, d))
    monkeypatch.setattr(cuda, "_triton_fp32_error", None)
    g = torch.Generator().manual_seed(0)
    w = [torch.randn(2, 8, 8, generator=g), torch.randn(2, 8, 1, generator=g)]
    b = [torch.randn(2, 8, generator=g)]
    v = torch.randn(30, 8, generator=g)
    ref = torch_ref.score_dense(w, b, QNetConfig(), v)
    with pytest.raises(ValueError, match="too large"):
        cuda.exact_topk(w, b, QNetConfig(), v, 5)
    with pytest.warns(RuntimeWarning, match="Triton kernels, which failed"):
        got = cuda.score_dense(w, b, QNetConfig(), v)
    assert torch.allclose(got, ref)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # reported once
        assert torch.allclose(cuda.score_dense(w, b, QNetConfig(), v), ref)
        s, i = cuda.exact_topk(w, b, QNetConfig(), v, 5)  # the reference, streamed
    assert calls == ["dense"]
    rs, ri = torch.sort(ref, dim=1, descending=True, stable=True)
    assert torch.equal(i, ri[:, :5]) and torch.allclose(s, rs[:, :5])

"""The backend protocol and the measured automatic choice on CUDA devices, with fake
backends and a fake clock (the real timing needs a GPU; the CUDA kernel tests cover it
there)."""

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

"""The measured automatic backend choice on CUDA devices, with fake backends and a fake
clock (the real timing needs a GPU; tests/test_cuda_backend.py covers it there)."""

import types

import torch

from engine import backends
from engine.qnet_config import QNetConfig


def fake(name, seconds, calls, fail=False):
    def score_dense(weights, biases, config, vectors, out=None):
        calls.append(name)
        if fail:
            raise RuntimeError("broken build")
        return seconds

    return types.SimpleNamespace(__name__=f"fake.{name}", score_dense=score_dense,
                                 exact_topk=score_dense)


def test_measures_once_per_shape_and_keeps_the_fastest(monkeypatch):
    calls = []
    mods = {"cuda": fake("cuda", 2.0, calls), "triton": fake("triton", 1.0, calls),
            "torch": fake("torch", 5.0, calls, fail=True)}
    monkeypatch.setattr(backends, "_load", lambda n: mods[n])
    monkeypatch.setattr(backends, "_time_call", lambda fn: fn())  # "seconds" = return value
    monkeypatch.setattr(backends, "_AUTO_CHOICES", {})
    proxy = backends._MeasuredAuto(("cuda", "triton", "torch"))
    w = [torch.zeros(2, 8, 8), torch.zeros(2, 8, 1)]
    v = torch.zeros(100, 8)
    assert proxy.score_dense(w, [torch.zeros(2, 8)], QNetConfig(), v) == 1.0
    assert calls == ["cuda", "triton", "torch", "triton"]  # each measured, then the winner
    calls.clear()
    proxy.score_dense(w, [torch.zeros(2, 8)], QNetConfig(), torch.zeros(120, 8))  # same octave
    assert calls == ["triton"]
    (key, (best, times)), = backends.auto_choices().items()
    assert best == "triton" and set(times) == {"cuda", "triton"}  # the broken one left out


def test_auto_on_cpu_is_a_plain_module():
    assert not isinstance(backends.get_backend("auto", "cpu"), backends._MeasuredAuto)

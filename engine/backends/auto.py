"""The measured automatic choice on CUDA devices: a backend of its own, named ``"auto"``.

Which fused backend is fastest depends on the shape (widths, depth, dtype, number of
documents), so instead of a fixed order the first call of each shape times every
candidate once on the call's own inputs and remembers the winner; a candidate that fails
is left out. The choices are kept per process (:func:`auto_choices`). Compressed
vectors (int8/float8_e4m3fn with ``scales=``) are measured as a shape of their own (the
key holds the vectors' dtype); their scales are checked before any candidate runs, so a
bad argument is a ValueError, not a candidate's failure.
"""

from __future__ import annotations

import torch

from .doc_scales import check_scales

_CHOICES: dict = {}  # shape key -> (winner name, {name: seconds})


def auto_choices() -> dict:
    """The measured choices so far: ``{shape key: (backend, {backend: seconds})}``."""
    return dict(_CHOICES)


def _bucket(x: int) -> int:
    return 1 << max(0, int(x) - 1).bit_length()  # next power of two: one measurement per octave


def shape_key(op, weights, config, vectors, extent, k=None) -> tuple:
    dims = (int(weights[0].shape[1]),) + tuple(int(w.shape[2]) for w in weights)
    return (op, str(vectors.device), str(weights[0].dtype), str(vectors.dtype), dims, config,
            int(weights[0].shape[0]), _bucket(extent), None if k is None else _bucket(k))


def time_call(fn) -> float:
    """Seconds of one call of ``fn`` on the current CUDA stream, after one warm-up call
    (which builds, compiles and autotunes)."""
    fn()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    fn()
    end.record()
    end.synchronize()
    return start.elapsed_time(end) / 1e3


class MeasuredAuto:
    """A :class:`~engine.backends.protocol.Backend` over ``candidates`` (backends that
    can run on CUDA tensors, fastest expected first), choosing per shape by measurement.
    ``timer(fn) -> seconds`` times one candidate's call."""

    name = "auto"

    def __init__(self, candidates: tuple, timer=time_call) -> None:
        self.candidates = tuple(candidates)
        self.timer = timer

    def availability(self) -> tuple[bool, str]:
        return True, "ok"

    def supports(self, device) -> bool:
        return torch.device(device).type == "cuda"

    def _choose(self, key, candidates, run):
        hit = _CHOICES.get(key)
        if hit is not None:
            for be in candidates:
                if be.name == hit[0]:
                    return be
        times, last_err = {}, None
        for be in candidates:
            try:
                times[be.name] = self.timer(lambda: run(be))
            except Exception as e:  # e.g. the CUDA build failed: measure the others
                last_err = e
        if not times:
            raise RuntimeError(f"no backend could run {key[0]}: {last_err}") from last_err
        best = min(times, key=times.get)
        _CHOICES[key] = (best, times)
        return next(be for be in candidates if be.name == best)

    def score_dense(self, weights, biases, config, vectors, out=None, *, scales=None):
        kw = _scales_kw(vectors, scales)
        run = lambda be: be.score_dense(weights, biases, config, vectors, out, **kw)  # noqa: E731
        key = shape_key("dense", weights, config, vectors, vectors.shape[0])
        return run(self._choose(key, self.candidates, run))

    def score_gather(self, weights, biases, config, vectors, ids, out=None, *, scales=None):
        kw = _scales_kw(vectors, scales)
        run = lambda be: be.score_gather(weights, biases, config, vectors, ids, out, **kw)  # noqa: E731
        key = shape_key("gather", weights, config, vectors, ids.numel())
        return run(self._choose(key, self.candidates, run))

    def exact_topk(self, weights, biases, config, vectors, k, block_size=None, *, scales=None):
        kw = _scales_kw(vectors, scales)
        fused = tuple(be for be in self.candidates if hasattr(be, "exact_topk"))
        run = lambda be: be.exact_topk(weights, biases, config, vectors, k, block_size, **kw)  # noqa: E731
        key = shape_key("topk", weights, config, vectors, vectors.shape[0], k)
        return run(self._choose(key, fused, run))

    def __repr__(self) -> str:
        return f"<backend 'auto' measuring {[be.name for be in self.candidates]}>"


def _scales_kw(vectors, scales) -> dict:
    """The ``scales=`` keyword for the candidates (none for uncompressed vectors), checked."""
    scales = check_scales(vectors, scales)
    return {} if scales is None else {"scales": scales}

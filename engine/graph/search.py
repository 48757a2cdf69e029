"""``graph_search``: validate options, pick the implementation (C++ loop on CPU, torch
ops elsewhere) and run the paper preset or the default."""

from __future__ import annotations

import numpy as np
import torch

from .. import backends
from . import native
from .beam import BEAM_DEFAULTS, default_search
from .paper import PAPER_DEFAULTS, paper_search_torch

PRESETS = ("default", "paper")
IMPLS = ("auto", "native", "torch")


def _int_opt(name, v, lo=1):
    if isinstance(v, bool) or not isinstance(v, (int, np.integer)):
        raise TypeError(f"{name} must be an int, got {type(v).__name__}")
    if v < lo:
        raise ValueError(f"{name} must be >= {lo}, got {v}")
    return int(v)


def _options(defaults: dict, given: dict, preset: str) -> dict:
    unknown = sorted(set(given) - set(defaults))
    if unknown:
        raise TypeError(f"unknown options for preset {preset!r}: {unknown}; valid: {sorted(defaults)}")
    opts = {**defaults, **given}
    for name, v in opts.items():
        d = defaults[name]
        if isinstance(d, bool):
            if not isinstance(v, bool):
                raise TypeError(f"{name} must be a bool, got {type(v).__name__}")
        elif isinstance(d, int):
            opts[name] = _int_opt(name, v, 0 if name in ("max_steps_lin",) else 1)
        elif name == "shortlist":  # a fraction of the corpus; 0 selects the full rescan
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0 <= v <= 1:
                raise ValueError(f"shortlist must be a number in [0, 1], got {v!r}")
            opts[name] = float(v)
        elif isinstance(d, float):
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not v > 0:
                raise ValueError(f"{name} must be a positive number, got {v!r}")
            opts[name] = float(v)
    return opts


def graph_search(index, qnets, k: int, *, backend: str = "auto", preset: str = "default",
                 impl: str = "auto", **options):
    """Approximate top-``k`` of ``index`` for every q-net over its neighbour graph.

    Args:
        preset: ``"default"`` (linearised candidate search + q-net refinement, see
            :mod:`engine.graph.beam`; options ``ef`` (the speed/recall knob) and the rest
            of ``BEAM_DEFAULTS``) or ``"paper"`` (options ``PAPER_DEFAULTS``).
        impl: ``"native"`` (the C++ loop, CPU tensors), ``"torch"`` (batched torch ops,
            any device) or ``"auto"``.

    Returns:
        ``(scores (Q, k) float32, ids (Q, k) int64, stats)``; unfilled slots hold
        ``-inf`` / ``-1``. ``stats``: preset, impl, ``documents_scored`` (total q-net
        evaluations), ``linear_scored`` (dot products), ``steps`` (mean per query).
    """
    if preset not in PRESETS:
        raise ValueError(f"preset must be one of {PRESETS}, got {preset!r}")
    if impl not in IMPLS:
        raise ValueError(f"impl must be one of {IMPLS}, got {impl!r}")
    if index.graph is None:
        raise ValueError("graph search needs a graph: call index.build_graph() first")
    if index.vectors.device != qnets.device:
        raise ValueError(f"q-nets are on {qnets.device} but the index is on {index.vectors.device}")
    be = backends.get_backend(backend, qnets.device)
    if impl == "auto":
        impl = "native" if qnets.device.type == "cpu" and native.available() else "torch"
    if impl == "native":
        if qnets.device.type != "cpu":
            raise ValueError("impl='native' runs on CPU tensors only")
        native.require()
    if preset == "paper":
        opts = _options(PAPER_DEFAULTS, options, preset)
        if impl == "native":
            s, i, st = native.paper_search(index, qnets, k, **opts)
        else:
            s, i, st = paper_search_torch(index, qnets, k, be, **opts)
    else:
        opts = _options(BEAM_DEFAULTS, options, preset)
        s, i, st = default_search(index, qnets, k, be, impl=impl, **opts)
    stats = {"preset": preset, "impl": impl, "options": opts}
    for name, v in st.items():
        if isinstance(v, torch.Tensor):
            stats[name] = int(v.sum()) if name != "steps" else float(v.float().mean())
            stats[name + "_per_query"] = v.cpu().tolist()
        else:
            stats[name] = v
    return s, i, stats

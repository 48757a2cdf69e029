"""How many CPU threads the engine's native code uses: one engine-wide setting, and a
per-call ``num_threads`` that overrides it.

The engine-wide number is, in order: what :func:`set_num_threads` set; else the
environment variable ``HYPENCODER_NUM_THREADS`` (read at the first search); else
``torch.get_num_threads()``. It governs the ``cpu`` backend's kernels and the native graph
search, whose threads are the engine's own pool (they sleep when idle and never spin);
torch's own operations keep torch's setting (``torch.set_num_threads``), and GPU backends
use no CPU threads for scoring. A call runs on its calling thread alone unless its work is
large enough to pay for handing parts to other threads (see bench/RESULTS.md, "Serving"):
a batch-1 graph search over a corpus of some 100K documents does all its work on the
calling thread whatever the setting; batches split over queries.

Any number of Python threads may search at once: every native call releases the GIL.
"""

from __future__ import annotations

import os
import threading

import numpy as np

ENV = "HYPENCODER_NUM_THREADS"
MAX_THREADS = 1024

_lock = threading.Lock()
_setting: int | None = None
_env: int | None = None
_env_read = False


def check_num_threads(n, name: str = "num_threads") -> int:
    """``n`` as an int in ``1..MAX_THREADS``; TypeError for a non-integer (or a bool),
    ValueError outside the range."""
    if isinstance(n, (bool, np.bool_)) or not isinstance(n, (int, np.integer)):
        raise TypeError(f"{name} must be an int, got {type(n).__name__}")
    if not 1 <= n <= MAX_THREADS:
        raise ValueError(f"{name} must be in 1..{MAX_THREADS}, got {n}")
    return int(n)


def _from_env() -> int | None:
    global _env, _env_read
    with _lock:
        if not _env_read:
            raw = os.environ.get(ENV, "").strip()
            value = None
            if raw:
                try:
                    value = int(raw)
                except ValueError:
                    raise ValueError(f"{ENV}={raw!r}: expected an integer in 1..{MAX_THREADS}") from None
                if not 1 <= value <= MAX_THREADS:
                    raise ValueError(f"{ENV}={raw!r}: expected an integer in 1..{MAX_THREADS}")
            _env, _env_read = value, True
        return _env


def get_num_threads() -> int:
    """The engine-wide number of threads (see the module docstring for where it comes from)."""
    if _setting is not None:
        return _setting
    env = _from_env()
    if env is not None:
        return env
    import torch

    return max(1, torch.get_num_threads())


def set_num_threads(n: int | None) -> None:
    """Set the engine-wide number of threads (``None``: back to the default). Takes effect
    for calls that start afterwards; safe while other threads search."""
    global _setting
    _setting = None if n is None else check_num_threads(n)


def resolve(num_threads=None) -> int:
    """The threads of one call: ``num_threads`` when given (validated), else the
    engine-wide number."""
    return get_num_threads() if num_threads is None else check_num_threads(num_threads)

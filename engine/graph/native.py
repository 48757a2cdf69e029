"""Bridge to the C++ search loops in csrc/graph (``engine._C``)."""

from __future__ import annotations

import torch

_ERR = None


def _module():
    global _ERR
    try:
        from .. import _C
    except ImportError as e:  # the extension was not built
        _ERR = str(e)
        return None
    if not hasattr(_C, "graph_paper_search"):
        _ERR = "engine._C was built without csrc/graph"
        return None
    return _C


def available() -> bool:
    return _module() is not None


def require():
    if _module() is None:
        raise RuntimeError(f"the C++ graph search is not available: {_ERR}")


def paper_search(index, qnets, k, **opts):  # filled in with the C++ loop
    raise NotImplementedError

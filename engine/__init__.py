"""Hypencoder retrieval engine: fused q-net scoring, exact and graph search.

Quick start::

    import engine
    qnets = engine.QNet.load("qnets.safetensors")
    index = engine.Index.load("my-index")
    result = index.search(qnets, k=10)
    result.scores, result.ids
"""

import sys as _sys

from . import _layout

_layout.mount(_sys.modules[__name__])  # engine.kernels, engine.cuda_src in a source checkout

from . import synthetic  # noqa: E402
from .backends import available_backends  # noqa: E402
from .index import Index, SearchResult  # noqa: E402
from .qnet import QNet  # noqa: E402
from .qnet_config import QNetConfig  # noqa: E402
from .scoring import score, score_gather  # noqa: E402
from .threads import get_num_threads, set_num_threads  # noqa: E402

__all__ = [
    "Index",
    "QNet",
    "SearchResult",
    "synthetic",
    "QNetConfig",
    "available_backends",
    "score",
    "score_gather",
    "get_num_threads",
    "set_num_threads",
    "HypencoderModel",
]
__version__ = "0.1.0"


def __getattr__(name):
    # HypencoderModel is resolved on first use so that ``import engine`` stays light; the
    # class itself imports transformers (an optional extra) only when a model is loaded.
    if name == "HypencoderModel":
        from .hf import HypencoderModel

        return HypencoderModel
    raise AttributeError(f"module 'engine' has no attribute {name!r}")

"""Hypencoder retrieval engine: fused q-net scoring, exact and graph search.

Quick start::

    import engine
    qnets = engine.QNet.load("qnets.safetensors")
    index = engine.Index.load("my-index")
    result = index.search(qnets, k=10)
    result.scores, result.ids
"""

from . import synthetic
from .backends import available_backends
from .index import Index, SearchResult
from .qnet import QNet
from .qnet_config import QNetConfig
from .scoring import score, score_gather

__all__ = [
    "Index",
    "QNet",
    "SearchResult",
    "synthetic",
    "QNetConfig",
    "available_backends",
    "score",
    "score_gather",
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

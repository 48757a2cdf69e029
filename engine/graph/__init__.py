"""Neighbour graph, candidate codes and graph search.

- :mod:`.build`: the ``R`` nearest other documents of every document by L2.
- :mod:`.codes`: the compressed codes the default search draws linear candidates from.
- :mod:`.search`: ``graph_search``, the entry point of :meth:`engine.Index.search`: the
  presets, and the choice between the two implementations :mod:`.native` (C++) and
  :mod:`.torch_impl` (torch, any device).
- :mod:`.params`: typed search parameters; :mod:`.linearize`: closed-form q-net gradients.
"""

from .build import build_knn_graph
from .codes import LinearCodes, ResidualBits, build_codes
from .params import DefaultSearchParams, PaperSearchParams
from .search import graph_search

__all__ = ["build_knn_graph", "build_codes", "LinearCodes", "ResidualBits", "DefaultSearchParams", "PaperSearchParams",
           "graph_search"]

"""Neighbour graph and graph search.

- :mod:`.build`: the ``R`` nearest other documents of every document by L2 (exact blocked
  torch, or k-means clusters / faiss IVF for large corpora on CPU).
- :mod:`.paper`: the paper's algorithm (``preset="paper"``), exactly as specified.
- :mod:`.beam`: the default: a linearised q-net finds candidates by best-first search on
  the graph at dot-product cost, then the q-net itself refines them on the same graph.
- :mod:`.search`: the entry point used by :meth:`engine.Index.search`.
"""

from .build import build_knn_graph
from .search import graph_search

__all__ = ["build_knn_graph", "graph_search"]

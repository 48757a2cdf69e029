"""Row filters of a search: per-query allow-lists and the index's deletion mask, resolved
once into one bitmap over the index's rows.

A search's ``allow`` is one of:

- a bitmap over rows: a bool tensor or ndarray ``(n,)`` (the whole batch) or ``(Q, n)``
  (one row per query), True = allowed;
- external ids of the index: a sequence (list, tuple, 1-D int ndarray or tensor) of ids
  as the index stores them (``int`` or ``str``; an index without stored ids is addressed
  by row index), for the whole batch;
- a list of ``Q`` such entries (id sequences or ``(n,)`` bitmaps), one per query.

An id the index does not hold raises ``ValueError`` (a misspelt id would otherwise
silently narrow the search); an id stored on several rows allows all of them; an empty
allow-list is valid and its query returns only padding (score ``-inf``, id ``-1``).
``Index.deleted`` (None or a bool tensor ``(n,)``, True = hidden) is ANDed out of every
query's allowed rows.

The bookkeeping over n rows runs in numpy: torch's intra-op threads cost tens of
milliseconds per O(n) op on a loaded machine, more than a whole selective search.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from ..once import cached


@dataclass
class RowFilter:
    """Allowed rows of each query: ``mask`` bool ``(M, n)`` on the CPU with ``M`` 1 (one
    bitmap for the whole batch) or ``Q`` (a torch view of a numpy array); ``counts`` int64
    ``(Q,)``: allowed rows per query."""

    mask: torch.Tensor
    counts: torch.Tensor
    _pos: torch.Tensor | None = field(default=None, repr=False, compare=False)

    @property
    def shared(self) -> bool:
        return self.mask.shape[0] == 1

    def rows(self, q: int) -> torch.Tensor:
        return self.mask[0 if self.shared else q]

    def select(self, queries: torch.Tensor) -> "RowFilter":
        """The filter of a subset of the queries (``queries``: int64 indices)."""
        if self.shared:
            return RowFilter(self.mask, self.counts[queries], self._pos)
        return RowFilter(torch.from_numpy(self.mask.numpy()[queries.numpy()]), self.counts[queries])

    def positions(self) -> torch.Tensor:
        """``(M, longest)`` int64: each bitmap's allowed rows ascending, -1 after them
        (kept: the filter of the deleted rows alone is reused by every search)."""
        if self._pos is not None:
            return self._pos
        m = self.mask.numpy()
        counts = np.count_nonzero(m, axis=1)
        rows, cols = np.nonzero(m)
        starts = np.cumsum(counts) - counts
        pos = np.full((m.shape[0], int(counts.max()) if counts.size else 0), -1, dtype=np.int64)
        pos[rows, np.arange(rows.size) - starts[rows]] = cols
        self._pos = torch.from_numpy(pos)
        return self._pos

    def per_query(self, Q: int) -> torch.Tensor:
        """``(Q, n)`` bool (a view when shared)."""
        return self.mask.expand(Q, -1) if self.shared else self.mask


def check_deleted(deleted, n: int) -> torch.Tensor | None:
    """``Index.deleted``: None or a CPU torch.bool tensor (n,); else TypeError/ValueError."""
    if deleted is None:
        return None
    if not isinstance(deleted, torch.Tensor) or deleted.dtype != torch.bool:
        raise TypeError(f"Index.deleted must be None or a torch.bool tensor, got "
                        f"{getattr(deleted, 'dtype', type(deleted).__name__)}")
    if tuple(deleted.shape) != (n,):
        raise ValueError(f"Index.deleted must have shape ({n},), got {tuple(deleted.shape)}")
    if deleted.device.type != "cpu":
        raise ValueError(f"Index.deleted must be on the CPU, got {deleted.device}")
    return deleted


def _is_bitmap(x) -> bool:
    return (isinstance(x, torch.Tensor) and x.dtype == torch.bool) or \
        (isinstance(x, np.ndarray) and x.dtype == np.bool_)


def _bitmap(x, n: int, what: str) -> np.ndarray:
    t = x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)
    if t.ndim != 1 or t.shape[0] != n:
        raise ValueError(f"{what}: a bitmap must have shape ({n},), got {tuple(t.shape)}")
    return t


def _int_lookup(index):
    """(sorted ids, the rows in that order) of an index with integer ids, built once."""
    ids = index._ids

    def build():
        order = np.argsort(ids, kind="stable")
        return ids, ids[order], order

    return cached(index, "_filter_id_cache", ("int", id(ids)), build, valid=lambda hit: hit[0] is ids)[1:]


def _str_lookup(index) -> dict:
    ids = index._ids

    def build():
        table: dict = {}
        for row, s in enumerate(ids):
            table.setdefault(s, []).append(row)
        return ids, table

    return cached(index, "_filter_id_cache", ("str", id(ids)), build, valid=lambda hit: hit[0] is ids)[1]


def _ids_to_rows(index, ids, what: str) -> np.ndarray:
    """Row indices (int64) of the external ids ``ids`` (a sequence)."""
    n = len(index)
    kind = index.ids_kind
    if isinstance(ids, torch.Tensor):
        if ids.dtype.is_floating_point or ids.dtype.is_complex or ids.dtype == torch.bool:
            raise TypeError(f"{what}: ids must be integers or strings, got a {ids.dtype} tensor")
        ids = ids.detach().cpu().numpy()
    if isinstance(ids, np.ndarray):
        if ids.ndim != 1:
            raise ValueError(f"{what}: an id array must be 1-D, got shape {ids.shape}")
        if ids.dtype.kind in "US" or ids.dtype == object:
            ids = ids.tolist()
        elif ids.dtype.kind not in "iu":
            raise TypeError(f"{what}: ids must be integers or strings, got dtype {ids.dtype}")
    if isinstance(ids, np.ndarray):
        arr = ids
        if kind == "str":
            raise TypeError(f"{what}: this index has string ids, got integers")
    else:
        items = list(ids)
        if not items:
            return np.zeros(0, dtype=np.int64)
        if all(isinstance(i, str) for i in items):
            if kind != "str":
                raise TypeError(f"{what}: this index has {'integer' if kind == 'int' else 'no stored'} ids "
                                f"(address rows by integer), got strings")
            table = _str_lookup(index)
            rows = []
            for s in items:
                r = table.get(s)
                if r is None:
                    raise ValueError(f"{what}: unknown id {s!r}")
                rows.extend(r)
            return np.asarray(rows, dtype=np.int64)
        if not all(isinstance(i, (int, np.integer)) and not isinstance(i, (bool, np.bool_)) for i in items):
            odd = (i for i in items if not isinstance(i, (int, np.integer, str)) or isinstance(i, (bool, np.bool_)))
            bad = next(odd, None)
            got = "a mix of int and str" if bad is None else f"{type(bad).__name__} {bad!r}"
            raise TypeError(f"{what}: ids must be all int or all str, got {got}")
        if kind == "str":
            raise TypeError(f"{what}: this index has string ids, got integers")
        try:
            arr = np.asarray(items, dtype=np.int64)
        except OverflowError:
            raise ValueError(f"{what}: an id does not fit int64") from None
    if arr.size and arr.dtype.kind == "u" and int(arr.max()) > np.iinfo(np.int64).max:
        raise ValueError(f"{what}: id {int(arr.max())} does not fit int64")
    arr = arr.astype(np.int64, copy=False)
    if kind == "none":  # row indices
        bad = (arr < 0) | (arr >= n)
        if bad.any():
            raise ValueError(f"{what}: unknown id {int(arr[bad][0])} (this index has no stored ids: rows 0..{n - 1})")
        return arr
    sorted_ids, order = _int_lookup(index)
    lo = np.searchsorted(sorted_ids, arr, "left")
    hi = np.searchsorted(sorted_ids, arr, "right")
    missing = lo == hi
    if missing.any():
        raise ValueError(f"{what}: unknown id {int(arr[missing][0])}")
    if bool((hi - lo > 1).any()):  # an id on several rows: all of them
        rows = np.concatenate([order[a:b] for a, b in zip(lo, hi)])
    else:
        rows = order[lo]
    return np.asarray(rows, dtype=np.int64)


def _one(index, entry, what: str) -> np.ndarray:
    """Bitmap (n,) of one allow-list entry (a bitmap or a sequence of ids)."""
    n = len(index)
    if _is_bitmap(entry):
        return _bitmap(entry, n, what)
    if isinstance(entry, (str, bytes)):
        raise TypeError(f"{what}: an allow-list is a sequence of ids, not a single string")
    if not hasattr(entry, "__len__") and not hasattr(entry, "__iter__"):
        raise TypeError(f"{what}: expected a bitmap or a sequence of ids, got {type(entry).__name__}")
    m = np.zeros(n, dtype=bool)
    m[_ids_to_rows(index, entry, what)] = True
    return m


def _is_per_query(allow) -> bool:
    """A list/tuple whose items are themselves allow-lists (sequences or bitmaps)."""
    if not isinstance(allow, (list, tuple)) or not allow:
        return False
    first = allow[0]
    return _is_bitmap(first) or (isinstance(first, (list, tuple, np.ndarray, torch.Tensor))
                                 and not (isinstance(first, (np.ndarray, torch.Tensor)) and first.ndim == 0))


def _deleted_only(gone: np.ndarray) -> RowFilter | None:
    """The filter of the deleted rows alone (None when nothing is deleted); counts (1,)."""
    if not gone.any():
        return None
    mask = ~gone[None]
    return RowFilter(torch.from_numpy(mask), torch.from_numpy(np.count_nonzero(mask, axis=1).astype(np.int64)))


def resolve(index, allow, Q: int) -> RowFilter | None:
    """The :class:`RowFilter` of a search of ``Q`` queries: ``allow`` (see the module
    docstring) AND NOT ``index.deleted``; None when neither filters anything.

    Raises ``TypeError`` for an allow-list of another kind (floats, a mix of ints and
    strings, string ids on an integer-id index) and ``ValueError`` for a wrong shape or
    count, or an unknown id."""
    n = len(index)
    deleted = check_deleted(getattr(index, "deleted", None), n)
    gone = None if deleted is None else deleted.numpy()
    if allow is None:
        if gone is None:
            return None
        # Built once per state of the deletion mask (a new tensor or an in-place change
        # makes a new one): a large index pays its O(n) passes once, not per search.
        hit = cached(index, "_filter_deleted_cache", "deleted",
                     lambda: (deleted, deleted._version, _deleted_only(gone)),
                     valid=lambda h: h[0] is deleted and h[1] == deleted._version)
        rf = hit[2]
        if rf is None:
            return None
        return RowFilter(rf.mask, rf.counts.expand(Q).contiguous(), rf.positions())
    elif _is_bitmap(allow) and getattr(allow, "ndim", 1) == 2:
        t = allow.detach().cpu().numpy() if isinstance(allow, torch.Tensor) else allow
        if tuple(t.shape) != (Q, n):
            raise ValueError(f"allow: a per-query bitmap must have shape ({Q}, {n}), got {tuple(t.shape)}")
        mask = t.copy()
    elif _is_bitmap(allow) and getattr(allow, "ndim", 1) != 1:
        raise ValueError(f"allow: a bitmap must have shape ({n},) or ({Q}, {n}), got {tuple(allow.shape)}")
    elif _is_per_query(allow):
        if len(allow) != Q:
            raise ValueError(f"allow: got {len(allow)} per-query allow-lists for {Q} queries")
        mask = np.stack([_one(index, a, f"allow[{q}]") for q, a in enumerate(allow)]) if Q else \
            np.zeros((0, n), dtype=bool)
    else:
        mask = _one(index, allow, "allow")[None].copy()
    if gone is not None:
        mask &= ~gone
    mask = np.ascontiguousarray(mask)
    counts = np.count_nonzero(mask, axis=1).astype(np.int64)
    if mask.shape[0] == 1:
        counts = np.repeat(counts, Q)
    return RowFilter(torch.from_numpy(mask), torch.from_numpy(counts))

"""Writing sharded indexes: split one index by rows (:func:`shard_index`), or name shards
built one by one (:func:`join_shards`)."""

from __future__ import annotations

import os
import sys

import numpy as np

from .. import storage
from ..storage import SaveTargetError
from .manifest import ShardedManifest, ShardEntry, read_sharded_manifest, shard_manifest_sha256

# The options of a graph build that a shard keeps from its source's graph, by method; the
# others (the number of clusters, the training sample) follow the shard's own size.
_KEPT_BUILD_OPTIONS = {"exact": ("seed", "dims"), "faiss": ("seed", "dims", "nprobe"),
                       "cluster": ("seed", "dims", "nprobe", "niter", "kmeans")}


def shard_sizes(n: int, num_shards: int) -> list[int]:
    """Row counts of ``num_shards`` shards of ``n`` rows, as equal as possible, the larger
    first."""
    return [n // num_shards + (i < n % num_shards) for i in range(num_shards)]


def _check_sizes(n: int, num_shards, sizes) -> list[int]:
    if (num_shards is None) == (sizes is None):
        raise TypeError("give exactly one of num_shards and sizes")
    if sizes is None:
        if isinstance(num_shards, bool) or not isinstance(num_shards, (int, np.integer)):
            raise TypeError(f"num_shards must be an int, got {type(num_shards).__name__}")
        if not 1 <= num_shards <= 1 << 20:
            raise ValueError(f"num_shards must be in 1..{1 << 20}, got {num_shards}")
        return shard_sizes(n, int(num_shards))
    sizes = list(sizes)
    if not sizes or any(isinstance(s, bool) or not isinstance(s, (int, np.integer)) or s < 0 for s in sizes):
        raise ValueError(f"sizes must be a non-empty list of non-negative ints, got {sizes!r}")
    if sum(sizes) != n:
        raise ValueError(f"sizes add up to {sum(sizes)} rows, the index holds {n}")
    return [int(s) for s in sizes]


def graph_build_options(params: dict) -> dict:
    """The keyword options of :meth:`engine.Index.build_graph` that rebuild a graph like
    the one whose manifest ``params`` are given, for a corpus of another size."""
    method = params.get("method")
    if method not in _KEPT_BUILD_OPTIONS:
        return {}
    return {"method": method, **{k: params[k] for k in _KEPT_BUILD_OPTIONS[method] if k in params}}


def _top_names(m: ShardedManifest) -> set[str]:
    """The entries of the sharded directory its manifest accounts for: the first path
    component of every shard inside it."""
    names = set()
    for s in m.shards:
        rel = os.path.normpath(s.path)
        if not os.path.isabs(rel) and rel.split(os.sep)[0] not in ("..", "."):
            names.add(rel.split(os.sep)[0])
    return names


def check_replaceable(target: str, shown: str | None = None) -> None:
    """Refuse (:class:`engine.storage.SaveTargetError`) to replace anything but nothing, an
    empty directory or a sharded index holding only its manifest and its own shards."""
    shown = shown if shown is not None else target
    if not os.path.lexists(target):
        return
    if not os.path.isdir(target) or os.path.islink(target):
        raise SaveTargetError(f"{shown!r} exists and is not a directory: refusing to replace it")
    entries = set(os.listdir(target))
    if not entries:
        return
    try:
        m = read_sharded_manifest(target)
    except (OSError, ValueError):
        m = None
    if m is None or not entries <= {storage.MANIFEST} | _top_names(m):
        raise SaveTargetError(f"{shown!r} is a non-empty directory that is not a sharded index of this engine (or "
                              "holds files its manifest does not account for): choose a new or empty directory")


def _write(out, build) -> ShardedManifest:
    """Check ``out``, let ``build(tmp, target)`` write the shards into a temporary sibling
    and return the manifest's JSON, then put the directory in place in one step."""
    target = storage.save_target(out, check=check_replaceable)
    with storage.temp_dir(target) as tmp:
        manifest = build(tmp, target)
        storage.commit_dir(tmp, target, manifest, check=check_replaceable)
    return read_sharded_manifest(target)


def _ids_slice(ids, a: int, b: int):
    if ids is None:
        return None
    if isinstance(ids, np.ndarray):
        return np.array(ids[a:b])
    return [ids[j] for j in range(a, b)]


def shard_index(source, out, num_shards: int | None = None, *, sizes=None, graph: bool | int | None = None,
                codes: bool | int | None = None, graph_options: dict | None = None, verify: bool = False,
                progress: bool = False) -> ShardedManifest:
    """Split an index by rows into shards, each an ordinary index, under the directory
    ``out`` (``out/shard-00000``, ...) with a sharded manifest.

    Args:
        source: an :class:`engine.Index` or the path of one (opened memory-mapped;
            ``verify`` checks its files' SHA-256 first).
        num_shards: equal shards (the first ``n % num_shards`` one row larger); or
            ``sizes``: the row count of each shard in order (zeros allowed).
        graph: build each shard's neighbour graph: ``None`` when the source has one (the
            same degree; the build options of :func:`graph_build_options`), an int for
            that degree, False for none. A graph cannot be cut: each shard's is rebuilt
            on its own rows.
        codes: each shard's candidate codes: ``None`` when the source has them (the same
            bytes per vector), an int for that many bytes, False for none.
        graph_options: keyword options of :meth:`engine.Index.build_graph` instead of the
            source's.

    Empty shards get no graph or codes (a search skips them). ``out`` must be absent, an
    empty directory or a sharded index (replaced in one step); anything else raises
    :class:`engine.storage.SaveTargetError` before any work.

    Returns:
        The written :class:`ShardedManifest`.
    """
    from ..index import Index

    if not isinstance(source, Index):
        source = Index.load(source, verify=verify)
    n = len(source)
    sizes = _check_sizes(n, num_shards, sizes)
    degree = _choice("graph", graph, source.graph.shape[1] if source.graph is not None else None)
    code_bytes = _choice("codes", codes, source.codes.params.get("bytes_per_vector", 64)
                         if source.codes is not None else None)
    if graph_options is None:
        graph_options = graph_build_options(source.graph_params) if source.graph is not None else {}
    if not isinstance(graph_options, dict):
        raise TypeError(f"graph_options must be a dict, got {type(graph_options).__name__}")
    ids = source._ids

    def build(tmp, target):
        entries, offset = [], 0
        for i, size in enumerate(sizes):
            name = f"shard-{i:05d}"
            sub = Index.from_vectors(source.vectors[offset:offset + size], _ids_slice(ids, offset, offset + size),
                                     scales=None if source.scales is None else source.scales[offset:offset + size])
            if source.deleted is not None and bool(source.deleted[offset:offset + size].any()):
                sub.deleted = source.deleted[offset:offset + size].clone()  # tombstones go with their rows
            if size and degree is not None:
                sub.build_graph(degree, codes=code_bytes is not None, code_bytes=code_bytes or 64,
                                progress=progress, **graph_options)
            elif size and code_bytes is not None:
                sub.build_codes(code_bytes, progress=progress)
            sub.save(os.path.join(tmp, name))
            entries.append(ShardEntry(name, offset, size, shard_manifest_sha256(os.path.join(tmp, name)),
                                      sub.graph is not None, sub.codes is not None))
            if progress:
                print(f"shard {i}: rows {offset}..{offset + size - 1} ({size:,d}): {sub}", file=sys.stderr)
            offset += size
        return ShardedManifest(target, n, source.dim, storage.TORCH_TO_NAME[source.dtype], source.ids_kind,
                               tuple(entries)).to_json()

    return _write(out, build)


def _choice(name: str, value, from_source):
    """``None`` -> the source's setting; False -> none; a positive int -> that."""
    if value is None:
        return from_source
    if value is False:
        return None
    if value is True or not isinstance(value, (int, np.integer)) or value <= 0:
        raise ValueError(f"{name} must be None (as the source), False or a positive int, got {value!r}")
    return int(value)


def join_shards(out, shard_dirs, *, verify: bool = False) -> ShardedManifest:
    """Write a sharded manifest at ``out`` over indexes built one by one (``shard_dirs``,
    in row order; they stay where they are and are named by their path relative to
    ``out``).

    Every shard must hold vectors of one width and dtype and one kind of ids. ``verify``
    checks every file's SHA-256. Raises
    ``ValueError`` naming the shard that does not fit, and
    :class:`engine.storage.SaveTargetError` for an ``out`` that may not be replaced.
    """
    from ..index import Index

    if isinstance(shard_dirs, (str, bytes, os.PathLike)):
        raise TypeError("shard_dirs must be a list of index directories, not one path")
    shard_dirs = [os.path.abspath(os.fspath(p)) for p in shard_dirs]
    if not shard_dirs:
        raise ValueError("join_shards needs at least one shard")
    target = storage.save_target(out, check=check_replaceable)
    indexes = [Index.load(p, verify=verify) for p in shard_dirs]
    first = indexes[0]
    for p, ix in zip(shard_dirs, indexes):
        for what, a, b in (("dim", ix.dim, first.dim), ("dtype", ix.dtype, first.dtype),
                           ("ids", ix.ids_kind, first.ids_kind)):
            if a != b:
                raise ValueError(f"shard {p} has {what} {a}, the first shard {shard_dirs[0]} has {b}")

    def build(tmp, target):
        entries, offset = [], 0
        for p, ix in zip(shard_dirs, indexes):
            entries.append(ShardEntry(os.path.relpath(p, target), offset, len(ix), shard_manifest_sha256(p),
                                      ix.graph is not None, ix.codes is not None))
            offset += len(ix)
        return ShardedManifest(target, offset, first.dim, storage.TORCH_TO_NAME[first.dtype], first.ids_kind,
                               tuple(entries)).to_json()

    return _write(target, build)

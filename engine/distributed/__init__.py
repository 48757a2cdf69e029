"""Sharded exact and graph search over ``torch.distributed`` (gloo on CPUs, NCCL on GPUs).

A sharded index is a directory with a small manifest naming ordinary indexes (the
shards), each holding a contiguous block of rows (:mod:`.manifest`). Split an index with
:func:`shard_index` (``python -m engine shard IDX OUT --shards N``) or name shards built
one by one with :func:`join_shards`. Every rank of a process group opens its shards
(:meth:`ShardedSearcher.open`, memory-mapped) and searches them with the local engine;
one ``all_gather`` merges the ranks' top-k into the global top-k with global rows and
the engine's tie rule.

Inside an existing torch.distributed program (the group is initialised by the program)::

    from engine.distributed import ShardedSearcher
    searcher = ShardedSearcher.open("sharded-idx", timeout=60)   # on every rank
    result = searcher.search(qnets if rank == 0 else None, k=10, mode="graph")
    ids = searcher.external_ids(result.ids)                      # on every rank

From the command line, one process per shard::

    torchrun --nproc-per-node 4 -m engine search --index sharded-idx --qnets q.safetensors -k 10

Faults: every collective is bounded by ``timeout``; a rank that dies, stalls or fails its
checks makes every other rank raise (:class:`ShardedSearchError`,
:class:`ShardCheckError`) instead of waiting or returning part of the answer. With NCCL,
a collective that never completes is ended by the process group's watchdog after the
group's timeout (:func:`init_from_env` sets it).
"""

from __future__ import annotations

import datetime
import os

from .comm import ShardedSearchError
from .manifest import ShardCheckError, ShardedManifest, is_sharded, read_sharded_manifest
from .merge import merge_topk
from .searcher import ShardedSearcher, ShardedSearchStats, shards_of_rank
from .split import join_shards, shard_index

__all__ = ["ShardedSearcher", "ShardedSearchStats", "ShardedSearchError", "ShardCheckError", "ShardedManifest",
           "shard_index", "join_shards", "read_sharded_manifest", "is_sharded", "merge_topk", "shards_of_rank",
           "init_from_env", "launched"]


def launched() -> bool:
    """Whether this process was started as one rank of several (``torchrun`` sets
    ``WORLD_SIZE``, ``RANK``, ``MASTER_ADDR`` and ``MASTER_PORT``)."""
    return all(v in os.environ for v in ("WORLD_SIZE", "RANK", "MASTER_ADDR", "MASTER_PORT"))


def init_from_env(device: str = "cpu", timeout: float = 300.0):
    """Join the process group that ``torchrun`` describes in the environment; returns the
    device this rank's shards should go to.

    ``device``: ``"cpu"`` (gloo) or ``"cuda"`` (NCCL, this rank's GPU ``LOCAL_RANK``).
    ``timeout``: seconds after which a collective that does not complete fails (gloo) or
    ends the process (NCCL's watchdog). Raises ``ValueError`` for another device or a
    missing variable.
    """
    import torch
    import torch.distributed as dist

    if device not in ("cpu", "cuda"):
        raise ValueError(f"device must be 'cpu' or 'cuda', got {device!r}")
    if not launched():
        raise ValueError("not started as one of several ranks: run under torchrun (WORLD_SIZE, RANK, "
                         "MASTER_ADDR and MASTER_PORT are not all set)")
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or not 0 < timeout < 1e7:
        raise ValueError(f"timeout must be a positive number of seconds, got {timeout!r}")
    dev = torch.device("cpu")
    if device == "cuda":
        if not torch.cuda.is_available():
            raise ValueError("device 'cuda' asked for, but this machine or torch build has no CUDA device")
        dev = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(dev)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device == "cuda" else "gloo",
                                timeout=datetime.timedelta(seconds=timeout))
    return dev

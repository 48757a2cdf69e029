"""The collectives of a sharded search, each bounded in time and failing loudly.

Every call is made by every rank of the group in the same order. A collective that does
not complete (a peer died, stalled past the timeout, or left) raises
:class:`ShardedSearchError` on this rank; the peers' calls fail the same way, by the
broken connection or by their own timeout, so no rank waits forever and none returns a
partial result. Messages between ranks are JSON, never pickle.
"""

from __future__ import annotations

import datetime
import json

import torch

from ..cli import one_line


class ShardedSearchError(RuntimeError):
    """A sharded search could not complete on every rank: a collective failed (a rank
    died, stalled past the timeout or left the group) or a rank's search failed. No
    result is returned. After a failed collective the process group is unusable."""


def _dist():
    import torch.distributed as dist

    return dist if dist.is_available() and dist.is_initialized() else None


class Comm:
    """This process's place in a group: ``rank``, ``size`` and the collectives.

    ``group``: a ``torch.distributed`` process group (None: the default group when
    torch.distributed is initialised, else this process alone, with no collectives).
    ``timeout``: seconds a collective may take before it fails (None: the group's own
    timeout). Tensors travel on ``device``: the current CUDA device for NCCL, else the CPU.
    """

    def __init__(self, group=None, timeout: float | None = None):
        dist = _dist()
        if timeout is not None:
            if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or not 0 < timeout < 1e7:
                raise ValueError(f"timeout must be a positive number of seconds, got {timeout!r}")
        self.timeout = timeout
        if dist is None:
            if group is not None:
                raise ValueError("a process group was given but torch.distributed is not initialised")
            self.group, self.rank, self.size, self.device = None, 0, 1, torch.device("cpu")
            return
        self.group = group if group is not None else dist.group.WORLD
        self.rank = dist.get_rank(self.group)
        if self.rank < 0:
            raise ValueError("this process is not a member of the given process group")
        self.size = dist.get_world_size(self.group)
        backend = str(dist.get_backend(self.group)).lower()
        self.device = torch.device("cuda", torch.cuda.current_device()) if "nccl" in backend else torch.device("cpu")

    # ------------------------------------------------------------------ raw collectives
    def _wait(self, work, what: str) -> None:
        try:
            if self.timeout is None:
                work.wait()
            else:
                work.wait(timeout=datetime.timedelta(seconds=self.timeout))
        except Exception as e:
            raise self.failure(what, e) from e

    def failure(self, what: str, e: BaseException) -> ShardedSearchError:
        bound = f"{self.timeout:g} s" if self.timeout is not None else "the process group's timeout"
        return ShardedSearchError(
            f"rank {self.rank} of {self.size}: {what} failed: {one_line(e)} -- a peer rank died, stalled past the "
            f"timeout ({bound}) or left the group; no result is returned and this process group can no longer be "
            "used (destroy it and start again)")

    def all_gather(self, t: torch.Tensor, what: str) -> list[torch.Tensor]:
        """Every rank's ``t`` (same shape and dtype on every rank), in rank order."""
        if self.size == 1:
            return [t]
        dist = _dist()
        t = t.to(self.device).contiguous()
        out = [torch.empty_like(t) for _ in range(self.size)]
        try:
            work = dist.all_gather(out, t, group=self.group, async_op=True)
        except Exception as e:
            raise self.failure(what, e) from e
        self._wait(work, what)
        return out

    def broadcast(self, t: torch.Tensor, src: int, what: str) -> torch.Tensor:
        """``t`` of rank ``src`` (a rank of this group); the others pass a tensor of the
        same shape and dtype to receive into."""
        if self.size == 1:
            return t
        dist = _dist()
        t = t.to(self.device).contiguous()
        try:
            work = dist.broadcast(t, src=dist.get_global_rank(self.group, src), group=self.group, async_op=True)
        except Exception as e:
            raise self.failure(what, e) from e
        self._wait(work, what)
        return t

    # ------------------------------------------------------------------ JSON messages
    def all_gather_json(self, obj, what: str) -> list:
        """Every rank's JSON value ``obj``, in rank order."""
        if self.size == 1:
            return [obj]
        data = json.dumps(obj, allow_nan=False).encode()
        sizes = [int(s) for s in self.all_gather(torch.tensor([len(data)], dtype=torch.int64), what)]
        buf = torch.zeros(max(sizes), dtype=torch.uint8)
        buf[:len(data)] = torch.frombuffer(bytearray(data), dtype=torch.uint8)
        parts = self.all_gather(buf, what)
        return [json.loads(bytes(p[:s].cpu().numpy())) for p, s in zip(parts, sizes)]

    def broadcast_json(self, obj, src: int, what: str):
        """Rank ``src``'s JSON value ``obj`` (ignored on the other ranks)."""
        if self.size == 1:
            return obj
        data = json.dumps(obj, allow_nan=False).encode() if self.rank == src else b""
        size = int(self.broadcast(torch.tensor([len(data)], dtype=torch.int64), src, what)[0])
        buf = torch.zeros(size, dtype=torch.uint8)
        if self.rank == src:
            buf[:] = torch.frombuffer(bytearray(data), dtype=torch.uint8)
        return json.loads(bytes(self.broadcast(buf, src, what).cpu().numpy()))

    def check_all(self, error: BaseException | None, what: str, cls=None, payload=None) -> list:
        """Every rank states whether its part of ``what`` succeeded (``error`` None) or not,
        with a JSON ``payload``; returns every rank's payload in rank order. If any rank
        failed, every rank raises the same error naming the ranks that failed and why
        (``cls``, default :class:`ShardedSearchError`; on a failing rank chained to its own
        exception)."""
        mine = None if error is None else f"{type(error).__name__}: {one_line(error)}"
        states = self.all_gather_json([mine, payload], what)
        failed = [(r, s[0]) for r, s in enumerate(states) if s[0] is not None]
        if failed:
            detail = "; ".join(f"rank {r}: {s}" for r, s in failed)
            raise (cls or ShardedSearchError)(f"{what} failed on {len(failed)} of {self.size} ranks: {detail}") \
                from error
        return [s[1] for s in states]

"""One rank of a sharded-search test: ``python tests/dist_worker.py SPEC.json`` with the
torchrun variables (RANK, WORLD_SIZE, MASTER_ADDR, MASTER_PORT) set by the test.

The spec names a scenario and its jobs; the rank writes what it got (results, or the
error each job raised) to ``OUT/rank{R}.pt`` for the test to compare with one index.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import time

import torch


def _error(e: BaseException) -> dict:
    return {"error": type(e).__name__, "message": str(e)}


def run_jobs(searchers, spec, rank, out):
    """Every job of the spec on every rank; a job's error is recorded, not raised."""
    from engine import QNet

    qnets = {name: QNet.load(path) for name, path in spec["qnets"].items()}
    for job in spec["jobs"]:
        s = searchers[job["index"]]
        src = job.get("src", 0)
        q = qnets[job["qnets"]] if (src is None or rank == src) else None
        k = job["k"] if not job.get("k_by_rank") else job["k"] + rank
        try:
            r = s.search(q, k, mode=job.get("mode", "exact"), src=src, **job.get("options", {}))
            rec = {"scores": r.scores, "ids": r.ids, "documents_scored": r.stats.documents_scored}
            if job.get("external_ids"):
                rec["external_ids"] = s.external_ids(r.ids)
        except Exception as e:
            rec = _error(e)
        out[job["name"]] = rec


def main() -> int:
    import torch.distributed as dist

    from engine.distributed import ShardedSearcher, init_from_env

    with open(sys.argv[1]) as f:
        spec = json.load(f)
    init_from_env("cpu", timeout=spec.get("group_timeout", 60))
    rank = dist.get_rank()
    torch.set_num_threads(1)
    out = {"rank": rank}
    timeout = spec.get("timeout")
    searchers = {}
    for name, path in spec["indexes"].items():
        try:
            searchers[name] = ShardedSearcher.open(path, timeout=timeout, verify=spec.get("verify", False))
        except Exception as e:
            out[f"open:{name}"] = _error(e)
    victim = spec.get("victim")
    if victim is not None and rank == victim:
        from engine import Index

        if spec["scenario"] == "kill":  # die in the middle of the local search
            Index.search = lambda *a, **kw: os.kill(os.getpid(), signal.SIGKILL)
        elif spec["scenario"] == "stall":  # stop (alive, silent) after the local search
            local = ShardedSearcher._search_local

            def stall(self, *a, **kw):
                r = local(self, *a, **kw)
                os.kill(os.getpid(), signal.SIGSTOP)
                return r

            ShardedSearcher._search_local = stall
    t0 = time.perf_counter()
    run_jobs(searchers, spec, rank, out)
    out["seconds"] = time.perf_counter() - t0
    torch.save(out, os.path.join(spec["out"], f"rank{rank}.pt"))
    if spec["scenario"] in ("kill", "stall"):
        os._exit(0)  # the group is broken: leave without the teardown collectives
    dist.barrier()  # every rank past its last collective before any tears the group down
    dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

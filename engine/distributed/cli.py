"""``python -m engine search --index SHARDED``: the command line's sharded search, one
process per rank under ``torchrun`` (or every shard in this one process without it)."""

from __future__ import annotations


def run_search(args) -> int:
    """Open the shards on every rank, read the q-nets on rank 0 (broadcast to the others),
    search, and print on rank 0 what ``search`` prints for one index; every rank raises
    the same error when any rank fails."""
    import torch
    import torch.distributed as dist

    from ..commands.search import print_results, read_qnets
    from . import ShardedSearcher, init_from_env, launched

    started = launched() and not dist.is_initialized()
    if started:
        device = init_from_env(args.shard_device, timeout=args.timeout)
    else:
        device = torch.device(args.shard_device)
    searcher = ShardedSearcher.open(args.index, device=device, timeout=args.timeout)
    qnets = labels = error = None
    if searcher.rank == 0:
        try:
            qnets, labels = read_qnets(args, searcher)
        except Exception as e:  # every rank reports it below
            error = e
    searcher.check_all(error, "reading the q-nets on rank 0")
    result = searcher.search(qnets, args.k, mode=args.mode, backend=args.backend)
    ext = searcher.external_ids(result.ids)
    if searcher.rank == 0:
        print_results(args, qnets, labels, result, ext)
        st = result.stats
        print(f"{st.mode} search: {st.seconds * 1e3:.1f} ms for {result.ids.shape[0]} queries "
              f"({st.ranks} ranks, {st.shards} shards)")
    if started:
        dist.barrier()  # every rank past its last collective before any tears the group down
        dist.destroy_process_group()
    return 0

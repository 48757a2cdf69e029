"""``python -m engine info``: what an index holds, and what this machine can run."""

from __future__ import annotations


def add_parser(sub) -> None:
    p = sub.add_parser("info", help="describe an index and the available backends")
    p.add_argument("index", nargs="?", help="index directory (or sharded index directory)")
    p.add_argument("--verify", action="store_true", help="check every file's SHA-256")
    p.set_defaults(run=run)


def run(args) -> int:
    import json

    from .. import backends
    from ..index import Index
    from ..storage import read_manifest

    print("backends:")
    for name, status in backends.available_backends().items():
        print(f"  {name:7s} {status}")
    try:
        from ..backends import cpu

        print(f"cpu ISA: {cpu.isa()} (supported: {', '.join(cpu.supported_isas())}; "
              f"amx: {cpu.isa_status('amx')})")
        p = cpu.precision()
        if p == "auto":
            how = (f"fp32 q-nets over fp32 vectors: {cpu.kernel_name(False)}; "
                   f"half-precision inputs: {cpu.kernel_name(True)}")
        else:
            how = f"every q-net: {cpu.kernel_name(p == 'bf16')}"
        print(f"cpu precision: {p} ({how})")
    except Exception:
        pass
    from ..distributed.manifest import is_sharded

    if args.index and is_sharded(args.index):
        _sharded_info(args.index, args.verify)
    elif args.index:
        index = Index.load(args.index, verify=args.verify)
        print(f"index: {index}")
        m = read_manifest(args.index)
        print(f"format version: {m['version']}")
        for name, e in sorted(m["files"].items()):
            print(f"  {name:24s} {e['size']:>14,d} bytes  {e['dtype']} {e['shape']}")
        if m.get("graph"):
            print(f"graph: {json.dumps(m['graph'])}")
        if m.get("codes"):
            print(f"candidate codes: {json.dumps(m['codes'])}")
        if args.verify:
            print("checksums: ok")
    return 0


def _sharded_info(path: str, verify: bool) -> None:
    """The sharded manifest and every shard, each opened and checked against it."""
    from ..distributed.manifest import open_shard, read_sharded_manifest

    m = read_sharded_manifest(path)
    print(f"sharded index: n={m.count}, dim={m.dim}, dtype={m.dtype}, ids={m.ids}, {len(m.shards)} shards")
    for i, s in enumerate(m.shards):
        print(f"  shard {i}: rows {s.offset}..{s.offset + s.count} {open_shard(m, i, verify=verify)}  ({s.path})")
    if verify:
        print("checksums: ok")

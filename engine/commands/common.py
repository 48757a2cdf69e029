"""Helpers shared by the CLI commands."""

from __future__ import annotations

import torch

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def print_table(headers: list[str], rows: list[list], file=None) -> None:
    """A plain aligned text table."""
    cells = [[str(h) for h in headers]] + [[str(c) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    for j, r in enumerate(cells):
        # Labels (first column) left-aligned, values right-aligned.
        print("  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths))).rstrip(),
              file=file)
        if j == 0:
            print("  ".join("-" * w for w in widths), file=file)


def add_backend_arg(p) -> None:
    p.add_argument("--backend", default="auto", help="auto (default), torch, cpu, triton or cuda")


def parse_dims(text: str) -> list[int]:
    try:
        dims = [int(x) for x in text.split(",")]
    except ValueError:
        raise ValueError(f"--dims must be comma-separated integers, got {text!r}") from None
    return dims


def write_index(vectors, ids, output: str, graph_degree: int | None) -> None:
    """Build an index (with an optional ``graph_degree``-neighbour graph), save it to
    ``output`` and print what was written."""
    from ..index import Index

    index = Index.from_vectors(vectors, ids)
    if graph_degree:
        index.build_graph(graph_degree)
    index.save(output)
    print(Index.load(output))

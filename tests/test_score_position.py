"""A score is a function of the q-net and the vector only: identical vectors get
bit-identical scores wherever they sit (block, position, call, batch of queries), so the
tie rule (the lower row wins) holds on every CPU backend."""

import pytest
import torch

import engine
from engine import Index, synthetic

N = 1100
DUP_ROWS = [11, 12, 255, 256, 257, 1000, 1023, 1024, N - 1]
BACKENDS = ["torch", "cpu"]
DTYPES = [torch.float32, torch.float16, torch.bfloat16]


def corpus(dtype):
    v = synthetic.vectors(N, 48, seed=2)
    for r in DUP_ROWS[1:]:
        v[r] = v[DUP_ROWS[0]]
    q = synthetic.qnets(5, [48, 48, 48, 1], seed=1)
    return q.to(dtype=dtype), v.to(dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("backend", BACKENDS)
def test_identical_vectors_score_identically_everywhere(backend, dtype):
    q, v = corpus(dtype)
    full = engine.score(q, v, backend=backend)
    want = full[:, DUP_ROWS[:1]].expand(-1, len(DUP_ROWS))
    assert torch.equal(full[:, DUP_ROWS], want)
    # Alone, in a short call, in a gather, and with another batch of queries.
    assert torch.equal(engine.score(q, v[N - 1:], backend=backend)[:, 0], full[:, 11])
    assert torch.equal(engine.score(q, v[250:260], backend=backend)[:, 6], full[:, 11])
    ids = torch.tensor([DUP_ROWS] * 5)
    assert torch.equal(engine.score_gather(q, v, ids, backend=backend), want)
    assert torch.equal(engine.score(q[3], v, backend=backend)[0], full[3])
    assert torch.equal(engine.score(q[[4, 0]], v, backend=backend), full[[4, 0]])


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("backend", BACKENDS)
def test_ties_go_to_the_lower_row_whatever_the_block_size(backend, dtype):
    q, v = corpus(dtype)
    idx = Index.from_vectors(v)
    # 1098 and 1099 leave the last duplicate in a last block of 2 rows or alone; 255 puts
    # duplicates in the middle and at the edges of blocks.
    for block_size in (None, 255, 256, 1000, 1098, 1099, 4096):
        r = idx.search(q, N, backend=backend, block_size=block_size)
        for row_ids, row_scores in zip(r.ids.tolist(), r.scores.tolist()):
            ranks = [row_ids.index(d) for d in DUP_ROWS]
            # The duplicates are consecutive, in row order, with one score.
            assert ranks == list(range(ranks[0], ranks[0] + len(DUP_ROWS))), (block_size, ranks)
            assert len({row_scores[i] for i in ranks}) == 1


@pytest.mark.parametrize("backend", BACKENDS)
def test_top1_tie_is_the_lowest_row(backend):
    """Every document the same vector: the top k are rows 0..k-1, from any block split."""
    v = synthetic.vectors(1, 32, seed=5).expand(300, -1).contiguous()
    q = synthetic.qnets(3, [32, 32, 1], seed=6)
    for block_size in (None, 1, 64, 299):
        r = Index.from_vectors(v).search(q, 10, backend=backend, block_size=block_size)
        assert r.ids.tolist() == [list(range(10))] * 3


@pytest.mark.parametrize("backend", ["triton", "cuda"])
def test_gpu_backends_score_identical_vectors_identically(backend):
    """The GPU kernels (Triton through its interpreter on a CPU-only machine)."""
    from engine import backends

    device = "cuda" if torch.cuda.is_available() else "cpu"
    ok, why = backends.availability(backend)
    if not ok or not backends._load(backend).supports(torch.device(device)):
        pytest.skip(f"backend {backend!r} cannot run on {device} here: {why}")
    v = synthetic.vectors(300, 32, seed=2)
    v[130] = v[299] = v[3]
    q = synthetic.qnets(2, [32, 32, 1], seed=1)
    q, v = q.to(device), v.to(device)
    s = engine.score(q, v, backend=backend)
    assert torch.equal(s[:, [130, 299]], s[:, [3, 3]])
    assert torch.equal(engine.score(q, v[299:], backend=backend)[:, 0], s[:, 3])
    ids = torch.tensor([[3, 130, 299]] * 2, device=device)
    assert torch.equal(engine.score_gather(q, v, ids, backend=backend), s[:, [3, 3, 3]])
    r = Index.from_vectors(v).search(q, 300, backend=backend)
    for row in r.ids.tolist():
        ranks = [row.index(d) for d in (3, 130, 299)]
        assert ranks == list(range(ranks[0], ranks[0] + 3))

"""What is particular to the Triton backend (its kernels are checked against the reference
on the shared grid of tests/test_kernels.py): the choice of dense path, the chunking and
TMA switches of the layer-by-layer path, exact search routing, the top-k keys.

On a CPU-only machine the kernels run under the Triton interpreter (``TRITON_INTERPRET=1``,
set by conftest.py before anything imports triton) on CPU tensors; with
``TRITON_INTERPRET=0`` and a GPU the same tests run compiled on CUDA tensors.
"""

import os

os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest
import torch

from engine.backends import get_backend, topk_keys, torch_ref
from kernel_cases import INTERPRET, make_qnet, make_vectors, ref_topk, triton_device

DEVICE = triton_device()

from engine.backends import triton as tb  # noqa: E402
from engine.kernels import qnet_layers  # noqa: E402


def test_available_and_supports():
    assert tb.is_available()[0]
    assert tb.supports(DEVICE)


def test_dense_path_choice(monkeypatch):
    monkeypatch.delenv("HYPENCODER_TRITON_DENSE", raising=False)
    assert tb.dense_path(tb.LAYERS_MIN_ROWS - 1) == "tile"
    assert tb.dense_path(tb.LAYERS_MIN_ROWS) == "layers"
    monkeypatch.setenv("HYPENCODER_TRITON_DENSE", "tile")
    assert tb.dense_path(1 << 30) == "tile"
    monkeypatch.setenv("HYPENCODER_TRITON_DENSE", "fastest")
    with pytest.raises(ValueError, match="HYPENCODER_TRITON_DENSE"):
        tb.dense_path(10)


def test_layer_chunks_fit_the_l2_share(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    monkeypatch.delenv("HYPENCODER_TRITON_CHUNK_MB", raising=False)
    assert qnet_layers.chunk_rows(1, 768, 2, 10**7) == 8192  # 2 x 8192 x 768 x 2 B = 24 MB
    assert qnet_layers.chunk_rows(8, 768, 2, 10**7) == 1024
    assert qnet_layers.chunk_rows(64, 768, 4, 10**7) == 256  # at least one 256-row block
    assert qnet_layers.chunk_rows(1, 768, 2, 1000) == 1000  # never more than the corpus
    monkeypatch.setenv("HYPENCODER_TRITON_CHUNK_MB", "48")
    assert qnet_layers.chunk_rows(1, 768, 2, 10**7) == 16384


def test_tma_switch(monkeypatch):
    cpu = torch.device("cpu")
    monkeypatch.setenv("HYPENCODER_TRITON_TMA", "0")
    assert not qnet_layers.use_tma(cpu)
    monkeypatch.setenv("HYPENCODER_TRITON_TMA", "1")
    assert qnet_layers.use_tma(cpu) == (qnet_layers.TensorDescriptor is not None)
    monkeypatch.delenv("HYPENCODER_TRITON_TMA")
    assert not qnet_layers.use_tma(cpu)  # only sm_90+ by default
    # Rows whose byte stride is not a multiple of 16 cannot be described to TMA.
    assert not qnet_layers._tma_ok(torch.zeros(4, 20, dtype=torch.bfloat16))
    assert qnet_layers._tma_ok(torch.zeros(4, 24, dtype=torch.bfloat16))


def test_layers_exact_topk_crosses_blocks(monkeypatch):
    # Blocks of scores merged into the running top-k: a block size below n splits the
    # scan; the result is the reference's.
    monkeypatch.setenv("HYPENCODER_TRITON_DENSE", "layers")
    monkeypatch.setattr(tb, "_LAYERS_TOPK_SCORES", 1)
    monkeypatch.setattr(tb, "_MIN_BLOCK", 1)
    calls = []
    score_dense = tb._score_dense
    monkeypatch.setattr(tb, "_score_dense", lambda *a: calls.append(a[3].shape[0]) or score_dense(*a))
    q = make_qnet(2, [16, 16, 1], torch.float32, DEVICE, seed=8)
    v = make_vectors(150, 16, torch.float32, DEVICE)
    s, i = tb.exact_topk(q.weights, q.biases, q.config, v, 7, block_size=64)
    assert calls == [64, 64, 22]
    rs, ri, _ = ref_topk(q, v, 7)
    assert torch.equal(i.cpu(), ri) and torch.allclose(s.cpu(), rs, atol=1e-5)


def test_exact_search_routes_to_fused_scan():
    from engine.search.exact import exact_search

    q = make_qnet(1, [16, 16, 16, 1], torch.float32, DEVICE, seed=9)
    v = make_vectors(50, 16, torch.float32, DEVICE)
    s, i = exact_search(q, v, 7, backend="triton")
    rs, ri, _ = ref_topk(q, v, 7)
    assert torch.equal(i.cpu(), ri)
    assert torch.allclose(s.cpu(), rs, atol=1e-5)


def test_topk_keys_roundtrip():
    s = torch.tensor([[1.5, -2.0, 0.0, -0.0, 3.0, 1.5, -1e30, 1e-40]])
    i = torch.arange(8).unsqueeze(0)
    keys = topk_keys.encode(s, i)
    ds, di = topk_keys.decode(keys)
    assert torch.equal(di, i) and torch.equal(ds, s + 0.0)
    top_s, top_i = topk_keys.finish(topk_keys.merge_topk(None, keys, 5), 10)
    assert top_i.tolist() == [[4, 0, 5, 7, 2, -1, -1, -1, -1, -1]]
    assert top_s[0, 0] == 3.0 and torch.isinf(top_s[0, 5:]).all()


def test_auto_never_picks_triton_on_cpu():
    # The interpreter is for tests: automatic choice on CPU tensors stays on CPU backends.
    assert get_backend("auto", torch.device("cpu")).name != "triton"


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("residual_first", [False, True])
def test_layer_gemm_epilogue_and_statistics(dtype, residual_first):
    """One layer of the GEMM path: the fused epilogue's output, and each column group's
    mean and sum of squared deviations, against torch."""
    g = torch.Generator().manual_seed(4)
    din, dout = (40, 40) if residual_first else (40, 56)  # 56: a partial last group
    x = torch.randn(50, din, generator=g).to(DEVICE, dtype)
    w = (torch.randn(2, din, dout, generator=g) / din**0.5).to(DEVICE, dtype)
    b = torch.randn(2, dout, generator=g).to(DEVICE, dtype)
    p, st = qnet_layers.layer_gemm(x, w, b, residual_first=residual_first)
    y = torch.relu(x.float() @ w.float() + b.float()[:, None, :])
    if residual_first:
        y = y + x.float()
    tol = 1e-5 if dtype == torch.float32 else 2e-2
    assert p.shape == (2, 50, dout) and p.dtype == dtype
    assert torch.allclose(p.float().cpu(), y.cpu(), atol=tol * 4, rtol=tol)
    sw = qnet_layers._stats_group()
    for gi, c0 in enumerate(range(0, dout, sw)):
        part = y[:, :, c0 : c0 + sw].cpu()
        mean = part.mean(-1)
        m2 = ((part - mean[..., None]) ** 2).sum(-1)
        assert torch.allclose(st[:, :, gi, 0].cpu(), mean, atol=tol * 4, rtol=tol)
        assert torch.allclose(st[:, :, gi, 1].cpu(), m2, atol=tol * 40, rtol=tol * 4)


VECS = make_vectors(70, 16, torch.float32, DEVICE)


def _layers_reference_case(seed):
    q = make_qnet(2, [16, 16, 16, 1], torch.float32, DEVICE, seed=seed)
    return q, torch_ref.score_dense(q.weights, q.biases, q.config, VECS)


def test_layers_graph_replay_copies_weights(monkeypatch):
    """The capture-and-replay logic of the layer scan with a stand-in for the CUDA graph
    (replay runs the captured scan again): the first call on a corpus captures, later
    calls with q-nets of the same shapes replay with their own weights."""
    import collections

    monkeypatch.setattr(qnet_layers, "GRAPH_MIN_ROWS", 1)
    monkeypatch.setattr(qnet_layers, "graphs_enabled", lambda device: True)
    monkeypatch.setattr(qnet_layers, "_GRAPHS", collections.OrderedDict())
    captured = []
    monkeypatch.setattr(qnet_layers, "_capture", lambda fn: captured.append(fn) or fn)
    for seed in (1, 2, 3):
        q, ref = _layers_reference_case(seed)
        out = torch.full((2, 70), float("nan"), device=DEVICE)
        qnet_layers.score_dense(q.weights, q.biases, q.config, VECS, out)
        assert torch.allclose(out.cpu(), ref.cpu(), atol=1e-5), seed
    assert len(captured) == 1  # one capture, two replays
    other = VECS.clone()
    qnet_layers.score_dense(q.weights, q.biases, q.config, other, torch.empty(2, 70, device=DEVICE))
    assert len(captured) == 2  # another corpus: another graph


def test_layers_graph_failure_falls_back_once(monkeypatch):
    import collections

    monkeypatch.setattr(qnet_layers, "GRAPH_MIN_ROWS", 1)
    monkeypatch.setattr(qnet_layers, "_graph_error", None)
    monkeypatch.setattr(qnet_layers, "graphs_enabled", lambda device: qnet_layers._graph_error is None)
    monkeypatch.setattr(qnet_layers, "_GRAPHS", collections.OrderedDict())

    def broken(fn):
        raise RuntimeError("operation not permitted when stream is capturing")

    monkeypatch.setattr(qnet_layers, "_capture", broken)
    q, ref = _layers_reference_case(4)
    out = torch.empty(2, 70, device=DEVICE)
    with pytest.warns(RuntimeWarning, match="CUDA graph failed"):
        qnet_layers.score_dense(q.weights, q.biases, q.config, VECS, out)
    assert torch.allclose(out.cpu(), ref.cpu(), atol=1e-5)
    assert "stream is capturing" in qnet_layers._graph_error
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no second attempt, no second warning
        qnet_layers.score_dense(q.weights, q.biases, q.config, VECS, out)
    assert torch.allclose(out.cpu(), ref.cpu(), atol=1e-5)

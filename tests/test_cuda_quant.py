"""Compressed document storage on the CUDA C++ backend.

Without a GPU: the backend's check of ``scales`` (it runs before the extension is built)
and what the launcher hands the extension (a stand-in records it): compressed vectors
as stored, never converted, with their scales, chunked alongside the vectors in the
fused top-k. With a GPU: int8 and fp8 scores against the PyTorch reference on the
dequantized values, with the bf16 tolerance of tests/kernel_cases.TOL.
"""

import pytest
import torch

from engine.backends import availability, torch_ref
from kernel_cases import assert_close, make_ids, make_qnet

QDTYPES = (torch.int8, torch.float8_e4m3fn)


def quantize(x, dtype):
    qmax = 127.0 if dtype == torch.int8 else 448.0
    scales = x.float().abs().amax(dim=1) / qmax
    y = x.float() / torch.where(scales > 0, scales, torch.ones_like(scales))[:, None]
    data = y.round().clamp(-127, 127).to(torch.int8) if dtype == torch.int8 else y.to(dtype)
    return data, scales


@pytest.mark.parametrize("fn", ("score_dense", "score_gather", "exact_topk"))
@pytest.mark.parametrize("qdtype", QDTYPES, ids=["int8", "fp8"])
@pytest.mark.parametrize("wdtype", (torch.bfloat16, torch.float32), ids=["bf16", "fp32"])
def test_scales_checked_before_anything_runs(fn, qdtype, wdtype):
    from engine.backends import cuda as cb

    q = make_qnet(1, [16, 16, 1], wdtype, "cpu")
    data, scales = quantize(torch.randn(6, 16), qdtype)

    def call(vectors, **kw):
        args = {"score_dense": (), "score_gather": (torch.zeros(1, 2, dtype=torch.int64),), "exact_topk": (3,)}[fn]
        return getattr(cb, fn)(q.weights, q.biases, q.config, vectors, *args, **kw)

    with pytest.raises(ValueError, match="need scales"):
        call(data)
    with pytest.raises(ValueError, match="only for int8 or float8_e4m3fn"):
        call(data.float(), scales=scales)
    with pytest.raises(ValueError, match="float32"):
        call(data, scales=scales.half())
    with pytest.raises(ValueError, match=r"shape \(6,\)"):
        call(data, scales=scales[1:])
    with pytest.raises(ValueError, match="scales are on meta"):
        call(data, scales=scales.to("meta"))
    with pytest.raises(TypeError, match="torch.Tensor"):
        call(data, scales=[1.0] * 6)


class RecordingExt:
    """Stands in for the compiled extension: records each ``run`` call."""

    def __init__(self):
        self.calls = []

    def choose_block_rows(self, bf16, width, device):
        return 16

    def run(self, mode, vectors, scales, ids, w, b, meta, relu, eps, width, out, cand, kblk, base, block_rows,
            stream):
        self.calls.append(dict(mode=mode, vectors=vectors, scales=scales, base=base))


@pytest.fixture
def launcher(monkeypatch):
    from engine.backends import cuda_launch

    class Stream:
        cuda_stream = 0

    monkeypatch.setattr(torch.cuda, "current_stream", lambda device=None: Stream())
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    ext = RecordingExt()
    q = make_qnet(1, [16, 16, 1], torch.bfloat16, "cpu")
    return cuda_launch, ext, q


@pytest.mark.parametrize("qdtype", QDTYPES, ids=["int8", "fp8"])
def test_launcher_passes_stored_rows_and_scales(launcher, qdtype):
    cuda_launch, ext, q = launcher
    data, scales = quantize(torch.randn(40, 16), qdtype)
    pr = cuda_launch.prepare(ext, q.weights, q.biases, q.config, data)
    cuda_launch.run_dense(pr, data, scales=scales)
    cuda_launch.run_gather(pr, data, torch.zeros(1, 3, dtype=torch.int32), scales=scales)
    assert [c["mode"] for c in ext.calls] == [0, 1]
    for c in ext.calls:
        assert c["vectors"].dtype == qdtype and c["vectors"].data_ptr() == data.data_ptr()  # no copy
        assert c["scales"] is scales
    plain = torch.randn(40, 16, dtype=torch.bfloat16)
    cuda_launch.run_dense(pr, plain)
    assert ext.calls[-1]["scales"].numel() == 0 and ext.calls[-1]["vectors"] is plain


def test_launcher_topk_chunks_scales_with_vectors(launcher):
    cuda_launch, ext, q = launcher
    n = (1 << 16) + 100
    data = torch.zeros(n, 16, dtype=torch.int8)
    scales = torch.arange(n, dtype=torch.float32)
    pr = cuda_launch.prepare(ext, q.weights, q.biases, q.config, data)
    cuda_launch.run_topk(pr, data, 5, block_size=1 << 16, scales=scales)
    assert [c["base"] for c in ext.calls] == [0, 1 << 16]
    for c in ext.calls:
        assert c["vectors"].shape[0] == c["scales"].shape[0]
        assert c["scales"][0] == c["base"]  # the chunk's own scales


ok, why = availability("cuda")


@pytest.mark.skipif(not ok, reason=f"CUDA backend unavailable here: {why}")
@pytest.mark.gpu
@pytest.mark.parametrize("qdtype", QDTYPES, ids=["int8", "fp8"])
@pytest.mark.parametrize("L,d,n", [(2, 40, 37), (0, 24, 33), (6, 768, 300)])
def test_cuda_scores_compressed_rows(qdtype, L, d, n):
    from engine.backends import cuda as cb

    dev = torch.device("cuda")
    q = make_qnet(2, [d] * (L + 1) + [1], torch.bfloat16, dev, seed=L)
    x = torch.randn(n, d)
    x[0] = 0
    data, scales = quantize(x, qdtype)
    data, scales = data.to(dev), scales.to(dev)
    ref_v = data.float() * scales[:, None]
    got = cb.score_dense(q.weights, q.biases, q.config, data, scales=scales)
    assert_close(got, torch_ref.score_dense(q.weights, q.biases, q.config, ref_v), torch.bfloat16)
    ids = make_ids(2, 50, n, torch.int64, dev)
    got = cb.score_gather(q.weights, q.biases, q.config, data, ids, scales=scales)
    assert_close(got, torch_ref.score_gather(q.weights, q.biases, q.config, ref_v, ids), torch.bfloat16)
    s, i = cb.exact_topk(q.weights, q.biases, q.config, data, 5, scales=scales)
    ref = torch_ref.score_dense(q.weights, q.biases, q.config, ref_v)
    assert_close(s, ref.gather(1, i), torch.bfloat16)  # the scores of the rows it returns
    assert_close(s, ref.topk(5, dim=1).values, torch.bfloat16)


class StandIn:
    """A candidate of the measured choice that records the scales it was given."""

    def __init__(self, name):
        self.name, self.seen = name, []

    def score_dense(self, weights, biases, config, vectors, out=None, **kw):
        self.seen.append(kw.get("scales"))
        return "dense"

    def score_gather(self, weights, biases, config, vectors, ids, out=None, **kw):
        self.seen.append(kw.get("scales"))
        return "gather"

    def exact_topk(self, weights, biases, config, vectors, k, block_size=None, **kw):
        self.seen.append(kw.get("scales"))
        return "topk"


def test_measured_auto_passes_scales_and_checks_them(monkeypatch):
    from engine.backends import auto

    monkeypatch.setattr(auto, "_CHOICES", {})
    a, b = StandIn("a"), StandIn("b")
    chooser = auto.MeasuredAuto((a, b), timer=lambda fn: (fn(), 1.0)[1])
    q = make_qnet(1, [16, 16, 1], torch.bfloat16, "cpu")
    data, scales = quantize(torch.randn(6, 16), torch.int8)
    ids = torch.zeros(1, 2, dtype=torch.int64)
    assert chooser.score_dense(q.weights, q.biases, q.config, data, scales=scales) == "dense"
    assert chooser.score_gather(q.weights, q.biases, q.config, data, ids, scales=scales) == "gather"
    assert chooser.exact_topk(q.weights, q.biases, q.config, data, 3, scales=scales) == "topk"
    assert all(s is scales for s in a.seen + b.seen) and a.seen
    chooser.score_dense(q.weights, q.biases, q.config, data.float())
    assert a.seen[-1] is None  # no scales keyword for plain vectors
    with pytest.raises(ValueError, match="need scales"):
        chooser.score_dense(q.weights, q.biases, q.config, data)
    with pytest.raises(ValueError, match="float32"):
        chooser.exact_topk(q.weights, q.biases, q.config, data, 3, scales=scales.double())

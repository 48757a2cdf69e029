"""Types and ranges at the API: every bad argument is a ValueError/TypeError naming it,
never a wrapped value, a raw numpy/torch error or a silently dropped document."""

import numpy as np
import pytest
import torch

import engine
from engine import Index, QNet, QNetConfig, synthetic


@pytest.fixture
def q():
    return synthetic.qnets(2, [16, 16, 1], seed=3)


@pytest.fixture
def idx():
    return Index.from_vectors(synthetic.vectors(40, 16, seed=4))


# ------------------------------------------------------------------------------ q-net flags
@pytest.mark.parametrize("field", ["layer_norm", "residual", "residual_on_last", "layer_norm_before_residual"])
@pytest.mark.parametrize("value", ["false", "no", 0, 1, None, 1.0])
def test_flags_must_be_bools(field, value):
    with pytest.raises(TypeError, match=field):
        QNetConfig(**{field: value})
    ws = [torch.randn(1, 4, 4), torch.randn(1, 4, 1)]
    with pytest.raises(TypeError, match=field):
        QNet(ws, [torch.randn(1, 4)], **{field: value})


def test_numpy_bools_are_bools():
    assert QNetConfig(residual=np.bool_(False)).residual is False


@pytest.mark.parametrize("value,err", [(float("inf"), ValueError), (float("nan"), ValueError), (0.0, ValueError),
                                       (-1e-5, ValueError), (True, TypeError), ("1e-5", TypeError)])
def test_eps_must_be_finite_and_positive(value, err):
    with pytest.raises(err, match="eps"):
        QNetConfig(eps=value)


def test_other_config_errors():
    with pytest.raises(ValueError, match="residual_on_last"):
        QNetConfig(residual=False, residual_on_last=True)
    with pytest.raises(ValueError, match="activation"):
        QNetConfig(activation="gelu")
    with pytest.raises(ValueError, match="unknown q-net config fields.*do_magic"):
        QNetConfig.from_dict({"do_magic": True})
    with pytest.raises(TypeError, match="config"):
        QNet([torch.randn(1, 4, 1)], [], config={"residual": False})
    assert QNetConfig.from_dict(QNetConfig(eps=1e-3).to_dict()) == QNetConfig(eps=1e-3)


def test_qnet_selection_by_bool_is_refused(q):
    with pytest.raises(TypeError, match="bool"):
        q[True]


# ------------------------------------------------------------------------------ external ids
@pytest.mark.parametrize("ids,err,match", [
    (np.array([2**63, 1, 2], dtype=np.uint64), ValueError, "int64"),
    ([2**63, 1, 2], ValueError, "int64"),
    ([-(2**63) - 1, 1, 2], ValueError, "int64"),
    ([10**40, 1, 2], ValueError, "int64"),
    ("abc", TypeError, "single string"),
    ([1.0, 2.0, 3.0], TypeError, "str or all int"),
    ([True, False, True], TypeError, "str or all int"),
    (np.array([1.0, 2.0, 3.0]), TypeError, "integer dtype"),
    (torch.tensor([1.0, 2.0, 3.0]), TypeError, "integer dtype"),
    (["a", "\ud800", "c"], ValueError, "Unicode"),
])
def test_bad_ids(ids, err, match):
    with pytest.raises(err, match=match):
        Index.from_vectors(torch.zeros(3, 4), ids)


@pytest.mark.parametrize("ids", [[5, 6, 5], np.array([7, 7, 8]), ["a", "b", "a"]])
def test_repeated_ids_name_several_documents(tmp_path, ids):
    """Real collections hold distinct documents under one id: kept, saved and mapped back."""
    idx = Index.from_vectors(torch.eye(3, 4), ids)
    idx.save(tmp_path / "i")
    back = Index.load(tmp_path / "i")
    want = [x.item() if hasattr(x, "item") else x for x in ids]
    assert back.external_ids(torch.tensor([0, 1, 2])) == want


def test_ids_at_the_int64_limits_round_trip(tmp_path):
    ids = np.array([2**63 - 1, -(2**63), 0], dtype=np.int64)
    Index.from_vectors(torch.zeros(3, 4), np.array([2**63 - 1, 0, 1], dtype=np.uint64))
    Index.from_vectors(torch.zeros(3, 4), ids).save(tmp_path / "i")
    assert Index.load(tmp_path / "i").external_ids(torch.arange(3)) == ids.tolist()


def test_external_ids_of_non_integer_rows(idx):
    with pytest.raises(TypeError, match="integers"):
        idx.external_ids(np.array([float("inf")]))


# ------------------------------------------------------------------------------ gradients
@pytest.mark.parametrize("backend", ["torch", "cpu"])
def test_tensors_that_require_grad_are_read_detached(q, backend):
    v = synthetic.vectors(30, 16, seed=1)
    want = engine.score(q, v, backend=backend)
    qg = QNet([w.clone().requires_grad_() for w in q.weights], [b.clone().requires_grad_() for b in q.biases])
    vg = v.clone().requires_grad_()
    got = engine.score(qg, vg, backend=backend)
    assert torch.equal(got, want) and not got.requires_grad
    got = engine.score_gather(qg, vg, torch.tensor([[0, 5], [29, 3]]), backend=backend)
    assert torch.equal(got, want[:, [0, 5]].where(torch.tensor([[True, True], [False, False]]), want[:, [29, 3]]))
    r = Index.from_vectors(vg).search(qg, 3, backend=backend)
    assert torch.equal(r.ids, Index.from_vectors(v).search(q, 3, backend=backend).ids)
    with pytest.raises(ValueError, match="out must not require grad"):
        engine.score(q, v, out=torch.empty(2, 30, requires_grad=True))


# ------------------------------------------------------------------------------ devices
@pytest.mark.parametrize("device", ["cuda:99", "gpu0", "meta", "xpu"])
def test_unavailable_devices_are_value_errors(q, idx, device):
    with pytest.raises(ValueError, match="device"):
        idx.to(device)
    with pytest.raises(ValueError, match="device"):
        q.to(device)
    with pytest.raises(ValueError, match="device"):
        synthetic.vectors(4, 4, device=device)


def test_device_of_a_wrong_type(q):
    with pytest.raises(TypeError, match="device"):
        q.to(device=[0])


def test_meta_tensors_are_refused(q):
    with pytest.raises(ValueError, match="meta"):
        engine.score(q, torch.empty(3, 16, device="meta"))
    with pytest.raises(ValueError, match="meta"):
        QNet([torch.empty(1, 4, 1, device="meta")], [])


# ------------------------------------------------------------------------------ search options
@pytest.mark.parametrize("kwargs,err,match", [
    ({"block_size": 2.5}, TypeError, "block_size"),
    ({"block_size": True}, TypeError, "block_size"),
    ({"block_size": float("inf")}, TypeError, "block_size"),
    ({"block_size": 0}, ValueError, "block_size"),
    ({"block_size": 2**40}, ValueError, "block_size"),
    ({"k": 2**40}, ValueError, "k must be"),
    ({"k": float("inf")}, TypeError, "k must be"),
    ({"backend": ["cpu"]}, TypeError, "backend"),
    ({"backend": None}, TypeError, "backend"),
    ({"mode": None}, TypeError, "mode"),
    ({"mode": "graph", "block_size": 8}, TypeError, "block_size"),
])
def test_bad_search_options(q, idx, kwargs, err, match):
    kwargs = {"k": 3, **kwargs}
    with pytest.raises(err, match=match):
        idx.search(q, **kwargs)


@pytest.mark.parametrize("backend", ["torch", "cpu"])
def test_block_size_never_changes_a_result(q, idx, backend):
    want = idx.search(q, 40, backend=backend)
    for bs in (1, 3, 39, 40, 41, 65536, np.int64(7)):
        r = idx.search(q, 40, backend=backend, block_size=bs)
        assert torch.equal(r.ids, want.ids) and torch.equal(r.scores, want.scores)


# ------------------------------------------------------------------------------ dtypes
def test_index_to_float16_refuses_overflow():
    v = synthetic.vectors(10, 8)
    v[6, 2] = 1e6  # beyond float16's 65504: would become an Inf row that exact search drops
    idx = Index.from_vectors(v)
    with pytest.raises(ValueError, match="overflow.*row 6"):
        idx.to(dtype=torch.float16)
    assert idx.to(dtype=torch.bfloat16).dtype == torch.bfloat16  # bfloat16 holds it
    with pytest.raises(TypeError, match="dtype"):
        idx.to(dtype=torch.float64)


def test_qnet_to_float16_refuses_overflow():
    q = QNet([torch.full((1, 4, 4), 1e6), torch.ones(1, 4, 1)], [torch.zeros(1, 4)])
    with pytest.raises(ValueError, match="NaN or Inf"):
        q.to(dtype=torch.float16)


def test_numpy_vectors_in_other_byte_order_are_read_by_value(q):
    v = synthetic.vectors(20, 16, seed=2).numpy()
    for dt in (">f4", ">f2"):
        swapped = v.astype(dt)
        assert torch.equal(engine.score(q, swapped), engine.score(q, swapped.astype(dt[1:])))
    with pytest.raises(TypeError, match="float64.*astype"):
        engine.score(q, v.astype(np.float64))


def test_native_boundary_refuses_non_native_byte_order():
    from engine import _C

    s = np.full((1, 4), -np.inf, dtype=np.float32)
    i = np.full((1, 4), -1, dtype=np.int64)
    with pytest.raises(TypeError, match="byte order"):
        _C.topk_merge(np.ones((1, 3), dtype=">f4"), 0, s, i)
    with pytest.raises(TypeError, match="byte order"):
        _C.topk_merge(np.ones((1, 3), dtype=np.float32), 0, s, i.astype(">i8"))
    _C.topk_merge(np.ones((1, 3), dtype=np.float32), 0, s, i)  # the native order works
    assert i.tolist() == [[0, 1, 2, -1]]


def test_qnet_file_errors(tmp_path, q):
    bad = tmp_path / "q.safetensors"
    bad.write_bytes(b"\x00" * 64)
    with pytest.raises(ValueError, match="safetensors"):
        QNet.load(bad)
    from safetensors.torch import save_file

    save_file({"weight.0": torch.randn(2, 16, 16, dtype=torch.float64), "weight.1": torch.randn(2, 16, 1),
               "bias.0": torch.randn(2, 16)}, str(tmp_path / "f64.safetensors"))
    with pytest.raises(TypeError, match="float64"):
        QNet.load(tmp_path / "f64.safetensors")
    assert QNet.load(tmp_path / "f64.safetensors", dtype=torch.float32).dtype == torch.float32
    save_file(q.state_dict(), str(tmp_path / "cfg.safetensors"), metadata={"qnet_config": '{"residual": "false"}'})
    with pytest.raises(ValueError, match="qnet_config.*residual"):
        QNet.load(tmp_path / "cfg.safetensors")

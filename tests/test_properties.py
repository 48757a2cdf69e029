"""Property-based: hypothesis generates manifests, q-net configurations (the checkpoint
converter's options) and API arguments; every input is either accepted or refused with a
ValueError/TypeError whose message names the field that was wrong."""

import copy
import json
import re

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import engine
from engine import Index, QNet, QNetConfig, synthetic
from engine.backends import BACKENDS
from engine.storage import IndexFormatError

# Reproducible runs that write nothing to the repository.
SETTINGS = settings(max_examples=150, deadline=None, derandomize=True, database=None,
                    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])

JSON = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats() | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3),
    max_leaves=8,
)
DELETE = object()


def names_one_of(message: str, names) -> bool:
    """Whether ``message`` names one of ``names`` (as written, or quoted as Python does)."""
    return any((str(n) and str(n) in message) or repr(n) in message for n in names)


def leaf_paths(value, prefix=()):
    """Every key path into a JSON value (dict keys and list indices)."""
    yield prefix
    if isinstance(value, dict):
        for k, v in value.items():
            yield from leaf_paths(v, prefix + (k,))
    elif isinstance(value, list):
        for i, v in enumerate(value):
            yield from leaf_paths(v, prefix + (i,))


def mutated(doc, path, value):
    doc = copy.deepcopy(doc)
    if not path:
        return value if value is not DELETE else None
    parent = doc
    for k in path[:-1]:
        parent = parent[k]
    if value is DELETE:
        del parent[path[-1]]
    else:
        parent[path[-1]] = value
    return doc


# ------------------------------------------------------------------------------ manifests
@pytest.fixture(scope="module")
def saved_index(tmp_path_factory):
    d = tmp_path_factory.mktemp("prop") / "idx"
    idx = Index.from_vectors(synthetic.vectors(30, 8, seed=1), [f"doc{i}" for i in range(30)])
    idx.set_graph(torch.randint(0, 30, (30, 3), dtype=torch.int32), {"degree": 3})
    idx.save(d)
    return d, json.loads((d / "manifest.json").read_text())


@st.composite
def manifest_mutations(draw, manifest):
    paths = list(leaf_paths(manifest))
    path = draw(st.sampled_from(paths))
    value = draw(st.one_of(JSON, st.just(DELETE)) if path else JSON)
    return path, value


def test_manifests(saved_index):
    path_dir, manifest = saved_index

    @SETTINGS
    @given(manifest_mutations(manifest))
    def check(mutation):
        path, value = mutation
        (path_dir / "manifest.json").write_text(json.dumps(mutated(manifest, path, value)))
        try:
            Index.load(path_dir, verify=True)
        except IndexFormatError as e:
            named = path if path else ("format",)
            assert names_one_of(str(e), named), (path, value, str(e))

    try:
        check()
    finally:
        (path_dir / "manifest.json").write_text(json.dumps(manifest))
    Index.load(path_dir, verify=True)


# ------------------------------------------------------------------------------ q-net configurations
CONVERTER_KEYS = ["activation_type", "do_layer_norm", "do_residual", "do_residual_on_last",
                  "layer_norm_before_residual", "do_dropout", "dropout_prob", "vector_dimensions"]
FLAG_VALUES = st.one_of(st.booleans(), st.none(), st.integers(-2, 2), st.sampled_from(["false", "true", "relu"]),
                        st.floats(), JSON)


@SETTINGS
@given(st.dictionaries(st.one_of(st.sampled_from(CONVERTER_KEYS), st.text(max_size=6)), FLAG_VALUES, max_size=6))
def test_converter_options(options):
    from engine.hf.checkpoint import qnet_config_from_converter

    try:
        cfg = qnet_config_from_converter(options)
    except (ValueError, TypeError) as e:
        assert names_one_of(str(e), options), (options, str(e))
    else:
        for key, field in (("do_residual", "residual"), ("do_layer_norm", "layer_norm")):
            if key in options:
                assert getattr(cfg, field) is options[key]  # only real booleans get through


@SETTINGS
@given(st.dictionaries(st.sampled_from(["activation", "layer_norm", "residual", "residual_on_last",
                                        "layer_norm_before_residual", "eps", "other"]), FLAG_VALUES, max_size=4))
def test_qnet_configs(fields):
    for make in (lambda: QNetConfig.from_dict(fields), lambda: QNet([torch.ones(1, 4, 1)], [], **fields)):
        try:
            cfg = make()
        except (ValueError, TypeError) as e:
            assert names_one_of(str(e), fields), (fields, str(e))
        else:
            cfg = getattr(cfg, "config", cfg)
            assert all(isinstance(getattr(cfg, f), bool) for f in ("layer_norm", "residual", "residual_on_last"))
            assert np.isfinite(cfg.eps) and cfg.eps > 0


def test_checkpoint_configs():
    from engine.hf.checkpoint import CheckpointConfig

    valid = {
        "query_encoder_kwargs": {"base_encoder_output_dim": 64, "converter_kwargs": {
            "activation_type": "relu", "do_residual_on_last": False, "vector_dimensions": [64, 64, 1]}},
        "passage_encoder_kwargs": {"pooling_type": "mean"},
        "shared_encoder": True,
    }
    CheckpointConfig.from_dict(valid)

    @SETTINGS
    @given(st.sampled_from(list(leaf_paths(valid))[1:]).flatmap(
        lambda p: st.tuples(st.just(p), st.one_of(JSON, st.just(DELETE)))))
    def check(mutation):
        path, value = mutation
        try:
            CheckpointConfig.from_dict(mutated(valid, path, value))
        except (ValueError, TypeError) as e:
            assert names_one_of(str(e), path), (path, value, str(e))

    check()


# ------------------------------------------------------------------------------ API arguments
ANY = st.one_of(
    st.none(), st.booleans(), st.integers(-(2**70), 2**70), st.floats(), st.text(max_size=8),
    st.lists(st.integers(-3, 3), max_size=3), st.integers(-5, 5).map(np.int64), st.floats(width=32).map(np.float32),
)


@pytest.fixture(scope="module")
def search_setup():
    idx = Index.from_vectors(synthetic.vectors(20, 8, seed=2))
    idx.set_graph(torch.randint(0, 20, (20, 4), dtype=torch.int32), {})
    return idx, synthetic.qnets(2, [8, 8, 1], seed=3)


SEARCH_ARGS = {
    "k": st.one_of(ANY, st.integers(1, 40)),
    "mode": st.one_of(ANY, st.sampled_from(["exact", "graph"])),
    "backend": st.one_of(ANY.filter(lambda v: v not in BACKENDS), st.sampled_from(["auto", "torch", "cpu"])),
    "block_size": st.one_of(ANY, st.integers(1, 100)),
}


def test_search_arguments(search_setup):
    idx, q = search_setup

    @SETTINGS
    @given(st.sampled_from(sorted(SEARCH_ARGS)).flatmap(lambda f: st.tuples(st.just(f), SEARCH_ARGS[f])))
    def check(arg):
        field, value = arg
        kwargs = {"k": 5, field: value}
        try:
            r = idx.search(q, **kwargs)
        except (ValueError, TypeError) as e:
            assert field in str(e) or (field == "mode" and "graph" in str(e)), (field, value, str(e))
        else:
            assert r.ids.shape == (2, int(kwargs["k"])) and r.scores.dtype == torch.float32

    check()


IDS = st.one_of(
    st.lists(st.integers(-(2**70), 2**70), min_size=4, max_size=4),
    st.lists(st.text(max_size=3), min_size=4, max_size=4),
    st.lists(st.one_of(st.integers(0, 3), st.text(max_size=2), st.booleans(), st.floats()), min_size=3, max_size=5),
    st.lists(st.integers(0, 2**64 - 1), min_size=4, max_size=4).map(lambda x: np.array(x, dtype=np.uint64)),
    st.lists(st.floats(), min_size=4, max_size=4).map(np.array),
    st.text(max_size=4),
)


@SETTINGS
@given(IDS)
def test_external_ids(ids):
    try:
        idx = Index.from_vectors(torch.zeros(4, 2), ids)
    except (ValueError, TypeError) as e:
        assert re.search(r"\bids?\b", str(e)), (ids, str(e))
    else:
        stored = idx.external_ids(torch.arange(4))
        given = [x.item() if hasattr(x, "item") else x for x in ids]
        assert stored == [int(x) if isinstance(x, int) else x for x in given]
        assert all(isinstance(i, (int, str)) for i in stored)
        assert all(-(2**63) <= i < 2**63 for i in stored if isinstance(i, int))


SMALL_VECTORS = synthetic.vectors(5, 4, seed=4)
SMALL_QNETS = synthetic.qnets(2, [4, 4, 1])


@SETTINGS
@given(st.one_of(ANY, st.sampled_from(["cpu", "cpu:0", "cuda", "cuda:99", "meta", "gpu", "mps", "xpu:1"])),
       st.sampled_from([None, torch.float16, torch.bfloat16, torch.float64, torch.int8]))
def test_devices_and_dtypes(device, dtype):
    idx = Index.from_vectors(SMALL_VECTORS * 30000)  # overflows float16
    q = SMALL_QNETS[:1]
    for name, call in (("Index.to", lambda: idx.to(device, dtype)), ("QNet.to", lambda: q.to(device, dtype))):
        try:
            call()
        except (ValueError, TypeError) as e:
            assert names_one_of(str(e), ["device", "dtype", "float16", "NaN or Inf"]), (name, device, dtype, str(e))


@SETTINGS
@given(st.one_of(ANY, st.sampled_from([torch.empty(2, 5, requires_grad=True), torch.empty(2, 5),
                                       torch.empty(2, 4), torch.empty(2, 5, dtype=torch.float64)])))
def test_score_out_argument(out):
    try:
        s = engine.score(SMALL_QNETS, SMALL_VECTORS, out=out)
    except (ValueError, TypeError) as e:
        assert "out" in str(e), (out, str(e))
    else:
        assert s.shape == (2, 5)

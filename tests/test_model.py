"""HypencoderModel: golden parity on the genuine checkpoint, a tiny random checkpoint checked
against an independent re-implementation, offline loading and the no-transformers error."""

import os

os.environ["HF_HUB_OFFLINE"] = "1"  # nothing may come from a hub; set before transformers loads
os.environ["TRANSFORMERS_OFFLINE"] = "1"

import json
import math
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import engine
from tiny_checkpoint import HIDDEN, write_tiny_checkpoint

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data" / "debian-minilm"
CKPT = DATA / "checkpoint"

needs_data = pytest.mark.skipif(not (CKPT / "config.json").is_file(), reason="debian-minilm data set not present")


def _transformers():
    return pytest.importorskip("transformers")


# ---------------------------------------------------------------------- genuine checkpoint
@pytest.fixture(scope="module")
def genuine():
    _transformers()
    if not (CKPT / "config.json").is_file():
        pytest.skip("debian-minilm data set not present")
    from safetensors.torch import load_file

    model = engine.HypencoderModel.from_pretrained(CKPT, device="cpu")
    golden = load_file(str(DATA / "golden.safetensors"))
    texts = json.loads((DATA / "golden.json").read_text())
    return model, golden, texts


@needs_data
def test_golden_qnets(genuine):
    model, golden, texts = genuine
    tok = texts["query_tokenization"]
    q = model.encode_queries([x["text"] for x in texts["queries"]], max_length=tok["max_length"])
    assert q.dtype == torch.float32 and q.vector_dimensions == [384, 384, 384, 1]
    for i, w in enumerate(q.weights):
        torch.testing.assert_close(w, golden[f"qnet.weight.{i}"], atol=1e-4, rtol=0)
    for i, b in enumerate(q.biases):
        torch.testing.assert_close(b, golden[f"qnet.bias.{i}"], atol=1e-4, rtol=0)


@needs_data
def test_golden_documents_and_scores(genuine):
    model, golden, texts = genuine
    tok = texts["document_tokenization"]
    docs = [x["text"] for x in texts["documents"]]
    # The golden vectors were made one document at a time.
    vecs = torch.cat([model.encode_documents([d], max_length=tok["max_length"], show_progress=False) for d in docs])
    torch.testing.assert_close(vecs, golden["doc_vectors"], atol=1e-4, rtol=0)
    # Batched encoding pads; mean pooling over unmasked tokens only must not see the padding.
    batched = model.encode_documents(docs, batch_size=6, max_length=tok["max_length"], show_progress=False)
    torch.testing.assert_close(batched, golden["doc_vectors"], atol=1e-4, rtol=0)

    q = model.encode_queries([x["text"] for x in texts["queries"]], max_length=texts["query_tokenization"]["max_length"])
    scores = engine.score(q, vecs)
    torch.testing.assert_close(scores, golden["scores"], atol=1e-4, rtol=0)
    # The golden matrix ranks each query's own document first for most queries: a sanity
    # check that the comparison above is not between two degenerate matrices.
    assert golden["scores"].std() > 1.0


@needs_data
def test_dev_qnets_match_the_published_fp16_ones(genuine):
    """qnets.dev64.safetensors: the official q-nets of the first dev queries, stored in float16."""
    model, _, _ = genuine
    import itertools

    from engine.jsonl import iter_jsonl

    texts = [t for _, t in itertools.islice(iter_jsonl(DATA / "queries.dev.jsonl"), 8)]
    ours = model.encode_queries(texts, max_length=32)
    ref = engine.QNet.load(DATA / "qnets.dev64.safetensors")[:8].float()
    for a, b in zip(ours.weights + ours.biases, ref.weights + ref.biases):
        # float16 storage: about 3 significant digits.
        torch.testing.assert_close(a, b, atol=1e-2, rtol=2e-3)


@needs_data
def test_query_batching_does_not_change_qnets(genuine):
    model, _, texts = genuine
    qs = [x["text"] for x in texts["queries"][:4]]
    together = model.encode_queries(qs)
    alone = engine.QNet.cat([model.encode_queries([t]) for t in qs])
    for a, b in zip(together.weights + together.biases, alone.weights + alone.biases):
        torch.testing.assert_close(a, b, atol=2e-5, rtol=0)


def reference_qnet(states, mask, head, dims):
    """Straightforward hyper-head, one query and one matrix at a time, in float64: masked
    tokens are dropped rather than set to -inf, biases are produced as (1, h) row matrices."""
    L = len(dims) - 2
    weights = [[] for _ in range(L + 1)]
    biases = [[] for _ in range(L)]
    h64 = {k: v.double() for k, v in head.items()}
    for q in range(states.shape[0]):
        H = states[q][mask[q].bool()].double()  # (T_q, D)

        def make(emb, proj_idx, hyper, base):
            K = H @ h64[f"key_projections.{proj_idx}.weight"].T + h64[f"key_projections.{proj_idx}.bias"]
            V = H @ h64[f"value_projections.{proj_idx}.weight"].T + h64[f"value_projections.{proj_idx}.bias"]
            E = emb[0]  # (rows, in)
            A = torch.softmax(E @ K.T / math.sqrt(E.shape[0]), dim=-1)
            C = torch.relu(A @ V)
            C = (C - C.mean(-1, keepdim=True)) / torch.sqrt(C.var(-1, unbiased=False, keepdim=True) + 1e-5)
            G = C @ h64[f"{hyper}.weight"].T + h64[f"{hyper}.bias"]
            return G + base

        for i in range(L + 1):
            m = make(h64[f"weight_query_embeddings.{i}"], i, f"weight_hyper_projection.{i}", h64[f"hyper_base_matrices.{i}"][0])
            weights[i].append(m.T)
        for j in range(L):
            v = make(h64[f"bias_query_embeddings.{j}"], L + 1 + j, f"bias_hyper_projection.{j}", h64[f"hyper_base_vectors.{j}"])
            biases[j].append(v[0])
    return [torch.stack(w) for w in weights], [torch.stack(b) for b in biases]


def reference_scores(weights, biases, x):
    """The q-net of the doc (published flags), float64, one query at a time."""
    out = []
    for q in range(weights[0].shape[0]):
        h = x.double()
        for i in range(len(biases)):
            y = torch.relu(h @ weights[i][q] + biases[i][q])
            y = (y - y.mean(-1, keepdim=True)) / torch.sqrt(y.var(-1, unbiased=False, keepdim=True) + 1e-5)
            h = y + h if i < len(biases) - 1 else y
        out.append((h @ weights[-1][q])[:, 0])
    return torch.stack(out)


QUERIES = ["short", "a considerably longer query, with punctuation and several more tokens than the first"]
DOCS = ["tiny doc", "another document that is a little longer than the first one", "x"]


@pytest.mark.parametrize(
    "dims,pooling,shared",
    [([HIDDEN, 64, 64, 1], "mean", True), ([HIDDEN, 48, 1], "cls", False)],
    ids=["2-hidden-64-mean-shared", "1-hidden-48-cls-separate"],
)
def test_tiny_checkpoint_matches_independent_reference(tmp_path, dims, pooling, shared):
    qbert, pbert, head = write_tiny_checkpoint(tmp_path / "ckpt", dims, pooling, shared)
    model = engine.HypencoderModel.from_pretrained(tmp_path / "ckpt", device="cpu")
    assert model.vector_dimensions == dims and model.config.pooling_type == pooling

    qnets = model.encode_queries(QUERIES, max_length=32)
    tok = model.tokenizer(QUERIES, padding=True, truncation=True, max_length=32, return_tensors="pt")
    assert bool((tok["attention_mask"] == 0).any()), "the queries must differ in length to test masking"
    with torch.no_grad():
        states = qbert(**tok).last_hidden_state
    ref_w, ref_b = reference_qnet(states, tok["attention_mask"], head, dims)
    assert qnets.vector_dimensions == dims
    # Ordinary tensors, not inference-mode ones: graph search differentiates q-nets.
    assert not any(t.is_inference() for t in qnets.weights + qnets.biases)
    for got, want in zip(qnets.weights + qnets.biases, ref_w + ref_b):
        torch.testing.assert_close(got.double(), want, atol=1e-4, rtol=1e-4)

    vecs = model.encode_documents(DOCS, batch_size=2, show_progress=False)
    ref_v = []
    with torch.no_grad():
        for d in DOCS:  # one at a time: no padding, so pooling needs no mask here
            s = pbert(**model.tokenizer([d], return_tensors="pt")).last_hidden_state[0]
            ref_v.append(s[0] if pooling == "cls" else s.mean(0))
    ref_v = torch.stack(ref_v)
    torch.testing.assert_close(vecs, ref_v, atol=1e-5, rtol=1e-5)

    scores = engine.score(qnets, vecs)
    torch.testing.assert_close(scores.double(), reference_scores(ref_w, ref_b, ref_v), atol=1e-3, rtol=1e-4)


def test_tiny_checkpoint_fp16(tmp_path):
    """Half precision (the CUDA default) on CPU: same q-nets to half-precision tolerance."""
    write_tiny_checkpoint(tmp_path / "ckpt", [HIDDEN, 64, 64, 1])
    m32 = engine.HypencoderModel.from_pretrained(tmp_path / "ckpt", device="cpu")
    m16 = engine.HypencoderModel.from_pretrained(tmp_path / "ckpt", device="cpu", dtype="float16")
    assert m16.dtype == torch.float16
    a, b = m32.encode_queries(QUERIES), m16.encode_queries(QUERIES)
    assert b.dtype == torch.float32  # outputs are float32 unless asked otherwise
    for x, y in zip(a.weights, b.weights):
        torch.testing.assert_close(x, y, atol=0.05, rtol=0.02)


# ---------------------------------------------------------------------- configuration and errors
def test_converter_flags_map_onto_qnet_config(tmp_path):
    write_tiny_checkpoint(tmp_path / "ckpt", [HIDDEN, 64, 1],
                          converter_extra={"do_residual_on_last": True, "do_layer_norm": False})
    model = engine.HypencoderModel.from_pretrained(tmp_path / "ckpt", device="cpu")
    cfg = model.encode_queries(["q"]).config
    assert cfg.residual_on_last is True and cfg.layer_norm is False and cfg.activation == "relu"


def test_unknown_converter_flag_is_refused(tmp_path):
    write_tiny_checkpoint(tmp_path / "ckpt", [HIDDEN, 64, 1], converter_extra={"do_something_new": True})
    with pytest.raises(ValueError, match="do_something_new"):
        engine.HypencoderModel.from_pretrained(tmp_path / "ckpt", device="cpu")


def test_missing_base_config_says_what_to_do(tmp_path):
    write_tiny_checkpoint(tmp_path / "ckpt", [HIDDEN, 64, 1])
    base = tmp_path / "ckpt" / "base"
    shutil.move(str(base), str(tmp_path / "elsewhere"))
    with pytest.raises(FileNotFoundError, match="base_config"):
        engine.HypencoderModel.from_pretrained(tmp_path / "ckpt", device="cpu")
    model = engine.HypencoderModel.from_pretrained(tmp_path / "ckpt", device="cpu", base_config=tmp_path / "elsewhere")
    assert model.dim == HIDDEN


def test_weights_not_matching_dimensions_are_refused(tmp_path):
    write_tiny_checkpoint(tmp_path / "ckpt", [HIDDEN, 64, 1])
    cfg = json.loads((tmp_path / "ckpt" / "config.json").read_text())
    cfg["query_encoder_kwargs"]["converter_kwargs"]["vector_dimensions"] = [HIDDEN, 32, 1]
    (tmp_path / "ckpt" / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match="hyper-head"):
        engine.HypencoderModel.from_pretrained(tmp_path / "ckpt", device="cpu")


def test_bad_inputs(tmp_path):
    with pytest.raises(FileNotFoundError, match="no checkpoint directory"):
        engine.HypencoderModel.from_pretrained(tmp_path / "nothing-here")
    with pytest.raises(TypeError):
        engine.HypencoderModel.from_pretrained(42)
    write_tiny_checkpoint(tmp_path / "ckpt", [HIDDEN, 64, 1])
    with pytest.raises(TypeError, match="dtype"):
        engine.HypencoderModel.from_pretrained(tmp_path / "ckpt", device="cpu", dtype="int8")
    model = engine.HypencoderModel.from_pretrained(tmp_path / "ckpt", device="cpu")
    with pytest.raises(ValueError, match="empty"):
        model.encode_queries([])
    with pytest.raises(TypeError, match=r"texts\[1\]"):
        model.encode_documents(["ok", 3], show_progress=False)
    with pytest.raises(ValueError, match="batch_size"):
        model.encode_queries(["q"], batch_size=0)
    # A single string is one text.
    assert model.encode_queries("one query").num_queries == 1


# ---------------------------------------------------------------------- without transformers
def test_engine_works_without_transformers(tmp_path):
    code = f"""
import sys
sys.modules["transformers"] = None  # makes 'import transformers' fail
import torch, engine
q = engine.QNet([torch.randn(2, 4, 4), torch.randn(2, 4, 1)], [torch.randn(2, 4)])
assert engine.score(q, torch.randn(5, 4)).shape == (2, 5)
try:
    engine.HypencoderModel.from_pretrained({str(tmp_path)!r})
except ImportError as e:
    assert "pip install" in str(e) and "hf" in str(e), e
else:
    raise SystemExit("no ImportError")
from engine.cli import main
corpus = {str(tmp_path / "c.jsonl")!r}
assert main(["encode", {str(tmp_path / "idx")!r}, "--corpus", corpus, "--model", {str(tmp_path)!r}]) == 2
print("OK")
"""
    (tmp_path / "c.jsonl").write_text('{"id": "a", "text": "t"}\n')
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=str(REPO))
    assert r.returncode == 0 and r.stdout.strip() == "OK", r.stderr
    assert "pip install 'hypencoder-engine[hf]'" in r.stderr  # the CLI's one-line message

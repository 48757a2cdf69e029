"""A checkpoint loads only as the model it claims to be: converter options read as the
reference reads them, the tokenizer complete and fitting the model, shapes checked before
anything is allocated, and inputs the model cannot embed refused."""

import json
import os
import resource

os.environ["HF_HUB_OFFLINE"] = "1"

import pytest
import torch

import engine
from engine.hf.checkpoint import qnet_config_from_converter
from engine.hf.pooling import pool
from tiny_checkpoint import HIDDEN, write_tiny_checkpoint

pytest.importorskip("transformers")

DIMS = [HIDDEN, 64, 64, 1]
QUERIES = ["short", "a somewhat longer query about perl modules"]
DOCS = ["tiny", "a document that is a good deal longer than the first one", "mid length doc"]


def load(path, **kw):
    return engine.HypencoderModel.from_pretrained(path, device="cpu", **kw)


def edit_config(path, fn):
    cfg = json.loads((path / "config.json").read_text())
    fn(cfg)
    (path / "config.json").write_text(json.dumps(cfg))


# ------------------------------------------------------------------------------ converter options
def test_residual_on_last_null_means_as_do_residual():
    assert qnet_config_from_converter({"do_residual_on_last": None}).residual_on_last is True
    assert qnet_config_from_converter({"do_residual": True, "do_residual_on_last": None}).residual_on_last is True
    off = qnet_config_from_converter({"do_residual": False, "do_residual_on_last": None})
    assert off.residual is False and off.residual_on_last is False


def test_null_residual_on_last_changes_the_scores_as_true_does(tmp_path):
    write_tiny_checkpoint(tmp_path / "null", DIMS, converter_extra={"do_residual_on_last": None})
    write_tiny_checkpoint(tmp_path / "true", DIMS, converter_extra={"do_residual_on_last": True})
    write_tiny_checkpoint(tmp_path / "false", DIMS, converter_extra={"do_residual_on_last": False})
    docs = torch.randn(20, HIDDEN)
    s = {k: engine.score(load(tmp_path / k).encode_queries(QUERIES), docs) for k in ("null", "true", "false")}
    assert torch.equal(s["null"], s["true"]) and not torch.allclose(s["null"], s["false"])


def test_training_only_dropout_options_are_accepted_and_ignored(tmp_path):
    write_tiny_checkpoint(tmp_path / "plain", DIMS)
    write_tiny_checkpoint(tmp_path / "dropout", DIMS, converter_extra={"do_dropout": True, "dropout_prob": 0.1})
    a, b = load(tmp_path / "plain").encode_queries(QUERIES), load(tmp_path / "dropout").encode_queries(QUERIES)
    assert a.config == b.config
    for x, y in zip(a.weights + a.biases, b.weights + b.biases):
        assert torch.equal(x, y)


@pytest.mark.parametrize("key,value,err", [
    ("do_residual", "false", TypeError), ("do_layer_norm", 0, TypeError),
    ("layer_norm_before_residual", "true", TypeError), ("do_residual_on_last", "no", TypeError),
    ("do_dropout", "yes", TypeError), ("dropout_prob", 2.0, ValueError), ("dropout_prob", "0.1", ValueError),
    ("activation_type", "gelu", ValueError), ("activation_type", ["relu"], ValueError),
])
def test_converter_values_are_read_strictly(key, value, err):
    with pytest.raises(err, match=f"converter_kwargs.{key}"):
        qnet_config_from_converter({key: value})


def test_residual_on_last_without_residual_is_refused():
    with pytest.raises(ValueError, match="do_residual_on_last"):
        qnet_config_from_converter({"do_residual": False, "do_residual_on_last": True})


@pytest.mark.parametrize("edit,err,match", [
    (lambda c: c.update(shared_encoder="true"), TypeError, "shared_encoder"),
    (lambda c: c["query_encoder_kwargs"].update(base_encoder_output_dim="64"), ValueError, "base_encoder_output_dim"),
    (lambda c: c["passage_encoder_kwargs"].update(pooling_type=5), ValueError, "pooling_type"),
    (lambda c: c.update(passage_encoder_kwargs=[1]), TypeError, "passage_encoder_kwargs"),
    (lambda c: c["query_encoder_kwargs"]["converter_kwargs"].update(vector_dimensions=[64, "64", 1]),
     ValueError, "vector_dimensions"),
])
def test_config_json_types(tmp_path, edit, err, match):
    write_tiny_checkpoint(tmp_path / "c", [HIDDEN, 64, 1])
    edit_config(tmp_path / "c", edit)
    with pytest.raises(err, match=match):
        load(tmp_path / "c")


# ------------------------------------------------------------------------------ sizes before allocation
def test_vector_dimensions_are_checked_before_allocating(tmp_path):
    write_tiny_checkpoint(tmp_path / "c", [HIDDEN, 64, 1])
    # A hyper-head for [64, 1_000_000, 1] holds 10^12 weights (4 TB): must fail on shapes alone.
    edit_config(tmp_path / "c", lambda c: c["query_encoder_kwargs"]["converter_kwargs"].update(
        vector_dimensions=[HIDDEN, 1_000_000, 1]))
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    with pytest.raises(ValueError, match="hyper-head"):
        load(tmp_path / "c")
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before < 1 << 20  # KiB: under 1 GiB


def test_base_config_that_does_not_fit_the_weights_allocates_nothing(tmp_path):
    write_tiny_checkpoint(tmp_path / "c", [HIDDEN, 64, 1])
    base = json.loads((tmp_path / "c" / "base" / "config.json").read_text())
    base["intermediate_size"] = 1 << 22  # 2 layers x 2 x 64 x 4M floats: 4 GB if allocated
    (tmp_path / "c" / "base" / "config.json").write_text(json.dumps(base))
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    with pytest.raises(ValueError, match="query transformer"):
        load(tmp_path / "c")
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before < 1 << 20


def test_unreadable_weights_file(tmp_path):
    write_tiny_checkpoint(tmp_path / "c", [HIDDEN, 64, 1])
    (tmp_path / "c" / "model.safetensors").write_bytes(b"\x00" * 100)
    with pytest.raises(ValueError, match="safetensors"):
        load(tmp_path / "c")


# ------------------------------------------------------------------------------ tokenizer
def test_tokenizer_without_vocabulary_is_refused(tmp_path):
    write_tiny_checkpoint(tmp_path / "c", [HIDDEN, 64, 1])
    for f in ("vocab.txt", "tokenizer.json"):
        os.remove(tmp_path / "c" / f)
    assert (tmp_path / "c" / "tokenizer_config.json").is_file()
    with pytest.raises(FileNotFoundError, match="no vocabulary"):
        load(tmp_path / "c")


def test_tokenizer_larger_than_the_embedding_is_refused(tmp_path):
    from safetensors.torch import load_file, save_file

    write_tiny_checkpoint(tmp_path / "c", [HIDDEN, 64, 1])
    key = "query_encoder.transformer.embeddings.word_embeddings.weight"
    t = load_file(str(tmp_path / "c" / "model.safetensors"))
    vocab = t[key].shape[0]
    rows = vocab - vocab // 4  # fewer rows than tokens, yet not "far fewer"
    t[key] = t[key][:rows].contiguous()
    save_file(t, str(tmp_path / "c" / "model.safetensors"))
    base = json.loads((tmp_path / "c" / "base" / "config.json").read_text())
    base["vocab_size"] = rows
    (tmp_path / "c" / "base" / "config.json").write_text(json.dumps(base))
    with pytest.raises(ValueError, match=f"tokenizer .* {vocab} tokens but the model embeds only {rows}"):
        load(tmp_path / "c")


def test_token_ids_beyond_the_vocabulary_are_value_errors(tmp_path):
    write_tiny_checkpoint(tmp_path / "c", [HIDDEN, 64, 1])
    model = load(tmp_path / "c")
    model.query_transformer.resize_token_embeddings(40)  # a tokenizer/model mismatch made after loading
    with pytest.raises(ValueError, match="token id .* outside the model's vocabulary of 40"):
        model.encode_queries(["zebra xylophone"])


def test_max_length_beyond_the_positions_is_a_value_error(tmp_path):
    write_tiny_checkpoint(tmp_path / "c", [HIDDEN, 64, 1])  # the tiny BERT embeds 64 positions
    model = load(tmp_path / "c")
    long_text = " ".join(["word"] * 200)
    assert model.encode_queries([long_text], max_length=64).num_queries == 1
    for call in (lambda: model.encode_queries([long_text], max_length=65),
                 lambda: model.encode_documents([long_text], max_length=512, show_progress=False)):
        with pytest.raises(ValueError, match="max_length 6?5?1?2? exceeds the 64 token positions"):
            call()
    # The default is the model's limit: a long document is truncated, never an error.
    assert model.encode_documents([long_text], show_progress=False).shape == (1, HIDDEN)


# ------------------------------------------------------------------------------ pooling
def test_cls_pooling_takes_the_first_real_token_with_left_padding(tmp_path):
    states = torch.arange(2 * 4 * 3, dtype=torch.float32).reshape(2, 4, 3)
    right = torch.tensor([[1, 1, 0, 0], [1, 1, 1, 1]])
    left = torch.tensor([[0, 0, 1, 1], [1, 1, 1, 1]])
    assert torch.equal(pool(states, right, "cls"), states[:, 0])
    assert torch.equal(pool(states, left, "cls"), torch.stack([states[0, 2], states[1, 0]]))

    write_tiny_checkpoint(tmp_path / "c", [HIDDEN, 64, 1], pooling="cls", shared=False)
    model = load(tmp_path / "c")
    alone = torch.cat([model.encode_documents([d], show_progress=False) for d in DOCS])
    # A tokenizer configured to pad on the left: batches are still padded on the right (a
    # text's encoding must not depend on its batch), and pooling takes the real [CLS].
    model.tokenizer.padding_side = "left"
    torch.testing.assert_close(model.encode_documents(DOCS, batch_size=3, show_progress=False), alone,
                               atol=1e-5, rtol=1e-5)
    q_alone = engine.QNet.cat([model.encode_queries([t]) for t in QUERIES])
    q_batch = model.encode_queries(QUERIES)
    for a, b in zip(q_alone.weights + q_alone.biases, q_batch.weights + q_batch.biases):
        torch.testing.assert_close(a, b, atol=2e-5, rtol=0)


def test_unavailable_device(tmp_path):
    write_tiny_checkpoint(tmp_path / "c", [HIDDEN, 64, 1])
    with pytest.raises(ValueError, match="device"):
        engine.HypencoderModel.from_pretrained(tmp_path / "c", device="cuda:99")
    with pytest.raises(ValueError, match="device"):
        load(tmp_path / "c").encode_queries(["q"], device="gpu0")

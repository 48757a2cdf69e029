"""A tiny randomly initialised Hypencoder checkpoint in the reference format, for tests.

Small BERT (hidden 64, 2 layers), random hyper-head, and a small WordPiece tokenizer made
here (special tokens, characters, continuation characters and the words the tests use),
written in the checkpoint's format: nothing is read from outside the repository.
"""

import json
import string
from pathlib import Path

import pytest
import torch

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.txt")
_WORDS = ("a", "the", "for", "of", "and", "to", "with", "query", "document", "doc", "short", "longer",
          "library", "parsing", "files", "tool", "driver", "display", "usb", "perl", "module", "objects")


def _transformers():
    return pytest.importorskip("transformers")


HIDDEN = 64


def _vocab() -> list:
    chars = string.ascii_lowercase + string.digits + string.punctuation
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *chars, *(f"##{c}" for c in chars), *_WORDS]
    return list(dict.fromkeys(vocab))


def _bert(seed: int, transformers):
    torch.manual_seed(seed)
    cfg = transformers.BertConfig(
        vocab_size=len(_vocab()), hidden_size=HIDDEN, num_hidden_layers=2, num_attention_heads=4,
        intermediate_size=128, max_position_embeddings=64,
    )
    return transformers.BertModel(cfg).eval()


def _head_tensors(dims, seed: int) -> dict:
    """Random hyper-head tensors under the checkpoint's names (scaled so softmaxes are not flat)."""
    g = torch.Generator().manual_seed(seed)
    r = lambda *s: torch.randn(*s, generator=g) * 0.3  # noqa: E731
    L = len(dims) - 2
    shapes = [(dims[i], dims[i + 1]) for i in range(L + 1)]
    widths = [dims[i + 1] for i in range(L)]
    t = {}
    for i, n in enumerate([a for a, _ in shapes] + widths):
        for p in ("key_projections", "value_projections"):
            t[f"{p}.{i}.weight"], t[f"{p}.{i}.bias"] = r(n, HIDDEN), r(n)
    for i, (a, b) in enumerate(shapes):
        t[f"weight_query_embeddings.{i}"] = r(1, b, a)
        t[f"weight_hyper_projection.{i}.weight"], t[f"weight_hyper_projection.{i}.bias"] = r(a, a), r(a)
        t[f"hyper_base_matrices.{i}"] = r(1, b, a)
    for j, h in enumerate(widths):
        t[f"bias_query_embeddings.{j}"] = r(1, 1, h)
        t[f"bias_hyper_projection.{j}.weight"], t[f"bias_hyper_projection.{j}.bias"] = r(h, h), r(h)
        t[f"hyper_base_vectors.{j}"] = r(1, h)
    return t


def write_tiny_checkpoint(path: Path, dims, pooling="mean", shared=True, converter_extra=None):
    """A random checkpoint in the reference format; returns (query bert, passage bert, head tensors)."""
    transformers = _transformers()
    from safetensors.torch import save_file

    path.mkdir(parents=True, exist_ok=True)
    qbert = _bert(0, transformers)
    pbert = qbert if shared else _bert(1, transformers)
    head = _head_tensors(dims, seed=2)
    tensors = {f"query_encoder.transformer.{k}": v for k, v in qbert.state_dict().items()}
    tensors.update({f"query_encoder.{k}": v for k, v in head.items()})
    if not shared:
        tensors.update({f"passage_encoder.transformer.{k}": v for k, v in pbert.state_dict().items()})
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(path / "model.safetensors"))
    converter = {"activation_type": "relu", "do_residual_on_last": False, "vector_dimensions": list(dims)}
    converter.update(converter_extra or {})
    config = {
        "query_encoder_kwargs": {
            "model_name_or_path": "some-org/not-on-this-machine",  # a hub name: must not be used
            "base_encoder_output_dim": HIDDEN,
            "converter_kwargs": converter,
        },
        "passage_encoder_kwargs": {"model_name_or_path": "some-org/not-on-this-machine", "pooling_type": pooling},
        "shared_encoder": shared,
    }
    (path / "config.json").write_text(json.dumps(config))
    qbert.config.save_pretrained(path / "base")
    write_tokenizer(path, transformers)
    return qbert, pbert, head


def write_tokenizer(path: Path, transformers) -> None:
    """A lower-casing BERT WordPiece tokenizer that splits any ASCII text (unknown words
    fall back to characters), saved as the checkpoint's tokenizer files."""
    path.mkdir(parents=True, exist_ok=True)
    (path / "vocab.txt").write_text("\n".join(_vocab()) + "\n")
    from tokenizers import BertWordPieceTokenizer

    core = BertWordPieceTokenizer(str(path / "vocab.txt"), lowercase=True)
    tok = transformers.PreTrainedTokenizerFast(
        tokenizer_object=core._tokenizer, model_max_length=64, unk_token="[UNK]", pad_token="[PAD]",
        cls_token="[CLS]", sep_token="[SEP]", mask_token="[MASK]")
    tok.save_pretrained(str(path))
    missing = [f for f in TOKENIZER_FILES if not (path / f).is_file()]
    assert not missing, f"the tokenizer did not write {missing}"

"""``HypencoderModel``: a Hypencoder checkpoint loaded offline, from text to q-nets and vectors.

The base transformer is built by transformers from a *local* configuration (never fetched
from a hub) and filled with the checkpoint's weights; the hyper-head is the engine's own
(:mod:`engine.hf.hyper_head`). transformers is imported only when a model is loaded, so the
rest of the engine works without it.
"""

from __future__ import annotations

import os
from typing import Sequence

import torch

from ..devices import as_device
from ..qnet import QNet
from ._deps import require_transformers
from .checkpoint import (
    CheckpointConfig,
    check_checkpoint_dir,
    find_base_config,
    load_state_dict,
    read_json,
    split_state_dict,
)
from .hyper_head import HyperHead
from .pooling import pool

_DTYPES = {
    "float32": torch.float32, "fp32": torch.float32,
    "float16": torch.float16, "fp16": torch.float16, "half": torch.float16,
    "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
}
_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.txt")
# A tokenizer needs its vocabulary: tokenizer.json holds it, else one of these files does
# (WordPiece, BPE, SentencePiece). A tokenizer_config.json alone loads as a tokenizer that
# knows only its special tokens.
_VOCAB_FILES = ("tokenizer.json", "vocab.txt", "vocab.json", "spiece.model", "sentencepiece.bpe.model",
                "tokenizer.model")
# Inputs a BERT-style encoder accepts; tokenizers may return more (e.g. special-token masks).
_MODEL_INPUTS = ("input_ids", "attention_mask", "token_type_ids")
# Batches are padded on the right whatever the tokenizer's own setting: the real tokens then
# keep the positions they have alone, so a text's encoding does not depend on its batch.
_PADDING_SIDE = "right"
# Documents are tokenized this many at a time, then sorted by length inside the chunk so
# that batches carry little padding, without holding a whole corpus's tokens in memory.
_DOC_CHUNK = 8192


def _as_dtype(dtype) -> torch.dtype:
    if isinstance(dtype, torch.dtype) and dtype in set(_DTYPES.values()):
        return dtype
    if isinstance(dtype, str) and dtype.lower() in _DTYPES:
        return _DTYPES[dtype.lower()]
    raise TypeError(f"dtype must be float32, float16 or bfloat16 (a torch.dtype or its name), got {dtype!r}")


def _check_texts(texts, what: str) -> list[str]:
    if isinstance(texts, str):
        texts = [texts]
    if not isinstance(texts, Sequence):
        raise TypeError(f"{what} must be a string or a sequence of strings, got {type(texts).__name__}")
    texts = list(texts)
    if not texts:
        raise ValueError(f"{what} is empty")
    for i, t in enumerate(texts):
        if not isinstance(t, str):
            raise TypeError(f"{what}[{i}] must be a str, got {type(t).__name__}")
    return texts


def _check_positive(value, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    if value < 1:
        raise ValueError(f"{name} must be >= 1, got {value}")
    return value


def _check_fits(build, state_dict: dict, what: str) -> None:
    """Build a module on the meta device (allocating nothing) and compare its tensors'
    names and shapes with the checkpoint's: a configuration that does not describe these
    weights is a ValueError before any memory is allocated (a wrong ``vector_dimensions``
    could otherwise allocate gigabytes first)."""
    with torch.device("meta"):
        own = build().state_dict()
    bad = [f"{k}: {tuple(v.shape)} vs {tuple(own[k].shape)}"
           for k, v in state_dict.items() if k in own and own[k].shape != v.shape]
    if bad:
        raise ValueError(f"checkpoint tensors do not fit the {what} (checkpoint vs expected): {bad[:4]}")
    # The pooler is unused (documents are pooled by the engine) and some checkpoints omit it;
    # position_ids is a buffer older transformers versions saved.
    missing = [k for k in own if k not in state_dict and not k.startswith("pooler.")]
    unexpected = [k for k in state_dict if k not in own and not k.endswith("position_ids")]
    if missing or unexpected:
        raise ValueError(f"the checkpoint's tensors do not match the {what}: missing {missing[:5]}, "
                         f"unexpected {unexpected[:5]}")


def _transformer_config(transformers, base_config: dict, where: str):
    """The base transformer's configuration object from a configuration dict."""
    cfg = dict(base_config)
    model_type = cfg.pop("model_type", None)
    if not isinstance(model_type, str) or not model_type:
        raise ValueError(f"the {where} base configuration has no 'model_type'")
    try:
        return transformers.AutoConfig.for_model(model_type, **cfg)
    except (ValueError, TypeError, KeyError) as e:
        raise ValueError(f"the {where} base configuration cannot be read: {e}") from None


def _build_transformer(transformers, config, state_dict: dict, where: str):
    """The base transformer, checked against ``state_dict`` first, then filled with it."""
    _check_fits(lambda: transformers.AutoModel.from_config(config), state_dict,
                f"{where} transformer ({config.model_type})")
    model = transformers.AutoModel.from_config(config)
    model.load_state_dict(state_dict, strict=False)  # names and shapes checked above
    return model.eval()


def _position_limit(transformer) -> int | None:
    """Tokens the transformer can embed: ``max_position_embeddings`` less the offset of
    models (RoBERTa and kin) whose position ids start after the padding index."""
    n = getattr(transformer.config, "max_position_embeddings", None)
    if not isinstance(n, int) or n < 1:
        return None
    pos = getattr(getattr(transformer, "embeddings", None), "position_embeddings", None)
    pad = getattr(pos, "padding_idx", None)
    return n - (pad + 1) if isinstance(pad, int) and pad >= 0 else n


def _vocab_rows(transformer) -> int:
    return int(transformer.get_input_embeddings().num_embeddings)


def _resolve_base_config(base_config, path: str, which: str) -> dict:
    if base_config is None:
        return find_base_config(path, which)
    if isinstance(base_config, dict):
        return dict(base_config)
    if isinstance(base_config, (str, os.PathLike)):
        p = os.fspath(base_config)
        return read_json(os.path.join(p, "config.json") if os.path.isdir(p) else p)
    to_dict = getattr(base_config, "to_dict", None)  # a transformers PretrainedConfig
    if callable(to_dict):
        return to_dict()
    raise TypeError(
        f"base_config must be a dict, a path to a config.json (or its directory) or a "
        f"transformers config, got {type(base_config).__name__}"
    )


def _load_tokenizer(transformers, path: str, vocab_rows: int):
    """The checkpoint's tokenizer (from ``path`` or ``path/base``), with its vocabulary, and
    fitting the model's embedding of ``vocab_rows`` tokens."""
    for d in (path, os.path.join(path, "base")):
        present = [f for f in _TOKENIZER_FILES + _VOCAB_FILES if os.path.isfile(os.path.join(d, f))]
        if not present:
            continue
        if not any(f in _VOCAB_FILES for f in present):
            raise FileNotFoundError(
                f"the tokenizer in {d} has no vocabulary (none of {', '.join(_VOCAB_FILES)}; found "
                f"{', '.join(present)}): copy the base model's vocabulary files next to it"
            )
        try:
            tok = transformers.AutoTokenizer.from_pretrained(d, local_files_only=True)
        except (OSError, ValueError, TypeError, KeyError) as e:
            raise ValueError(f"the tokenizer files in {d} cannot be loaded: {type(e).__name__}: {e}") from None
        size = len(tok)
        if size > vocab_rows:
            raise ValueError(f"the tokenizer in {d} has {size} tokens but the model embeds only {vocab_rows}: "
                             "it is not this model's tokenizer")
        if size < vocab_rows // 2:
            raise ValueError(f"the tokenizer in {d} knows {size} tokens, far fewer than the model's "
                             f"{vocab_rows}: its vocabulary is missing or not this model's")
        return tok
    raise FileNotFoundError(f"no tokenizer files ({', '.join(_TOKENIZER_FILES)}) in {path} or {path}/base")


class HypencoderModel:
    """A loaded Hypencoder dual encoder: :meth:`encode_queries` -> :class:`~engine.QNet`,
    :meth:`encode_documents` -> document vectors.

    Build it with :meth:`from_pretrained`. ``device`` and ``dtype`` are where the networks run
    (default: CUDA in float16 when available, else CPU in float32); outputs are returned
    on CPU in float32 unless asked otherwise.
    """

    def __init__(self, query_transformer, hyper_head: HyperHead, tokenizer, config: CheckpointConfig,
                 passage_transformer=None, device="cpu", dtype=torch.float32):
        self.config = config
        self.tokenizer = tokenizer
        self.device = torch.device(device)
        self.dtype = _as_dtype(dtype)
        self.query_transformer = query_transformer.to(self.device, self.dtype).eval()
        self.hyper_head = hyper_head.to(self.device, self.dtype).eval()
        self.passage_transformer = (
            self.query_transformer if passage_transformer is None
            else passage_transformer.to(self.device, self.dtype).eval()
        )

    # ------------------------------------------------------------------ loading
    @classmethod
    def from_pretrained(cls, path, device=None, dtype=None, *, base_config=None,
                        passage_base_config=None) -> "HypencoderModel":
        """Load a checkpoint directory in the reference format, with no network access.

        The base transformer's configuration comes from ``base_config`` when given (a dict,
        a config.json path or directory, or a transformers config), else from the checkpoint's
        ``base/config.json``, else from ``model_name_or_path`` when that is a local directory.
        """
        transformers = require_transformers()
        path = check_checkpoint_dir(path)
        if device is None:
            device = "cuda" if torch.cuda.is_available() else "cpu"
        device = as_device(device)
        if dtype is None:
            dtype = torch.float16 if device.type == "cuda" else torch.float32
        dtype = _as_dtype(dtype)

        # Everything is checked (configurations against tensor shapes, the tokenizer against
        # the embedding) before the networks are allocated.
        ckpt = CheckpointConfig.from_dir(path)
        dims = list(ckpt.vector_dimensions)
        q_sd, head_sd, p_sd = split_state_dict(load_state_dict(path), ckpt.shared_encoder)
        q_cfg = _transformer_config(transformers, _resolve_base_config(base_config, path, "query"), "query")
        hidden = int(q_cfg.hidden_size)
        if ckpt.base_encoder_output_dim not in (None, hidden):
            raise ValueError(
                f"base_encoder_output_dim is {ckpt.base_encoder_output_dim} but the base transformer's "
                f"hidden_size is {hidden}"
            )
        _check_fits(lambda: HyperHead(hidden, dims, ckpt.qnet_config), head_sd,
                    f"hyper-head of vector_dimensions {dims}")
        p_cfg = None
        if not ckpt.shared_encoder:
            p_cfg = _transformer_config(transformers, _resolve_base_config(passage_base_config, path, "passage"),
                                        "passage")
            if int(p_cfg.hidden_size) != dims[0]:
                raise ValueError(
                    f"the passage transformer gives {p_cfg.hidden_size}-d vectors but the "
                    f"q-nets read {dims[0]}-d ones"
                )
        elif hidden != dims[0]:
            raise ValueError(f"the shared transformer gives {hidden}-d vectors but the q-nets read {dims[0]}-d ones")
        query_tf = _build_transformer(transformers, q_cfg, q_sd, "query")
        passage_tf = None if p_cfg is None else _build_transformer(transformers, p_cfg, p_sd, "passage")
        vocab = min(_vocab_rows(query_tf), _vocab_rows(passage_tf or query_tf))
        tokenizer = _load_tokenizer(transformers, path, vocab)
        head = HyperHead(hidden, dims, ckpt.qnet_config)
        head.load_state_dict(head_sd)
        return cls(query_tf, head, tokenizer, ckpt, passage_tf, device=device, dtype=dtype)

    # ------------------------------------------------------------------ properties
    @property
    def vector_dimensions(self) -> list[int]:
        return list(self.config.vector_dimensions)

    @property
    def dim(self) -> int:
        """Width of the document vectors."""
        return self.config.vector_dimensions[0]

    def _max_length(self, max_length, transformer) -> int:
        """``max_length`` checked against the positions the transformer can embed (None:
        that limit, or the tokenizer's if smaller)."""
        positions = _position_limit(transformer)
        if max_length is None:
            limits = [positions, getattr(self.tokenizer, "model_max_length", None)]
            limits = [x for x in limits if isinstance(x, int) and 0 < x < 10**6]
            return min(limits) if limits else 512
        max_length = _check_positive(max_length, "max_length")
        if positions is not None and max_length > positions:
            raise ValueError(f"max_length {max_length} exceeds the {positions} token positions the model embeds")
        return max_length

    def _forward(self, transformer, batch) -> tuple[torch.Tensor, torch.Tensor]:
        ids = batch["input_ids"]
        rows = _vocab_rows(transformer)
        bad = ids[(ids < 0) | (ids >= rows)]
        if bad.numel():
            raise ValueError(f"the tokenizer produced token id {int(bad[0])} outside the model's vocabulary "
                             f"of {rows} tokens")
        inputs = {k: batch[k].to(self.device) for k in _MODEL_INPUTS if k in batch}
        states = transformer(**inputs).last_hidden_state
        return states, inputs["attention_mask"]

    # ------------------------------------------------------------------ encoding
    # no_grad rather than inference_mode: inference tensors cannot enter autograd later (graph
    # search differentiates q-nets) nor be modified in place outside inference mode.
    @torch.no_grad()
    def encode_queries(self, texts, batch_size: int = 50, max_length: int | None = 32, *,
                       show_progress: bool = False, device="cpu", dtype=torch.float32) -> QNet:
        """Texts -> a :class:`QNet` with one q-net per text, in order.

        Batches of ``batch_size`` are padded to their longest query, truncated at
        ``max_length`` tokens (None: the model's limit).
        """
        from tqdm.auto import tqdm

        texts = _check_texts(texts, "texts")
        batch_size = _check_positive(batch_size, "batch_size")
        max_length = self._max_length(max_length, self.query_transformer)
        out_dtype = _as_dtype(dtype)
        device = as_device(device)
        parts = []
        for start in tqdm(range(0, len(texts), batch_size), desc="queries", unit="batch",
                          disable=not show_progress):
            batch = self.tokenizer(texts[start:start + batch_size], padding=True, truncation=True,
                                   max_length=max_length, return_tensors="pt", padding_side=_PADDING_SIDE)
            states, mask = self._forward(self.query_transformer, batch)
            parts.append(self.hyper_head(states, mask).to(device=device, dtype=out_dtype))
        return parts[0] if len(parts) == 1 else QNet.cat(parts)

    @torch.no_grad()
    def encode_documents(self, texts, batch_size: int = 32, max_length: int | None = None, *,
                         show_progress: bool = True, device="cpu", dtype=torch.float32) -> torch.Tensor:
        """Texts -> ``(n, d)`` document vectors (pooled per the checkpoint's ``pooling_type``).

        Documents are batched by similar length (results are returned in input order), so
        padding costs little; ``max_length`` truncates (None: the model's limit).
        """
        from tqdm.auto import tqdm

        texts = _check_texts(texts, "texts")
        batch_size = _check_positive(batch_size, "batch_size")
        max_length = self._max_length(max_length, self.passage_transformer)
        out_dtype = _as_dtype(dtype)
        device = as_device(device)
        out = torch.empty(len(texts), self.dim, dtype=out_dtype, device=device)
        with tqdm(total=len(texts), desc="documents", unit="doc", disable=not show_progress) as bar:
            for chunk in range(0, len(texts), _DOC_CHUNK):
                enc = self.tokenizer(texts[chunk:chunk + _DOC_CHUNK], truncation=True, max_length=max_length)
                keys = [k for k in _MODEL_INPUTS if k in enc]
                order = sorted(range(len(enc["input_ids"])), key=lambda i: -len(enc["input_ids"][i]))
                for start in range(0, len(order), batch_size):
                    rows = order[start:start + batch_size]
                    batch = self.tokenizer.pad({k: [enc[k][i] for i in rows] for k in keys}, return_tensors="pt",
                                               padding_side=_PADDING_SIDE)
                    states, mask = self._forward(self.passage_transformer, batch)
                    vecs = pool(states, mask, self.config.pooling_type)
                    idx = torch.tensor(rows, device=device) + chunk
                    out[idx] = vecs.to(device=device, dtype=out_dtype)
                    bar.update(len(rows))
        if not bool(torch.isfinite(out).all()):
            raise ValueError("document encoding produced NaN or Inf (try dtype=torch.float32 for the model)")
        return out

    def __repr__(self) -> str:
        return (f"HypencoderModel(vector_dimensions={self.vector_dimensions}, pooling="
                f"{self.config.pooling_type!r}, shared_encoder={self.config.shared_encoder}, "
                f"device={self.device}, dtype={self.dtype})")

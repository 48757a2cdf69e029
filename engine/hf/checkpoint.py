"""Reading a Hypencoder checkpoint directory (the reference ``save_pretrained`` format).

Only json and safetensors/torch here, no transformers: parsing and validating the
configuration and the tensors is independent of how the base transformer is built.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field

import torch

from ..qnet_config import QNetConfig, check_activation, check_flag

QUERY_PREFIX = "query_encoder."
PASSAGE_PREFIX = "passage_encoder."
TRANSFORMER = "transformer."

# converter_kwargs name -> QNetConfig field. Anything else in converter_kwargs (other than
# vector_dimensions and the training-only options below) is refused rather than ignored: a
# flag we do not know could change the q-net's math, and a silently wrong q-net ranks badly
# without any error.
_CONVERTER_FLAGS = {
    "activation_type": "activation",
    "do_layer_norm": "layer_norm",
    "do_residual": "residual",
    "do_residual_on_last": "residual_on_last",
    "layer_norm_before_residual": "layer_norm_before_residual",
}
# Dropout is applied in training only: inference ignores it (once its values are checked).
_TRAINING_ONLY = ("do_dropout", "dropout_prob")
_POOLING_TYPES = ("cls", "mean")


def qnet_config_from_converter(converter_kwargs: dict) -> QNetConfig:
    """Map the checkpoint's ``converter_kwargs`` onto :class:`QNetConfig`, as the reference
    converter reads them: flags must be JSON booleans, ``do_residual_on_last: null`` means
    "as ``do_residual``", and ``do_dropout``/``dropout_prob`` (training only) are ignored."""
    if not isinstance(converter_kwargs, dict):
        raise TypeError(f"converter_kwargs must be a dict, got {type(converter_kwargs).__name__}")
    known = set(_CONVERTER_FLAGS) | set(_TRAINING_ONLY) | {"vector_dimensions"}
    unknown = sorted(map(str, set(converter_kwargs) - known))
    if unknown:
        raise ValueError(
            f"unsupported converter_kwargs {unknown}; the engine knows "
            f"{sorted(known)}"
        )
    kw = dict(converter_kwargs)
    if "do_dropout" in kw:
        check_flag(kw["do_dropout"], "converter_kwargs.do_dropout")
    p = kw.get("dropout_prob", 0.0)
    if isinstance(p, bool) or not isinstance(p, (int, float)) or not 0 <= p <= 1:
        raise ValueError(f"converter_kwargs.dropout_prob must be a number in [0, 1], got {p!r}")
    if "do_residual_on_last" in kw and kw["do_residual_on_last"] is None:
        kw["do_residual_on_last"] = kw.get("do_residual", QNetConfig.residual)
    kwargs = {}
    for key, field_name in _CONVERTER_FLAGS.items():
        if key not in kw:
            continue
        name = f"converter_kwargs.{key}"
        kwargs[field_name] = check_activation(kw[key], name) if key == "activation_type" else check_flag(kw[key], name)
    if kwargs.get("residual_on_last") and not kwargs.get("residual", QNetConfig.residual):
        raise ValueError("converter_kwargs.do_residual_on_last is true but do_residual is false "
                         "(the reference converter refuses this)")
    return QNetConfig(**kwargs)


@dataclass(frozen=True)
class CheckpointConfig:
    """The parts of a checkpoint's ``config.json`` that inference needs."""

    vector_dimensions: tuple[int, ...]
    qnet_config: QNetConfig
    pooling_type: str
    shared_encoder: bool
    base_encoder_output_dim: int | None = None
    raw: dict = field(default_factory=dict, repr=False, compare=False)

    @classmethod
    def from_dict(cls, cfg: dict) -> "CheckpointConfig":
        if not isinstance(cfg, dict):
            raise TypeError(f"a checkpoint config must be a dict, got {type(cfg).__name__}")
        q = cfg.get("query_encoder_kwargs")
        if not isinstance(q, dict):
            raise ValueError("config.json has no 'query_encoder_kwargs': not a Hypencoder checkpoint")
        conv = q.get("converter_kwargs")
        if not isinstance(conv, dict) or "vector_dimensions" not in conv:
            raise ValueError("config.json: query_encoder_kwargs.converter_kwargs.vector_dimensions is missing")
        dims = conv["vector_dimensions"]
        if (
            not isinstance(dims, (list, tuple))
            or len(dims) < 2
            or not all(isinstance(x, int) and not isinstance(x, bool) and x > 0 for x in dims)
        ):
            raise ValueError(f"vector_dimensions must be a list of positive ints, got {dims!r}")
        if dims[-1] != 1:
            raise ValueError(f"vector_dimensions must end with 1 (the score), got {dims!r}")
        if q.get("embedding_representation") not in (None, ""):
            raise ValueError(
                f"embedding_representation={q['embedding_representation']!r} is not supported; "
                "the engine implements the hyper-head q-net only"
            )
        p = cfg.get("passage_encoder_kwargs") or {}
        if not isinstance(p, dict):
            raise TypeError(f"config.json: passage_encoder_kwargs must be an object, got {p!r}")
        pooling = p.get("pooling_type", "cls")
        if not isinstance(pooling, str) or pooling not in _POOLING_TYPES:
            raise ValueError(f"passage pooling_type must be one of {_POOLING_TYPES}, got {pooling!r}")
        shared = check_flag(cfg.get("shared_encoder", False), "shared_encoder")
        out_dim = q.get("base_encoder_output_dim")
        if out_dim is not None and (isinstance(out_dim, bool) or not isinstance(out_dim, int) or out_dim < 1):
            raise ValueError(f"query_encoder_kwargs.base_encoder_output_dim must be a positive int, got {out_dim!r}")
        return cls(
            vector_dimensions=tuple(dims),
            qnet_config=qnet_config_from_converter(conv),
            pooling_type=pooling,
            shared_encoder=shared,
            base_encoder_output_dim=out_dim,
            raw=cfg,
        )

    @classmethod
    def from_dir(cls, path: str) -> "CheckpointConfig":
        return cls.from_dict(read_json(os.path.join(path, "config.json")))


def read_json(path: str) -> dict:
    if not os.path.isfile(path):
        raise FileNotFoundError(f"no {os.path.basename(path)} at {path}")
    with open(path, encoding="utf-8-sig") as f:
        try:
            d = json.load(f)
        except (ValueError, RecursionError) as exc:
            raise ValueError(f"{path} is not valid JSON: {exc}") from None
    if not isinstance(d, dict):
        raise ValueError(f"{path} must hold a JSON object")
    return d


def check_checkpoint_dir(path) -> str:
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"checkpoint path must be a str or os.PathLike, got {type(path).__name__}")
    path = os.fspath(path)
    if not os.path.isdir(path):
        raise FileNotFoundError(
            f"no checkpoint directory at {path!r} (the engine loads local directories only; "
            "download a hub checkpoint first, e.g. with huggingface-cli download)"
        )
    return path


def load_state_dict(path: str) -> dict[str, torch.Tensor]:
    """All tensors of ``model.safetensors`` (or an older ``pytorch_model.bin``), on CPU."""
    st = os.path.join(path, "model.safetensors")
    if os.path.isfile(st):
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            return load_file(st, device="cpu")
        except SafetensorError as e:
            raise ValueError(f"{st} is not a readable safetensors file: {e}") from None
    pt = os.path.join(path, "pytorch_model.bin")
    if os.path.isfile(pt):
        # weights_only: a checkpoint is data, never code to execute.
        try:
            sd = torch.load(pt, map_location="cpu", weights_only=True)
        except Exception as e:  # torch raises UnpicklingError, RuntimeError, EOFError, ...
            raise ValueError(f"{pt} is not a readable weights file: {type(e).__name__}: {e}") from None
        if not isinstance(sd, dict) or not all(isinstance(v, torch.Tensor) for v in sd.values()):
            raise ValueError(f"{pt} does not hold a dict of tensors")
        return sd
    raise FileNotFoundError(f"no model.safetensors or pytorch_model.bin in {path}")


def split_state_dict(tensors: dict[str, torch.Tensor], shared: bool):
    """Split into (query transformer, hyper-head, passage transformer or None) state dicts.

    With ``shared_encoder`` the passage encoder is the query encoder's transformer: any
    ``passage_encoder.transformer.*`` copies (tied duplicates some versions write) are ignored.
    """
    q_tf, head, p_tf, unexpected = {}, {}, {}, []
    for k, v in tensors.items():
        if k.startswith(QUERY_PREFIX + TRANSFORMER):
            q_tf[k[len(QUERY_PREFIX + TRANSFORMER):]] = v
        elif k.startswith(QUERY_PREFIX):
            head[k[len(QUERY_PREFIX):]] = v
        elif k.startswith(PASSAGE_PREFIX + TRANSFORMER):
            p_tf[k[len(PASSAGE_PREFIX + TRANSFORMER):]] = v
        else:
            unexpected.append(k)
    if unexpected:
        raise ValueError(f"unexpected tensors in the checkpoint: {sorted(unexpected)[:8]}")
    if not q_tf:
        raise ValueError("the checkpoint has no 'query_encoder.transformer.*' tensors")
    if not head:
        raise ValueError("the checkpoint has no hyper-head tensors ('query_encoder.key_projections.*', ...)")
    if shared:
        return q_tf, head, None
    if not p_tf:
        raise ValueError(
            "shared_encoder is false but the checkpoint has no 'passage_encoder.transformer.*' tensors"
        )
    return q_tf, head, p_tf


def find_base_config(path: str, which: str = "query") -> dict:
    """The base transformer's configuration, from local files only.

    ``model_name_or_path`` in config.json is a hub name in the published checkpoints, so
    it is used only when it names a local directory. Looked up in order: ``base/`` (or,
    for a separate passage encoder, ``base_passage/`` first), then ``model_name_or_path``
    when local.
    """
    cfg = read_json(os.path.join(path, "config.json"))
    candidates = []
    if which == "passage":
        candidates.append(os.path.join(path, "base_passage"))
    candidates.append(os.path.join(path, "base"))
    kw = cfg.get(f"{which}_encoder_kwargs") or {}
    name = kw.get("model_name_or_path")
    if isinstance(name, str) and os.path.isdir(name):
        candidates.append(name)
    for c in candidates:
        f = os.path.join(c, "config.json")
        if os.path.isfile(f):
            d = read_json(f)
            if "model_type" not in d:
                raise ValueError(f"{f} has no 'model_type'")
            return d
    raise FileNotFoundError(
        f"no local configuration for the {which} encoder's base transformer "
        f"(model_name_or_path={name!r}); put its config.json under {os.path.join(path, 'base')} "
        "or pass base_config= to from_pretrained. The engine never fetches it from the hub."
    )

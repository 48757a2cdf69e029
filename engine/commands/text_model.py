"""Command-line options shared by the commands that read text through a Hypencoder checkpoint."""

from __future__ import annotations

import torch

from .common import DTYPES, positive_int


def add_model_args(p, *, required: bool = False) -> None:
    g = p.add_argument_group("checkpoint (text -> q-nets / vectors; needs transformers)")
    g.add_argument("--model", required=required, help="Hypencoder checkpoint directory (loaded offline)")
    g.add_argument("--device", default=None, help="where the model runs (default: cuda if available, else cpu)")
    g.add_argument("--model-dtype", choices=sorted(DTYPES), default=None,
                   help="model precision (default: float16 on CUDA, float32 on CPU)")
    g.add_argument("--query-max-length", type=positive_int, default=32, help="query truncation in tokens (default 32)")
    g.add_argument("--query-batch-size", type=positive_int, default=50, help="queries per encoder batch (default 50)")


def load_model(args):
    from ..hf import HypencoderModel

    dtype = DTYPES[args.model_dtype] if args.model_dtype else None
    try:
        return HypencoderModel.from_pretrained(args.model, device=args.device, dtype=dtype)
    except ImportError as e:  # the CLI prints RuntimeErrors as one-line messages, not tracebacks
        raise RuntimeError(str(e)) from e


def encode_queries(model, texts, args, device="cpu"):
    """float32 q-nets for ``texts``, on ``device`` (where the index's vectors are)."""
    return model.encode_queries(texts, batch_size=args.query_batch_size, max_length=args.query_max_length,
                                device=device, dtype=torch.float32)


def add_text_search_args(p) -> None:
    """``search``'s text path: query strings through --model, document texts from --corpus."""
    p.add_argument("text", nargs="*", help="query texts (with --model)")
    p.add_argument("--corpus", help="JSONL corpus the index was encoded from, to print document texts")
    p.add_argument("--text-width", type=positive_int, default=100,
                   help="characters of document text shown (default 100)")
    add_model_args(p)


def text_qnets(args, index):
    """``(qnets, query texts)`` when the search is by text, else None; refuses a mix."""
    if args.text and not args.model:
        raise ValueError("query texts need --model CHECKPOINT (or pass --qnets FILE without texts)")
    if not args.model:
        return None
    if args.qnets:
        raise ValueError("pass either --model with query texts or --qnets, not both")
    if not args.text:
        raise ValueError('--model needs at least one query text, e.g. search --model CKPT --index IDX "query"')
    return encode_queries(load_model(args), args.text, args, device=index.device), list(args.text)


def document_texts(args, ext_ids) -> dict | None:
    """Texts of the listed result ids from ``--corpus`` (None without it), shortened for display."""
    if not getattr(args, "corpus", None):
        return None
    from ..jsonl import lookup_texts

    wanted = {str(i) for row in ext_ids for i in row if i is not None}
    w = max(args.text_width, 4)
    return {k: (v if len(v) <= w else v[: w - 3] + "...") for k, v in lookup_texts(args.corpus, wanted).items()}

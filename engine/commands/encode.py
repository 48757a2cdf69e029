"""``python -m engine encode``: a JSONL corpus -> an index, through a Hypencoder checkpoint."""

from __future__ import annotations

from .common import DTYPES, positive_int, write_index
from .text_model import add_model_args, load_model


def add_parser(sub) -> None:
    p = sub.add_parser("encode", help="encode a JSONL corpus ({'id', 'text'} per line) into an index")
    p.add_argument("output", help="index directory to write")
    p.add_argument("--corpus", required=True, help="JSONL file, one {'id': ..., 'text': ...} per line")
    p.add_argument("--id-field", default="id")
    p.add_argument("--text-field", default="text")
    p.add_argument("--limit", type=positive_int, default=None, help="encode only the first N documents")
    p.add_argument("--batch-size", type=positive_int, default=32, help="documents per encoder batch (default 32)")
    p.add_argument("--max-length", type=positive_int, default=None,
                   help="document truncation in tokens (default: the model's limit)")
    p.add_argument("--dtype", choices=sorted(DTYPES), default="float16",
                   help="stored vector dtype (default float16)")
    p.add_argument("--graph", type=positive_int, metavar="R", help="also build an R-neighbour graph")
    add_model_args(p, required=True)
    p.set_defaults(run=run)


def run(args) -> int:
    from ..jsonl import read_jsonl
    from ..storage import save_target

    save_target(args.output)  # refuse a target it may not replace before encoding anything
    ids, texts = read_jsonl(args.corpus, args.id_field, args.text_field, limit=args.limit)
    model = load_model(args)
    vectors = model.encode_documents(texts, batch_size=args.batch_size, max_length=args.max_length,
                                     show_progress=True, dtype=DTYPES[args.dtype])
    write_index(vectors, ids, args.output, args.graph)
    return 0

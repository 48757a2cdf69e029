"""IR evaluation: TREC run and qrels files, and MRR@10 / nDCG@10 / Recall@1000.

Metrics are computed by ir-measures (an optional dependency, ``pip install
'hypencoder-engine[eval]'``) so that the figures are the standard trec_eval ones rather than
our own re-implementation. Queries judged in the qrels but missing from a run count as 0,
as in ir-measures; only judged queries are averaged.
"""

from __future__ import annotations

import os
from typing import Sequence

import torch

# Our names -> ir-measures names.
DEFAULT_MEASURES = {"MRR@10": "RR@10", "nDCG@10": "nDCG@10", "Recall@1000": "R@1000"}
EVAL_HINT = "evaluation needs the 'ir-measures' package: pip install 'hypencoder-engine[eval]' (or: pip install ir-measures)"


def _ir_measures():
    try:
        import ir_measures
    except ImportError as exc:
        raise ImportError(EVAL_HINT) from exc
    return ir_measures


def _trec_lines(path: str, fields: str):
    """``(line number, fields)`` of every non-blank line of a whitespace-separated TREC
    file whose lines hold ``fields`` (e.g. ``"qid iter docid relevance"``)."""
    width = len(fields.split())
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            parts = line.split()
            if not parts:
                continue
            if len(parts) != width:
                raise ValueError(f"{path}:{lineno}: expected '{fields}', got {line.strip()!r}")
            yield lineno, parts


def _number(path: str, lineno: int, what: str, text: str, kind):
    try:
        return kind(text)
    except ValueError:
        raise ValueError(f"{path}:{lineno}: {what} must be {'an integer' if kind is int else 'a number'}, "
                         f"got {text!r}") from None


def read_qrels(path) -> dict[str, dict[str, int]]:
    """TREC qrels (``qid iter docid rel``, whitespace- or tab-separated) -> ``{qid: {docid: rel}}``."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"no qrels file at {path}")
    qrels: dict[str, dict[str, int]] = {}
    for lineno, parts in _trec_lines(path, "qid iter docid relevance"):
        qrels.setdefault(parts[0], {})[parts[2]] = _number(path, lineno, "relevance", parts[3], int)
    if not qrels:
        raise ValueError(f"{path} holds no judgements")
    return qrels


def run_from_result(query_ids: Sequence[str], doc_ids: Sequence[Sequence], scores) -> dict[str, dict[str, float]]:
    """A run ``{qid: {docid: score}}`` from per-query ranked ids (None = padding, skipped)
    and a ``(Q, k)`` score tensor (as :meth:`engine.Index.search` and
    :meth:`engine.Index.external_ids` give them)."""
    if isinstance(scores, torch.Tensor):
        scores = scores.detach().float().cpu().tolist()
    if not (len(query_ids) == len(doc_ids) == len(scores)):
        raise ValueError(f"got {len(query_ids)} query ids, {len(doc_ids)} id rows and {len(scores)} score rows")
    if len(set(map(str, query_ids))) != len(query_ids):
        raise ValueError("query ids must be unique")
    run = {}
    for qid, ids, ss in zip(query_ids, doc_ids, scores):
        if len(ids) != len(ss):
            raise ValueError(f"query {qid}: {len(ids)} ids but {len(ss)} scores")
        run[str(qid)] = {str(d): float(s) for d, s in zip(ids, ss) if d is not None}
    return run


def write_run(path, run: dict[str, dict[str, float]], tag: str = "hypencoder-engine") -> None:
    """Write a TREC run file (``qid Q0 docid rank score tag``), ranks by descending score."""
    if any(c.isspace() for c in tag) or not tag:
        raise ValueError(f"run tag must be a non-empty word without spaces, got {tag!r}")
    for qid, docs in run.items():
        for doc in docs:
            if any(c.isspace() for c in qid + doc) or not qid or not doc:
                raise ValueError(f"ids in a TREC run must be non-empty and without spaces: {qid!r} / {doc!r}")
    path = os.fspath(path)
    tmp = path + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        for qid, docs in run.items():
            for rank, (doc, score) in enumerate(sorted(docs.items(), key=lambda x: -x[1]), 1):
                f.write(f"{qid} Q0 {doc} {rank} {score:.6f} {tag}\n")
    os.replace(tmp, path)  # a half-written run never replaces a good one


def read_run(path) -> dict[str, dict[str, float]]:
    """Read a TREC run file back into ``{qid: {docid: score}}``."""
    path = os.fspath(path)
    run: dict[str, dict[str, float]] = {}
    for lineno, parts in _trec_lines(path, "qid Q0 docid rank score tag"):
        run.setdefault(parts[0], {})[parts[2]] = _number(path, lineno, "score", parts[4], float)
    return run


def evaluate(run: dict[str, dict[str, float]], qrels: dict[str, dict[str, int]],
             measures: dict[str, str] | None = None, *, restrict_to_run: bool = False) -> dict[str, float]:
    """Mean metrics over the judged queries: ``{"MRR@10": ..., "nDCG@10": ..., "Recall@1000": ...}``.

    ``restrict_to_run`` evaluates only the judged queries that the run answers (for a
    deliberate subset of queries); otherwise an unanswered judged query scores 0.
    """
    irm = _ir_measures()
    measures = dict(measures or DEFAULT_MEASURES)
    if restrict_to_run:
        qrels = {q: r for q, r in qrels.items() if q in run}
    if not qrels:
        raise ValueError("no judged query to evaluate (do the run's query ids match the qrels?)")
    parsed = {name: irm.parse_measure(m) for name, m in measures.items()}
    agg = irm.calc_aggregate(list(parsed.values()), qrels, run)
    return {name: float(agg[m]) for name, m in parsed.items()}

"""IR evaluation: TREC run and qrels files, and MRR@10 / nDCG@10 / Recall@1000.

Metrics are computed by ir-measures (an optional dependency, ``pip install
'hypencoder-engine[eval]'``) so that the figures are the standard trec_eval ones rather than
our own re-implementation. Queries judged in the qrels but missing from a run count as 0,
as in ir-measures; only judged queries are averaged.

A run is ``{qid: {docid: score}}``, its documents in rank order. Evaluation tools rank by
score and break ties each their own way (by document id, ascending or descending), so two
tools can score one run differently; trec_eval also reads scores in single precision, so
scores that differ only beyond float32 tie there. Every run written or evaluated here is
first put through :func:`ranked_run`: scores must be finite float32 values, and a
document whose score does not fall below the one ranked before it gets the next float32
below, so the run's own order (the engine's: lower row first) is the only ranking any
tool can read. Files: UTF-8 (a byte-order mark is
skipped), whitespace-separated, blank lines and ``#`` comment lines ignored.
"""

from __future__ import annotations

import math
import os
from typing import Sequence

import numpy as np
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
    with open(path, encoding="utf-8-sig") as f:
        for lineno, line in enumerate(f, 1):
            parts = line.split()
            if not parts or parts[0].startswith("#"):
                continue
            if len(parts) != width:
                raise ValueError(f"{path}:{lineno}: expected '{fields}', got {line.strip()!r}")
            yield lineno, parts


def _number(path: str, lineno: int, what: str, text: str, kind):
    try:
        x = kind(text)
    except ValueError:
        raise ValueError(f"{path}:{lineno}: {what} must be {'an integer' if kind is int else 'a number'}, "
                         f"got {text!r}") from None
    if kind is float and not math.isfinite(x):
        raise ValueError(f"{path}:{lineno}: {what} must be finite, got {text!r}")
    return x


def read_qrels(path) -> dict[str, dict[str, int]]:
    """TREC qrels (``qid iter docid rel``, whitespace- or tab-separated) -> ``{qid: {docid: rel}}``."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"no qrels file at {path}")
    qrels: dict[str, dict[str, int]] = {}
    for lineno, parts in _trec_lines(path, "qid iter docid relevance"):
        rel = _number(path, lineno, "relevance", parts[3], int)
        judged = qrels.setdefault(parts[0], {})
        if judged.get(parts[2], rel) != rel:
            raise ValueError(f"{path}:{lineno}: document {parts[2]} of query {parts[0]} is judged "
                             f"{judged[parts[2]]} earlier and {rel} here")
        judged[parts[2]] = rel
    if not qrels:
        raise ValueError(f"{path} holds no judgements")
    return qrels


def run_from_result(query_ids: Sequence[str], doc_ids: Sequence[Sequence], scores) -> dict[str, dict[str, float]]:
    """A run ``{qid: {docid: score}}`` from per-query ranked ids (None = padding, skipped)
    and a ``(Q, k)`` score tensor (as :meth:`engine.Index.search` and
    :meth:`engine.Index.external_ids` give them). An id that an index gives several
    documents appears once, at its best rank (a run judges ids, not rows)."""
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
        docs = {}
        for d, s in zip(ids, ss):
            if d is None:
                continue
            docs.setdefault(str(d), float(s))  # rows come best first: the first is the best
        run[str(qid)] = docs
    return run


def _check_id(x, what: str) -> str:
    if not isinstance(x, str):
        raise TypeError(f"{what} must be a str, got {type(x).__name__} {x!r}")
    if not x or any(c.isspace() for c in x):
        raise ValueError(f"{what} must be non-empty and without whitespace (TREC files), got {x!r}")
    return x


def ranked_run(run: dict) -> dict[str, dict[str, float]]:
    """``run`` checked and in rank order with strictly decreasing float32 scores.

    Documents are sorted by descending score, equal scores keeping the run's order; scores
    are rounded to float32 (the engine's scores already are), and one that does not fall
    below the previous one gets the next float32 below it (a change in the last digit
    only). Raises ``TypeError``/``ValueError`` for ids that are not non-empty strings
    without whitespace and for scores that are not finite float32 numbers.
    """
    if not isinstance(run, dict):
        raise TypeError(f"a run must be a dict {{qid: {{docid: score}}}}, got {type(run).__name__}")
    out = {}
    for qid, docs in run.items():
        _check_id(qid, "run query id")
        if not isinstance(docs, dict):
            raise TypeError(f"run query {qid}: documents must be a dict {{docid: score}}, got {type(docs).__name__}")
        items = []
        for doc, s in docs.items():
            _check_id(doc, f"run query {qid}: document id")
            if isinstance(s, (bool, np.bool_)) or not isinstance(s, (int, float, np.integer, np.floating)):
                raise TypeError(f"run query {qid}, document {doc}: score must be a number, got {s!r}")
            if not math.isfinite(s):
                raise ValueError(f"run query {qid}, document {doc}: score must be finite, got {s!r}")
            items.append((doc, float(s)))
        items.sort(key=lambda t: -t[1])  # stable: ties keep the run's order
        ranked, prev = {}, np.float32(np.inf)
        for doc, s in items:
            v = np.float32(s)
            if v >= prev:
                v = np.nextafter(prev, np.float32(-np.inf))
            if not np.isfinite(v):
                raise ValueError(f"run query {qid}, document {doc}: score {s!r} is beyond float32's range")
            ranked[doc] = float(v)
            prev = v
        out[qid] = ranked
    return out


def write_run(path, run: dict[str, dict[str, float]], tag: str = "hypencoder-engine") -> None:
    """Write a TREC run file (``qid Q0 docid rank score tag``) of :func:`ranked_run`'s
    ranking: strictly decreasing float32 scores, each in the fewest digits that read back
    as the same float32."""
    _check_id(tag, "run tag")
    run = ranked_run(run)
    path = os.fspath(path)
    tmp = path + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        for qid, docs in run.items():
            for rank, (doc, score) in enumerate(docs.items(), 1):
                f.write(f"{qid} Q0 {doc} {rank} {np.float32(score)} {tag}\n")
    os.replace(tmp, path)  # a half-written run never replaces a good one


def read_run(path) -> dict[str, dict[str, float]]:
    """Read a TREC run file into ``{qid: {docid: score}}``, each query's documents in rank
    order (descending score, then the file's rank column). Scores must be finite; a
    document listed twice for one query is an error."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"no run file at {path}")
    rows: dict[str, dict[str, tuple[float, int]]] = {}
    for lineno, parts in _trec_lines(path, "qid Q0 docid rank score tag"):
        docs = rows.setdefault(parts[0], {})
        if parts[2] in docs:
            raise ValueError(f"{path}:{lineno}: document {parts[2]} is listed twice for query {parts[0]}")
        docs[parts[2]] = (_number(path, lineno, "score", parts[4], float),
                          _number(path, lineno, "rank", parts[3], int))
    return {q: {d: s for d, (s, _) in sorted(docs.items(), key=lambda t: (-t[1][0], t[1][1]))}
            for q, docs in rows.items()}


def check_qrels(qrels: dict) -> dict[str, dict[str, int]]:
    """``qrels`` checked: ``{qid: {docid: int relevance}}`` with str ids."""
    if not isinstance(qrels, dict):
        raise TypeError(f"qrels must be a dict {{qid: {{docid: relevance}}}}, got {type(qrels).__name__}")
    for qid, docs in qrels.items():
        if not isinstance(qid, str):
            raise TypeError(f"qrels query id must be a str, got {qid!r}")
        if not isinstance(docs, dict):
            raise TypeError(f"qrels query {qid}: judgements must be a dict {{docid: relevance}}")
        for doc, rel in docs.items():
            if not isinstance(doc, str):
                raise TypeError(f"qrels query {qid}: document id must be a str, got {doc!r}")
            if isinstance(rel, (bool, np.bool_)) or not isinstance(rel, (int, np.integer)):
                raise TypeError(f"qrels query {qid}, document {doc}: relevance must be an int, got {rel!r}")
    return qrels


def evaluate(run: dict[str, dict[str, float]], qrels: dict[str, dict[str, int]],
             measures: dict[str, str] | None = None, *, restrict_to_run: bool = False) -> dict[str, float]:
    """Mean metrics over the judged queries: ``{"MRR@10": ..., "nDCG@10": ..., "Recall@1000": ...}``.

    The run is ranked as :func:`ranked_run` says (its own order for equal scores), so every
    metric reads the same ranking.

    ``restrict_to_run`` evaluates only the judged queries that the run answers (for a
    deliberate subset of queries); otherwise an unanswered judged query scores 0.
    """
    irm = _ir_measures()
    measures = dict(measures or DEFAULT_MEASURES)
    run, qrels = ranked_run(run), check_qrels(qrels)
    if restrict_to_run:
        qrels = {q: r for q, r in qrels.items() if q in run}
    if not qrels:
        raise ValueError("no judged query to evaluate (do the run's query ids match the qrels?)")
    parsed = {name: irm.parse_measure(m) for name, m in measures.items()}
    agg = irm.calc_aggregate(list(parsed.values()), qrels, run)
    return {name: float(agg[m]) for name, m in parsed.items()}

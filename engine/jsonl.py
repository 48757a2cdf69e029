"""Reading ``{"id", "text"}`` JSON-lines files (corpora and query sets)."""

from __future__ import annotations

import json
import os
from typing import Iterator


def iter_jsonl(path, id_field: str = "id", text_field: str = "text") -> Iterator[tuple[str, str]]:
    """Yield ``(id, text)`` per non-blank line; ids are returned as str (ints are converted,
    since TREC run and qrels files compare ids as strings)."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"no JSONL file at {path}")
    with open(path, encoding="utf-8-sig") as f:  # a byte-order mark is not part of the first line
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
            except json.JSONDecodeError as exc:
                raise ValueError(f"{path}:{lineno}: not valid JSON ({exc.msg})") from None
            if not isinstance(rec, dict) or id_field not in rec or text_field not in rec:
                raise ValueError(f"{path}:{lineno}: expected an object with '{id_field}' and '{text_field}'")
            rid, text = rec[id_field], rec[text_field]
            if isinstance(rid, bool) or not isinstance(rid, (str, int)):
                raise ValueError(f"{path}:{lineno}: '{id_field}' must be a string or an integer")
            if not isinstance(text, str):
                raise ValueError(f"{path}:{lineno}: '{text_field}' must be a string")
            yield str(rid), text


def read_jsonl(path, id_field: str = "id", text_field: str = "text", limit: int | None = None):
    """``(ids, texts)`` lists of the first ``limit`` records (all when None); ids must be unique."""
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
        raise ValueError(f"limit must be a positive int, got {limit!r}")
    ids, texts, seen = [], [], set()
    for rid, text in iter_jsonl(path, id_field, text_field):
        if limit is not None and len(ids) >= limit:
            break
        if rid in seen:
            raise ValueError(f"{os.fspath(path)}: duplicate id {rid!r}")
        seen.add(rid)
        ids.append(rid)
        texts.append(text)
    if not ids:
        raise ValueError(f"{os.fspath(path)} holds no records")
    return ids, texts


def lookup_texts(path, wanted, id_field: str = "id", text_field: str = "text") -> dict[str, str]:
    """Texts of the ids in ``wanted``, reading the file only until all are found."""
    wanted = {str(w) for w in wanted if w is not None}
    found = {}
    for rid, text in iter_jsonl(path, id_field, text_field):
        if rid in wanted:
            found[rid] = text
            if len(found) == len(wanted):
                break
    return found

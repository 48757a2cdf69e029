"""``python -m engine encode / search --model / eval`` on a tiny random checkpoint."""

import os

os.environ["HF_HUB_OFFLINE"] = "1"

import json

import pytest
import torch

import engine
from engine.cli import main
from tiny_checkpoint import write_tiny_checkpoint

pytest.importorskip("transformers")
pytest.importorskip("ir_measures")

DOCS = {
    "alpha": "a library for parsing toml files",
    "beta": "command line tool to cast audio to speakers",
    "gamma": "perl module providing delayed creation of objects",
    "delta": "x server video driver for usb displays",
    "eps": "go client for a cloud storage api",
    "zeta": "synchronization primitives for c programs",
}
QUERIES = {"q1": "toml parser", "q2": "usb display driver", "q3": "perl objects"}
QRELS = {"q1": "alpha", "q2": "delta", "q3": "gamma"}


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    d = tmp_path_factory.mktemp("cli")
    write_tiny_checkpoint(d / "ckpt", [64, 64, 64, 1])
    (d / "corpus.jsonl").write_text("".join(json.dumps({"id": k, "text": v}) + "\n" for k, v in DOCS.items()))
    (d / "queries.jsonl").write_text("".join(json.dumps({"id": k, "text": v}) + "\n" for k, v in QUERIES.items()))
    (d / "qrels.tsv").write_text("".join(f"{q}\t0\t{doc}\t1\n" for q, doc in QRELS.items()))
    assert main(["encode", str(d / "idx"), "--corpus", str(d / "corpus.jsonl"), "--model", str(d / "ckpt"),
                 "--dtype", "float32", "--batch-size", "4"]) == 0
    model = engine.HypencoderModel.from_pretrained(d / "ckpt", device="cpu")
    return d, model


def test_encode_writes_the_model_vectors_with_ids(setup):
    d, model = setup
    index = engine.Index.load(d / "idx")
    assert index.external_ids(torch.arange(len(DOCS))) == list(DOCS)
    torch.testing.assert_close(index.vectors, model.encode_documents(list(DOCS.values()), show_progress=False),
                               atol=1e-6, rtol=1e-6)


def test_search_by_text_prints_ids_scores_and_text(setup, capsys):
    d, model = setup
    assert main(["search", "--index", str(d / "idx"), "--model", str(d / "ckpt"), "--corpus",
                 str(d / "corpus.jsonl"), "-k", "2", "usb display driver"]) == 0
    out = capsys.readouterr().out
    index = engine.Index.load(d / "idx")
    r = index.search(model.encode_queries(["usb display driver"]), 2)
    top = index.external_ids(r.ids)[0][0]
    first_row = out.split("query 0: usb display driver")[1].splitlines()[3].split()
    assert first_row[:3] == ["1", top, f"{float(r.scores[0, 0]):.4f}"]
    assert " ".join(first_row[3:]) == DOCS[top]


def test_eval_matches_ranks_computed_in_process(setup, capsys):
    d, model = setup
    run, js = d / "run.trec", d / "eval.json"
    assert main(["eval", "--index", str(d / "idx"), "--model", str(d / "ckpt"), "--queries", str(d / "queries.jsonl"),
                 "--qrels", str(d / "qrels.tsv"), "--run", str(run), "--json", str(js), "-k", "6"]) == 0
    got = json.loads(js.read_text())["exact"]
    # Reciprocal ranks straight from the scores matrix.
    index = engine.Index.load(d / "idx")
    scores = engine.score(model.encode_queries(list(QUERIES.values())), index.vectors)
    rr = []
    for qi, q in enumerate(QUERIES):
        rank = 1 + int((scores[qi] > scores[qi, list(DOCS).index(QRELS[q])]).sum())
        rr.append(1.0 / rank if rank <= 10 else 0.0)
    assert got["MRR@10"] == pytest.approx(sum(rr) / len(rr), abs=1e-9)
    assert got["Recall@1000"] == pytest.approx(1.0)
    lines = run.read_text().splitlines()
    assert len(lines) == len(QUERIES) * len(DOCS) and lines[0].split()[1] == "Q0"


def test_cli_errors_are_messages(setup, capsys):
    d, _ = setup
    assert main(["search", "--index", str(d / "idx"), "some text"]) == 2
    assert "--model" in capsys.readouterr().err
    assert main(["eval", "--index", str(d / "idx"), "--queries", str(d / "queries.jsonl"),
                 "--qrels", str(d / "qrels.tsv")]) == 2
    assert "--model" in capsys.readouterr().err
    assert main(["encode", str(d / "idx2"), "--corpus", str(d / "missing.jsonl"), "--model", str(d / "ckpt")]) == 2
    assert "no JSONL file" in capsys.readouterr().err


def test_eval_reports_graph_search_beside_exact(setup, capsys):
    d, _ = setup
    js = d / "eval_graph.json"
    assert main(["eval", "--index", str(d / "idx"), "--model", str(d / "ckpt"), "--queries", str(d / "queries.jsonl"),
                 "--qrels", str(d / "qrels.tsv"), "--run", str(d / "run.trec"), "--json", str(js), "-k", "6",
                 "--graph", "3"]) == 0
    got = json.loads(js.read_text())
    assert "error" not in got["graph"], got["graph"]
    # Six documents, k = 6: a graph search that reaches them all ranks exactly as exact search.
    assert got["graph"]["MRR@10"] == pytest.approx(got["exact"]["MRR@10"])
    assert (d / "run.graph.trec").is_file()
    assert "graph" in capsys.readouterr().out

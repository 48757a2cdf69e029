"""IR metrics on a tiny run whose values are computed by hand."""

import math

import pytest
import torch

from engine.eval import evaluate, read_qrels, read_run, run_from_result, write_run

pytest.importorskip("ir_measures")

QRELS = {"q1": {"a": 1}, "q2": {"b": 1}, "q3": {"c": 1, "d": 1}, "q4": {"z": 1}}
# q1: relevant at rank 1. q2: relevant at rank 3. q3: relevant at ranks 2 and 12 (beyond 10).
# q4: relevant document not retrieved.
RUN = {
    "q1": {"a": 5.0, "x": 4.0},
    "q2": {"x": 3.0, "y": 2.0, "b": 1.0},
    "q3": {"x": 10.0, "c": 9.0, **{f"n{i}": 8.0 - i * 0.1 for i in range(9)}, "d": 1.0},
    "q4": {"x": 1.0},
}


def test_metrics_match_hand_computation():
    m = evaluate(RUN, QRELS)
    assert m["MRR@10"] == pytest.approx((1 + 1 / 3 + 1 / 2 + 0) / 4)
    ndcg_q3 = (1 / math.log2(3)) / (1 + 1 / math.log2(3))  # d at rank 12 is outside the cut
    assert m["nDCG@10"] == pytest.approx((1 + 1 / math.log2(4) + ndcg_q3 + 0) / 4)
    assert m["Recall@1000"] == pytest.approx((1 + 1 + 1 + 0) / 4)


def test_unanswered_judged_query_counts_as_zero_unless_restricted():
    run = {q: RUN[q] for q in ("q1", "q2")}
    assert evaluate(run, QRELS)["MRR@10"] == pytest.approx((1 + 1 / 3) / 4)
    assert evaluate(run, QRELS, restrict_to_run=True)["MRR@10"] == pytest.approx((1 + 1 / 3) / 2)


def test_run_round_trip_and_ranks(tmp_path):
    run = run_from_result(["q1", "q2"], [["a", "x"], ["b", None]], torch.tensor([[2.0, 1.0], [0.5, float("-inf")]]))
    assert run == {"q1": {"a": 2.0, "x": 1.0}, "q2": {"b": 0.5}}  # padding (None) dropped
    write_run(tmp_path / "run.trec", run, tag="t")
    lines = (tmp_path / "run.trec").read_text().splitlines()
    assert lines[0].split() == ["q1", "Q0", "a", "1", "2.000000", "t"]
    assert lines[1].split()[2:4] == ["x", "2"]
    assert read_run(tmp_path / "run.trec") == run


def test_qrels_reader_and_bad_input(tmp_path):
    p = tmp_path / "qrels.tsv"
    p.write_text("q1\t0\ta\t1\nq1 0 b 0\n\nq2 0 c 2\n")
    assert read_qrels(p) == {"q1": {"a": 1, "b": 0}, "q2": {"c": 2}}
    p.write_text("q1 0 a\n")
    with pytest.raises(ValueError, match="expected"):
        read_qrels(p)
    with pytest.raises(FileNotFoundError):
        read_qrels(tmp_path / "missing")
    p.write_text("q1 0 a high\n")
    with pytest.raises(ValueError, match=":1: relevance must be an integer"):
        read_qrels(p)
    r = tmp_path / "bad.trec"
    r.write_text("q1 Q0 a 1 0.5 tag\nq1 Q0 b 2\n")
    with pytest.raises(ValueError, match=":2: expected 'qid Q0 docid rank score tag'"):
        read_run(r)
    r.write_text("q1 Q0 a 1 high tag\n")
    with pytest.raises(ValueError, match="score must be a number"):
        read_run(r)
    with pytest.raises(ValueError, match="no judged query"):
        evaluate({"other": {"a": 1.0}}, {"q": {"a": 1}}, restrict_to_run=True)
    with pytest.raises(ValueError, match="spaces"):
        write_run(tmp_path / "r", {"q 1": {"a": 1.0}})
    with pytest.raises(ValueError, match="ids"):
        run_from_result(["q1"], [["a"], ["b"]], [[1.0], [2.0]])

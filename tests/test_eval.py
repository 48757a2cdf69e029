"""IR metrics on a tiny run whose values are computed by hand."""

import math

import numpy as np

import pytest
import torch

from engine.eval import evaluate, ranked_run, read_qrels, read_run, run_from_result, write_run

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
    assert lines[0].split() == ["q1", "Q0", "a", "1", "2.0", "t"]  # scores written exactly
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
    with pytest.raises(ValueError, match="whitespace"):
        write_run(tmp_path / "r", {"q 1": {"a": 1.0}})
    with pytest.raises(ValueError, match="ids"):
        run_from_result(["q1"], [["a"], ["b"]], [[1.0], [2.0]])


# ------------------------------------------------------------------------------ ties and policy
def _providers_agree(run, qrels, want):
    """Every installed ir-measures provider, on every measure it supports, gives ``want``."""
    import ir_measures as irm

    checked = 0
    for name, provider in irm.providers.registry.items():
        try:
            if not provider.is_available():
                continue
        except Exception:  # a provider whose optional dependency is broken
            continue
        for ours, theirs in {"MRR@10": "RR@10", "nDCG@10": "nDCG@10", "Recall@1000": "R@1000"}.items():
            m = irm.parse_measure(theirs)
            if provider.supports(m):
                got = provider.calc_aggregate([m], qrels, run)[m]
                assert got == pytest.approx(want[ours]), (name, theirs, got)
                checked += 1
    assert checked >= 3


def test_tied_scores_keep_the_engine_order_for_every_provider(tmp_path):
    # Three identical documents: the engine ranks them by row, d1 first. Tools that break
    # ties by document id (descending, as trec_eval) would put d1 third: MRR 1/3.
    scores = torch.tensor([[0.75, 0.75, 0.75, 0.5]])
    run = run_from_result(["q"], [["d1", "d2", "d3", "d0"]], scores)
    qrels = {"q": {"d1": 1}}
    want = {"MRR@10": 1.0, "nDCG@10": 1.0, "Recall@1000": 1.0}
    assert evaluate(run, qrels) == pytest.approx(want)
    ranked = ranked_run(run)
    assert list(ranked["q"]) == ["d1", "d2", "d3", "d0"]
    s = list(ranked["q"].values())
    assert s[0] == 0.75 and all(a > b for a, b in zip(s, s[1:])) and s[2] > 0.5
    _providers_agree(ranked, qrels, want)
    write_run(tmp_path / "r.trec", run)
    back = read_run(tmp_path / "r.trec")
    assert ranked_run(back) == ranked  # the same float32 scores after a round trip
    assert list(back["q"]) == list(ranked["q"]) and len(set(back["q"].values())) == 4
    assert evaluate(back, qrels) == pytest.approx(want)


def test_many_ties_stay_above_the_next_score():
    docs = {f"t{i}": 1.0 for i in range(500)}
    docs["below"] = float(np.nextafter(np.float32(1), np.float32(0)))  # one float32 below the tie
    r = ranked_run({"q": docs})["q"]
    assert list(r) == [f"t{i}" for i in range(500)] + ["below"]
    s = list(r.values())
    assert all(a > b for a, b in zip(s, s[1:]))


def test_read_run_breaks_ties_by_the_rank_column(tmp_path):
    p = tmp_path / "r.trec"
    p.write_text("q Q0 z 2 1.0 t\nq Q0 a 3 1.0 t\nq Q0 m 1 1.0 t\nq Q0 low 4 0.5 t\n")
    assert list(read_run(p)["q"]) == ["m", "z", "a", "low"]


def test_byte_order_mark_and_comments(tmp_path):
    q = tmp_path / "qrels"
    q.write_bytes("\ufeffq1 0 a 1\n# judged by hand\n  # indented comment\nq2 0 b 1\n".encode("utf-8"))
    assert read_qrels(q) == {"q1": {"a": 1}, "q2": {"b": 1}}
    r = tmp_path / "run"
    r.write_bytes("\ufeff# produced by hand\nq1 Q0 a 1 2.5 t\n".encode("utf-8"))
    assert read_run(r) == {"q1": {"a": 2.5}}


@pytest.mark.parametrize("text", ["nan", "inf", "-inf", "NaN", "Infinity"])
def test_non_finite_run_scores_are_refused(tmp_path, text):
    r = tmp_path / "run"
    r.write_text(f"q1 Q0 a 1 {text} t\n")
    with pytest.raises(ValueError, match=":1: score must be finite"):
        read_run(r)
    with pytest.raises(ValueError, match="finite"):
        evaluate({"q1": {"a": float(text)}}, {"q1": {"a": 1}})
    with pytest.raises(ValueError, match="finite"):
        write_run(tmp_path / "out", {"q1": {"a": float(text)}})


def test_run_and_qrels_consistency_errors(tmp_path):
    # An id that names two documents of an index: listed once, at its best rank.
    assert run_from_result(["q"], [["a", "b", "a"]], [[1.0, 0.7, 0.5]]) == {"q": {"a": 1.0, "b": 0.7}}
    r = tmp_path / "run"
    r.write_text("q Q0 a 1 1.0 t\nq Q0 a 2 0.5 t\n")
    with pytest.raises(ValueError, match=":2: document a is listed twice"):
        read_run(r)
    q = tmp_path / "qrels"
    q.write_text("q 0 a 1\nq 0 a 1\nq 0 a 0\n")
    with pytest.raises(ValueError, match=":3: .* judged 1 earlier and 0 here"):
        read_qrels(q)
    with pytest.raises(TypeError, match="score must be a number"):
        evaluate({"q": {"a": "1.0"}}, {"q": {"a": 1}})
    with pytest.raises(TypeError, match="relevance must be an int"):
        evaluate({"q": {"a": 1.0}}, {"q": {"a": "1"}})
    with pytest.raises(TypeError, match="query id"):
        evaluate({1: {"a": 1.0}}, {"q": {"a": 1}})


def test_scores_equal_in_single_precision_are_ranked_as_given():
    # Distinct doubles that trec_eval (single precision) would read as a tie broken by id.
    run = {"q": {"a": 0.3, "z": 0.3 - 1e-12, "m": 0.1}}
    ranked = ranked_run(run)
    assert list(ranked["q"]) == ["a", "z", "m"]
    _providers_agree(ranked, {"q": {"a": 1}}, {"MRR@10": 1.0, "nDCG@10": 1.0, "Recall@1000": 1.0})
    _providers_agree(ranked, {"q": {"z": 1}}, {"MRR@10": 0.5, "nDCG@10": 1 / math.log2(3), "Recall@1000": 1.0})

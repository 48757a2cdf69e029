"""bench/soak.py: its result checks catch wrong results, and a short run passes."""

from __future__ import annotations

import pytest

import engine
from bench import soak
from engine.graph import native

pytestmark = pytest.mark.skipif(not native.availability()[0], reason="engine._C is not built")


@pytest.fixture(scope="module")
def case():
    idx = soak.build_version(1, 2000, 32)
    q = engine.synthetic.qnets(3, [32, 32, 32, 1], seed=4, corpus_seed=1001)
    return idx, q


@pytest.mark.parametrize("mode", ["exact", "graph"])
def test_check_accepts_right_and_flags_wrong_results(case, mode):
    idx, q = case
    r = idx.search(q, 10, mode=mode)
    bad, rec = soak.check(idx, q, 10, mode, r)
    assert bad is None and (rec is None) == (mode == "exact")
    swapped = engine.SearchResult(r.scores, r.ids.flip(1), r.stats)  # ids out of rank order
    assert soak.check(idx, q, 10, mode, swapped)[0] is not None
    shifted = engine.SearchResult(r.scores + 1.0, r.ids, r.stats)
    assert soak.check(idx, q, 10, mode, shifted)[0] is not None


def test_short_soak_passes(tmp_path):
    assert soak.main(["--threads", "2", "--minutes", "0.15", "--n", "2000", "--dim", "32", "--version-seconds",
                      "3", "--check-every", "3", "--dir", str(tmp_path)]) == 0

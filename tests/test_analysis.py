"""The analysis aggregates on hand-made records, checked against numbers worked out here and
against scipy."""
from __future__ import annotations

import math

import pytest
from scipy import stats

from specexp.report import token_records as analysis


def rec(h, acc, pos=0, top=0.5, th=1.0):
    return {"sample": "s", "round": 0, "position": pos, "drafter_entropy": h, "drafter_top_prob": top,
            "target_entropy": th, "accepted": acc}


RECORDS = [rec(0.1, True, 0), rec(0.2, True, 1), rec(0.3, True, 2), rec(1.1, False, 3),
           rec(0.12, True, 0), rec(2.6, False, 1), rec(4.9, False, 0), rec(7.0, False, 1), rec(1.2, True, 0)]


def test_acceptance_by_entropy_bins():
    b = analysis.by_entropy(RECORDS)
    assert b["bins"] == 20 and b["edges"][0] == 0.0 and b["edges"][-1] == 5.0 and len(b["edges"]) == 21
    # bins are 0.25 wide: [0, .25) holds 0.1, 0.2, 0.12 (all accepted); [.25, .5) holds 0.3;
    # [1.0, 1.25) holds 1.1 (rejected) and 1.2 (accepted); [2.5, 2.75) 2.6; the last bin 4.9 and 7.0
    assert b["n"][0] == 3 and b["acceptance_rate"][0] == 1.0
    assert b["n"][1] == 1
    assert b["n"][4] == 2 and b["acceptance_rate"][4] == 0.5
    assert b["n"][10] == 1 and b["acceptance_rate"][10] == 0.0
    assert b["n"][19] == 2 and b["above_range"] == 1
    assert b["acceptance_rate"][2] is None  # empty bin
    assert sum(b["n"]) == len(RECORDS)


def test_acceptance_by_position():
    p = analysis.by_position(RECORDS)
    assert p["n"] == [4, 3, 1, 1]
    assert p["accepted"] == [3, 1, 1, 0]
    assert p["acceptance_rate"] == [0.75, 1 / 3, 1.0, 0.0]


def test_correlations_match_scipy():
    c = analysis.correlations(RECORDS)["drafter_entropy"]
    x = [r["drafter_entropy"] for r in RECORDS]
    y = [float(r["accepted"]) for r in RECORDS]
    assert c["n"] == len(RECORDS)
    assert c["pearson"] == pytest.approx(stats.pearsonr(x, y)[0], abs=1e-12)
    assert c["spearman"] == pytest.approx(stats.spearmanr(x, y)[0], abs=1e-12)
    assert c["pearson"] < 0 and c["spearman"] < 0  # high entropy, rejected
    # constant input: undefined
    assert analysis.correlations(RECORDS)["drafter_top_prob"]["pearson"] is None


def test_spearman_with_ties_and_perfect_rank_agreement():
    assert analysis.ranks([3.0, 1.0, 3.0, 2.0]) == [3.5, 1.0, 3.5, 2.0]
    assert analysis.spearman([1, 2, 3, 4], [1, 4, 9, 16]) == pytest.approx(1.0)
    assert analysis.pearson([1, 2, 3], [3, 2, 1]) == pytest.approx(-1.0)
    assert analysis.pearson([1.0], [1.0]) is None


def test_draft_length_statistics():
    d = analysis.draft_lengths([[4, 4, 2], [0, 6]])  # per-sample lists, as Generation.drafted
    assert d["n_rounds"] == 5
    assert d["mean"] == pytest.approx(16 / 5)
    assert d["std"] == pytest.approx(math.sqrt(sum((k - 3.2) ** 2 for k in [4, 4, 2, 0, 6]) / 5))
    assert d["histogram"] == [1, 0, 1, 0, 2, 0, 1]
    assert analysis.draft_lengths([3, 5])["mean"] == 4.0  # a flat list works too
    assert analysis.draft_lengths([])["mean"] is None


def test_aggregate_has_every_section():
    a = analysis.aggregate(RECORDS, [[4, 3], [2]], entropy_type="renyi")
    assert set(a) >= {"n_records", "acceptance_rate", "acceptance_by_entropy", "acceptance_by_position",
                      "correlation", "draft_length", "drafter_entropy_type"}
    assert a["acceptance_rate"] == pytest.approx(5 / 9)
    assert a["drafter_entropy_type"] == "renyi"
    empty = analysis.aggregate([], [])
    assert empty["acceptance_rate"] is None and empty["correlation"]["drafter_entropy"]["pearson"] is None


def test_acceptance_by_source_counts_rounds_tokens_and_acceptance():
    def src(source, acc, pos, rnd, h=None, sample="s"):
        return {**rec(h, acc, pos), "sample": sample, "round": rnd, "source": source}

    recs = [src("lookup", True, 0, 0), src("lookup", True, 1, 0), src("lookup", False, 2, 0),
            src("drafter", True, 0, 1, 0.5), src("drafter", False, 1, 1, 0.5), src("drafter", False, 0, 2, 0.4),
            src("lookup", True, 0, 0, sample="t")]
    s = analysis.aggregate(recs, [[3, 2, 1], [1]])["acceptance_by_source"]
    assert s["lookup"] == {"rounds": 2, "drafted": 4, "accepted": 3, "acceptance_rate": 0.75, "accepted_per_round": 1.5}
    assert s["drafter"] == {"rounds": 2, "drafted": 3, "accepted": 1, "acceptance_rate": pytest.approx(1 / 3),
                            "accepted_per_round": 0.5}
    assert analysis.aggregate(RECORDS, [[1]])["acceptance_by_source"] == {}  # no record names a source

"""The papers' claims next to ours (course_lib.claims): each verdict from synthetic stored results, the spread of
methods that train nothing, runs capped by the wall clock, and the claims' methods and sources."""

import pytest

from course_lib.claims import PAPER_CLAIMS, VERDICTS, check_claims, claim_entry, verdict_of
from course_lib.recipes import METHODS


def m(r10, sd=None, steps=300, **extra):
    """A results.json entry: ``sd`` None means one seed (no ``spread``)."""
    return {"recall@10": r10, "steps": steps} | ({"spread": {"recall@10": sd}} if sd is not None else {}) | extra


def row(methods, better, worse):
    rows = [r for r in check_claims(methods) if (r["better"], r["worse"]) == (better, worse)]
    assert len(rows) == 1
    return rows[0]


def test_each_verdict():
    methods = {"in_batch_large": m(0.60, 0.01), "in_batch_small": m(0.50, 0.02),  # gap 0.10 > 0.02: yes
               "static_hardneg": m(0.40, 0.01), "no_mining": m(0.50, 0.01),  # below by 0.10: reversed
               "retromae_then_in_batch": m(0.41, 0.02), "mlm_then_in_batch": m(0.40, 0.01),  # 0.01 ≤ 0.02: noise
               "cbns": m(0.45)}  # one seed
    methods["cbns_logq"] = m(0.5, 0.01)  # its partner cbns_skewed is missing: not run
    assert row(methods, "in_batch_large", "in_batch_small")["reproduced"] == "yes"
    assert row(methods, "static_hardneg", "no_mining")["reproduced"] == "reversed"
    assert row(methods, "retromae_then_in_batch", "mlm_then_in_batch")["reproduced"] == "within noise"
    assert row(methods, "cbns", "in_batch_small")["reproduced"] == "one seed"
    assert row(methods, "cbns_logq", "cbns_skewed")["reproduced"] == "not run"
    assert {r["reproduced"] for r in check_claims(methods)} <= set(VERDICTS)


def test_a_capped_run_gets_no_verdict_not_a_reversal():
    # without the cap this gap (0.10 > 0.02) would read "yes"; a capped run on either side decides nothing
    for capped_side in ("better", "worse"):
        a, b = m(0.60, 0.01), m(0.50, 0.02)
        (a if capped_side == "better" else b)["capped_seeds"] = [1]
        r = row({"in_batch_large": a, "in_batch_small": b}, "in_batch_large", "in_batch_small")
        assert r["reproduced"] == "capped: no verdict", capped_side
    # a cap on one seed of a method whose numbers are below its partner's: still not "reversed"
    r = row({"in_batch_large": m(0.40, 0.01, capped_seeds=[2]), "in_batch_small": m(0.50, 0.01)},
            "in_batch_large", "in_batch_small")
    assert r["reproduced"] == "capped: no verdict"


def test_a_method_that_trains_nothing_has_spread_zero():
    bm25 = m(0.40, steps=0)  # run once by the benchmark, no spread stored
    assert row({"in_batch": m(0.50, 0.01), "bm25": bm25}, "in_batch", "bm25")["reproduced"] == "yes"
    assert row({"in_batch": m(0.30, 0.01), "bm25": bm25}, "in_batch", "bm25")["reproduced"] == "reversed"
    assert row({"in_batch": m(0.405, 0.01), "bm25": bm25}, "in_batch", "bm25")["reproduced"] == "within noise"
    # the trained side still needs seeds: one seed of in_batch against BM25 decides nothing
    assert row({"in_batch": m(0.50), "bm25": bm25}, "in_batch", "bm25")["reproduced"] == "one seed"
    # a trained method without spread is not given one
    assert "spread" not in claim_entry(m(0.5))
    assert claim_entry(bm25)["spread"] == {"recall@10": 0.0} and "spread" not in bm25  # the input is not edited
    shown = row({"in_batch": m(0.50, 0.01), "bm25": bm25}, "in_batch", "bm25")["ours"]
    assert shown == "0.500 ± 0.010 vs 0.400 (no training: sd 0)"


def test_an_unknown_ordering_verdict_raises():
    assert verdict_of("above (largest sd 0.010)") == "yes" and verdict_of("below (largest sd 0.010)") == "reversed"
    with pytest.raises(ValueError, match="unknown verdict"):
        verdict_of("something new")


def test_claims_name_benchmark_methods_and_full_sources():
    for c in PAPER_CLAIMS:
        assert c.better in METHODS and c.worse in METHODS, c
        assert "20" in c.source, c.source  # a year
    yi = next(c for c in PAPER_CLAIMS if c.better == "cbns_logq")
    assert "Sampling-Bias-Corrected Neural Modeling" in yi.source and "10.1145/3298689.3346996" in yi.source
    dpr_hn = next(c for c in PAPER_CLAIMS if (c.better, c.worse) == ("static_hardneg", "no_mining"))
    assert "BM25" in dpr_hn.claim and "static_hardneg" in dpr_hn.claim  # the substitution is said

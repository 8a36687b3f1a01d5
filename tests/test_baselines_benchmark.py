"""BM25 on a tiny corpus, the benchmark's Markdown table, and one real end-to-end benchmark run (FAST)."""

import datetime
import json
import shutil

import numpy as np
import pytest

import course_lib.benchmark as bench
from course_lib.baselines import BM25

CORPUS = {
    "animals": "The dog chased the cat around the garden",
    "finance": "The central bank raised interest rates to fight inflation",
    "river": "Fish swim upstream in the cold mountain river",
    "cooking": "Whisk the eggs and sugar, then fold in the flour",
    "space": "Astronomers observed a distant galaxy through the telescope",
}


@pytest.fixture(scope="module")
def bm25():
    return BM25(CORPUS)


# ---------------------------------------------------------------------------------------------------------
# BM25


def test_bm25_ranks_the_obvious_document_first(bm25):
    queries = ["interest rates at the bank", "telescopes and galaxies", "eggs, flour and sugar", "dogs chasing cats"]
    ids, scores = bm25.search(queries, 3)
    assert [row[0] for row in ids] == ["finance", "space", "cooking", "animals"]  # stemming: galaxies → galaxi
    assert scores.shape == (4, 3)
    assert np.all(scores[:, 0] > 0) and np.all(np.diff(scores, axis=1) <= 0)
    assert len(bm25) == 5


def test_bm25_unknown_words_score_zero(bm25):
    ids, scores = bm25.search(["zzzz qqqq", "the"], 5)  # unknown words; a stop word only
    assert np.all(scores == 0)
    assert all(sorted(row) == sorted(CORPUS) for row in ids)


def test_bm25_errors(bm25):
    with pytest.raises(ValueError, match=r"k must be an int in \[1, 5\]"):
        bm25.search(["dog"], 6)
    with pytest.raises(ValueError, match=r"k must be an int in \[1, 5\]"):
        bm25.search(["dog"], 0)
    with pytest.raises(TypeError, match="not one string"):
        bm25.search("dog", 1)
    with pytest.raises(ValueError, match="no queries"):
        bm25.search([], 1)
    with pytest.raises(ValueError, match="non-empty corpus"):
        BM25({})


# ---------------------------------------------------------------------------------------------------------
# to_markdown


def hand_results():
    return {
        "preset": "fast",
        "dataset": "wordnet",
        "n_docs": 4976,
        "n_test_queries": 722,
        "machine": "test machine",
        "date": "2025-01-01",
        "methods": {
            "bm25": {"recall@1": 0.259, "recall@5": 0.6, "recall@10": 0.776, "recall@100": 0.97, "mrr@10": 0.4131,
                     "ndcg@10": 0.499, "train_seconds": 0.0, "steps": 0},
            "trained": {"recall@1": 0.5, "recall@5": 0.7, "recall@10": 0.8, "recall@100": 0.99, "mrr@10": 0.6,
                        "ndcg@10": 0.65, "train_seconds": 61.4, "steps": 300},
        },
        "hnsw": {"recall_at_10_vs_exact": 0.98051, "speedup_vs_exact": 1.234, "n_vectors": 4976,
                 "hnsw_ms_per_1k_queries": 63.6, "exact_ms_per_1k_queries": 75.6, "embeddings": "untrained",
                 "params": {"M": 16, "ef_construction": 200, "ef": 64}},
    }


def test_to_markdown():
    md = bench.to_markdown(hand_results())
    lines = md.splitlines()
    assert "4976 documents, 722 test queries" in lines[0]
    header = next(line for line in lines if line.startswith("| method |"))
    assert header.count("|") == 9  # method + 7 columns
    rows = {line.split("|")[1].strip(): line for line in lines if line.startswith("| ") and "---" not in line}
    assert set(rows) == {"method", "bm25", "trained"}
    assert rows["bm25"] == "| bm25 | 0.259 | 0.776 | 0.970 | 0.413 | 0.499 | 0 | 0 |"
    assert rows["trained"] == "| trained | 0.500 | 0.800 | 0.990 | 0.600 | 0.650 | 61 | 300 |"
    assert "recall@10 vs exact 0.9805" in md and "M=16" in md and md.endswith("\n")
    assert "Hybrid" not in md
    results = hand_results()
    hybrid = [{"recall@1": a, "recall@10": a + 0.4, "recall@100": 0.9, "mrr@10": a + 0.1} for a in (0.2, 0.3)]
    results["methods"]["trained"] |= {"test_hybrid": hybrid[0], "seeds": [0, 1],
                                      "per_seed": [{"seed": k, "test_hybrid": h} for k, h in enumerate(hybrid)]}
    line = next(x for x in bench.to_markdown(results).splitlines() if x.startswith("Hybrid (trained"))
    assert line.endswith("0.250 ± 0.071 / 0.650 ± 0.071 / 0.900 ± 0.000 / 0.350 ± 0.071.") and "2 seeds" in line
    del results["methods"]["trained"]["per_seed"]  # one run: its own figures, no spread
    assert "one seed): test Recall@1 / Recall@10 / Recall@100 / MRR@10 0.200 / 0.600 / 0.900 / 0.300." in \
        bench.to_markdown(results)


def test_to_markdown_scores_generation_over_the_seeds_that_carry_it():
    results = hand_results()
    keys = ("token_f1_before", "token_f1_after", "token_f1_copy_input", "token_f1_frequent_words", "bleu_before",
            "bleu_after", "bleu_copy_input", "bleu_frequent_words")
    scores = [dict.fromkeys(keys, 0.0) | {"token_f1_after": f, "token_f1_copy_input": 0.2} for f in (0.1, 0.3)]
    generation = scores[0] | {"start": "random weights", "pairs": 5, "frequent_words": "the a"}
    results["methods"]["trained"] |= {"generation": generation, "seeds": [0, 1],
                                      "per_seed": [{"seed": k, "generation": g} for k, g in enumerate(scores)]}

    def line():
        return next(x for x in bench.to_markdown(results).splitlines() if x.startswith("Generation (trained"))

    assert "2 seeds, mean ± sd" in line() and "token F1 0.000 → 0.200 ± 0.141" in line()
    assert "copying the input 0.200 / 0.000," in line()  # equal in every seed: no spread printed
    for row in results["methods"]["trained"]["per_seed"]:  # seeds stored before each seed was scored
        del row["generation"]
    assert "seed 0 only (the other seeds unscored)" in line() and "token F1 0.000 → 0.100," in line()
    del results["methods"]["trained"]["per_seed"]
    results["methods"]["trained"]["seeds"] = [0]
    assert "), one seed: greedy" in line()


# ---------------------------------------------------------------------------------------------------------
# end to end: python -m course_lib.benchmark --preset fast --methods bm25 untrained (~40 s on 2 cores)

METHOD_KEYS = {"recall@1", "recall@5", "recall@10", "recall@100", "mrr@10", "ndcg@10", "train_seconds", "steps"}


@pytest.fixture(scope="module")
def benchmark_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench")
    bench.main(["--preset", "fast", "--out", str(out), "--methods", "bm25", "untrained"])
    return out


def test_benchmark_files(benchmark_run):
    names = {p.name for p in benchmark_run.iterdir()}
    assert names == {"results.json", "results.md", "recall_curves.png"}
    assert (benchmark_run / "recall_curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    md = (benchmark_run / "results.md").read_text()
    assert "| bm25 |" in md and "| untrained |" in md


def test_benchmark_results_schema(benchmark_run):
    results = json.loads((benchmark_run / "results.json").read_text())
    assert {"preset", "dataset", "n_docs", "n_test_queries", "machine", "date", "methods", "hnsw"} <= set(results)
    assert results["preset"] == "fast" and results["dataset"] == "wordnet"
    assert 4000 <= results["n_docs"] <= 6000 and results["n_test_queries"] >= 500
    assert isinstance(results["machine"], str) and results["machine"]
    datetime.date.fromisoformat(results["date"])
    assert list(results["methods"]) == ["bm25", "untrained"]
    for name, m in results["methods"].items():
        assert METHOD_KEYS <= set(m), name
        for key in METHOD_KEYS - {"train_seconds", "steps"}:
            assert 0.0 <= m[key] <= 1.0, (name, key)
        assert m["recall@1"] <= m["recall@5"] <= m["recall@10"] <= m["recall@100"], name
        assert m["train_seconds"] == 0 and m["steps"] == 0  # neither method trains
    h = results["hnsw"]
    assert {"recall_at_10_vs_exact", "speedup_vs_exact", "n_vectors"} <= set(h)
    assert 0.9 <= h["recall_at_10_vs_exact"] <= 1.0
    assert h["speedup_vs_exact"] > 0
    assert h["n_vectors"] == results["n_docs"]


def test_bm25_beats_the_untrained_encoder(benchmark_run):
    methods = json.loads((benchmark_run / "results.json").read_text())["methods"]
    assert methods["bm25"]["recall@10"] > methods["untrained"]["recall@10"]


def test_unknown_method(tmp_path):
    with pytest.raises(ValueError, match=r"unknown method\(s\) \['nope'\]"):
        bench.main(["--preset", "fast", "--out", str(tmp_path), "--methods", "bm25", "nope"])
    assert not list(tmp_path.iterdir())


def test_bad_preset(tmp_path):
    with pytest.raises(SystemExit):
        bench.main(["--preset", "huge", "--out", str(tmp_path)])


def test_merge_keeps_other_methods_and_hnsw(benchmark_run, tmp_path):
    out = tmp_path / "merged"
    shutil.copytree(benchmark_run, out)
    before = json.loads((out / "results.json").read_text())
    before["methods"]["bm25"]["recall@1"] = -1.0  # a marker the re-run must overwrite
    (out / "results.json").write_text(json.dumps(before))
    bench.main(["--preset", "fast", "--out", str(out), "--methods", "bm25", "--merge"])
    after = json.loads((out / "results.json").read_text())
    assert list(after["methods"]) == ["bm25", "untrained"]  # METHODS order, untrained kept
    assert after["methods"]["untrained"] == before["methods"]["untrained"]
    assert after["methods"]["bm25"]["recall@1"] >= 0  # re-run
    assert after["hnsw"] == before["hnsw"]  # bm25 has no embeddings: the old measurement stays


def test_merge_refuses_another_preset(tmp_path):
    (tmp_path / "results.json").write_text(json.dumps({"preset": "full", "methods": {}}))
    with pytest.raises(ValueError, match="holds preset 'full', not 'fast'"):
        bench.main(["--preset", "fast", "--out", str(tmp_path), "--methods", "bm25", "--merge"])


def test_replot_redraws_from_results_json_only(benchmark_run, tmp_path):
    out = tmp_path / "replot"
    shutil.copytree(benchmark_run, out)
    results = json.loads((out / "results.json").read_text())
    results["methods"]["bm25"]["recall@1"] = 0.123456  # edited by hand: the redraw must show it
    (out / "results.json").write_text(json.dumps(results))
    (out / "results.md").unlink()
    (out / "recall_curves.png").unlink()
    bench.main(["--preset", "fast", "--out", str(out), "--replot"])
    assert "| bm25 | 0.123 |" in (out / "results.md").read_text()
    assert (out / "recall_curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert json.loads((out / "results.json").read_text()) == results  # nothing re-run or rewritten


def test_replot_without_results_says_how_to_fix(tmp_path):
    with pytest.raises(FileNotFoundError, match="run the benchmark with --out"):
        bench.main(["--preset", "fast", "--out", str(tmp_path), "--replot"])
    assert not list(tmp_path.iterdir())


def test_ordering_claims_only_gaps_above_the_spread():
    from course_lib.benchmark import mean_sd, ordering, stored_results

    a = {"recall@10": 0.40, "spread": {"recall@10": 0.01}}
    b = {"recall@10": 0.35, "spread": {"recall@10": 0.03}}
    c = {"recall@10": 0.38, "spread": {"recall@10": 0.03}}
    assert ordering(a, b)[1].startswith("above") and ordering(b, a)[1].startswith("below")
    assert ordering(a, c)[1].startswith("within noise")  # gap 0.02 < the larger sd 0.03
    assert ordering(a, {"recall@10": 0.1})[1].startswith("one seed")
    assert ordering(a, b)[0] == pytest.approx(0.05)
    assert mean_sd(a, "recall@10") == "0.400 ± 0.010" and mean_sd({"recall@10": 0.5}, "recall@10") == "0.500"
    fast = stored_results("fast")
    assert "recall@10" in fast["in_batch"]
    with pytest.raises(FileNotFoundError, match="course_lib.benchmark"):
        stored_results("nonexistent-preset")


def test_report_lists_hard_negative_strategies_with_their_mining():
    from course_lib.benchmark import RESULTS_DIR, to_markdown

    results = json.loads((RESULTS_DIR / "fast" / "results.json").read_text())
    text = to_markdown(results)
    assert "Hard-negative strategies" in text
    for name in ("no_mining", "static_hardneg", "ance_refresh", "dynamic_hardneg"):
        assert f"- {name}: " in text
    assert "negatives replaced" in text and "reindex at step 200" in text

"""Bad inputs to the hard-negative modules (course_lib.hardneg, false_negatives, wordnet pointers, the miner's
state, their plots and widget): each raises an error that names the problem, and a miner or judge that raised
still holds what it held before. (The memory bank's and ``mine_hard_negatives``' own sweeps live in
tests/test_memory.py and tests/test_mining.py.)"""

import copy

import pytest
import torch

from course_lib.false_negatives import EmbeddingJudge, filter_report
from course_lib.hardneg import HardNegSettings, mining_pairs
from course_lib.mining import (
    AnceRefresher,
    DynamicHardNegativeMiner,
    MinedNegatives,
    conan_window,
    should_replace,
)
from course_lib.plots import plot_score_histograms, plot_series
from course_lib.widgets import explore_mining
from course_lib.wordnet import parse_pointers, wordnet_dir


def toy():
    g = torch.Generator().manual_seed(0)
    docs = torch.nn.functional.normalize(torch.randn(30, 4, generator=g), dim=-1)
    return docs[:3].clone(), [f"d{i}" for i in range(3)], [f"d{i}" for i in range(30)], docs


@pytest.mark.parametrize("kwargs, message", [
    ({"strategy": "hard"}, "strategy must be one of"),
    ({"warmup_steps": -1}, "warmup_steps must be a non-negative int"),
    ({"warmup_steps": True}, "warmup_steps"),
    ({"n_mined": 0}, "n_mined must be a positive int"),
    ({"n_per_step": 2.0}, "n_per_step must be a positive int"),
    ({"n_mined": 2, "n_per_step": 3}, "exceeds n_mined"),
    ({"ance_every": 0}, "ance_every"),
    ({"check_every": "100"}, "check_every"),
])
def test_hardneg_settings(kwargs, message):
    with pytest.raises(ValueError, match=message):
        HardNegSettings(**kwargs)


def test_mining_pairs_without_positives_in_the_corpus():
    class Data:
        name, corpus = "toy", {"d1": "x"}
        train = [type("E", (), {"positive": "d9"})()]

    with pytest.raises(ValueError, match="positive in the corpus"):
        mining_pairs(Data())


@pytest.mark.parametrize("call, error, message", [
    (lambda: should_replace(0.5, 0.4, factor=0.9), ValueError, "factor must be"),
    (lambda: should_replace(0.5, 0.4, abs_limit=-1), ValueError, "abs_limit must be"),
    (lambda: conan_window(0, 8), ValueError, "i must be >= 1"),
    (lambda: conan_window(1, 0), ValueError, "n must be >= 1"),
    (lambda: AnceRefresher(every=0), ValueError, "every must be >= 1"),
    (lambda: AnceRefresher(every=10, fill="top"), ValueError, "fill must be"),
    (lambda: AnceRefresher(every=10).negatives_at(0), ValueError, "no index built yet"),
    (lambda: DynamicHardNegativeMiner("mined", ["d0"], ["d0"]), TypeError, "MinedNegatives"),
    (lambda: parse_pointers(wordnet_dir(), symbols=("@",)), ValueError, "unknown pointer symbols"),
    (lambda: EmbeddingJudge(["a", "b"], torch.zeros(3, 2), 0.5), ValueError, "one row per doc id"),
    (lambda: EmbeddingJudge(["a"], torch.zeros(1, 2), 2.0), ValueError, "threshold"),
    (lambda: plot_score_histograms({}), ValueError, "non-empty"),
    (lambda: plot_score_histograms({"a": []}), ValueError, "non-empty"),
    (lambda: plot_series({"a": ([1, 2], [0.1])}, "x", "y"), ValueError, "equal, non-zero length"),
    (lambda: explore_mining([]), ValueError, "items is empty"),
])
def test_clear_errors(call, error, message):
    with pytest.raises(error, match=message):
        call()


def test_miner_keeps_its_state_after_bad_encoders():
    q, positives, doc_ids, docs = toy()
    initial = MinedNegatives([["d5", "d6"], ["d7", "d8"], ["d9", "d10"]], [[0.5, 0.4], [0.5, 0.4], [0.5, 0.4]],
                             [[10, 11], [10, 11], [10, 11]], 0, 0, {}, [0.9, 0.9, 0.9])
    miner = DynamicHardNegativeMiner(initial, positives, doc_ids, check_every=1)
    before = copy.deepcopy((miner.negatives, miner.current_scores, miner.window, miner.history))
    with pytest.raises(ValueError, match="one embedding per input"):
        miner.maybe_update(1, lambda rows: q[:1], lambda ids: docs[: len(ids)])
    with pytest.raises(ValueError, match="NaN or inf"):
        miner.maybe_update(1, lambda rows: q[rows] * float("nan"), lambda ids: docs[: len(ids)])
    with pytest.raises(ValueError, match="examples must be indices"):
        miner.maybe_update(1, lambda rows: q[rows], lambda ids: docs[: len(ids)], examples=[7])
    assert (miner.negatives, miner.current_scores, miner.window, miner.history) == before


def test_filter_report_rejects_a_window_past_the_corpus():
    q, positives, doc_ids, docs = toy()
    with pytest.raises(ValueError, match="past the corpus"):
        filter_report(q, positives, doc_ids, docs, settings={"none": {}}, judges={}, rank_range=(0, 40))

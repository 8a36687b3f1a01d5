"""Batch samplers in ``course_lib.samplers``: determinism, batch sizes, epoch coverage, no duplicates within a
batch, popularity-skewed draws and their per-document probabilities, and input validation."""

import math
from collections import Counter
from itertools import islice

import pytest
import torch
from scipy.stats import chi2

from course_lib.data import TrainExample
from course_lib.samplers import NoDuplicateBatchSampler, PopularitySampler, RandomBatchSampler


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def distinct(n: int) -> list[TrainExample]:
    return [TrainExample(f"query {i}", f"doc{i}") for i in range(n)]


def take(sampler, n: int) -> list[list[int]]:
    return list(islice(iter(sampler), n))


def make(kind: str, seed: int = 0):
    examples = distinct(30)
    if kind == "random":
        return RandomBatchSampler(examples, 4, gen(seed))
    if kind == "no_duplicates":
        return NoDuplicateBatchSampler(examples, 4, gen(seed))
    return PopularitySampler(examples, {f"doc{i}": i for i in range(30)}, 4, gen(seed))


# ---------------------------------------------------------------------------------------------------------
# shared behaviour


@pytest.mark.parametrize("kind", ["random", "no_duplicates", "popularity"])
def test_same_seed_same_batches(kind):
    assert take(make(kind, 3), 40) == take(make(kind, 3), 40)
    assert take(make(kind, 3), 40) != take(make(kind, 4), 40)


@pytest.mark.parametrize("kind", ["random", "no_duplicates", "popularity"])
def test_iteration_replays_and_leaves_the_callers_generator_alone(kind):
    g = gen(5)
    before = g.get_state()
    sampler = build(kind, examples=distinct(30), generator=g)
    first = take(sampler, 20)
    assert take(sampler, 20) == first  # every iter() starts from the state the sampler was built with
    assert torch.equal(g.get_state(), before)


@pytest.mark.parametrize("kind", ["random", "no_duplicates", "popularity"])
def test_batches_are_full_lists_of_valid_indices_forever(kind):
    batches = take(make(kind), 200)  # 200 batches of 4 over 30 examples: many epochs
    assert len(batches) == 200
    assert all(isinstance(b, list) and len(b) == 4 for b in batches)
    assert all(isinstance(i, int) and 0 <= i < 30 for b in batches for i in b)


# ---------------------------------------------------------------------------------------------------------
# RandomBatchSampler


def test_random_covers_every_index_once_per_epoch_without_drop_last():
    n, bs = 10, 4
    batches = take(RandomBatchSampler(distinct(n), bs, gen(), drop_last=False), 15)  # 5 epochs of 3 batches
    assert [len(b) for b in batches] == [4, 4, 2] * 5
    epochs = [sum(batches[i : i + 3], []) for i in range(0, 15, 3)]
    for epoch in epochs:
        assert sorted(epoch) == list(range(n))
    assert len({tuple(e) for e in epochs}) > 1  # reshuffled between epochs


def test_random_drop_last_drops_each_epochs_remainder():
    batches = take(RandomBatchSampler(distinct(10), 4, gen()), 8)  # 4 epochs of 2 full batches
    assert all(len(b) == 4 for b in batches)
    for i in range(0, 8, 2):
        epoch = batches[i] + batches[i + 1]
        assert len(set(epoch)) == 8


def test_random_batch_larger_than_data_without_drop_last():
    batches = take(RandomBatchSampler(distinct(3), 5, gen(), drop_last=False), 4)
    assert all(sorted(b) == [0, 1, 2] for b in batches)


# ---------------------------------------------------------------------------------------------------------
# NoDuplicateBatchSampler


def skewed() -> list[TrainExample]:
    """120 examples, 15 positives (one of them behind 40 examples) and 45 query texts, each used 2–3 times."""
    return [TrainExample(f"q{i % 45}", f"p{(i * 7) % 15 if i % 3 else 0}") for i in range(120)]


def balanced() -> list[TrainExample]:
    """120 examples over 30 positives (4 each) and 50 query texts."""
    return [TrainExample(f"q{i % 50}", f"p{i % 30}") for i in range(120)]


def first_visit_and_max_gap(batches) -> tuple[dict[int, int], int]:
    first, last, gap = {}, {}, 0
    for b, batch in enumerate(batches):
        for i in batch:
            gap = max(gap, b - last.get(i, b))
            first.setdefault(i, b)
            last[i] = b
    return first, gap


@pytest.mark.parametrize("examples", [skewed(), balanced()], ids=["skewed", "balanced"])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_no_duplicates_never_repeats_a_positive_or_query_in_a_batch(examples, seed):
    bs = 6
    batches = take(NoDuplicateBatchSampler(examples, bs, gen(seed)), 400)
    for batch in batches:
        assert len(batch) == bs
        assert len({examples[i].positive for i in batch}) == bs
        assert len({examples[i].query for i in batch}) == bs
    # bounded waiting: an example is passed over at most once per example ahead of it in the queue (< N), and
    # the queue is refilled at the latest after ⌈N/bs⌉ batches
    n = len(examples)
    first, gap = first_visit_and_max_gap(batches)
    assert len(first) == n and max(first.values()) < n
    assert gap <= n + math.ceil(n / bs)


def test_no_duplicates_visits_balanced_data_about_once_per_epoch():
    examples, bs = balanced(), 8
    epoch = math.ceil(len(examples) / bs)
    for seed in range(3):
        first, gap = first_visit_and_max_gap(take(NoDuplicateBatchSampler(examples, bs, gen(seed)), 300))
        assert len(first) == len(examples)
        assert max(first.values()) < 2 * epoch
        assert gap <= 3 * epoch


def test_no_duplicates_on_distinct_data_is_a_shuffle_per_epoch():
    batches = take(NoDuplicateBatchSampler(distinct(12), 4, gen()), 9)  # 3 epochs of 3 batches
    for i in range(0, 9, 3):
        assert sorted(sum(batches[i : i + 3], [])) == list(range(12))


def test_no_duplicates_rejects_a_batch_larger_than_the_distinct_positives():
    examples = [TrainExample(f"q{i}", f"p{i % 3}") for i in range(10)]
    with pytest.raises(ValueError, match="exceeds the 3 distinct positive documents"):
        NoDuplicateBatchSampler(examples, 4, gen())
    same_query = [TrainExample("q", f"p{i}") for i in range(10)]
    with pytest.raises(ValueError, match="exceeds the 1 distinct query texts"):
        NoDuplicateBatchSampler(same_query, 2, gen())


def test_no_duplicates_explains_a_batch_it_cannot_fill():
    # 2 positives and 2 queries, but (q1, p1) clashes with both others: once it leads, no batch of 2 exists
    examples = [TrainExample("q1", "p1"), TrainExample("q1", "p2"), TrainExample("q2", "p1")]
    with pytest.raises(RuntimeError, match="could not fill a batch of 2"):
        take(NoDuplicateBatchSampler(examples, 2, gen()), 100)


# ---------------------------------------------------------------------------------------------------------
# PopularitySampler


POPULARITY = {"a": 0, "b": 1, "c": 3, "d": 9}
EXAMPLES = [TrainExample("qa", "a"), TrainExample("qb", "b"), TrainExample("qc", "c"), TrainExample("qd", "d"),
            TrainExample("qd2", "d"), TrainExample("qe", "e")]  # "e" has no count: 0


@pytest.mark.parametrize("alpha", [0.0, 0.5, 1.0, 2.0])
def test_popularity_probabilities(alpha):
    sampler = PopularitySampler(EXAMPLES, POPULARITY, 8, gen(), alpha=alpha)
    weights = torch.tensor([1, 2, 4, 10, 10, 1], dtype=torch.float64) ** alpha
    torch.testing.assert_close(sampler.probabilities, weights / weights.sum())
    if alpha == 0:
        torch.testing.assert_close(sampler.probabilities, torch.full((6,), 1 / 6, dtype=torch.float64))


@pytest.mark.parametrize("alpha", [0.0, 1.0])
def test_popularity_empirical_frequencies_match(alpha):
    sampler = PopularitySampler(EXAMPLES, POPULARITY, 50, gen(7), alpha=alpha)
    draws = [i for b in take(sampler, 100) for i in b]  # 5,000 draws
    counts = Counter(draws)
    expected = sampler.probabilities * len(draws)
    statistic = sum((counts[i] - expected[i].item()) ** 2 / expected[i].item() for i in range(len(EXAMPLES)))
    assert statistic < chi2.ppf(1 - 1e-4, df=len(EXAMPLES) - 1)
    # the per-document probability is what a draw's positive column follows
    docs = Counter(EXAMPLES[i].positive for i in draws)
    for doc in "abcde":
        assert abs(docs[doc] / len(draws) - sampler.doc_probability(doc)) < 0.03


def test_doc_probability_sums_to_one_over_documents():
    sampler = PopularitySampler(EXAMPLES, POPULARITY, 4, gen(), alpha=0.75)
    docs = {e.positive for e in EXAMPLES}
    assert math.isclose(sum(sampler.doc_probability(doc) for doc in docs), 1.0, rel_tol=1e-12)
    p = sampler.probabilities.tolist()
    assert math.isclose(sampler.doc_probability("d"), p[3] + p[4], rel_tol=1e-12)  # two examples share "d"
    assert sampler.doc_probability("not a positive") == 0.0


def test_popularity_large_alpha_stays_finite():
    sampler = PopularitySampler(EXAMPLES, {"a": 10**6}, 4, gen(), alpha=500.0)
    assert torch.isfinite(sampler.probabilities).all() and math.isclose(sampler.doc_probability("a"), 1.0)


# ---------------------------------------------------------------------------------------------------------
# validation


def build(kind: str, examples=None, batch_size=4, generator=None, **kw):
    examples = distinct(10) if examples is None else examples
    generator = gen() if generator is None else generator
    if kind == "random":
        return RandomBatchSampler(examples, batch_size, generator, **kw)
    if kind == "no_duplicates":
        return NoDuplicateBatchSampler(examples, batch_size, generator, **kw)
    return PopularitySampler(examples, kw.pop("popularity", {}), batch_size, generator, **kw)


@pytest.mark.parametrize("kind", ["random", "no_duplicates", "popularity"])
@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        ({"batch_size": 0}, ValueError, "batch_size must be a positive int"),
        ({"batch_size": -2}, ValueError, "batch_size must be a positive int"),
        ({"batch_size": 2.0}, ValueError, "batch_size must be a positive int"),
        ({"batch_size": True}, ValueError, "batch_size must be a positive int"),
        ({"examples": []}, ValueError, "examples is empty"),
        ({"examples": [("q", "d")]}, TypeError, "must be TrainExample"),
        ({"generator": 0}, TypeError, "generator must be a torch.Generator"),
    ],
)
def test_shared_validation(kind, kwargs, error, match):
    with pytest.raises(error, match=match):
        build(kind, **kwargs)


def test_random_drop_last_needs_one_full_batch():
    with pytest.raises(ValueError, match="no batch is ever complete"):
        RandomBatchSampler(distinct(3), 4, gen())


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        ({"alpha": -0.5}, ValueError, "alpha must be a finite number >= 0"),
        ({"alpha": float("nan")}, ValueError, "alpha must be a finite number >= 0"),
        ({"alpha": float("inf")}, ValueError, "alpha must be a finite number >= 0"),
        ({"popularity": [1, 2]}, TypeError, "popularity must be a dict"),
        ({"popularity": {"doc3": -1}}, ValueError, r"popularity\['doc3'\] must be a finite count >= 0"),
        ({"popularity": {"doc3": "many"}}, ValueError, "finite count"),
    ],
)
def test_popularity_validation(kwargs, error, match):
    with pytest.raises(error, match=match):
        build("popularity", **kwargs)

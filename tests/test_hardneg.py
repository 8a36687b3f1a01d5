"""Training with mined hard negatives (course_lib.hardneg): settings validated, each strategy mines at exactly
the steps it should (static once, ANCE every R steps, Conan's checks every check_every steps), batches never
carry a query's own positive as a negative, mining time counts as training time, runs are deterministic; the
false-negative judges and the filter report (course_lib.false_negatives); WordNet's sense-grouping pointers."""

import dataclasses

import pytest
import torch

from course_lib.config import get_config
from course_lib.data import load_dataset
from course_lib.false_negatives import EmbeddingJudge, WordNetJudge, filter_report, flagged_share
from course_lib.hardneg import HardNegSettings, NegativeSource, hardneg_batches, mining_pairs, train_hardneg
from course_lib.models import make_encoder
from course_lib.samplers import NoDuplicateBatchSampler
from course_lib.tokenizer import load_tokenizer
from course_lib.utils import seed_everything
from course_lib.wordnet import SENSE_GROUP_POINTERS, parse_pointers, parse_synsets, wordnet_dir

CFG = get_config("fast", batch_size=16)


@pytest.fixture(scope="module")
def small():
    """FAST data with the corpus cut to the positives of 300 mining pairs plus 300 other documents."""
    data = load_dataset("wordnet", "fast")
    examples, pool = mining_pairs(data)
    keep = {e.positive for e in examples[:300]} | set(pool[:300])
    return dataclasses.replace(data, corpus={i: data.corpus[i] for i in sorted(keep)}), load_tokenizer(data, CFG.vocab_size)


def test_settings_are_validated():
    with pytest.raises(ValueError, match="strategy"):
        HardNegSettings(strategy="ance-ish")
    with pytest.raises(ValueError, match="n_per_step"):
        HardNegSettings(n_mined=2, n_per_step=3)
    with pytest.raises(ValueError, match="check_every"):
        HardNegSettings(check_every=0)
    assert HardNegSettings(strategy="dynamic", n_mined=8).first_range == (10, 18)  # Conan's first window
    assert HardNegSettings(strategy="static").first_range == (10, 210)  # FlagEmbedding's default
    assert "static_range" not in HardNegSettings(strategy="none").describe()


def test_mining_pairs_have_positives_in_the_pool(small):
    data, _ = small
    examples, pool = mining_pairs(data)
    assert pool == sorted(data.corpus) and examples
    assert all(e.positive in data.corpus for e in examples)
    assert len(examples) == sum(e.positive in data.corpus for e in data.train)


@pytest.mark.parametrize("strategy, expected", [
    ("none", []),
    ("static", [(2, "mine")]),
    ("ance", [(2, "reindex"), (5, "reindex")]),  # refreshes and checks count from the first mining
    ("dynamic", [(2, "mine"), (5, "check")]),
])
def test_each_strategy_mines_at_its_steps(small, strategy, expected):
    data, tok = small
    settings = HardNegSettings(strategy=strategy, warmup_steps=2, ance_every=3, check_every=3, n_mined=4,
                               static_range=(2, 30), ance_range=(0, 30), offset=2)
    seed_everything(0, 2)
    model, history, source = train_hardneg(CFG, data, tok, settings, steps=7, progress=False)
    assert [(r["step"], r["event"]) for r in source.log] == expected
    assert history.steps == 7
    assert history.train_seconds >= source.seconds
    if strategy == "none":
        assert source.negatives is None and source.seconds == 0
        return
    assert source.seconds > 0
    assert all(len(row) == 4 for row in source.negatives)
    for e, row in zip(source.examples, source.negatives):
        assert e.positive not in row and len(set(row)) == len(row)
    if strategy == "ance":
        assert source.refresher.build_steps == [2, 5]
    if strategy == "dynamic":
        replaced = sum(len(h) for h in source.miner.history)
        assert replaced == sum(r["replaced"] for r in source.log if r["event"] == "check")


def test_batches_carry_mined_negatives_in_column_blocks(small):
    data, tok = small
    examples, pool = mining_pairs(data)
    settings = HardNegSettings(strategy="static", warmup_steps=0, n_mined=4, n_per_step=2, static_range=(0, 20))
    source = NegativeSource(settings, examples, pool, data, tok, CFG, seed=0)
    model = make_encoder(CFG, tok)
    gen = torch.Generator().manual_seed(0)
    sampler = NoDuplicateBatchSampler(examples, 16, torch.Generator().manual_seed(0))
    batch = next(hardneg_batches(source, model, sampler, gen))
    idx = next(iter(sampler))
    assert batch["n"]["input_ids"].shape[0] == 32 and len(batch["neg_ids"]) == 32
    for j, e in enumerate(idx):  # block b holds the b-th negative of every query
        assert batch["neg_ids"][j] in source.negatives[e] and batch["neg_ids"][16 + j] in source.negatives[e]
        assert batch["neg_ids"][j] != batch["neg_ids"][16 + j]
        assert examples[e].positive not in (batch["neg_ids"][j], batch["neg_ids"][16 + j])


def test_runs_are_deterministic(small):
    data, tok = small
    settings = HardNegSettings(strategy="dynamic", warmup_steps=2, check_every=2, n_mined=4, offset=2)
    runs = []
    for _ in range(2):
        seed_everything(0, 2)
        _, history, source = train_hardneg(CFG, data, tok, settings, steps=5, progress=False)
        runs.append((history.losses, source.negatives, [(r["step"], r["replaced"]) for r in source.log]))
    assert runs[0] == runs[1]


# ---------------------------------------------------------------------------------------------------------
# WordNet pointers and the judges


@pytest.fixture(scope="module")
def pointers():
    return parse_pointers(wordnet_dir())


def test_pointers_parse_into_known_synsets(pointers):
    synsets = parse_synsets(wordnet_dir())
    seen = {s for by_symbol in pointers.values() for s in by_symbol}
    assert seen == set(SENSE_GROUP_POINTERS)
    targets = {t for by_symbol in pointers.values() for ts in by_symbol.values() for t in ts}
    assert set(pointers) <= set(synsets) and targets <= set(synsets)  # satellites ("s") are stored as "a" ids
    assert all(s[0] in "va" for s in pointers)  # nouns and adverbs carry none of these three pointers
    assert all(s[0] == "v" for s, by in pointers.items() if "$" in by)  # verb groups link verbs
    with pytest.raises(ValueError, match="unknown pointer"):
        parse_pointers(wordnet_dir(), symbols=("@",))


def test_wordnet_judge_is_symmetric_and_names_the_pointer():
    judge = WordNetJudge()
    synsets = parse_synsets(wordnet_dir())
    breathe = next(s for s, v in synsets.items() if s[0] == "v" and v["lemmas"][:2] == ["breathe", "take a breath"])
    exhale = next(s for s, v in synsets.items() if s[0] == "v" and v["lemmas"][0] == "exhale")
    assert judge(breathe, exhale) and judge(exhale, breathe)
    assert "^" in judge.why(breathe, exhale)
    assert not judge(breathe, breathe) and not judge(breathe, "n00001740")


def test_embedding_judge_thresholds_cosine():
    emb = torch.tensor([[1.0, 0.0], [0.8, 0.6], [0.0, 1.0]])
    judge = EmbeddingJudge(["a", "b", "c"], emb * 3, threshold=0.79)  # scale does not matter
    assert judge("a", "b") and not judge("a", "c")
    assert judge.score("a", "b") == pytest.approx(0.8)
    assert flagged_share(["a", "a"], [["b", "c"], ["c"]], judge) == pytest.approx(1 / 3)
    with pytest.raises(KeyError, match="no judge embedding"):
        judge("a", "zzz")
    with pytest.raises(ValueError, match="threshold"):
        EmbeddingJudge(["a"], emb[:1], threshold=1.5)


def test_filter_report_accounts_for_every_candidate():
    g = torch.Generator().manual_seed(0)
    docs = torch.nn.functional.normalize(torch.randn(60, 8, generator=g), dim=-1)
    queries = torch.nn.functional.normalize(docs[:5] + 0.3 * torch.randn(5, 8, generator=g), dim=-1)
    doc_ids = [f"d{i}" for i in range(60)]
    positives = doc_ids[:5]
    odd = lambda p, n: int(n[1:]) % 2 == 1  # noqa: E731  a judge that flags odd ids
    report = filter_report(queries, positives, doc_ids, docs, rank_range=(0, 20), judges={"odd": odd},
                           settings={"none": {}, "relative 0.05": {"relative_margin": 0.05},
                                     "max 0.2": {"max_score": 0.2}})
    assert report["none"]["removed"] == 0 and report["none"]["kept"] == 5 * 20
    s_plus = (queries * docs[:5]).sum(-1)  # (5,)
    for name, r in report.items():
        assert r["kept"] + r["removed"] == 100
        assert len(r["removed_pairs"]) == r["removed"]
    for row, _, score in report["relative 0.05"]["removed_pairs"]:
        assert score > s_plus[row] - abs(s_plus[row]) * 0.05
    assert all(score > 0.2 for _, _, score in report["max 0.2"]["removed_pairs"])
    assert 0.0 <= report["none"]["flagged"]["odd"] <= 1.0

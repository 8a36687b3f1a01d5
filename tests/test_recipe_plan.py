"""The recipe's planner (course_lib.recipe_plan): what it times, and how it turns a sample into a whole run."""

import math
import time
from dataclasses import replace
from types import SimpleNamespace

import pytest
import torch

import course_lib.recipe_plan as recipe_plan
from course_lib.config import get_config
from course_lib.data import load_dataset
from course_lib.hardneg import HardNegSettings
from course_lib.recipe import RecipeSettings
from course_lib.tokenizer import load_tokenizer

CFG = get_config("fast")


def test_a_step_is_timed_with_its_batch_preparation():
    """The training loop pays for building each batch (tokenising, drawing negatives); a timing that leaves it
    out under-estimates a run (it did, by 12–24 %, before this was counted)."""
    model = torch.nn.Linear(4, 1)

    def slow_batches():
        while True:
            time.sleep(0.03)  # a batch that takes 30 ms to prepare
            yield torch.randn(8, 4)

    per_step = recipe_plan._seconds_per_step(model, lambda m, b: m(b).pow(2).mean(), slow_batches(), lr=1e-3)
    assert per_step >= 0.03


def test_the_search_estimate_extrapolates_a_fixed_and_a_per_query_cost(monkeypatch):
    """Timed at two sample sizes, the first mining's search is extended to every training query along the line
    through the two points: a fake search costing 50 ms + 1 ms per query gives ≈ 0.05 + 0.001·Q."""
    def fake_mine(query_emb, positive_ids, doc_ids, doc_emb, **kw):
        assert query_emb.shape[1] == doc_emb.shape[1] == 16 and len(positive_ids) == query_emb.shape[0]
        assert set(positive_ids) <= set(doc_ids)
        time.sleep(0.05 + 0.001 * query_emb.shape[0])

    monkeypatch.setattr(recipe_plan, "mine_hard_negatives", fake_mine)
    pool = [f"d{i}" for i in range(300)]
    examples = [SimpleNamespace(positive=pool[i % 300]) for i in range(2000)]
    hn = HardNegSettings(strategy="dynamic", warmup_steps=0, n_mined=4)
    estimate = recipe_plan._search_seconds(hn, examples, pool, seed=0, dim=16, sizes=(32, 256))
    assert estimate == pytest.approx(0.05 + 0.001 * 2000, rel=0.25)


@pytest.fixture(scope="module")
def fast_wordnet():
    data = load_dataset("wordnet", "fast")
    return data, load_tokenizer(data, CFG.vocab_size)


def test_the_plan_sets_mining_aside_only_when_the_run_mines(fast_wordnet):
    data, tokenizer = fast_wordnet
    mines = RecipeSettings(pretrain=None, batch_size=16, segment_steps=2, max_passes=1e6)  # the cap never binds
    plan = recipe_plan.make_plan(mines, CFG, data, tokenizer, minutes=2, seed=0)
    assert "unspent_seconds" not in plan and plan["finetune_steps"] < plan["finetune_steps_cap"]
    assert plan["mining_search_seconds_estimate"] > 0
    assert plan["mining_seconds_estimate"] > plan["mining_search_seconds_estimate"]
    # what is left of the 2 minutes after the mining is spent on fine-tuning steps (the plan's figures are rounded)
    assert plan["finetune_steps"] * plan["finetune_seconds_per_step"] == \
        pytest.approx(120 - plan["mining_seconds_estimate"], rel=0.01)

    no_mining = replace(mines, hard_negatives=replace(mines.hard_negatives, strategy="none"))
    plan = recipe_plan.make_plan(no_mining, CFG, data, tokenizer, minutes=2, seed=0)
    assert plan["mining_seconds_estimate"] == plan["mining_search_seconds_estimate"] == 0


def test_the_plan_stops_fine_tuning_at_max_passes_and_keeps_the_minutes(fast_wordnet):
    """Half a pass over the training pairs at B = 16 is fewer steps than 2 minutes hold: the plan caps the
    fine-tuning there, records the steps it timed and the seconds it leaves unspent, and sets the mining and the
    checks on the capped count."""
    data, tokenizer = fast_wordnet
    settings = RecipeSettings(pretrain=None, batch_size=16, segment_steps=2, max_passes=0.5)
    examples, _ = recipe_plan.mining_pairs(data)
    plan = recipe_plan.make_plan(settings, CFG, data, tokenizer, minutes=2, seed=0)
    assert plan["finetune_steps"] == plan["finetune_steps_cap"] == math.ceil(0.5 * len(examples) / 16 / 2) * 2
    assert plan["finetune_steps_timed"] > plan["finetune_steps"]
    assert plan["unspent_seconds"] == pytest.approx(
        (plan["finetune_steps_timed"] - plan["finetune_steps"]) * plan["finetune_seconds_per_step"], rel=0.01)
    assert plan["hardneg_start_step"] == int(plan["finetune_steps"] * settings.hardneg_start)


@pytest.mark.parametrize("n_pairs, steps", [(36_274, 2_000), (8_345, 500), (10, 100), (12_800, 700)])
def test_the_pass_cap_is_whole_segments(n_pairs, steps):
    """7 passes at B = 128: WordNet's 36,274 pairs are 1,983.7 steps, 20 segments of 100; the idioms' 8,345 pairs
    456.4 steps, 5 segments; 12,800 pairs exactly 700 steps; at least one segment however few the pairs."""
    assert recipe_plan.pass_cap(RecipeSettings(), n_pairs) == steps


def test_the_plan_caps_pretraining_and_gives_its_minutes_to_fine_tuning(fast_wordnet):
    """A 2-minute plan with a quarter for pretraining times far more than 5 pretraining steps: the cap keeps 5,
    records the timed count, and the fine-tuning gets the seconds the cap freed (the uncapped plan's pretraining
    share, 30 s, less 5 steps' worth)."""
    data, tokenizer = fast_wordnet
    free = RecipeSettings(pretrain="mlm", batch_size=16, segment_steps=2, max_passes=1e6, max_pretrain_steps=10**6)
    capped = replace(free, max_pretrain_steps=5)
    a = recipe_plan.make_plan(free, CFG, data, tokenizer, minutes=2, seed=0)
    b = recipe_plan.make_plan(capped, CFG, data, tokenizer, minutes=2, seed=0)
    assert "pretrain_steps_timed" not in a and a["pretrain_steps"] > 5
    assert b["pretrain_steps"] == 5 and b["pretrain_steps_timed"] > 5
    assert b["pretrain_seconds"] == pytest.approx(5 * b["pretrain_seconds_per_step"], abs=0.06)  # rounded to 0.1 s
    # fine-tuning fills what is left of the 2 minutes after 5 pretraining steps, not after the 30 s share
    assert b["pretrain_seconds"] < 30
    assert b["finetune_steps"] * b["finetune_seconds_per_step"] == pytest.approx(
        120 - b["pretrain_seconds"] - b["mining_seconds_estimate"], rel=0.02)

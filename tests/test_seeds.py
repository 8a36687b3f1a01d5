"""Seeds run in separate calls and pooled into one entry (``course_lib.seeds.pool_seeds``,
``python -m course_lib.benchmark … --first-seed K --merge``)."""

import copy
import json
import statistics

import pytest

from course_lib import benchmark as bench
from course_lib.config import get_config
from course_lib.provenance import recorded_config
from course_lib.seeds import REPORTED, generation_runs, pool_seeds, seed_rows, summarize_seeds


def result(seed: int, seconds: float = 1.0) -> bench.MethodResult:
    """A made-up run whose every metric depends on its seed."""
    return bench.MethodResult({k: 0.1 + 0.07 * seed + 0.01 * i for i, k in enumerate(REPORTED)},
                              train_seconds=seconds, steps=3, stopped=["max_steps"], extra={"pretrain_steps": 7})


def entry(seeds: list[int], commit: str, config: dict | None = None) -> dict:
    runs = [result(s, seconds=10.0 + s) for s in seeds]
    return summarize_seeds(runs, seeds) | {"commit": commit, "date": f"date-{commit}", "config": config or {"lr": 1},
                                           "wall_seconds": 5.0}


def test_pooled_entry_equals_one_summary_of_all_seeds():
    stored, new = entry([0], "aaa"), entry([2, 1], "bbb")
    pooled = pool_seeds(stored, new, base_seed=0)
    at_once = summarize_seeds([result(s, seconds=10.0 + s) for s in (0, 1, 2)], [0, 1, 2])
    assert pooled["seeds"] == [0, 1, 2] and [r["seed"] for r in pooled["per_seed"]] == [0, 1, 2]
    for k in REPORTED:
        assert pooled[k] == pytest.approx(at_once[k]) and pooled["spread"][k] == pytest.approx(at_once["spread"][k])
    assert pooled["train_seconds"] == pytest.approx(statistics.fmean([10.0, 11.0, 12.0]))
    assert [r["commit"] for r in pooled["per_seed"]] == ["aaa", "bbb", "bbb"]  # each seed names what made it
    assert pooled["commit"] == "bbb" and pooled["pretrain_steps"] == 7 and pooled["wall_seconds"] == 10.0
    again = pool_seeds(pooled, entry([3], "ccc"), base_seed=0)  # a pooled entry pools again, rows keep their commits
    assert again["seeds"] == [0, 1, 2, 3] and [r["commit"] for r in again["per_seed"]] == ["aaa", "bbb", "bbb", "ccc"]


def test_pooling_one_seed_entries_keeps_each_seeds_generation_scores():
    """A SimBERT seed run alone stores its generation scores at the top of its entry; pooled, every seed's row
    keeps its own (what results.md's mean ± sd over seeds is computed from)."""
    def simbert_entry(seed):
        run = result(seed)
        run.extra = {"generation": {"token_f1_after": 0.1 * (seed + 1), "bleu_after": 0.0, "examples": ["x"],
                                    "start": "random weights"}}
        return summarize_seeds([run], [seed]) | {"commit": f"c{seed}", "date": "d", "config": {"lr": 1}}

    pooled = pool_seeds(pool_seeds(simbert_entry(0), simbert_entry(1), base_seed=0), simbert_entry(2), base_seed=0)
    assert [row["generation"] for row in pooled["per_seed"]] == [
        {"token_f1_after": 0.1 * (s + 1), "bleu_after": 0.0} for s in (0, 1, 2)]
    assert [g["token_f1_after"] for g in generation_runs(pooled)] == [0.1, 0.2, 0.1 * 3]


def test_a_one_seed_entry_without_seeds_is_the_base_seed():
    old = entry([0], "aaa")
    del old["seeds"]  # entries stored before every entry recorded its seeds
    assert [r["seed"] for r in seed_rows(old, base_seed=0)] == [0]
    with pytest.raises(ValueError, match=r"seed\(s\) \[0\] are already stored"):
        pool_seeds(old, entry([0], "bbb"), base_seed=0)


@pytest.mark.parametrize("new, match", [(entry([1], "bbb"), r"seed\(s\) \[1\] are already stored"),
                                        (entry([2], "bbb", config={"lr": 2}), r"another configuration .*\['lr'\]")])
def test_pooling_refuses_a_seed_twice_or_another_configuration(new, match):
    stored = entry([0, 1], "aaa")
    before = copy.deepcopy(stored)
    with pytest.raises(ValueError, match=match):
        pool_seeds(stored, new, base_seed=0)
    assert stored == before


@pytest.fixture
def fake_method(monkeypatch):
    """A registered method that trains nothing real: its metrics depend on the seed it is given."""
    calls = []

    def run_fake(cfg, data, tokenizer):
        calls.append(cfg.seed)
        return result(cfg.seed)

    monkeypatch.setitem(bench.METHODS, "fake_seeded", run_fake)
    return calls


def test_first_seed_pools_through_the_command_and_refuses_before_training(fake_method, tmp_path):
    cfg = get_config("fast")
    hnsw = json.loads((bench.RESULTS_DIR / "fast" / "results.json").read_text())["hnsw"]
    stored = entry([0], "aaa", config=recorded_config(cfg))
    (tmp_path / "results.json").write_text(json.dumps({"preset": "fast", "dataset": "wordnet", "hnsw": hnsw,
                                                       "methods": {"fake_seeded": stored}}))
    bench.main(["--preset", "fast", "--out", str(tmp_path), "--methods", "fake_seeded", "--merge",
                "--seeds", "2", "--first-seed", "1"])
    assert fake_method == [1, 2]
    pooled = json.loads((tmp_path / "results.json").read_text())["methods"]["fake_seeded"]
    assert pooled["seeds"] == [0, 1, 2] and pooled["per_seed"][0]["commit"] == "aaa"
    assert pooled["recall@10"] == pytest.approx(statistics.fmean(result(s).metrics["recall@10"] for s in (0, 1, 2)))
    assert "×3 seeds" in (tmp_path / "results.md").read_text()
    before = (tmp_path / "results.json").read_text()
    with pytest.raises(ValueError, match=r"already stores seeds \[0, 1, 2\]; pass a --first-seed above 2"):
        bench.main(["--preset", "fast", "--out", str(tmp_path), "--methods", "fake_seeded", "--merge",
                    "--first-seed", "2"])
    assert fake_method == [1, 2] and (tmp_path / "results.json").read_text() == before  # nothing ran, nothing changed
    with pytest.raises(ValueError, match="first_seed must be an int >= 0"):
        bench.run("fast", tmp_path, ["fake_seeded"], merge=True, first_seed=-1)


def test_first_seed_refuses_an_entry_of_another_configuration(fake_method, tmp_path):
    stored = entry([0], "aaa", config={"lr": 123})
    (tmp_path / "results.json").write_text(json.dumps({"preset": "fast", "dataset": "wordnet",
                                                       "methods": {"fake_seeded": stored}}))
    with pytest.raises(ValueError, match="made under another configuration"):
        bench.main(["--preset", "fast", "--out", str(tmp_path), "--methods", "fake_seeded", "--merge",
                    "--first-seed", "1"])
    assert fake_method == []

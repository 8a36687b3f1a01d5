"""course_lib.regimes: the statistics it reports, the schedules it asks for, its cache of pretrained starts, its
input checks, and the stored FAST probes the notebooks read."""

import json
import math
import statistics
from pathlib import Path

import pytest
import torch

from course_lib import regimes
from course_lib.config import get_config
from course_lib.train import lr_factor

ROOT = Path(__file__).resolve().parents[1]
STORED = ROOT / "results" / "fast" / "regimes.json"


def _run(r10: float, mrr: float, curve=((0, 0.1, 0.05), (10, 0.2, 0.1))) -> dict:
    return {"test": {"recall@10": r10, "mrr@10": mrr}, "steps": 10, "stopped": "max_steps",
            "dev_curve": [{"step": s, "recall@10": a, "mrr@10": b} for s, a, b in curve]}


def test_summarize_gives_the_mean_and_sample_sd_over_seeds():
    runs = [_run(0.30, 0.10), _run(0.34, 0.14, ((0, 0.2, 0.1), (10, 0.4, 0.3))), _run(0.32, 0.12)]
    s = regimes.summarize(runs)
    assert s["recall@10"] == pytest.approx(0.32) and s["recall@10_sd"] == pytest.approx(0.02)
    assert s["mrr@10_sd"] == pytest.approx(statistics.stdev([0.10, 0.14, 0.12]), abs=1e-4)
    assert [p["recall@10"] for p in s["dev_curve"]] == pytest.approx([(0.1 + 0.2 + 0.1) / 3, (0.2 + 0.4 + 0.2) / 3],
                                                                      abs=1e-4)
    assert regimes.summarize([_run(0.3, 0.1)])["recall@10_sd"] is None


@pytest.mark.parametrize("gap, expected", [(0.05, "above"), (-0.05, "below"), (0.02, "within noise"),
                                           (0.029, "within noise")])
def test_an_ordering_needs_a_gap_larger_than_the_larger_sd(gap, expected):
    a = {"recall@10": 0.5 + gap, "recall@10_sd": 0.01}
    b = {"recall@10": 0.5, "recall@10_sd": 0.03}
    assert regimes.verdict(a, b) == expected
    assert regimes.verdict(a, {"recall@10": 0.5, "recall@10_sd": None}).startswith("one seed")


def test_mean_pairwise_cosine_against_a_loop():
    g = torch.Generator().manual_seed(0)
    v = torch.randn(7, 5, generator=g)
    loop = statistics.fmean(float(torch.nn.functional.cosine_similarity(v[i], v[j], dim=0))
                            for i in range(7) for j in range(7) if i != j)
    assert regimes.mean_pairwise_cosine(v) == pytest.approx(loop, abs=1e-9)
    assert regimes.mean_pairwise_cosine(torch.ones(4, 3) * torch.tensor([[1.0], [2.0], [3.0], [0.5]])) \
        == pytest.approx(1.0)
    assert regimes.mean_pairwise_cosine(torch.eye(4)) == pytest.approx(0.0)
    with pytest.raises(ValueError, match="n >= 2"):
        regimes.mean_pairwise_cosine(torch.ones(1, 3))


def test_best_by_dev_chooses_on_dev_not_test():
    rows = {"mlm | a": {"start": "mlm", "recall@10": 0.9, "dev_curve": [{"recall@10": 0.2}]},
            "mlm | b": {"start": "mlm", "recall@10": 0.1, "dev_curve": [{"recall@10": 0.3}]},
            "random | a": {"start": "random", "recall@10": 0.5, "dev_curve": [{"recall@10": 0.1}]}}
    assert regimes.best_by_dev(rows) == {"mlm": "mlm | b", "random": "random | a"}


@pytest.fixture(scope="module")
def tiny():
    from course_lib.data import load_dataset
    from course_lib.tokenizer import load_tokenizer

    cfg = get_config("fast", train_steps=10, pretrain_steps=2, num_threads=1, train_seconds=math.inf,
                     pretrain_seconds=math.inf)
    data = load_dataset("wordnet", "fast")
    return cfg, data, load_tokenizer(data, cfg.vocab_size)


def _spy_on_schedules(monkeypatch, where: str) -> list:
    """Wrap the training loop imported at ``where``: each call's per-step lr factors are appended to the list
    returned."""
    import course_lib.train as train_module

    seen, real = [], train_module.train

    def spy(*args, **kwargs):
        history = real(*args, **kwargs)
        seen.append(list(history.lr_factors))
        return history

    monkeypatch.setattr(where, spy)
    return seen


def test_the_fine_tuning_schedules_reach_the_loop(tiny, monkeypatch):
    cfg, data, tok = tiny
    seen = _spy_on_schedules(monkeypatch, "course_lib.in_batch.train")
    out = regimes.finetune_run(cfg, data, tok, None, lr=3e-4, schedule="warmup_linear", seed=0, eval_every=5)
    assert seen[-1] == pytest.approx([lr_factor(s, 1, 10, "linear") for s in range(10)])
    assert [p["step"] for p in out["dev_curve"]] == [0, 5, 10] and out["steps"] == 10
    regimes.finetune_run(cfg, data, tok, None, lr=3e-4, schedule="constant", seed=0, eval_every=5)
    assert seen[-1] == [1.0] * 10
    with pytest.raises(ValueError, match="schedule must be"):
        regimes.finetune_run(cfg, data, tok, None, lr=3e-4, schedule="cosine", seed=0)


def test_simbert_warmup_reaches_the_loop(tiny):
    from course_lib.simbert import train_simbert

    cfg, data, tok = tiny
    _, history, _ = train_simbert(cfg, data, tok, steps=6, warmup_steps=2, progress=False)
    assert history.lr_factors == pytest.approx([lr_factor(s, 2, 6, "linear") for s in range(6)])
    _, history, _ = train_simbert(cfg, data, tok, steps=3, progress=False)
    assert history.lr_factors == [1.0] * 3


def test_a_pretrained_start_is_cached_and_reloaded_unchanged(tiny, tmp_path, monkeypatch):
    cfg, data, tok = tiny
    monkeypatch.setenv("COURSE_CACHE", str(tmp_path))
    bert, info = regimes.pretrained_start(cfg, data, tok, "mlm", 3)
    assert info["steps"] == 2 and regimes._start_path(cfg, data, "mlm", 3).exists()

    def no_training(*a, **k):
        raise AssertionError("a cached start was pretrained again")

    monkeypatch.setattr(regimes, "pretrain", no_training)
    again, info2 = regimes.pretrained_start(cfg, data, tok, "mlm", 3)
    assert info2 == info
    for (name, a), (_, b) in zip(bert.state_dict().items(), again.state_dict().items()):
        assert torch.equal(a, b), name
    assert regimes._start_path(cfg, data, "mlm", 4) != regimes._start_path(cfg, data, "mlm", 3)
    assert regimes._start_path(cfg.replace(pretrain_steps=3), data, "mlm", 3) != regimes._start_path(cfg, data, "mlm", 3)
    assert regimes.pretrained_start(cfg, data, tok, "random", 0)[0] is None
    with pytest.raises(ValueError, match="kind must be one of"):
        regimes.pretrained_start(cfg, data, tok, "bert", 0)
    with pytest.raises(ValueError, match="schedule must be one of"):
        regimes.pretrained_start(cfg, data, tok, "mlm", 0, "cosine")


def test_a_start_depends_on_its_seed_alone(tiny, tmp_path, monkeypatch):
    """Seeded before the model is built: whatever ran before in the process, seed s gives the same start."""
    cfg, data, tok = tiny
    monkeypatch.setenv("COURSE_CACHE", str(tmp_path / "a"))
    first, _ = regimes.pretrained_start(cfg, data, tok, "retromae", 1)
    torch.randn(1000)  # other work drawing from the global generator
    monkeypatch.setenv("COURSE_CACHE", str(tmp_path / "b"))
    second, _ = regimes.pretrained_start(cfg, data, tok, "retromae", 1)
    for (name, a), (_, b) in zip(first.state_dict().items(), second.state_dict().items()):
        assert torch.equal(a, b), name


def test_the_pretraining_schedule_reaches_the_loop_and_the_cache_key(tiny, tmp_path, monkeypatch):
    cfg, data, tok = tiny
    cfg = cfg.replace(pretrain_steps=10)
    monkeypatch.setenv("COURSE_CACHE", str(tmp_path))
    seen = _spy_on_schedules(monkeypatch, "course_lib.retromae.train")
    _, info = regimes.pretrained_start(cfg, data, tok, "mlm", 0, "warmup_linear")
    assert seen[-1] == pytest.approx([lr_factor(s, 1, 10, "linear") for s in range(10)])
    assert info["schedule"] == "warmup_linear"
    regimes.pretrained_start(cfg, data, tok, "mlm", 0, "constant")
    assert seen[-1] == [1.0] * 10
    paths = {regimes._start_path(cfg, data, "mlm", 0, s) for s in regimes.SCHEDULES}
    assert len(paths) == 2 and all(p.exists() for p in paths)


@pytest.mark.parametrize("kwargs, message", [({"only": ["nope"]}, "only must name"), ({"only": []}, "only must name"),
                                             ({"seeds": 1}, "seeds must be an int >= 2"),
                                             ({"seeds": True}, "seeds must be an int >= 2")])
def test_run_refuses_bad_arguments_before_writing(tmp_path, kwargs, message):
    out = tmp_path / "r.json"
    with pytest.raises(ValueError, match=message):
        regimes.run("fast", out, **{"only": ["collapse"], "seeds": 3} | kwargs)
    assert not out.exists()


def test_run_refuses_a_file_of_another_preset(tmp_path):
    out = tmp_path / "r.json"
    out.write_text(json.dumps({"preset": "full", "probes": {}}))
    with pytest.raises(ValueError, match="holds 'full' probes"):
        regimes.run("fast", out, ["collapse"], 3)


# ---------------------------------------------------------------------------------------------------------
# The stored FAST probes (results/fast/regimes.json): their summaries and verdicts follow from their seeds


def _stored():
    if not STORED.exists():
        pytest.fail(f"{STORED} is missing; python -m course_lib.regimes --preset fast --out {STORED.relative_to(ROOT)}")
    return json.loads(STORED.read_text())["probes"]


@pytest.mark.parametrize("probe", ["lr_sweep", "small_folder"])
def test_stored_rows_are_the_summaries_of_their_seeds(probe):
    stored = _stored()[probe]
    for name, row in stored["rows"].items():
        again = regimes.summarize(row["per_seed"])
        for key in ("recall@10", "recall@10_sd", "mrr@10", "mrr@10_sd"):
            assert row[key] == pytest.approx(again[key], abs=1e-4), (name, key)
        assert row["seeds"] >= 3 and all(s == "max_steps" for s in row["stopped"]), name
    if probe == "lr_sweep":
        assert stored["best_by_dev"] == regimes.best_by_dev(stored["rows"])
        pick = {k: stored["rows"][v] for k, v in stored["best_by_dev"].items()}
    else:
        pick = {row["start"]: row for row in stored["rows"].values()}
    assert stored["retromae_vs_mlm"] == regimes.verdict(pick["retromae"], pick["mlm"])
    assert stored["mlm_vs_random"] == regimes.verdict(pick["mlm"], pick["random"])
    assert stored["retromae_vs_random"] == regimes.verdict(pick["retromae"], pick["random"])


def test_stored_pretraining_schedule_rows_and_verdicts_follow_from_their_seeds():
    stored = _stored()["pretrain_schedule"]
    rows = stored["rows"]
    assert set(rows) == {f"{k} | pretraining {s}" for k in ("mlm", "retromae") for s in regimes.SCHEDULES}
    for name, row in rows.items():
        again = regimes.summarize(row["per_seed"])
        for key in ("recall@10", "recall@10_sd", "mrr@10", "mrr@10_sd"):
            assert row[key] == pytest.approx(again[key], abs=1e-4), (name, key)
        assert row["seeds"] >= 3 and all(s == "max_steps" for s in row["stopped"]), name
        assert all(info["schedule"] == row["pretraining_schedule"] for info in stored["pretraining"][name].values())
    for kind in ("mlm", "retromae"):
        assert stored["verdicts"][f"{kind}: warmup_linear vs constant"] == regimes.verdict(
            rows[f"{kind} | pretraining warmup_linear"], rows[f"{kind} | pretraining constant"])
    for schedule in regimes.SCHEDULES:
        assert stored["verdicts"][f"retromae vs mlm ({schedule})"] == regimes.verdict(
            rows[f"retromae | pretraining {schedule}"], rows[f"mlm | pretraining {schedule}"])


def test_stored_collapse_rows_count_their_collapsed_seeds():
    stored = _stored()["collapse"]
    floor = stored["ln(2n-1)"]
    assert floor == pytest.approx(math.log(stored["rows_per_batch"] - 1), abs=1e-4)
    for name, row in stored["rows"].items():
        assert row["collapsed_seeds"] == sum(r["similarity_loss_end"] > floor - 0.05 for r in row["per_seed"]), name
        assert row["seeds"] >= 3


@pytest.mark.parametrize("gap, sd_a, sd_b, expected", [(0.05, 0.01, 0.03, "above"), (-0.05, 0.03, 0.01, "below"),
                                                       (0.02, 0.01, 0.03, "within noise"), (0.0, 0.0, 0.0, "within noise")])
def test_one_ordering_rule_for_the_benchmark_the_regimes_and_the_notebooks(gap, sd_a, sd_b, expected):
    from course_lib.benchmark import ordering
    from course_lib.metrics import spread_verdict

    assert spread_verdict(gap, sd_a, sd_b) == expected
    a, b = {"recall@10": 0.5 + gap, "recall@10_sd": sd_a}, {"recall@10": 0.5, "recall@10_sd": sd_b}
    assert regimes.verdict(a, b) == expected
    stored_a = {"recall@10": 0.5 + gap, "spread": {"recall@10": sd_a}}
    assert ordering(stored_a, {"recall@10": 0.5, "spread": {"recall@10": sd_b}})[1].startswith(expected)

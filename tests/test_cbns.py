"""The CBNS loss and training (Wang et al., 2021, arXiv:2110.15154, §3): memory of size 0 is the in-batch loss, uniform q is a no-op,
accidental hits masked equal deleted, gradients in float64, the current batch scored once, agreement with
pytorch-metric-learning's CrossBatchMemory where the two designs coincide, and a short training run."""

import dataclasses
import math

import pytest
import torch
import torch.nn.functional as F

from course_lib.cbns import BENCHMARK_SETTINGS, CBNSSettings, CBNSStep, cbns_sampler, train_cbns
from course_lib.config import get_config
from course_lib.data import load_dataset
from course_lib.in_batch import pair_batches
from course_lib.losses import cbns_loss, in_batch_softmax_loss
from course_lib.memory import MemoryBank
from course_lib.metrics import evaluate
from course_lib.models import make_encoder
from course_lib.tokenizer import load_tokenizer
from course_lib.train import measure_step
from course_lib.utils import seed_everything

F64 = torch.float64
CFG = get_config("fast")


def randn(*shape, seed: int = 0, dtype=F64) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=dtype)


def ids(prefix: str, n: int) -> list[str]:
    return [f"{prefix}{i}" for i in range(n)]


# ---------------------------------------------------------------------------------------------------------
# the loss


@pytest.mark.parametrize("memory", [None, "empty"])
def test_no_memory_is_the_in_batch_loss(memory):
    q, d = randn(6, 5, seed=1), randn(6, 5, seed=2)
    mem = torch.empty(0, 5, dtype=F64) if memory == "empty" else None
    torch.testing.assert_close(cbns_loss(q, d, mem, temperature=0.1), in_batch_softmax_loss(q, d, temperature=0.1),
                               rtol=0, atol=1e-12)
    # logQ included: the in-batch softmax of the corrected logits, written out by hand
    logq = torch.log(torch.rand(6, generator=torch.Generator().manual_seed(3), dtype=F64))
    S = F.normalize(q, dim=-1) @ F.normalize(d, dim=-1).T
    expected = F.cross_entropy(S / 0.1 - logq[None, :], torch.arange(6))
    torch.testing.assert_close(cbns_loss(q, d, mem, temperature=0.1, logq=logq, memory_logq=torch.empty(0, dtype=F64)),
                               expected, rtol=0, atol=1e-12)


def test_memory_columns_follow_the_batch():
    q, d, m = randn(4, 3, seed=1), randn(4, 3, seed=2), randn(7, 3, seed=3)
    columns = F.normalize(torch.cat([d, m]), dim=-1)
    expected = F.cross_entropy(20.0 * F.normalize(q, dim=-1) @ columns.T, torch.arange(4))
    torch.testing.assert_close(cbns_loss(q, d, m), expected, rtol=0, atol=1e-12)


def test_uniform_q_is_a_no_op_and_skewed_q_lowers_popular_negatives():
    q, d, m = randn(5, 4, seed=1), randn(5, 4, seed=2), randn(9, 4, seed=3)
    plain = cbns_loss(q, d, m, temperature=0.1)
    const = math.log(0.01)
    uniform = cbns_loss(q, d, m, temperature=0.1, logq=torch.full((5,), const, dtype=F64),
                        memory_logq=torch.full((9,), const, dtype=F64))
    torch.testing.assert_close(uniform, plain, rtol=0, atol=1e-12)
    # make memory entry 0 popular: its logit drops by log q, so every row's loss on it shrinks
    memory_logq = torch.full((9,), const, dtype=F64)
    memory_logq[0] = math.log(0.5)
    skewed = cbns_loss(q, d, m, temperature=0.1, logq=torch.full((5,), const, dtype=F64), memory_logq=memory_logq)
    assert skewed < plain


def test_logq_is_subtracted_after_the_temperature_from_every_column():
    q, d, m = randn(3, 4, seed=1), randn(3, 4, seed=2), randn(2, 4, seed=3)
    logq, mlogq = randn(3, seed=4).abs().neg(), randn(2, seed=5).abs().neg()
    S = F.normalize(q, dim=-1) @ F.normalize(torch.cat([d, m]), dim=-1).T
    expected = F.cross_entropy(S / 0.05 - torch.cat([logq, mlogq])[None, :], torch.arange(3))
    torch.testing.assert_close(cbns_loss(q, d, m, temperature=0.05, logq=logq, memory_logq=mlogq), expected,
                               rtol=0, atol=1e-12)


def test_accidental_hits_masked_equal_deleted():
    q, d, m = randn(4, 3, seed=1), randn(4, 3, seed=2), randn(6, 3, seed=3)
    doc_ids = ids("d", 4)
    memory_ids = ["m0", "d2", "m2", "d0", "d2", "m5"]  # row 2's positive twice, row 0's once
    masked = cbns_loss(q, d, m, temperature=0.1, doc_ids=doc_ids, memory_ids=memory_ids)
    logits = F.normalize(q, dim=-1) @ F.normalize(torch.cat([d, m]), dim=-1).T / 0.1  # (4, 10)
    rows = []
    for i in range(4):
        keep = [j for j in range(10) if j < 4 or memory_ids[j - 4] != doc_ids[i]]
        rows.append(F.cross_entropy(logits[i, keep][None], torch.tensor([keep.index(i)])))
    torch.testing.assert_close(masked, torch.stack(rows).mean(), rtol=0, atol=1e-12)
    assert masked != cbns_loss(q, d, m, temperature=0.1)  # the hits did matter


def test_gradients_float64_and_none_for_the_memory():
    q, d, m = randn(4, 3, seed=1).requires_grad_(), randn(4, 3, seed=2).requires_grad_(), randn(5, 3, seed=3)
    logq, mlogq = torch.full((4,), -3.0, dtype=F64), torch.linspace(-5, -1, 5, dtype=F64)
    assert torch.autograd.gradcheck(
        lambda a, b: cbns_loss(a, b, m, temperature=0.2, logq=logq, memory_logq=mlogq,
                               doc_ids=ids("d", 4), memory_ids=["d1", "x", "y", "z", "d3"]), (q, d))
    cbns_loss(q, d, m).backward()
    assert m.grad is None and q.grad is not None and d.grad is not None


def test_loss_errors_name_the_fix():
    q, d, m = randn(4, 3, seed=1), randn(4, 3, seed=2), randn(5, 3, seed=3)
    with pytest.raises(ValueError, match="detached"):
        cbns_loss(q, d, m.clone().requires_grad_())
    with pytest.raises(ValueError, match=r"2-D \(M, D\)"):
        cbns_loss(q, d, m[0])
    with pytest.raises(ValueError, match="shared negatives must have shape"):
        cbns_loss(q, d, randn(5, 2))
    with pytest.raises(ValueError, match="together"):
        cbns_loss(q, d, m, logq=torch.zeros(4, dtype=F64))
    with pytest.raises(ValueError, match=r"shape \(5,\)"):
        cbns_loss(q, d, m, logq=torch.zeros(4, dtype=F64), memory_logq=torch.zeros(4, dtype=F64))
    with pytest.raises(ValueError, match="non-finite"):
        cbns_loss(q, d, m, logq=torch.full((4,), -math.inf, dtype=F64), memory_logq=torch.zeros(5, dtype=F64))
    with pytest.raises(ValueError, match="memory_ids"):
        cbns_loss(q, d, m, doc_ids=ids("d", 4))
    with pytest.raises(ValueError, match="one id per memory row"):
        cbns_loss(q, d, m, doc_ids=ids("d", 4), memory_ids=ids("m", 4))
    with pytest.raises(ValueError, match="without doc_ids"):
        cbns_loss(q, d, m, memory_ids=ids("m", 5))


def test_peer_pytorch_metric_learning_cross_batch_memory():
    """pytorch-metric-learning enqueues first and scores the anchors against the whole memory, current batch
    included (``enqueue_mask`` marks the documents). With every label unique that is our design: batch columns
    plus the memory as it was before the batch. Compared over several steps, past the point where it wraps."""
    pml_losses = pytest.importorskip("pytorch_metric_learning.losses")
    B, M, D, tau = 4, 8, 6, 0.1
    peer = pml_losses.CrossBatchMemory(pml_losses.NTXentLoss(temperature=tau), D, memory_size=B + M)
    bank = MemoryBank(M, D, dtype=F64)
    for step in range(6):
        q, d = randn(B, D, seed=10 + step), randn(B, D, seed=50 + step)
        labels = torch.arange(step * B, (step + 1) * B)  # unique ids: no accidental hits
        stored, stored_ids, _ = bank.tensors()
        ours = cbns_loss(q, d, stored, temperature=tau, doc_ids=labels.tolist(), memory_ids=stored_ids)
        theirs = peer(torch.cat([q, d]).float(), torch.cat([labels, labels]),
                      enqueue_mask=torch.cat([torch.zeros(B, dtype=torch.bool), torch.ones(B, dtype=torch.bool)]))
        torch.testing.assert_close(ours.float(), theirs, rtol=1e-5, atol=1e-5)
        bank.enqueue(d, labels.tolist())


# ---------------------------------------------------------------------------------------------------------
# the training step


@pytest.fixture(scope="module")
def setup():
    data = load_dataset("wordnet", "fast")
    return data, load_tokenizer(data, CFG.vocab_size)


def _batches(data, tok, settings, seed=0):
    return pair_batches(data, tok, cbns_sampler(data, settings, torch.Generator().manual_seed(seed)), CFG)


def test_step_scores_the_memory_before_the_batch_is_enqueued(setup):
    data, tok = setup
    settings = CBNSSettings(batch_size=4, memory_size=8, warmup_steps=1, momentum=None)
    seed_everything(0)
    model = make_encoder(CFG, tok).eval()
    step = CBNSStep(settings, 0.05, dim=model.dim)
    batches = _batches(data, tok, settings)
    first, second = next(batches), next(batches)
    with torch.no_grad():
        loss1 = step(model, first)  # warm-up: in-batch only, then enqueued
        assert len(step.probe.memory) == 4
        torch.testing.assert_close(loss1, in_batch_softmax_loss(model(**first["q"]), model(**first["d"]),
                                                                doc_ids=first["doc_ids"]))
        stored, stored_ids, _ = step.probe.memory.tensors()
        loss2 = step(model, second)
        expected = cbns_loss(model(**second["q"]), model(**second["d"]), stored, doc_ids=second["doc_ids"],
                             memory_ids=stored_ids)
    torch.testing.assert_close(loss2, expected)  # scored against the first batch only, not itself
    assert step.probe.memory.tensors()[1] == first["doc_ids"] + second["doc_ids"]


def test_warm_up_fills_the_memory_but_does_not_score_it(setup):
    data, tok = setup
    settings = CBNSSettings(batch_size=4, memory_size=8, warmup_steps=3, momentum=None)
    seed_everything(0)
    model = make_encoder(CFG, tok).eval()
    with_memory, without = CBNSStep(settings, 0.05, dim=model.dim), CBNSStep(
        dataclasses.replace(settings, memory_size=0), 0.05, dim=model.dim)
    with torch.no_grad():
        for k, batch in zip(range(4), _batches(data, tok, settings)):
            a, b = with_memory(model, batch), without(model, batch)
            if k < 3:
                torch.testing.assert_close(a, b)
            else:
                assert a > b  # more negatives for the same positives: a larger loss at these scores
    assert len(with_memory.probe.memory) == 8 and len(without.probe.memory) == 0


def test_momentum_documents_follow_the_trained_weights_slowly(setup):
    """MoCo's key encoder (He et al., 2020, §3.2): documents come from a copy without gradient, moved towards the
    trained weights by θ_k ← m·θ_k + (1 − m)·θ once per step; the queries' encoder gets every gradient."""
    data, tok = setup
    settings = CBNSSettings(batch_size=4, memory_size=8, warmup_steps=0, momentum=0.9)
    seed_everything(0)
    model = make_encoder(CFG, tok)
    step = CBNSStep(settings, 0.05, dim=model.dim)
    batches = _batches(data, tok, settings)
    step(model, next(batches)).backward()
    key = step.key_encoder
    assert key is not None and key is not model and all(not p.requires_grad for p in key.parameters())
    assert all(p.grad is None for p in key.parameters()) and all(p.grad is not None for p in model.parameters()
                                                                  if p.requires_grad and p.dim() > 1 and p.shape[0] > 8)
    before = [p.detach().clone() for p in key.parameters()]
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.5)
    step(model, next(batches))
    for k0, k1, live in zip(before, key.parameters(), model.parameters()):
        torch.testing.assert_close(k1, 0.9 * k0 + 0.1 * live.detach())
    with pytest.raises(ValueError, match="momentum must be None or in"):
        CBNSSettings(momentum=1.0)


def test_logq_sources(setup):
    data, tok = setup
    seed_everything(0)
    model = make_encoder(CFG, tok).eval()
    for source in ("estimator", "sampler"):
        settings = CBNSSettings(batch_size=8, memory_size=16, warmup_steps=0, logq=source, popularity_alpha=1.0)
        sampler = cbns_sampler(data, settings, torch.Generator().manual_seed(0))
        step = CBNSStep(settings, 0.05, dim=model.dim, sampler=sampler)
        with torch.no_grad():
            for _, batch in zip(range(3), pair_batches(data, tok, sampler, CFG)):
                assert torch.isfinite(step(model, batch))
        _, stored_ids, stored_logq = step.probe.memory.tensors()
        assert stored_logq is not None and stored_logq.shape == (16,) and (stored_logq <= 0).all()
        if source == "sampler":
            expected = torch.tensor([math.log(sampler.doc_probability(i)) for i in stored_ids])
            torch.testing.assert_close(stored_logq, expected)
    with pytest.raises(ValueError, match="popularity sampler"):
        CBNSSettings(logq="sampler", popularity_alpha=None)
    with pytest.raises(ValueError, match="logq must be one of"):
        CBNSSettings(logq="true")
    with pytest.raises(ValueError, match="memory_size must be an int >= 0"):
        CBNSSettings(memory_size=-1)


def test_benchmark_settings_compare_equal_candidates():
    small, large = BENCHMARK_SETTINGS["cbns"], BENCHMARK_SETTINGS["in_batch_large"]
    assert small.batch_size + small.memory_size == large.batch_size and large.memory_size == 0
    assert BENCHMARK_SETTINGS["cbns_logq"].logq == "estimator" and BENCHMARK_SETTINGS["cbns"].logq is None
    # each pair differs in one knob only
    for a, b, knob in [("cbns_skewed", "cbns_logq", "logq"), ("cbns", "cbns_skewed", "popularity_alpha"),
                       ("cbns", "cbns_live", "momentum"), ("cbns", "in_batch_small_momentum", "memory_size")]:
        fa, fb = dataclasses.asdict(BENCHMARK_SETTINGS[a]), dataclasses.asdict(BENCHMARK_SETTINGS[b])
        assert {k for k in fa if fa[k] != fb[k]} == {knob}, (a, b)


def test_training_learns_and_measures_drift(setup):
    data, tok = setup
    settings = CBNSSettings(batch_size=16, memory_size=48, warmup_steps=10, logq="estimator", popularity_alpha=1.0)
    seed_everything(0)
    before = evaluate(make_encoder(CFG, tok), data, "dev", tokenizer=tok)
    seed_everything(0)
    model, history, probe = train_cbns(CFG, data, tok, settings, steps=40, drift_every=10, progress=False)
    after = evaluate(model, data, "dev", tokenizer=tok)
    assert history.steps == 40 and after["mrr@10"] > before["mrr@10"]
    # with the memory scored the loss is over B + M columns: below chance, ln(B + M), once it has learned
    assert sum(history.losses[-5:]) / 5 < math.log(16 + 48) - 0.3
    assert [r.step for r in probe.drift] == [10, 20, 30, 40]
    for record in probe.drift:
        assert record.ages == sorted(record.ages) and all(-1.0 <= c <= 1.0 + 1e-6 for c in record.cosine)
    assert probe.drift[-1].ages == [0, 1, 2]  # 48 slots = the last three batches of 16
    assert len(probe.memory_hits) == 30 and probe.estimator is not None


def test_measure_step_leaves_the_model_alone(setup):
    data, tok = setup
    seed_everything(0)
    model = make_encoder(CFG, tok)
    weights = [p.detach().clone() for p in model.parameters()]
    small, large = (CBNSSettings(batch_size=b, memory_size=0, momentum=None) for b in (8, 32))
    costs = {s.batch_size: measure_step(model, CBNSStep(s, 0.05, dim=model.dim), next(_batches(data, tok, s)))
             for s in (small, large)}
    assert costs[32]["saved_bytes"] > 2 * costs[8]["saved_bytes"] > 0 and costs[8]["ms"] > 0
    assert all(torch.equal(a, b) for a, b in zip(weights, model.parameters()))
    assert all(p.grad is None for p in model.parameters())


def test_benchmark_method_records_configuration_and_cost(setup):
    from course_lib import benchmark as bench

    data, tok = setup
    result = bench.METHODS["cbns_logq"](CFG.replace(train_steps=3), data, tok)
    assert result.steps == 3 and 0 <= result.metrics["recall@10"] <= 1
    extra = result.extra
    assert extra["batch_size"] == 16 and extra["memory_size"] == 112 and extra["negatives_per_query"] == 127
    assert extra["logq"] == "estimator" and extra["momentum"] == 0.99 and extra["ms_per_step"] > 0
    assert extra["saved_activation_mb"] > 0


def test_seeds_are_summarized_as_mean_and_spread():
    from course_lib import benchmark as bench

    runs = [bench.MethodResult({k: v for k in bench.REPORTED}, train_seconds=t, steps=5, extra={"memory_size": 0})
            for v, t in ((0.2, 1.0), (0.4, 3.0))]
    entry = bench.summarize_seeds(runs, [0, 1])
    assert entry["recall@10"] == pytest.approx(0.3) and entry["train_seconds"] == 2.0 and entry["steps"] == 5
    assert entry["spread"]["recall@10"] == pytest.approx(math.sqrt(0.02)) and entry["seeds"] == [0, 1]
    assert [s["recall@10"] for s in entry["per_seed"]] == [0.2, 0.4] and entry["memory_size"] == 0
    single = bench.summarize_seeds(runs[:1], [0])
    assert "spread" not in single and single["recall@10"] == 0.2
    assert "generation" not in entry["per_seed"][0]
    gen = [bench.MethodResult({k: v for k in bench.REPORTED}, train_seconds=1.0, steps=5,
                              extra={"generation": {"start": "x", "token_f1_after": f, "bleu_after": f / 2}})
           for v, f in ((0.2, 0.1), (0.4, 0.3))]
    per_seed = bench.summarize_seeds(gen, [0, 1])["per_seed"]  # each seed's generation scores, not only the first's
    assert [p["generation"] for p in per_seed] == [{"token_f1_after": 0.1, "bleu_after": 0.05},
                                                   {"token_f1_after": 0.3, "bleu_after": 0.15}]
    hyb = [bench.MethodResult({k: v for k in bench.REPORTED}, train_seconds=1.0, steps=5,
                              extra={"test_hybrid": {"mrr@10": v + 0.1}}) for v in (0.2, 0.4)]
    per_seed = bench.summarize_seeds(hyb, [0, 1])["per_seed"]  # the recipe's hybrid, seed by seed
    assert [p["test_hybrid"]["mrr@10"] for p in per_seed] == pytest.approx([0.3, 0.5])
    assert "test_hybrid" not in entry["per_seed"][0]
    with pytest.raises(ValueError, match="seeds must be a positive int"):
        bench.run("fast", None, ["bm25"], seeds=0)


FAKE_HNSW = {"params": {"M": 1, "ef_construction": 1, "ef": 1}, "n_vectors": 1, "embeddings": "e",
             "recall_at_10_vs_exact": 1.0, "speedup_vs_exact": 1.0, "hnsw_ms_per_1k_queries": 1.0,
             "exact_ms_per_1k_queries": 1.0}


def _skip_hnsw(monkeypatch, bench):
    """benchmark.run without its HNSW measurement (and the untrained encoder it would embed for it)."""
    monkeypatch.setattr(bench, "measure_hnsw", lambda *a, **k: FAKE_HNSW)
    monkeypatch.setattr(bench, "run_untrained", lambda *a: bench.MethodResult({}, embeddings=((), None, None)))


def test_a_run_cut_short_by_its_wall_clock_cap_is_recorded_and_claims_nothing():
    """A busy machine must not decide an ordering: a seed that stopped at its cap is listed, results.md says so,
    and ``ordering`` gives no verdict (issue: FAST runs under load reached 122 of 300 steps)."""
    from course_lib import benchmark as bench

    runs = [bench.MethodResult({k: v for k in bench.REPORTED}, steps=s, stopped=why)
            for v, s, why in ((0.5, 300, ["max_steps"]), (0.1, 122, ["time_budget"]))]
    entry = bench.summarize_seeds(runs, [0, 1])
    assert entry["capped_seeds"] == [1] and [s["steps"] for s in entry["per_seed"]] == [300, 122]
    clean = bench.summarize_seeds([runs[0], runs[0]], [0, 1])
    assert "capped_seeds" not in clean
    worse = {**clean, "recall@10": 0.0, "spread": {"recall@10": 0.0}}
    assert bench.ordering(clean, worse)[1].startswith("above")
    assert "no ordering" in bench.ordering(entry, worse)[1] and "no ordering" in bench.ordering(worse, entry)[1]
    pre = bench.MethodResult({k: 0.1 for k in bench.REPORTED}, steps=300, stopped=["time_budget", "max_steps"])
    assert bench.summarize_seeds([pre], [0])["capped_seeds"] == [0]  # a capped pretraining counts too
    row = bench.to_markdown({"preset": "fast", "dataset": "wordnet", "n_docs": 1, "n_test_queries": 1, "machine": "m",
                             "date": "d", "methods": {"x": entry | {"train_seconds": 1.0}},
                             "hnsw": FAKE_HNSW})
    assert "(capped: seed 1)" in row


def test_the_benchmark_budgets_in_steps_with_wide_caps(tmp_path, monkeypatch):
    from course_lib import benchmark as bench

    seen = []

    def fake(cfg, data, tokenizer):
        seen.append((cfg.seed, cfg.train_seconds, cfg.pretrain_seconds))
        return bench.MethodResult({k: 0.5 for k in bench.REPORTED}, steps=0)

    monkeypatch.setitem(bench.METHODS, "fake", fake)
    _skip_hnsw(monkeypatch, bench)
    results = bench.run("fast", tmp_path, ["fake"])
    preset = bench.get_config("fast")
    assert seen == [(preset.seed, preset.train_seconds * bench.CAP_FACTOR, preset.pretrain_seconds * bench.CAP_FACTOR)]
    assert results["methods"]["fake"]["wall_clock_caps"]["train_seconds"] == preset.train_seconds * bench.CAP_FACTOR
    assert results["methods"]["fake"]["config"]["train_seconds"] == preset.train_seconds  # the preset's, as recorded
    load = results["methods"]["fake"]["load_average"]  # before / after: the context of the seconds recorded
    assert len(load) == 2 and all(isinstance(x, float) and x >= 0 for x in load)


@pytest.mark.parametrize("name", ["random_then_in_batch", "mlm_then_in_batch"])
def test_every_training_stage_reports_why_it_stopped(setup, name):
    """The stop reasons the benchmark checks for a cap: fine-tuning's, and pretraining's first when there is one."""
    from course_lib import benchmark as bench

    data, tok = setup
    result = bench.METHODS[name](CFG.replace(train_steps=2, pretrain_steps=2), data, tok)
    assert result.stopped == ["max_steps"] * (1 + (name == "mlm_then_in_batch"))
    capped = bench.METHODS[name](CFG.replace(train_steps=50, train_seconds=1e-9, pretrain_steps=2), data, tok)
    assert capped.stopped[-1] == "time_budget" and capped.steps == 1


def test_merge_keeps_methods_found_not_applicable(tmp_path, monkeypatch):
    from course_lib import benchmark as bench

    def refused(cfg, data, tokenizer):
        raise bench.NotApplicable("cannot read this corpus")

    monkeypatch.setitem(bench.METHODS, "refused", refused)
    monkeypatch.setitem(bench.METHODS, "fake", lambda cfg, data, tok: bench.MethodResult({k: 0.5 for k in bench.REPORTED}))
    _skip_hnsw(monkeypatch, bench)
    bench.run("fast", tmp_path, ["fake", "refused"])
    merged = bench.run("fast", tmp_path, ["fake"], merge=True)
    assert merged["not_applicable"] == {"refused": "cannot read this corpus"} and "fake" in merged["methods"]
    assert "Not run on this data set: refused" in (tmp_path / "results.md").read_text()

"""Every method of the course as a benchmark recipe: a function ``(cfg, data, tokenizer) -> MethodResult`` that
trains (or not) and scores on the test split, registered by name in ``METHODS``.

``course_lib.benchmark`` only runs what is registered here and reports; a new notebook adds its method to
``METHODS`` (a recipe whose training lives in the method's own module, as ``course_lib.cbns.train_cbns`` does,
needs only a line here).
"""

import dataclasses
from dataclasses import dataclass, field

import torch

from course_lib.baselines import BM25, lexical_tokenize, minilm_embeddings
from course_lib.cbns import BENCHMARK_SETTINGS, CBNSStep, cbns_sampler, train_cbns
from course_lib.generation import generate, generate_reranked
from course_lib.hardneg import HardNegSettings, train_hardneg
from course_lib.in_batch import pair_batches, pretrain_simcse, train_in_batch
from course_lib.index import ExactIndex
from course_lib.metrics import KS, corpus_bleu, embed_corpus, frequent_words, mean_token_f1, retrieval_metrics
from course_lib.models import encode, encoder_from_bert, make_encoder
from course_lib.retromae import pretrain, pretrain_texts
from course_lib.samplers import NoDuplicateBatchSampler
from course_lib.simbert import (
    held_out_pairs,
    make_pairs,
    make_simbert,
    simbert_from_pretrained,
    train_simbert,
)
from course_lib.train import measure_step
from course_lib.utils import seed_everything


class NotApplicable(Exception):
    """A method that cannot run on this data set (e.g. MiniLM on Chinese); the benchmark records why."""


GEN_FLOOR_WORDS = 6  # words in the "most frequent gloss words" generation floor


@dataclass
class MethodResult:
    """What a method returns: test metrics, training cost, and (for course encoders) the corpus and test-query
    embeddings, which the HNSW check reuses."""

    metrics: dict
    train_seconds: float = 0.0
    steps: int = 0
    embeddings: tuple | None = None  # (doc ids, doc embeddings (N, D), test-query embeddings (Q, D))
    extra: dict | None = None  # more figures for results.json (e.g. the pretraining's steps and seconds)
    stopped: list = field(default_factory=list)  # why each training stage stopped (History.stopped)


def _exact_metrics(doc_ids, doc_emb, q_emb, relevant) -> dict:
    index = ExactIndex(doc_emb.shape[1])
    index.add(doc_ids, doc_emb)
    ranked, _ = index.search(q_emb, max(KS))
    return retrieval_metrics(ranked, relevant, KS)


def run_bm25(cfg, data, tokenizer) -> MethodResult:
    """BM25 over the corpus (no training): over words for English, over characters for Chinese
    (``baselines.lexical_tokenize``)."""
    _, texts, relevant = data.split_items("test")
    tokenize = lexical_tokenize(data.corpus)
    ranked, _ = BM25(data.corpus, tokenize=tokenize).search(texts, max(KS))
    return MethodResult(retrieval_metrics(ranked, relevant, KS), extra={"tokenize": tokenize})


def run_untrained(cfg, data, tokenizer) -> MethodResult:
    """The course encoder with random weights: the floor every trained method must clear."""
    seed_everything(cfg.seed, cfg.num_threads)
    model = make_encoder(cfg, tokenizer)
    doc_ids, doc_emb = embed_corpus(model, tokenizer, data, max_length=cfg.max_doc_len)  # (N, D)
    _, texts, relevant = data.split_items("test")
    q_emb = encode(model, tokenizer, texts, max_length=cfg.max_query_len)  # (Q, D)
    return MethodResult(_exact_metrics(doc_ids, doc_emb, q_emb, relevant), embeddings=(doc_ids, doc_emb, q_emb))


def run_minilm(cfg, data, tokenizer) -> MethodResult:
    """all-MiniLM-L6-v2 zero-shot (its own tokenizer; embeddings cached on disk). Not applicable to a corpus its
    English vocabulary cannot read (``baselines.minilm_unknown_share`` above ``MINILM_MAX_UNKNOWN``)."""
    from course_lib.baselines import MINILM_MAX_UNKNOWN, minilm_unknown_share
    from course_lib.models import load_minilm

    share = minilm_unknown_share(load_minilm()[1], [data.corpus[i] for i in sorted(data.corpus)])
    if share > MINILM_MAX_UNKNOWN:
        raise NotApplicable(f"{share:.0%} of {data.name}'s corpus tokens are [UNK] for MiniLM's English vocabulary")
    doc_ids, doc_emb, q_emb = minilm_embeddings(data, "test")
    return MethodResult(_exact_metrics(doc_ids, doc_emb, q_emb, data.split_items("test")[2]))


def _trained_result(cfg, data, tokenizer, model, history) -> MethodResult:
    doc_ids, doc_emb = embed_corpus(model, tokenizer, data, max_length=cfg.max_doc_len)  # (N, D)
    _, texts, relevant = data.split_items("test")
    q_emb = encode(model, tokenizer, texts, max_length=cfg.max_query_len)  # (Q, D)
    return MethodResult(_exact_metrics(doc_ids, doc_emb, q_emb, relevant), history.train_seconds, history.steps,
                        embeddings=(doc_ids, doc_emb, q_emb), stopped=[history.stopped])


def run_in_batch(cfg, data, tokenizer) -> MethodResult:
    """Supervised in-batch softmax on the training pairs (no-duplicate batches), notebook 01."""
    seed_everything(cfg.seed, cfg.num_threads)
    model, history = train_in_batch(cfg, data, tokenizer, progress=False)
    return _trained_result(cfg, data, tokenizer, model, history)


def run_in_batch_hardneg(cfg, data, tokenizer) -> MethodResult:
    """In-batch softmax plus one natural hard negative per query (another sense of its word), notebook 01."""
    seed_everything(cfg.seed, cfg.num_threads)
    model, history = train_in_batch(cfg, data, tokenizer, n_hard=1, progress=False)
    return _trained_result(cfg, data, tokenizer, model, history)


def run_simcse_unsup(cfg, data, tokenizer) -> MethodResult:
    """Unsupervised SimCSE on the document texts only (no labels), notebook 01."""
    seed_everything(cfg.seed, cfg.num_threads)
    texts = [data.documents[i] for i in sorted(data.documents)]
    model, history = pretrain_simcse(cfg, texts, tokenizer, progress=False)
    return _trained_result(cfg, data, tokenizer, model, history)


def _pretrain(cfg, data, tokenizer, decoder: bool, pairs: bool = False):
    """Seeded RetroMAE (``decoder=True``) or plain MLM pretraining on ``pretrain_texts`` for
    ``cfg.pretrain_steps`` (``pairs``: MLM on pairs of texts, the rows SimBERT sees): the model and its figures
    for results.json."""
    seed_everything(cfg.seed, cfg.num_threads)
    pretrained, h_pre, parts = pretrain(cfg, pretrain_texts(data), tokenizer, decoder=decoder, progress=False,
                                        pairs=pairs)
    return pretrained, {"pretrain_steps": h_pre.steps, "pretrain_seconds": round(h_pre.train_seconds, 1),
                        "pretrain_stopped": h_pre.stopped,
                        "pretrain_final_losses": {k: sum(v[-50:]) / len(v[-50:]) for k, v in parts.items() if v}}


def _simbert_with_generation(cfg, data, tokenizer, model, start: str, n_gen: int, extra: dict,
                             directions: str = "both", pair_kind: str = "gloss") -> MethodResult:
    """Train ``model`` with SimBERT's recipe on ``make_pairs(data, pair_kind)`` and score generation: greedy
    outputs (no repeated bigram) for up to ``n_gen`` held-out test pairs of the same kind (example → gloss, or
    example → another example of its sense), before and after training, and after training also SimBERT's own
    decoding (``generate_reranked``: 8 samples from the top 5 tokens, the one closest to the input kept), by
    token F1 and corpus BLEU-4, next to two floors (copying the input; the most frequent target words), plus
    three examples."""
    src, ref = (column[:n_gen] for column in held_out_pairs(data, "test", None, cfg.seed, kind=pair_kind))
    before = generate(model, tokenizer, src, no_repeat_ngram_size=2)
    pairs = make_pairs(data, pair_kind)
    seed_everything(cfg.seed, cfg.num_threads)
    model, history, _ = train_simbert(cfg, data, tokenizer, pairs=pairs, model=model, directions=directions,
                                      progress=False)
    after = generate(model, tokenizer, src, no_repeat_ngram_size=2)
    reranked = generate_reranked(model, tokenizer, src, n_samples=8, top_k=5, no_repeat_ngram_size=2,
                                 generator=torch.Generator().manual_seed(cfg.seed))
    common = frequent_words([p.b for p in pairs], GEN_FLOOR_WORDS)
    scored = {"before": before, "after": after, "after_reranked": reranked, "copy_input": src,
              "frequent_words": [common] * len(ref)}
    result = _trained_result(cfg, data, tokenizer, model, history)
    result.train_seconds += extra.get("pretrain_seconds", 0.0)
    result.stopped = ([extra["pretrain_stopped"]] if "pretrain_stopped" in extra else []) + result.stopped
    result.extra = extra | {"generation": {
        "pairs": len(src),
        "start": start,
        "seq2seq_directions": directions,
        "pair_kind": pair_kind,
        "frequent_words": common,
        **{f"token_f1_{k}": round(mean_token_f1(v, ref), 4) for k, v in scored.items()},
        **{f"bleu_{k}": round(corpus_bleu(v, ref), 4) for k, v in scored.items()},
        "examples": [{"a": a, "reference": r, "before": b, "after": t}
                     for a, r, b, t in list(zip(src, ref, before, after))[:3]],
    }}
    return result


def run_simbert(cfg, data, tokenizer, n_gen: int = 500) -> MethodResult:
    """SimBERT from random weights: joint seq2seq + similarity training on (example, gloss) pairs, both
    directions, under the UniLM mask, at ``cfg.simbert_lr``; retrieval with the pooled [CLS] of a sentence
    alone, notebook 02. Generation is scored before and after training."""
    seed_everything(cfg.seed, cfg.num_threads)
    return _simbert_with_generation(cfg, data, tokenizer, make_simbert(cfg, tokenizer), "random weights", n_gen, {})


def run_simbert_example_to_gloss(cfg, data, tokenizer, n_gen: int = 500) -> MethodResult:
    """``simbert`` with the seq2seq loss on the example → gloss rows only: the gloss → example rows ask for one
    particular example sentence out of many a gloss could have (an ill-posed target), and generation is scored
    example → gloss. The similarity loss is unchanged."""
    seed_everything(cfg.seed, cfg.num_threads)
    return _simbert_with_generation(cfg, data, tokenizer, make_simbert(cfg, tokenizer), "random weights", n_gen, {},
                                    directions="a_to_b")


def run_simbert_example_pairs(cfg, data, tokenizer, n_gen: int = 500) -> MethodResult:
    """``simbert`` trained on pairs of two example sentences of one sense (``make_pairs(data, "example")``), the
    same register on both sides as the reference's paraphrase pairs, and scored on generating another example
    of a held-out sense. Retrieval is still example → gloss, which these pairs never show."""
    return _simbert_with_generation(cfg, data, tokenizer, make_simbert(cfg, tokenizer), "random weights", n_gen, {},
                                    pair_kind="example")


def run_mlm_then_simbert(cfg, data, tokenizer, n_gen: int = 500) -> MethodResult:
    """SimBERT from an MLM-pretrained BERT and LM head (``cfg.pretrain_steps`` of notebook 03's plain MLM), as
    the reference starts from pretrained BERT; fine-tuned at ``cfg.finetune_lr`` (a pretrained start takes the
    lr that collapses [CLS] from scratch). "Before" is the MLM start's generation; ``train_seconds`` counts
    both stages."""
    return _mlm_then_simbert(cfg, data, tokenizer, n_gen, pairs=False)


def run_mlm_pairs_then_simbert(cfg, data, tokenizer, n_gen: int = 500) -> MethodResult:
    """``mlm_then_simbert`` from an MLM start pretrained on *pairs* of texts (``[CLS] a [SEP] b [SEP]``, segment
    ids 0 and 1, up to ``max_query_len + max_doc_len`` tokens): the rows SimBERT trains on. A start pretrained on
    single texts never trained the segment-1 embedding nor the positions past ``max_doc_len``."""
    return _mlm_then_simbert(cfg, data, tokenizer, n_gen, pairs=True)


def _mlm_then_simbert(cfg, data, tokenizer, n_gen: int, pairs: bool) -> MethodResult:
    pretrained, extra = _pretrain(cfg, data, tokenizer, decoder=False, pairs=pairs)
    start = f"an MLM start{' on text pairs' if pairs else ''}, {extra['pretrain_steps']} pretraining steps"
    return _simbert_with_generation(cfg.replace(simbert_lr=cfg.finetune_lr), data, tokenizer,
                                    simbert_from_pretrained(pretrained), start, n_gen, extra | {"pretrain_pairs": pairs})


def _pretrain_then_in_batch(cfg, data, tokenizer, decoder: bool | None) -> MethodResult:
    """Pretrain (RetroMAE with ``decoder=True``, plain MLM with False, nothing with None) for
    ``cfg.pretrain_steps``, then the same in-batch fine-tuning from that start: [CLS] pooling at
    ``cfg.finetune_lr`` for ``cfg.train_steps``, notebook 03. ``train_seconds`` counts both stages."""
    bert, extra = None, {"pretrain_steps": 0, "pretrain_seconds": 0.0}
    if decoder is not None:
        pretrained, extra = _pretrain(cfg, data, tokenizer, decoder)
        bert = pretrained.bert
    seed_everything(cfg.seed, cfg.num_threads)
    ft_cfg = cfg.replace(pooling="cls", lr=cfg.finetune_lr)
    model, history = train_in_batch(ft_cfg, data, tokenizer, model=encoder_from_bert(ft_cfg, tokenizer, bert),
                                    progress=False)
    result = _trained_result(cfg, data, tokenizer, model, history)
    result.train_seconds += extra["pretrain_seconds"]
    result.stopped = ([extra["pretrain_stopped"]] if "pretrain_stopped" in extra else []) + result.stopped
    result.extra = extra
    return result


def run_random_then_in_batch(cfg, data, tokenizer) -> MethodResult:
    """Notebook 03's fine-tuning recipe ([CLS] pooling, ``cfg.finetune_lr``) from random weights: the baseline
    of the two pretrained starts."""
    return _pretrain_then_in_batch(cfg, data, tokenizer, decoder=None)


def run_mlm_then_in_batch(cfg, data, tokenizer) -> MethodResult:
    """Plain MLM pretraining (whole-word masking), then in-batch fine-tuning, notebook 03."""
    return _pretrain_then_in_batch(cfg, data, tokenizer, decoder=False)


def run_retromae_then_in_batch(cfg, data, tokenizer) -> MethodResult:
    """RetroMAE pretraining (MLM + one-layer enhanced decoder), then in-batch fine-tuning, notebook 03."""
    return _pretrain_then_in_batch(cfg, data, tokenizer, decoder=True)


def _cbns_method(settings):
    """A benchmark method for one CBNS configuration (``course_lib.cbns.BENCHMARK_SETTINGS``), notebook 04. Its
    results also record the configuration and the cost of one step (best-of-3 milliseconds and the activations
    saved for backward), measured on the run's first batch with a fresh memory filled to capacity."""

    def run_method(cfg, data, tokenizer) -> MethodResult:
        seed_everything(cfg.seed, cfg.num_threads)
        model, history, _ = train_cbns(cfg, data, tokenizer, settings, progress=False)
        result = _trained_result(cfg, data, tokenizer, model, history)
        sampler = cbns_sampler(data, settings, torch.Generator().manual_seed(cfg.seed))
        step = CBNSStep(dataclasses.replace(settings, warmup_steps=0), cfg.temperature, dim=model.dim, sampler=sampler)
        batches = pair_batches(data, tokenizer, sampler, cfg)
        with torch.no_grad():  # fill the memory (with its log q), as it is after the warm-up
            while len(step.probe.memory) < settings.memory_size:
                step(model, next(batches))
        cost = measure_step(model, step, next(batches))
        result.extra = settings.describe() | {"ms_per_step": round(cost["ms"], 1),
                                              "saved_activation_mb": round(cost["saved_bytes"] / 2**20, 2)}
        return result

    run_method.__doc__ = f"CBNS configuration {settings.describe()}, notebook 04."
    return run_method


HARDNEG_METHODS = {"no_mining": "none", "static_hardneg": "static", "ance_refresh": "ance", "dynamic_hardneg": "dynamic"}


def _hardneg_method(strategy: str):
    """A benchmark method for one hard-negative strategy (``course_lib.hardneg``), notebook 05: default
    ``HardNegSettings``, the preset's steps; results record the settings, the mining events and their seconds
    (already inside ``train_seconds``)."""

    def run_method(cfg, data, tokenizer) -> MethodResult:
        seed_everything(cfg.seed, cfg.num_threads)
        settings = HardNegSettings(strategy=strategy)
        model, history, source = train_hardneg(cfg, data, tokenizer, settings, progress=False)
        result = _trained_result(cfg, data, tokenizer, model, history)
        result.extra = settings.describe() | {
            "train_pairs": len(source.examples), "mining_pool": len(source.pool_ids),
            "mining_seconds": round(source.seconds, 1), "mining_events": source.log}
        return result

    run_method.__doc__ = f"Hard negatives, strategy {strategy!r} (course_lib.hardneg), notebook 05."
    return run_method


# GradCache (notebook 06): twice the largest batch whose plain loss keeps its activations (autograd's saved
# tensors, course_lib.gradcache.SavedTensorPeak) within ACTIVATION_BUDGET_MIB on the course encoder (B = 128 fits,
# 256 does not), at notebook 04's large-batch lr, for the preset's steps
GRADCACHE = {"batch_size": 256, "chunk_size": 32, "lr": 5e-4, "activation_budget_mib": 256}


def run_gradcache_large_batch(cfg, data, tokenizer) -> MethodResult:
    """In-batch softmax at B = 256 through GradCache, a batch the plain loss cannot fit in a 256 MiB activation
    budget (the peak of both on the first batch is recorded), notebook 06. Its wall-clock cap is 4x the preset's:
    a step costs about 4x a B = 64 step."""
    from course_lib.gradcache import measure_batch_cost, train_gradcache

    seed_everything(cfg.seed, cfg.num_threads)
    g = GRADCACHE
    run_cfg = cfg.replace(lr=g["lr"], train_seconds=cfg.train_seconds * 4)
    probe = make_encoder(run_cfg, tokenizer)
    first = next(pair_batches(data, tokenizer, NoDuplicateBatchSampler(data.train, g["batch_size"],
                                                                         torch.Generator().manual_seed(cfg.seed)), cfg))
    cost = {row["method"]: row for row in measure_batch_cost(probe, lambda b: first, [g["batch_size"]],
                                                            chunk_size=g["chunk_size"], repeats=1)}
    seed_everything(cfg.seed, cfg.num_threads)
    model, history = train_gradcache(run_cfg, data, tokenizer, batch_size=g["batch_size"], chunk_size=g["chunk_size"],
                                     progress=False)
    result = _trained_result(cfg, data, tokenizer, model, history)
    result.extra = dict(g) | {f"{m}_peak_mib": round(cost[m]["saved_peak_bytes"] / 2**20, 1) for m in cost}
    return result


def run_distributed_2proc(cfg, data, tokenizer) -> MethodResult:
    """In-batch softmax trained by two processes with DDP (``course_lib.distributed``, gloo on CPU), each holding
    half of the preset's batch and scoring every rank's candidates (differentiable gather), notebook 06: the same
    global batches and steps as ``in_batch``. WordNet only (the worker loads it)."""
    import tempfile

    from course_lib.distributed import launch

    if data.name != "wordnet":
        raise NotApplicable("the distributed worker trains on WordNet (course_lib.distributed)")
    with tempfile.TemporaryDirectory() as tmp:
        r = launch(2, ["--preset", cfg.preset, "--seed", str(cfg.seed), "--steps", str(cfg.train_steps), "--eval"],
                   tmp, timeout_s=max(600.0, cfg.train_seconds * 4), log=lambda line: None)
    return MethodResult(r["test"], train_seconds=r["train_seconds"], steps=r["steps"],
                        extra={k: r[k] for k in ("world_size", "per_rank_batch", "global_batch", "gather", "backend",
                                                 "threads_per_rank", "examples_per_s")})


def run_full_recipe(cfg, data, tokenizer) -> MethodResult:
    """``course_lib.recipe`` (pretraining → in-batch + filtered dynamic hard negatives → HNSW) with its default
    settings, notebook 07, at ``course_lib.recipe.BENCHMARK_BUDGET``'s step counts, fine-tuning cut to the
    recipe's ``max_passes`` over the training pairs where those are fewer (as a planned run is), with a dev curve
    of about five points. The run folder is kept under ``runs/benchmark/`` (a rerun resumes it); test metrics are
    exact search, as for every method here."""
    from pathlib import Path

    from course_lib.recipe import BENCHMARK_BUDGET, RecipeSettings, run_recipe
    from course_lib.recipe_plan import pass_cap, training_pairs

    settings = RecipeSettings()
    steps = dict(BENCHMARK_BUDGET[cfg.preset])
    steps["finetune_steps"] = min(steps["finetune_steps"],
                                  pass_cap(settings, len(training_pairs(data, settings.batch_size, cfg.seed))))
    every = settings.segment_steps * max(1, steps["finetune_steps"] // 5 // settings.segment_steps)
    out = Path(__file__).resolve().parent.parent / "runs" / "benchmark" / f"{data.name}_{cfg.preset}_seed{cfg.seed}"
    r = run_recipe(data, tokenizer, cfg, out, settings=settings, steps=steps, progress=False, curve_every=every)
    return MethodResult(r["metrics"]["test"], train_seconds=r["train_seconds"], steps=r["plan"]["finetune_steps"],
                        extra={"plan": r["plan"], "stage_seconds": r["seconds"], "mining_events": r["mining_events"],
                               "test_hnsw": r["metrics"]["test_hnsw"], "dev_curve": r["metrics"].get("dev_curve"),
                               "test_hybrid": r["metrics"].get("test_hybrid"), "hybrid": r["metrics"].get("hybrid")})


METHODS = {
    "bm25": run_bm25,
    "untrained": run_untrained,
    "minilm": run_minilm,
    "simcse_unsup": run_simcse_unsup,
    "in_batch_hardneg": run_in_batch_hardneg,
    "in_batch": run_in_batch,
    "simbert": run_simbert,
    "simbert_example_to_gloss": run_simbert_example_to_gloss,
    "simbert_example_pairs": run_simbert_example_pairs,
    "mlm_then_simbert": run_mlm_then_simbert,
    "mlm_pairs_then_simbert": run_mlm_pairs_then_simbert,
    "random_then_in_batch": run_random_then_in_batch,
    "mlm_then_in_batch": run_mlm_then_in_batch,
    "retromae_then_in_batch": run_retromae_then_in_batch,
} | {name: _cbns_method(settings) for name, settings in BENCHMARK_SETTINGS.items()} | {
    name: _hardneg_method(strategy) for name, strategy in HARDNEG_METHODS.items()} | {
    "gradcache_large_batch": run_gradcache_large_batch, "distributed_2proc": run_distributed_2proc,
    "full_recipe": run_full_recipe}

"""Train and evaluate every method under one budget, on one split, and write the results.

    python -m course_lib.benchmark --preset fast --out results/fast
    python -m course_lib.benchmark --preset full --out results/full --methods bm25 untrained
    python -m course_lib.benchmark --preset full --out results/full --methods simbert --merge

writes ``DIR/results.json``, ``DIR/results.md`` and ``DIR/recall_curves.png``. Each method is a function in
``METHODS`` that returns ``(metrics, train_seconds, steps)``; every later notebook adds its method here.
``--merge`` adds or replaces the named methods in an existing ``results.json`` of the same preset and keeps
the others. The ``hnsw`` entry measures HNSW against exact search on the ``in_batch`` encoder's embeddings of
the whole corpus (or, when ``in_batch`` does not run, the last course encoder that does).
"""

import argparse
import datetime
import json
import platform
import time
from dataclasses import dataclass
from pathlib import Path

import matplotlib.pyplot as plt
import torch

from course_lib.baselines import BM25, minilm_embeddings
from course_lib.config import get_config
from course_lib.data import load_dataset
from course_lib.in_batch import pretrain_simcse, train_in_batch
from course_lib.index import ExactIndex, HNSWIndex, recall_vs_exact
from course_lib.metrics import KS, corpus_bleu, embed_corpus, frequent_words, mean_token_f1, retrieval_metrics
from course_lib.models import encode, encoder_from_bert, make_encoder
from course_lib.plots import plot_recall_at_k
from course_lib.retromae import pretrain, pretrain_texts
from course_lib.simbert import (
    generate,
    held_out_pairs,
    make_pairs,
    make_simbert,
    simbert_from_pretrained,
    train_simbert,
)
from course_lib.tokenizer import load_tokenizer
from course_lib.utils import seed_everything

GEN_FLOOR_WORDS = 6  # words in the "most frequent gloss words" generation floor
REPORTED = ("recall@1", "recall@5", "recall@10", "recall@20", "recall@50", "recall@100", "mrr@10", "ndcg@10")


@dataclass
class MethodResult:
    """What a method returns: test metrics, training cost, and (for course encoders) the corpus and test-query
    embeddings, which the HNSW check reuses."""

    metrics: dict
    train_seconds: float = 0.0
    steps: int = 0
    embeddings: tuple | None = None  # (doc ids, doc embeddings (N, D), test-query embeddings (Q, D))
    extra: dict | None = None  # more figures for results.json (e.g. the pretraining's steps and seconds)


def _exact_metrics(doc_ids, doc_emb, q_emb, relevant) -> dict:
    index = ExactIndex(doc_emb.shape[1])
    index.add(doc_ids, doc_emb)
    ranked, _ = index.search(q_emb, max(KS))
    return retrieval_metrics(ranked, relevant, KS)


def run_bm25(cfg, data, tokenizer) -> MethodResult:
    """BM25 over the corpus (no training)."""
    _, texts, relevant = data.split_items("test")
    ranked, _ = BM25(data.corpus).search(texts, max(KS))
    return MethodResult(retrieval_metrics(ranked, relevant, KS))


def run_untrained(cfg, data, tokenizer) -> MethodResult:
    """The course encoder with random weights: the floor every trained method must clear."""
    seed_everything(cfg.seed, cfg.num_threads)
    model = make_encoder(cfg, tokenizer)
    doc_ids, doc_emb = embed_corpus(model, tokenizer, data, max_length=cfg.max_doc_len)  # (N, D)
    _, texts, relevant = data.split_items("test")
    q_emb = encode(model, tokenizer, texts, max_length=cfg.max_query_len)  # (Q, D)
    return MethodResult(_exact_metrics(doc_ids, doc_emb, q_emb, relevant), embeddings=(doc_ids, doc_emb, q_emb))


def run_minilm(cfg, data, tokenizer) -> MethodResult:
    """all-MiniLM-L6-v2 zero-shot (its own tokenizer; embeddings cached on disk)."""
    doc_ids, doc_emb, q_emb = minilm_embeddings(data, "test")
    return MethodResult(_exact_metrics(doc_ids, doc_emb, q_emb, data.split_items("test")[2]))


def _trained_result(cfg, data, tokenizer, model, history) -> MethodResult:
    doc_ids, doc_emb = embed_corpus(model, tokenizer, data, max_length=cfg.max_doc_len)  # (N, D)
    _, texts, relevant = data.split_items("test")
    q_emb = encode(model, tokenizer, texts, max_length=cfg.max_query_len)  # (Q, D)
    return MethodResult(_exact_metrics(doc_ids, doc_emb, q_emb, relevant), history.train_seconds, history.steps,
                        embeddings=(doc_ids, doc_emb, q_emb))


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


def _pretrain(cfg, data, tokenizer, decoder: bool):
    """Seeded RetroMAE (``decoder=True``) or plain MLM pretraining on ``pretrain_texts`` for
    ``cfg.pretrain_steps``: the model and its figures for results.json."""
    seed_everything(cfg.seed, cfg.num_threads)
    pretrained, h_pre, parts = pretrain(cfg, pretrain_texts(data), tokenizer, decoder=decoder, progress=False)
    return pretrained, {"pretrain_steps": h_pre.steps, "pretrain_seconds": round(h_pre.train_seconds, 1),
                        "pretrain_final_losses": {k: sum(v[-50:]) / len(v[-50:]) for k, v in parts.items() if v}}


def _simbert_with_generation(cfg, data, tokenizer, model, start: str, n_gen: int, extra: dict) -> MethodResult:
    """Train ``model`` with SimBERT's recipe and score generation: greedy outputs (no repeated bigram) for
    ``n_gen`` held-out test sentences, before and after training, by token F1 and corpus BLEU-4, next to two
    floors (copying the input; the most frequent gloss words), plus three examples."""
    src, ref = held_out_pairs(data, "test", min(n_gen, len(data.queries["test"])), cfg.seed)
    before = generate(model, tokenizer, src, no_repeat_ngram_size=2)
    pairs = make_pairs(data, "gloss")
    seed_everything(cfg.seed, cfg.num_threads)
    model, history, _ = train_simbert(cfg, data, tokenizer, pairs=pairs, model=model, progress=False)
    after = generate(model, tokenizer, src, no_repeat_ngram_size=2)
    common = frequent_words([p.b for p in pairs], GEN_FLOOR_WORDS)
    scored = {"before": before, "after": after, "copy_input": src, "frequent_words": [common] * len(ref)}
    result = _trained_result(cfg, data, tokenizer, model, history)
    result.train_seconds += extra.get("pretrain_seconds", 0.0)
    result.extra = extra | {"generation": {
        "pairs": len(src),
        "start": start,
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


def run_mlm_then_simbert(cfg, data, tokenizer, n_gen: int = 500) -> MethodResult:
    """SimBERT from an MLM-pretrained BERT and LM head (``cfg.pretrain_steps`` of notebook 03's plain MLM), as
    the reference starts from pretrained BERT; fine-tuned at ``cfg.finetune_lr`` (a pretrained start takes the
    lr that collapses [CLS] from scratch). "Before" is the MLM start's generation; ``train_seconds`` counts
    both stages."""
    pretrained, extra = _pretrain(cfg, data, tokenizer, decoder=False)
    return _simbert_with_generation(cfg.replace(simbert_lr=cfg.finetune_lr), data, tokenizer,
                                    simbert_from_pretrained(pretrained), f"an MLM start, {extra['pretrain_steps']} pretraining steps",
                                    n_gen, extra)


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


METHODS = {
    "bm25": run_bm25,
    "untrained": run_untrained,
    "minilm": run_minilm,
    "simcse_unsup": run_simcse_unsup,
    "in_batch_hardneg": run_in_batch_hardneg,
    "in_batch": run_in_batch,
    "simbert": run_simbert,
    "mlm_then_simbert": run_mlm_then_simbert,
    "random_then_in_batch": run_random_then_in_batch,
    "mlm_then_in_batch": run_mlm_then_in_batch,
    "retromae_then_in_batch": run_retromae_then_in_batch,
}
HNSW_ENCODER = "in_batch"  # whose corpus embeddings the HNSW check uses when it runs


def measure_hnsw(cfg, doc_ids, doc_emb, q_emb, source: str, repeats: int = 3) -> dict:
    """HNSW (M, ef_construction, ef from the preset) against exact search on a course encoder's embeddings of
    the whole corpus, queried with the test queries: recall@10 against exact, and the search speed-up."""
    exact = ExactIndex(doc_emb.shape[1])
    exact.add(doc_ids, doc_emb)
    t0 = time.perf_counter()
    hnsw = HNSWIndex(doc_emb.shape[1], M=cfg.hnsw_m, ef_construction=cfg.hnsw_ef_construction, ef=cfg.hnsw_ef_search,
                     seed=cfg.seed)  # one thread: a reproducible graph
    hnsw.add(doc_ids, doc_emb)
    build_s = time.perf_counter() - t0

    def best_time(index):
        times = []
        for _ in range(repeats):
            t = time.perf_counter()
            ranked, _ = index.search(q_emb, 10)
            times.append(time.perf_counter() - t)
        return min(times), ranked

    exact_s, exact_ids = best_time(exact)
    hnsw_s, hnsw_ids = best_time(hnsw)
    n_q = q_emb.shape[0]
    return {
        "recall_at_10_vs_exact": recall_vs_exact(hnsw_ids, exact_ids, 10),
        "speedup_vs_exact": exact_s / hnsw_s,
        "n_vectors": len(doc_ids),
        "n_queries": n_q,
        "exact_ms_per_1k_queries": 1e6 * exact_s / n_q,
        "hnsw_ms_per_1k_queries": 1e6 * hnsw_s / n_q,
        "build_seconds": build_s,
        "params": hnsw.params,
        "embeddings": source,
    }


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{cpu}, {torch.get_num_threads()} threads, torch {torch.__version__}, Python {platform.python_version()}"


def to_markdown(results: dict) -> str:
    cols = ["recall@1", "recall@10", "recall@100", "mrr@10", "ndcg@10", "train_seconds", "steps"]
    lines = [
        f"Preset `{results['preset']}` on `{results['dataset']}`: {results['n_docs']} documents, "
        f"{results['n_test_queries']} test queries. {results['machine']}; {results['date']}.",
        "",
        "| method | " + " | ".join(cols) + " |",
        "|---|" + "---:|" * len(cols),
    ]
    for name, m in results["methods"].items():
        cells = [f"{m[c]:.0f}" if c == "train_seconds" else f"{m[c]:.3f}" if isinstance(m[c], float) else str(m[c])
                 for c in cols]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    h = results["hnsw"]
    lines += ["", f"HNSW (M={h['params']['M']}, ef_construction={h['params']['ef_construction']}, ef={h['params']['ef']}) "
              f"on {h['n_vectors']} vectors ({h['embeddings']}): recall@10 vs exact {h['recall_at_10_vs_exact']:.4f}, "
              f"{h['speedup_vs_exact']:.1f}× the speed of exact search "
              f"({h['hnsw_ms_per_1k_queries']:.1f} vs {h['exact_ms_per_1k_queries']:.1f} ms per 1,000 queries)."]
    for name, m in results["methods"].items():
        if "generation" in m:
            g = m["generation"]
            lines += ["", f"Generation ({name}, from {g['start']}): greedy on {g['pairs']} held-out test pairs, "
                      f"token F1 {g['token_f1_before']:.3f} → {g['token_f1_after']:.3f}, BLEU-4 {g['bleu_before']:.3f} → "
                      f"{g['bleu_after']:.3f} (before → after training); floors (F1 / BLEU-4): copying the input "
                      f"{g['token_f1_copy_input']:.3f} / {g['bleu_copy_input']:.3f}, the most frequent gloss words "
                      f"(\"{g['frequent_words']}\") {g['token_f1_frequent_words']:.3f} / {g['bleu_frequent_words']:.3f}."]
    return "\n".join(lines) + "\n"


def run(preset: str, out: Path, methods: list[str] | None = None, merge: bool = False) -> dict:
    cfg = get_config(preset)
    seed_everything(cfg.seed, cfg.num_threads)
    names = methods or list(METHODS)
    unknown = [n for n in names if n not in METHODS]
    if unknown:
        raise ValueError(f"unknown method(s) {unknown}; known: {list(METHODS)}")
    previous = {}
    if merge and (out / "results.json").exists():
        previous = json.loads((out / "results.json").read_text())
        if previous.get("preset") != preset:
            raise ValueError(f"--merge: {out / 'results.json'} holds preset {previous.get('preset')!r}, not {preset!r}; "
                             "use another --out or drop --merge")
    data = load_dataset("wordnet", preset)
    tokenizer = load_tokenizer(data, cfg.vocab_size)
    results = {
        "preset": preset,
        "dataset": data.name,
        "n_docs": len(data.corpus),
        "n_test_queries": len(data.queries["test"]),
        "machine": machine(),
        "date": datetime.date.today().isoformat(),
        "methods": dict(previous.get("methods", {})),
    }
    hnsw_source = None  # the in_batch encoder's embeddings, else the last course encoder's
    for name in names:
        t0 = time.perf_counter()
        r = METHODS[name](cfg, data, tokenizer)
        results["methods"][name] = {k: r.metrics[k] for k in REPORTED} | {
            "train_seconds": round(r.train_seconds, 1), "steps": r.steps, "wall_seconds": round(time.perf_counter() - t0, 1)
        } | (r.extra or {})
        print(f"{name:>12}: R@1 {r.metrics['recall@1']:.3f}  R@10 {r.metrics['recall@10']:.3f}  "
              f"MRR@10 {r.metrics['mrr@10']:.3f}  ({time.perf_counter() - t0:.0f} s)", flush=True)
        if r.embeddings is not None and (hnsw_source is None or hnsw_source[0] != HNSW_ENCODER):
            hnsw_source = (name, r.embeddings)
    order = [n for n in METHODS if n in results["methods"]]  # the table follows METHODS' order
    results["methods"] = {n: results["methods"][n] for n in order}
    if "hnsw" in previous and (hnsw_source is None or hnsw_source[0] != HNSW_ENCODER):
        results["hnsw"] = previous["hnsw"]  # merging methods that do not re-measure it
    else:
        if hnsw_source is None:  # no course encoder among the methods run: use the untrained one
            hnsw_source = ("untrained", run_untrained(cfg, data, tokenizer).embeddings)
        name, (doc_ids, doc_emb, q_emb) = hnsw_source
        results["hnsw"] = measure_hnsw(cfg, doc_ids, doc_emb, q_emb, source=f"{name} course encoder")
    print(f"        hnsw: recall@10 vs exact {results['hnsw']['recall_at_10_vs_exact']:.4f}, "
          f"speed-up {results['hnsw']['speedup_vs_exact']:.1f}x on {results['hnsw']['n_vectors']} vectors")
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    write_report(results, out)
    return results


def write_report(results: dict, out: Path) -> None:
    """``results.md`` and ``recall_curves.png`` in ``out``, from a results dict (as in ``results.json``)."""
    (out / "results.md").write_text(to_markdown(results))
    fig = plot_recall_at_k(results["methods"], title=f"Recall@k, WordNet test split ({results['preset']})")
    fig.savefig(out / "recall_curves.png", dpi=120)
    plt.close(fig)


def replot(out: Path) -> None:
    """Redraw ``results.md`` and ``recall_curves.png`` from ``out/results.json`` without running anything."""
    path = out / "results.json"
    if not path.exists():
        raise FileNotFoundError(f"--replot needs {path}; run the benchmark with --out {out} first")
    write_report(json.loads(path.read_text()), out)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--preset", choices=["fast", "full"], default="fast")
    parser.add_argument("--out", type=Path, default=Path("results"))
    parser.add_argument("--methods", nargs="*", default=None, help=f"subset of {list(METHODS)}")
    parser.add_argument("--merge", action="store_true", help="keep the other methods of an existing results.json")
    parser.add_argument("--replot", action="store_true", help="only redraw results.md and the figure from results.json")
    args = parser.parse_args(argv)
    out = args.out / args.preset if args.out == Path("results") else args.out
    if args.replot:
        replot(out)
    else:
        run(args.preset, out, args.methods, args.merge)


if __name__ == "__main__":
    main()

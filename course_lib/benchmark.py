"""Train and evaluate every method under one budget, on one split, and write the results.

    python -m course_lib.benchmark --preset fast --out results/fast
    python -m course_lib.benchmark --preset full --out results/full --methods bm25 untrained
    python -m course_lib.benchmark --preset full --out results/full --methods simbert --merge
    python -m course_lib.benchmark --preset fast --out results/fast --methods cbns in_batch_small --seeds 3 --merge

writes ``DIR/results.json``, ``DIR/results.md`` and ``DIR/recall_curves.png``. The methods are the recipes
registered in ``course_lib.recipes.METHODS`` (each returns a ``MethodResult``: test metrics, training cost, extras).
``--merge`` adds or replaces the named methods in an existing ``results.json`` of the same preset and keeps
the others. ``--seeds N`` trains every trained method with seeds ``cfg.seed … cfg.seed + N − 1`` and reports
the mean, the sample standard deviation and each seed's metrics (methods without training run once);
``--first-seed K`` starts them at K, and with ``--merge`` pools them with the seeds already stored
(``course_lib.seeds``), so that a long method's seeds can run in separate calls. The
``hnsw`` entry measures HNSW against exact search on the ``in_batch`` encoder's embeddings of
the whole corpus (or, when ``in_batch`` does not run, the last course encoder that does).
"""

import argparse
import datetime
import json
import os
import platform
import subprocess
import time
from pathlib import Path

import matplotlib.pyplot as plt
import torch

from course_lib.config import get_config
from course_lib.data import load_dataset
from course_lib.index import ExactIndex, HNSWIndex, recall_vs_exact
from course_lib.plots import plot_recall_at_k
from course_lib.provenance import recorded_config
from course_lib.recipes import (  # noqa: F401  (re-exported)
    GEN_FLOOR_WORDS,
    METHODS,
    MethodResult,
    NotApplicable,
    run_untrained,
)
from course_lib.seeds import (  # noqa: F401  (REPORTED, mean_sd and ordering re-exported)
    REPORTED,
    check_poolable,
    generation_runs,
    mean_sd,
    mean_sd_of,
    ordering,
    pool_seeds,
    summarize_seeds,
)
from course_lib.tokenizer import load_tokenizer
from course_lib.utils import seed_everything

DATASET_TITLES = {"wordnet": "WordNet", "idioms_zh": "Chinese idioms"}
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


def git_commit() -> str:
    """The repository's HEAD commit (with "+changes" when tracked files other than the benchmark's own outputs
    under results/ have uncommitted changes), or "unknown"."""
    root = Path(__file__).resolve().parent.parent
    try:
        head = subprocess.run(["git", "rev-parse", "--short=10", "HEAD"], cwd=root, capture_output=True, text=True,
                              check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no", "--", ".", ":(exclude)results"],
                               cwd=root, capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return head + ("+changes" if dirty else "")


def _generation_line(name: str, m: dict) -> str:
    """A SimBERT run's generation scores: mean ± sample sd over the seeds whose rows carry them (``per_seed``),
    else the one run's figures, saying which; the floors and the frequent words are the first seed's."""
    g = m["generation"]
    runs = generation_runs(m)
    if len(runs) > 1:
        seeds = f"{len(runs)} seeds, mean ± sd"
    else:
        seeds = "one seed" if len(m.get("seeds", [0])) == 1 else f"seed {m['seeds'][0]} only (the other seeds unscored)"

    def cell(key: str) -> str:
        return mean_sd_of([r[key] for r in runs], equal_sd=False)

    kind = "example → example" if g.get("pair_kind") == "example" else "example → gloss"
    target = "target" if g.get("pair_kind") == "example" else "gloss"
    return (f"Generation ({name}, from {g['start']}), {seeds}: greedy on {g['pairs']} held-out test pairs ({kind}), "
            f"token F1 {cell('token_f1_before')} → {cell('token_f1_after')}, BLEU-4 {cell('bleu_before')} → "
            f"{cell('bleu_after')} (before → after training); floors (F1 / BLEU-4): copying the input "
            f"{cell('token_f1_copy_input')} / {cell('bleu_copy_input')}, the most frequent {target} words "
            f"(\"{g['frequent_words']}\") {cell('token_f1_frequent_words')} / {cell('bleu_frequent_words')}."
            + (f" SimBERT's own decoding (8 top-5 samples, the closest to the input kept): F1 "
               f"{cell('token_f1_after_reranked')}, BLEU-4 {cell('bleu_after_reranked')}."
               if "token_f1_after_reranked" in g else "")
            + (" Seq2seq loss on the example → gloss rows only." if g.get("seq2seq_directions") == "a_to_b" else ""))


def _hybrid_line(name: str, m: dict) -> str:
    """The recipe's last stage on test: its encoder fused with BM25 (``course_lib.hybrid``), each seed's run
    summarised as the table's rows are (mean ± sample sd when there are several)."""
    runs = [p["test_hybrid"] for p in m.get("per_seed", []) if "test_hybrid" in p] or [m["test_hybrid"]]
    keys = ("recall@1", "recall@10", "recall@100", "mrr@10")
    cells = [mean_sd_of([r[k] for r in runs]) for k in keys]
    seeds = f"{len(runs)} seeds, mean ± sd" if len(runs) > 1 else "one seed"
    return (f"Hybrid ({name}'s encoder fused with BM25, α chosen on the dev split by MRR@10; {seeds}): test "
            f"Recall@1 / Recall@10 / Recall@100 / MRR@10 {' / '.join(cells)}.")


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
        if "spread" in m:  # mean ± sample standard deviation over seeds
            cells = [f"{cell} ± {m['spread'][c]:.3f}" if c in m["spread"] else cell for c, cell in zip(cols, cells)]
            cells[-1] += f" ×{len(m['seeds'])} seeds"
        if m.get("capped_seeds"):
            cells[-1] += f" (capped: seed {', '.join(map(str, m['capped_seeds']))})"
        elif m.get("steps_unverified"):
            cells[-1] += " (steps unverified)"
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    lines += [f"\nNot run on this data set: {name} ({why})." for name, why in results.get("not_applicable", {}).items()]
    h = results["hnsw"]
    lines += ["", f"HNSW (M={h['params']['M']}, ef_construction={h['params']['ef_construction']}, ef={h['params']['ef']}) "
              f"on {h['n_vectors']} vectors ({h['embeddings']}): recall@10 vs exact {h['recall_at_10_vs_exact']:.4f}, "
              f"{h['speedup_vs_exact']:.1f}× the speed of exact search "
              f"({h['hnsw_ms_per_1k_queries']:.1f} vs {h['exact_ms_per_1k_queries']:.1f} ms per 1,000 queries)."]
    for name, m in results["methods"].items():
        if "generation" in m:
            lines += ["", _generation_line(name, m)]
    for name, m in results["methods"].items():
        if m.get("test_hybrid"):
            lines += ["", _hybrid_line(name, m)]
    memory_rows = [(n, m) for n, m in results["methods"].items() if "memory_size" in m]
    if memory_rows:
        lines += ["", "Memory-bank configurations (notebook 04, `course_lib.cbns.BENCHMARK_SETTINGS`; a skewed sampler "
                  "draws pairs ∝ (sense count + 1)^α; the cost of one step on this machine: best-of-3 forward + "
                  "backward, and the activations saved for backward):", ""]
        for name, m in memory_rows:
            sampler = "uniform, no duplicates" if m["popularity_alpha"] is None else f"α = {m['popularity_alpha']}"
            memory = f"memory M = {m['memory_size']} (after {m['warmup_steps']} warm-up steps)" if m["memory_size"] else "no memory"
            documents = "live documents" if m.get("momentum") is None else f"slow documents (momentum {m['momentum']})"
            lines.append(f"- {name}: B = {m['batch_size']}, {memory}, {m['negatives_per_query']} negatives per query, "
                         f"{documents}, logQ {m['logq'] or 'off'}, sampler {sampler}, lr {m.get('lr', '?')}; "
                         f"{m['ms_per_step']:.0f} ms and {m['saved_activation_mb']:.1f} MB per step")
    mined_rows = [(n, m) for n, m in results["methods"].items() if "strategy" in m]
    if mined_rows:
        lines += ["", "Hard-negative strategies (notebook 05, `course_lib.hardneg`; mining time is part of "
                  "train_seconds; the events are seed 0's):", ""]
        for name, m in mined_rows:
            events = ", ".join(f"{e['event']} at step {e['step']} ({e['seconds']:.0f} s"
                               + (f", {e['replaced']:,} negatives replaced)" if e["event"] == "check" else ")")
                               for e in m["mining_events"]) or "no mining"
            lines.append(f"- {name}: {m['strategy']}, {m['train_pairs']:,} pairs, pool {m['mining_pool']:,} documents, "
                         f"{m['warmup_steps']} in-batch warm-up steps; {m['mining_seconds']:.0f} s mining: {events}")
    return "\n".join(lines) + "\n"


RESULTS_DIR = Path(__file__).resolve().parent.parent / "results"
# The benchmark is budgeted in steps: its wall-clock caps are this many times the preset's (which guard a
# learner's slow machine), so that a busy machine slows a run down instead of cutting it short. A run that still
# stops at its cap is recorded (``capped_seeds``) and ``ordering`` claims nothing from it.
CAP_FACTOR = 10


def stored_json(preset: str, name: str, key: str, command: str) -> dict:
    """``key`` of the repository's ``results/<preset>/<name>``; a missing file raises with the ``command`` that
    makes it."""
    path = RESULTS_DIR / preset / name
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing; run {command}")
    return json.loads(path.read_text())[key]


def stored_results(preset: str) -> dict:
    """The methods of the repository's ``results/<preset>/results.json`` (each records its date and commit)."""
    return stored_json(preset, "results.json", "methods",
                       f"python -m course_lib.benchmark --preset {preset} --out results/{preset}")


def _check_pooling(previous: dict, names: list[str], cfg, seeds: list[int]) -> None:
    """``--first-seed`` with ``--merge``: refuse, before anything trains, what ``pool_seeds`` would refuse."""
    for name in names:
        stored = previous.get("methods", {}).get(name)
        if stored and stored.get("steps", 0) != 0:
            check_poolable(stored, recorded_config(cfg), seeds, cfg.seed, name=name)


def run(preset: str, out: Path, methods: list[str] | None = None, merge: bool = False, seeds: int = 1,
        dataset: str = "wordnet", first_seed: int | None = None) -> dict:
    """Run ``methods`` (all registered ones by default) with ``seeds`` seeds each, from ``first_seed`` (the
    preset's ``cfg.seed`` when None), and write ``out/results.json``, ``results.md`` and the figure. With
    ``merge``, the other methods of an existing ``results.json`` are kept; with ``merge`` and ``first_seed``, the
    new seeds are pooled with those stored for each method (``course_lib.seeds.pool_seeds``)."""
    if isinstance(seeds, bool) or not isinstance(seeds, int) or seeds < 1:
        raise ValueError(f"seeds must be a positive int, got {seeds!r}")
    if first_seed is not None and (isinstance(first_seed, bool) or not isinstance(first_seed, int) or first_seed < 0):
        raise ValueError(f"first_seed must be an int >= 0 (or None for the preset's seed), got {first_seed!r}")
    cfg = get_config(preset)
    base = cfg.seed if first_seed is None else first_seed
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
    data = load_dataset(dataset, preset)
    if previous and previous.get("dataset", "wordnet") != data.name:
        raise ValueError(f"--merge: {out / 'results.json'} holds data set {previous.get('dataset')!r}, not "
                         f"{data.name!r}; use another --out or drop --merge")
    if first_seed is not None and previous:
        _check_pooling(previous, names, cfg, list(range(base, base + seeds)))
    tokenizer = load_tokenizer(data, cfg.vocab_size)
    results = {
        "preset": preset,
        "dataset": data.name,
        "n_docs": len(data.corpus),
        "n_test_queries": len(data.queries["test"]),
        "machine": machine(),
        "date": datetime.date.today().isoformat(),
        "commit": git_commit(),
        "methods": dict(previous.get("methods", {})),
    }
    if previous.get("not_applicable"):  # --merge keeps what earlier runs found not applicable
        results["not_applicable"] = dict(previous["not_applicable"])
    hnsw_source = None  # the in_batch encoder's embeddings, else the last course encoder's
    caps = {"train_seconds": cfg.train_seconds * CAP_FACTOR, "pretrain_seconds": cfg.pretrain_seconds * CAP_FACTOR}
    for name in names:
        t0, load0 = time.perf_counter(), os.getloadavg()[0]
        runs = []
        for k in range(seeds):
            try:
                r = METHODS[name](cfg.replace(seed=base + k, **caps), data, tokenizer)
            except NotApplicable as why:
                print(f"{name:>12}: not applicable to {data.name}: {why}", flush=True)
                results.setdefault("not_applicable", {})[name] = str(why)
                break
            runs.append(r)
            print(f"{name:>12} (seed {base + k}): R@1 {r.metrics['recall@1']:.3f}  R@10 {r.metrics['recall@10']:.3f}  "
                  f"MRR@10 {r.metrics['mrr@10']:.3f}  ({time.perf_counter() - t0:.0f} s)", flush=True)
            if r.steps == 0:
                break  # nothing trained: another seed gives the same numbers
        if not runs:
            continue
        entry = summarize_seeds(runs, [base + k for k in range(len(runs))]) | {
            "wall_seconds": round(time.perf_counter() - t0, 1), "date": results["date"], "commit": results["commit"],
            "config": recorded_config(cfg), "wall_clock_caps": caps,
            # the 1-minute load average before and after: seconds measured beside other jobs read as upper bounds
            "load_average": [round(load0, 2), round(os.getloadavg()[0], 2)]}
        stored = results["methods"].get(name)
        if first_seed is not None and stored and stored.get("steps", 0) and runs[0].steps:
            entry = pool_seeds(stored, entry, cfg.seed)
        results["methods"][name] = entry
        r = runs[0]
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
    fig = plot_recall_at_k(results["methods"], title=f"Recall@k, {DATASET_TITLES.get(results.get('dataset', 'wordnet'), results.get('dataset'))} "
                                                        f"test split ({results['preset']})")
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
    parser.add_argument("--seeds", type=int, default=1, help="seeds per trained method (mean and spread reported)")
    parser.add_argument("--first-seed", type=int, default=None,
                        help="run seeds FIRST … FIRST+N-1 (default: the preset's seed); with --merge, pool them with "
                             "the seeds already stored for each method")
    parser.add_argument("--replot", action="store_true", help="only redraw results.md and the figure from results.json")
    parser.add_argument("--dataset", default="wordnet",
                        help="wordnet, idioms_zh, or a folder in data/README.md's layout (results/<preset> is "
                             "WordNet's; give other data sets their own --out)")
    args = parser.parse_args(argv)
    out = args.out / args.preset if args.out == Path("results") else args.out
    if args.replot:
        replot(out)
    else:
        if args.dataset != "wordnet" and args.out == Path("results"):
            parser.error(f"--dataset {args.dataset}: give it its own --out (e.g. results/{args.preset}_idioms_zh); "
                         f"results/{args.preset} holds WordNet's results")
        run(args.preset, out, args.methods, args.merge, args.seeds, args.dataset, args.first_seed)


if __name__ == "__main__":
    main()

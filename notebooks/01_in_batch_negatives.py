# %% [markdown]
# # 01 · In-batch negatives: a softmax over the batch
#
# **Papers.** DPR (Karpukhin et al., 2020, §3.2, in-batch negatives); Henderson et al. (2017), the multiple
# negatives ranking loss; SimCSE (Gao et al., 2021); Wang & Isola (2020), alignment and uniformity.
#
# **Idea.** In a batch of B (query, positive) pairs, every other query's positive is a free negative: score
# each query against all B documents and train with a softmax cross-entropy whose target is its own document.
#
# **What you will build:** a pairwise loss, then the in-batch softmax, both checked against `course_lib`; the
# B×B and B×B(1+k) logit matrices and a temperature widget; what duplicate positives (false negatives) do
# and how masking fixes them; the symmetric loss and the additive margin; training with recall against batch
# size and with hard negatives; SimCSE without labels; the alignment/uniformity picture; recall curves next
# to BM25 and MiniLM.
#
# **Run time:** FAST preset about 80 s on 2 CPU cores (plus about 50 s once if notebook 00 has not cached the
# MiniLM embeddings yet); full preset about 40 minutes on 2 cores (each evaluation encodes 117,659 documents).

# %%
import course_lib  # noqa: F401  first: sets OMP_WAIT_POLICY=PASSIVE before torch loads (2-core stalls otherwise)

# isort: split
import math

import numpy as np
import torch
import torch.nn.functional as F

from course_lib.baselines import BM25, minilm_embeddings
from course_lib.config import get_config
from course_lib.data import load_dataset
from course_lib.in_batch import pair_batches, pretrain_simcse, train_in_batch
from course_lib.index import ExactIndex
from course_lib.losses import in_batch_softmax_loss, similarity_logits
from course_lib.metrics import KS, alignment, evaluate, retrieval_metrics, uniformity
from course_lib.models import encode, make_encoder
from course_lib.plots import (
    plot_align_uniform,
    plot_curve,
    plot_loss_curve,
    plot_recall_at_k,
    plot_similarity_matrix,
)
from course_lib.samplers import NoDuplicateBatchSampler, RandomBatchSampler
from course_lib.tokenizer import load_tokenizer
from course_lib.utils import seed_everything
from course_lib.widgets import explore_temperature

# %% tags=["parameters"]
PRESET = None  # None: FAST unless the environment sets COURSE_FAST=0; or "fast" / "full"
SHOW_B = 8  # batch size of the small batch we draw
TEMPERATURE = 0.05  # τ; sentence-transformers calls 1/τ the "scale" (20 here)

# %%
cfg = get_config(PRESET)
generator = seed_everything(cfg.seed, cfg.num_threads)
FAST = cfg.preset == "fast"
SWEEP_STEPS = 15 if FAST else 300  # each run of the batch-size, hard-negative and SimCSE comparisons
STEPS = 2 * SWEEP_STEPS  # the main run, evaluated at SWEEP_STEPS and at the end
BATCH_SIZES = (8, 16, 32)  # the last one is the main run's batch size
data = load_dataset("wordnet", cfg.preset)
tokenizer = load_tokenizer(data, cfg.vocab_size)
print(cfg.preset, data)


def test_metrics(model):
    """Recall@k, MRR@10, nDCG@10 of an encoder on the test split (exact search over the corpus)."""
    return evaluate(model, data, "test", tokenizer=tokenizer, max_query_len=cfg.max_query_len, max_doc_len=cfg.max_doc_len)


# %% [markdown]
# ## 1. From a pairwise loss to the in-batch softmax
#
# Take a small batch of training pairs (no two share a positive) and embed it with an untrained encoder.

# %%
model = make_encoder(cfg, tokenizer)
sampler = NoDuplicateBatchSampler(data.train, SHOW_B, generator)
batch = next(pair_batches(data, tokenizer, sampler, cfg, n_hard=1, generator=generator))
with torch.no_grad():
    q = model(**batch["q"])  # (B, D) queries
    d = model(**batch["d"])  # (B, D) their positives
    n = model(**batch["n"])  # (B, D) one hard negative per query: another sense of its word
for text, doc in zip(tokenizer.batch_decode(batch["q"]["input_ids"], skip_special_tokens=True)[:3], batch["doc_ids"]):
    print(f"{text!r:60} → {data.documents[doc][:70]}")

# %% [markdown]
# **Pairwise.** The simplest contrastive loss gives each query one negative and asks that the positive score
# higher: ℓ = −log σ((s(q, d⁺) − s(q, d⁻)) / τ), with s the cosine similarity. Here the negative of query i is
# the positive of query i+1.

# %%
def pairwise_loss(q, d_pos, d_neg, tau):
    s_pos = F.cosine_similarity(q, d_pos)  # (B,)
    s_neg = F.cosine_similarity(q, d_neg)  # (B,)
    return -F.logsigmoid((s_pos - s_neg) / tau).mean()


print(f"pairwise loss: {pairwise_loss(q, d, d.roll(-1, 0), TEMPERATURE):.3f}")

# %% [markdown]
# **In-batch softmax.** Why one negative when the batch holds B − 1 of them? Score every query against every
# positive, S[i, j] = cos(q_i, d_j), and train row i to put its probability on column i:
# ℓ = (1/B) Σ_i −log softmax(S_i / τ)_i.

# %%
def my_in_batch_loss(q, d, tau):
    q, d = F.normalize(q, dim=-1), F.normalize(d, dim=-1)  # unit vectors: dot product = cosine
    logits = q @ d.T / tau  # (B, B); row i: query i against every positive
    return F.cross_entropy(logits, torch.arange(q.shape[0]))  # target of row i is column i


print(f"in-batch loss: {my_in_batch_loss(q, d, TEMPERATURE):.3f}  (ln B = {math.log(SHOW_B):.3f}: uniform guessing)")

# %% [markdown]
# **Checker.** Our loss equals `course_lib.losses.in_batch_softmax_loss`, and with B = 2 the softmax over two
# columns *is* the pairwise logistic loss (softmax of two logits = σ of their difference).
# `tests/test_losses.py` also checks the library against sentence-transformers' `MultipleNegativesRankingLoss`
# (scale = 1/τ) on the same embeddings.

# %%
torch.testing.assert_close(my_in_batch_loss(q, d, TEMPERATURE), in_batch_softmax_loss(q, d, temperature=TEMPERATURE))
pair_q, pair_d = q[:2], d[:2]
torch.testing.assert_close(my_in_batch_loss(pair_q, pair_d, TEMPERATURE),
                           pairwise_loss(pair_q, pair_d, pair_d.flip(0), TEMPERATURE))
print("inline loss == course_lib; B = 2 in-batch == pairwise")

# %% [markdown]
# ## 2. The logits matrix
#
# Each row is a query, each column a candidate; the boxed diagonal holds the positives. The right panel is the
# row softmax: the probability the loss assigns to each candidate. Untrained, the rows are nearly flat.

# %%
fig = plot_similarity_matrix(similarity_logits(q, d, temperature=TEMPERATURE), title="untrained encoder: B × B")

# %% [markdown]
# Hard negatives become extra columns shared by all rows: B × B(1 + k). Here k = 1, another sense of the
# query's word, right of the line; each row's own hard negative is boxed with dashes.

# %%
fig = plot_similarity_matrix(similarity_logits(q, d, n[:, None], temperature=TEMPERATURE),
                             title="untrained encoder: B × B(1+k), k = 1 natural hard negative")

# %% [markdown]
# ## 3. Temperature
#
# Dividing by τ sharpens the softmax. Cosine scores live in [−1, 1], so τ bounds how confident the loss can
# ever be: the best possible arrangement puts each positive at cosine 1 and the B − 1 other documents at
# cosine −1/(B − 1) (a regular simplex), which gives the floor ln(1 + (B − 1)·exp(−B / ((B − 1)τ))). At τ = 1
# that floor is barely a nat below ln B; at τ = 0.05 (scale 20) it is essentially 0, and a small score gap
# becomes a confident choice. Values in common use: SimCSE 0.05, sentence-transformers scale 20 (0.05),
# SimBERT scale 30, BGE 0.02 (each library's defaults).

# %%
q_unit, d_unit = F.normalize(q, dim=-1), F.normalize(d, dim=-1)
print(f"ln B = {math.log(SHOW_B):.3f}")
for tau in (0.01, 0.05, 0.2, 1.0):
    floor = math.log(1 + (SHOW_B - 1) * math.exp(-SHOW_B / ((SHOW_B - 1) * tau)))
    print(f"τ = {tau:<5} lowest possible loss {floor:.3f}   this untrained batch {in_batch_softmax_loss(q, d, temperature=tau):.3f}")

# %% [markdown]
# On the untrained batch a small τ does not help: the scores are noise, and a sharp softmax makes the noise
# confident, so at τ = 0.01 the loss is *above* ln B (wrong columns win with high probability). Temperature
# amplifies whatever the scores say; training has to make them say the right thing.

# %% [markdown]
# Move the slider to see the row softmax sharpen and flatten (the batch is fixed: nothing retrains).

# %%
temperature_explorer = explore_temperature(q, d, temperature=TEMPERATURE, title_prefix="untrained, ")

# %% [markdown]
# ## 4. False negatives: when the batch holds a duplicate
#
# If two queries in a batch share a positive document, each one's positive also appears as a "negative" in
# the other's row, and the loss pushes the query *away* from its own document. How often does that happen
# with plain random batches of 64 on our training pairs?

# %%
random_batches = RandomBatchSampler(data.train, 64, torch.Generator().manual_seed(cfg.seed))
dup_batches = 0
for _, idx in zip(range(300), random_batches):
    positives = [data.train[i].positive for i in idx]
    dup_batches += len(set(positives)) < len(positives)
print(f"random batches of 64 with at least one duplicate positive: {dup_batches / 300:.0%}")

# %% [markdown]
# Build a batch where query 3 shares query 0's positive. Masking the duplicate column (−∞ before the softmax,
# via `doc_ids`) must give exactly the loss of a batch where that column was deleted from row 0 and row 3.

# %%
d_dup, ids = d.clone(), list(batch["doc_ids"])
d_dup[3], ids[3] = d[0], ids[0]  # a duplicate: rows 0 and 3 now have the same positive
plain = in_batch_softmax_loss(q, d_dup, temperature=TEMPERATURE)
masked = in_batch_softmax_loss(q, d_dup, temperature=TEMPERATURE, doc_ids=ids)

logits = similarity_logits(q, d_dup, temperature=TEMPERATURE)  # (B, B)


def row_loss(i, drop=None):
    """cross-entropy of row i with column `drop` deleted"""
    cols = [j for j in range(SHOW_B) if j != drop]
    return F.cross_entropy(logits[i, cols][None], torch.tensor([cols.index(i)]))


dropped_col = {0: 3, 3: 0}  # row 0 loses the duplicate column 3, row 3 loses column 0
deleted = torch.stack([row_loss(i, dropped_col.get(i)) for i in range(SHOW_B)]).mean()
print(f"unmasked {plain:.4f}   masked {masked:.4f}   deleted {deleted:.4f}")

# %% [markdown]
# **Checker:** masking equals deleting. The no-duplicate sampler avoids the problem upstream: none of its
# batches holds a repeated positive (or a repeated query text). `train_in_batch` does both: no-duplicate
# batches, and `doc_ids` masking for any positive that returns as another query's hard negative.

# %%
torch.testing.assert_close(masked, deleted)
nodup = NoDuplicateBatchSampler(data.train, 64, torch.Generator().manual_seed(cfg.seed))
assert all(len({data.train[i].positive for i in idx}) == 64 for _, idx in zip(range(300), nodup))
print("masked == deleted; 300 no-duplicate batches hold no repeated positive")

# %% [markdown]
# ## 5. Two variants: the symmetric loss and the additive margin
#
# - **Symmetric** (sentence-transformers' MNSRL): also ask each *document* to pick its query among all
#   queries, ℓ = ½[CE(S/τ) + CE(Sᵀ/τ)].
# - **Additive margin** (PaddleNLP): subtract m from the positive's score before scaling, so a positive must
#   win by at least m: logits = (S − m·I)/τ. With m = 0.2 and τ = 0.05 that is m/τ = 4 nats taken from each
#   positive logit, which is why the untrained loss jumps.

# %%
S = q_unit @ d_unit.T  # (B, B) cosine similarities
labels = torch.arange(SHOW_B)
my_symmetric = 0.5 * (F.cross_entropy(S / TEMPERATURE, labels) + F.cross_entropy(S.T / TEMPERATURE, labels))
my_margin = F.cross_entropy((S - 0.2 * torch.eye(SHOW_B)) / TEMPERATURE, labels)
torch.testing.assert_close(my_symmetric, in_batch_softmax_loss(q, d, temperature=TEMPERATURE, symmetric=True))
torch.testing.assert_close(my_margin, in_batch_softmax_loss(q, d, temperature=TEMPERATURE, margin=0.2))
print(f"plain {in_batch_softmax_loss(q, d, temperature=TEMPERATURE):.3f}  symmetric {my_symmetric:.3f}  "
      f"margin 0.2 {my_margin:.3f}   (checked against course_lib)")

# %% [markdown]
# ## 6. Train
#
# The library's loop (`course_lib.in_batch.train_in_batch`): no-duplicate batches, AdamW, τ = 0.05, mean
# pooling, a fixed number of steps, evaluated halfway and at the end. (Every setting in this notebook is fixed
# in advance and nothing is tuned, so comparisons use the test split; to tune, use `data.queries["dev"]`.)

# %%
MAIN_B = BATCH_SIZES[-1]
seed_everything(cfg.seed, cfg.num_threads)
untrained = make_encoder(cfg, tokenizer)
before = test_metrics(untrained)
seed_everything(cfg.seed, cfg.num_threads)
trained, history = train_in_batch(cfg, data, tokenizer, steps=STEPS, batch_size=MAIN_B,
                                  eval_fn=test_metrics, eval_every=SWEEP_STEPS)
after = history.evals[-1]
fig = plot_loss_curve(history.losses, label=f"in-batch softmax, B = {MAIN_B}", reference=math.log(MAIN_B))
print(f"{history.steps} steps in {history.train_seconds:.0f} s; loss {np.mean(history.losses[:10]):.2f} → "
      f"{np.mean(history.losses[-10:]):.2f}")
for name, m in [("untrained", before)] + [(f"step {e['step']}", e) for e in history.evals]:
    print(f"{name:>10}: R@1 {m['recall@1']:.3f}  R@10 {m['recall@10']:.3f}  MRR@10 {m['mrr@10']:.3f}")

# %%
assert np.mean(history.losses[-10:]) < np.mean(history.losses[:10]), "the loss should fall"
assert after["recall@10"] > before["recall@10"] and after["mrr@10"] > before["mrr@10"]

# %% [markdown]
# The same small batch, after training: the diagonal stands out and the row softmax is peaked.

# %%
trained.eval()
with torch.no_grad():
    q_t, d_t, n_t = (trained(**batch[k]) for k in ("q", "d", "n"))
fig = plot_similarity_matrix(similarity_logits(q_t, d_t, n_t[:, None], temperature=TEMPERATURE),
                             title="trained encoder: B × B(1+k)")

# %% [markdown]
# ## 7. Batch size: more negatives per step
#
# Same number of steps, three batch sizes: a larger batch gives each query more negatives per
# update, and costs more per step. Note the confound: at equal steps the larger batch also *sees more
# training pairs*; exercise 4 separates the two. DPR's Table 3 compares at equal epochs and also finds that
# more in-batch negatives help (NQ dev top-20 69.1 with batch 8 → 73.0 with batch 128).

# %%
# the main run's evaluation at SWEEP_STEPS is the largest batch's point: same seed, constant learning rate,
# so its first SWEEP_STEPS steps are exactly a SWEEP_STEPS-step run
sweep = {MAIN_B: history.evals[0]}
ms_per_step = {MAIN_B: 1000 * history.train_seconds / history.steps}
for bs in BATCH_SIZES[:-1]:
    seed_everything(cfg.seed, cfg.num_threads)
    m_bs, h_bs = train_in_batch(cfg, data, tokenizer, steps=SWEEP_STEPS, batch_size=bs, progress=False)
    sweep[bs] = test_metrics(m_bs)
    ms_per_step[bs] = 1000 * h_bs.train_seconds / h_bs.steps
for bs in BATCH_SIZES:
    print(f"B = {bs:>3}: R@10 {sweep[bs]['recall@10']:.3f}  MRR@10 {sweep[bs]['mrr@10']:.3f}  "
          f"({SWEEP_STEPS} steps, {ms_per_step[bs]:.0f} ms per step)")
fig = plot_curve(BATCH_SIZES, {"recall@10": [sweep[b]["recall@10"] for b in BATCH_SIZES],
                               "MRR@10": [sweep[b]["mrr@10"] for b in BATCH_SIZES]},
                 xlabel="batch size B", ylabel="test metric", logx=True,
                 title=f"In-batch softmax, {SWEEP_STEPS} steps each")

# %%
assert sweep[BATCH_SIZES[-1]]["recall@10"] > sweep[BATCH_SIZES[0]]["recall@10"], "more in-batch negatives per step should help"

# %% [markdown]
# ## 8. Hard negatives as extra columns (supervised SimCSE)
#
# Supervised SimCSE (Gao et al., 2021, §4) adds one hard negative per query as an extra column; ours is a
# natural one, another sense of the query's word. Same steps and batch size as the B = 16 run above.

# %%
HB = BATCH_SIZES[1]
seed_everything(cfg.seed, cfg.num_threads)
m_hard, h_hard = train_in_batch(cfg, data, tokenizer, steps=SWEEP_STEPS, batch_size=HB, n_hard=1, progress=False)
hard = test_metrics(m_hard)
print(f"B = {HB} + 1 hard negative: R@10 {hard['recall@10']:.3f}  MRR@10 {hard['mrr@10']:.3f}   vs in-batch "
      f"only: R@10 {sweep[HB]['recall@10']:.3f}  MRR@10 {sweep[HB]['mrr@10']:.3f}  ({SWEEP_STEPS} steps each)")
verdict = "helped" if hard["mrr@10"] > sweep[HB]["mrr@10"] else "did not help"
print(f"at equal steps, the natural hard negative {verdict} (MRR@10 {hard['mrr@10'] - sweep[HB]['mrr@10']:+.3f}), "
      f"at {1000 * h_hard.train_seconds / h_hard.steps:.0f} ms per step vs {ms_per_step[HB]:.0f} without")

# %% [markdown]
# Each step now encodes B more documents, so a hard-negative step costs more than a plain one (printed
# above). And natural hard negatives are not always informative: WordNet splits senses finely, so some
# "negatives" are near-synonyms of the positive, in effect false negatives. The trained heatmap in section 6
# shows rows that put real probability on their own hard-negative column (right of the line). Whether the extra column pays for itself
# depends on the budget and on how the negatives are chosen: notebook 05 returns to this with mined negatives
# and false-negative filters.
#
# ## 9. SimCSE without labels: dropout as the only noise
#
# Unsupervised SimCSE passes each text *twice* through the encoder in train mode. Dropout draws a different
# mask per element each time, so the two embeddings differ slightly, and the pair (view 1, view 2) of the same
# text is the positive; the other texts in the batch are the negatives. No labels at all. We pretrain on the
# document texts (every gloss, the test ones included, as unsupervised pretraining may; no query is seen).

# %%
seed_everything(cfg.seed, cfg.num_threads)
noisy = make_encoder(cfg.replace(dropout=0.1), tokenizer)
tokens = {k: v[:4] for k, v in batch["d"].items()}
noisy.train()
view1, view2 = noisy(**tokens), noisy(**tokens)  # (4, D) each, two dropout masks
noisy.eval()
same1, same2 = noisy(**tokens), noisy(**tokens)
print(f"train mode: cos(view 1, view 2) = {F.cosine_similarity(view1, view2).min():.4f} … not 1; "
      f"eval mode: max |difference| = {(same1 - same2).abs().max():.1e}")
assert not torch.allclose(view1, view2) and torch.allclose(same1, same2)

# %%
seed_everything(cfg.seed, cfg.num_threads)
corpus_texts = [data.documents[i] for i in sorted(data.documents)]
simcse, h_simcse = pretrain_simcse(cfg, corpus_texts, tokenizer, steps=SWEEP_STEPS, batch_size=32, progress=False)
simcse_m = test_metrics(simcse)
print(f"SimCSE loss {np.mean(h_simcse.losses[:3]):.3f} → {np.mean(h_simcse.losses[-3:]):.4f} (ln B = {math.log(32):.2f}: "
      "no collapse; the task of matching a text to itself is easy)")
print(f"unsupervised SimCSE, {h_simcse.steps} steps: test R@10 {simcse_m['recall@10']:.3f}  MRR@10 {simcse_m['mrr@10']:.3f}"
      f"   vs untrained R@10 {before['recall@10']:.3f}  MRR@10 {before['mrr@10']:.3f}")

# %% [markdown]
# Matching a gloss to itself is not matching an example sentence to its gloss: unsupervised SimCSE barely
# moves retrieval here (compare the two lines above). What it does change is the *geometry*, as the next
# section shows.

# %% [markdown]
# ## 10. Alignment and uniformity
#
# Wang & Isola (2020) split what the contrastive loss does into two parts: **alignment**, positives close
# (ℓ_align = E‖f(q) − f(d⁺)‖²), and **uniformity**, embeddings spread over the sphere
# (ℓ_uniform = log E exp(−2‖f(x) − f(y)‖²)). Lower is better for both. We measure them on test (query, gold
# document) pairs and on 500 corpus documents.

# %%
_, test_texts, test_relevant = data.split_items("test")
gold_texts = [data.corpus[next(iter(rel))] for rel in test_relevant]
sample_docs = [data.corpus[i] for i in sorted(data.corpus)[:500]]
points, pairs = {}, {}
for name, enc in (("untrained", untrained), ("SimCSE unsup.", simcse), ("in-batch", trained)):
    qe = encode(enc, tokenizer, test_texts, max_length=cfg.max_query_len)  # (Q, D)
    ge = encode(enc, tokenizer, gold_texts, max_length=cfg.max_doc_len)  # (Q, D)
    pairs[name] = (qe, ge)
    points[name] = (alignment(qe, ge), uniformity(encode(enc, tokenizer, sample_docs, max_length=cfg.max_doc_len)))
    print(f"{name:>14}: align {points[name][0]:.3f}   uniform {points[name][1]:.3f}")
fig = plot_align_uniform(points)

# %% [markdown]
# The untrained encoder has near-perfect "alignment" only because it maps *everything* to about the same point
# (uniformity near 0, its worst): alignment means something only next to uniformity. Both trained encoders
# spread the embeddings out; SimCSE, which never sees a query, spreads them most, while supervised training
# keeps the (query, gold) pairs closer (lower ℓ_align). What retrieval needs is the *gap* between a query's
# similarity to its gold document and to a random one:

# %%
for name, (qe, ge) in pairs.items():
    gold_cos, random_cos = (qe * ge).sum(1).mean(), (qe * ge.roll(1, 0)).sum(1).mean()
    print(f"{name:>14}: mean cos(query, gold) {gold_cos:.3f}   mean cos(query, random doc) {random_cos:.3f}   "
          f"gap {gold_cos - random_cos:.3f}")
assert points["in-batch"][1] < points["untrained"][1], "training should spread the embeddings out"

# %% [markdown]
# ## 11. Against the baselines
#
# BM25 and all-MiniLM-L6-v2 on the same test split (notebook 00 introduced them; MiniLM's embeddings come from
# the on-disk cache when that notebook already ran).

# %%
doc_ids = sorted(data.corpus)
results = {"untrained": before, "SimCSE unsup.": simcse_m, f"in-batch ({STEPS} steps)": after}
bm25_ranked, _ = BM25(data.corpus).search(test_texts, max(KS))
results["bm25"] = retrieval_metrics(bm25_ranked, test_relevant, KS)
_, m_docs, m_queries = minilm_embeddings(data, "test")  # (N, 384), (Q, 384); cached on disk
m_index = ExactIndex(m_docs.shape[1])
m_index.add(doc_ids, m_docs)
m_ranked, _ = m_index.search(m_queries, max(KS))
results["minilm"] = retrieval_metrics(m_ranked, test_relevant, KS)
for name, m in results.items():
    print(f"{name:>22}: R@1 {m['recall@1']:.3f}  R@10 {m['recall@10']:.3f}  MRR@10 {m['mrr@10']:.3f}")
fig = plot_recall_at_k(results, title=f"Test split ({cfg.preset}, {len(test_texts)} queries)")

# %% [markdown]
# In FAST mode the tiny encoder trains for only the few seconds printed in section 6: it clears the untrained
# floor by a wide margin but stays below BM25, which benefits from the query containing the word itself, and
# below MiniLM, trained on a billion pairs. The full preset trains a larger
# encoder for longer; the README's results table has both.

# %% [markdown]
# ## Summary
#
# - The in-batch softmax scores every query against every positive in the batch: B − 1 free negatives per
#   query, and with B = 2 it is exactly the pairwise logistic loss.
# - Temperature sets how sharp the softmax is; with cosine scores τ = 1 cannot get far below ln B.
# - Duplicate positives in a batch are false negatives; mask them (equal to deleting them) or sample batches
#   without duplicates.
# - Larger batches give more negatives per step; hard negatives add columns at a cost per step.
# - SimCSE trains the same loss without labels, with dropout as the augmentation; it mostly improves
#   uniformity.
#
# ## Exercises
#
# 1. **Scale is 1/τ.** Compare the library with the peer implementation: `from sentence_transformers.losses
#    import MultipleNegativesRankingLoss`, build it with `scale=20` around any module
#    (`MultipleNegativesRankingLoss(torch.nn.Module(), scale=20)`), and call
#    `.compute_loss_from_embeddings([q, d], None)`. Check: `assert torch.isclose(peer, in_batch_softmax_loss(q, d, temperature=0.05))`.
# 2. **Collapse.** Make every query and document embedding the same vector. Check that the loss is exactly
#    ln B and the uniformity is 0: `assert abs(loss - math.log(SHOW_B)) < 1e-5 and abs(uniformity(same)) < 1e-6`.
# 3. **Too warm.** Train `SWEEP_STEPS` steps with `cfg.replace(temperature=1.0)` at B = 32. Check that its
#    training loss never gets near 0: `assert min(h_warm.losses) > 1.0` — why can it not (section 3)? Is its
#    MRR@10 above or below `sweep[32]`?
# 4. **Equal examples, not equal steps.** Train B = 8 for `4 * SWEEP_STEPS` steps, so it sees as many pairs
#    as B = 32 did in `SWEEP_STEPS`. Check it learned: `assert test_metrics(m8)["mrr@10"] > sweep[8]["mrr@10"]`.
#    Is it now as good as `sweep[32]`? What does that say about "more negatives per step"?
# 5. **Where the false negatives are.** Collect, for each training query text, the set of its positives
#    (`collections.defaultdict(set)`), and count the texts with two or more. Check: `assert n_ambiguous > 0`,
#    then read a few: are they really different senses?

# %% [markdown]
# # 06 · Scaling out: bigger batches than memory, negatives from other devices, search at scale
#
# **Papers.** GradCache: Gao, Zhang, Han & Callan, "Scaling Deep Contrastive Learning Batch Size under Memory
# Limited Setup" (2021, arXiv:2101.06983, §3); cross-device negatives: DPR (Karpukhin et al., 2020,
# arXiv:2004.04906, §3.2, in-batch negatives shared across GPUs) and SimCSE (Gao, Yao & Chen, 2021,
# arXiv:2104.08821), whose code gathers embeddings from every GPU; Conan-embedding's cross-GPU batch balance
# loss (Li et al., 2024, arXiv:2408.15710, §2.3); HNSW (Malkov & Yashunin, 2018, arXiv:1603.09320). The engine is
# PyTorch's own: `torch.distributed` (gloo on CPU, nccl on GPUs), launched by `torchrun`, with
# `DistributedDataParallel` (DDP).
#
# **Idea.** Notebooks 01 and 04 showed that more negatives per query help, and that a batch costs memory in
# proportion to its size. Three ways past one device's limit: (1) GradCache computes the loss of a batch
# larger than memory allows, chunk by chunk, with exactly the same gradients; (2) several processes (GPUs, or
# machines) each encode a slice of the batch and score every slice's documents; (3) Conan's batch balance loss
# spreads *negatives* over devices that share the queries. And once trained, the corpus must be searched:
# where does an approximate index start to pay?
#
# **What you will build:** step time and activation memory against batch size, measured; GradCache written
# inline and checked against the plain loss's gradients; a real two-process `torchrun` run launched from this
# notebook, its logs, and the gradient scale of the two gather patterns; recall against effective batch size;
# the batch balance loss checked against one-device InfoNCE; exact against HNSW search as the corpus grows to a
# million vectors; the commands for 8 GPUs or 2 machines.
#
# **Run time:** FAST preset about 60 s on 2 CPU cores (one two-process run); the full preset about 5 minutes.
# Terms (all-gather, DDP, rank, world size, GradCache, HNSW's M and ef) are in [GLOSSARY.md](../GLOSSARY.md).

# %%
import course_lib  # noqa: F401  first: sets OMP_WAIT_POLICY=PASSIVE before torch loads (2-core stalls otherwise)

# isort: split
import json
import shutil
import tempfile
from pathlib import Path

import matplotlib.pyplot as plt
import torch
import torch.nn.functional as F

from course_lib.baselines import minilm_embeddings
from course_lib.benchmark import RESULTS_DIR, mean_sd, ordering, stored_results
from course_lib.config import get_config
from course_lib.data import load_dataset
from course_lib.distributed import launch
from course_lib.gradcache import cached_in_batch_loss, measure_batch_cost
from course_lib.in_batch import pair_batches
from course_lib.losses import cross_gpu_balance_loss, in_batch_softmax_loss
from course_lib.models import make_encoder
from course_lib.plots import plot_series
from course_lib.samplers import NoDuplicateBatchSampler
from course_lib.search_scaling import crossover, plot_search_scaling, scaling_curve
from course_lib.tokenizer import load_tokenizer
from course_lib.utils import seed_everything

# %% tags=["parameters"]
PRESET = None  # None: FAST unless the environment sets COURSE_FAST=0; or "fast" / "full"
BATCH_SIZES = (32, 64, 128, 256)  # section 1: batches whose step time and activation memory are measured
CHUNK_SIZE = 32  # GradCache: texts encoded with a graph at a time
WORLD_SIZE = 2  # processes in the torchrun run (2 on a 2-core laptop; the number of GPUs on a server)
DIST_STEPS = None  # optimizer steps of the two-process run; None: 10 in FAST, 300 in full
DEVICES = 3  # section 5: simulated devices for the batch balance loss
SEARCH_SIZES = None  # section 6, computed here; None: 1,000 → 20,000 vectors in FAST, up to 100,000 in full

# %%
cfg = get_config(PRESET)
FAST = cfg.preset == "fast"
DIST_STEPS = DIST_STEPS if DIST_STEPS is not None else (10 if FAST else 300)
SEARCH_SIZES = SEARCH_SIZES or ((1_000, 4_000, 20_000) if FAST else (10_000, 30_000, 100_000))
generator = seed_everything(cfg.seed, cfg.num_threads)
data = load_dataset("wordnet", cfg.preset)
tokenizer = load_tokenizer(data, cfg.vocab_size)
sampler = NoDuplicateBatchSampler(data.train, max(BATCH_SIZES), torch.Generator().manual_seed(cfg.seed))
big_batch = next(pair_batches(data, tokenizer, sampler, cfg))  # the largest batch; smaller ones are its first rows


def first_rows(batch, b):
    """The first ``b`` pairs of a pair batch (tokens trimmed to those rows)."""
    return {"q": {k: v[:b] for k, v in batch["q"].items()}, "d": {k: v[:b] for k, v in batch["d"].items()},
            "doc_ids": batch["doc_ids"][:b]}


print(cfg.preset, data)

# %% [markdown]
# ## 1. The limit of one device
#
# The in-batch loss couples every query with every document of the batch, so the whole batch's activations must
# be alive at the backward pass: memory grows linearly with B. Below, the activations autograd keeps for the
# backward pass (its peak, `course_lib.gradcache.SavedTensorPeak`; on a GPU `torch.cuda.max_memory_allocated`
# says the same) and the step time of one forward + backward, for the plain loss and for GradCache.

# %%
model = make_encoder(cfg, tokenizer)
rows = measure_batch_cost(model, lambda b: first_rows(big_batch, b), list(BATCH_SIZES), chunk_size=CHUNK_SIZE,
                          repeats=1)
for r in rows:
    print(f"B={r['batch_size']:>4} {r['method']:>6}: {r['ms']:7.0f} ms, activations {r['saved_peak_bytes'] / 2**20:7.1f} MiB")
plain = {r["batch_size"]: r for r in rows if r["method"] == "plain"}
cached = {r["batch_size"]: r for r in rows if r["method"] == "cached"}
fig, axes = plt.subplots(1, 2, figsize=(11, 3.6))
for method, by_b in (("plain", plain), ("GradCache", cached)):
    axes[0].plot(list(by_b), [r["saved_peak_bytes"] / 2**20 for r in by_b.values()], marker="o", label=method)
    axes[1].plot(list(by_b), [r["ms"] for r in by_b.values()], marker="o", label=method)
axes[0].set(xlabel="batch size B", ylabel="peak activations (MiB)", title="memory", xscale="log")
axes[1].set(xlabel="batch size B", ylabel="ms per step", title="time (forward + backward)", xscale="log")
for ax in axes:
    ax.legend()
fig.tight_layout()
plt.show()
b_small, b_big = min(BATCH_SIZES), max(BATCH_SIZES)
growth = plain[b_big]["saved_peak_bytes"] / plain[b_small]["saved_peak_bytes"]
flat = cached[b_big]["saved_peak_bytes"] / cached[b_small]["saved_peak_bytes"]
print(f"B × {b_big // b_small}: plain activations × {growth:.1f}, GradCache's × {flat:.2f}; "
      f"GradCache's step costs × {cached[b_big]['ms'] / plain[b_big]['ms']:.2f} the plain one at B = {b_big}")
assert growth > 0.5 * (b_big / b_small) and flat < 1.5

# %% [markdown]
# ## 2. GradCache, written here
#
# The loss couples the rows, but the *encoder* does not: each text's embedding depends only on that text. So:
# (1) embed every chunk without a graph, remembering the random state before each chunk; (2) compute the full
# loss on those embeddings and backpropagate it only as far as the embeddings, ∂ℓ/∂e; (3) encode each chunk again
# with a graph, from the same random state, and backpropagate ⟨e, ∂ℓ/∂e⟩, whose gradient with respect to the
# weights is that chunk's share of ∂ℓ/∂θ (the chain rule). Only one chunk's graph is ever alive.

# %%
def my_cached_loss(model, batch, chunk, temperature):
    towers = [batch["q"], batch["d"]]
    n = towers[0]["input_ids"].shape[0]
    cached, states = [], []
    for tokens in towers:  # step 1
        parts = []
        for s in range(0, n, chunk):
            states.append(torch.get_rng_state())
            with torch.no_grad():
                parts.append(model(**{k: v[s : s + chunk] for k, v in tokens.items()}))  # (c, D)
        cached.append(torch.cat(parts).requires_grad_())  # (B, D), a leaf
    loss = in_batch_softmax_loss(cached[0], cached[1], temperature=temperature, doc_ids=batch["doc_ids"])  # step 2
    loss.backward()  # fills cached[i].grad = ∂ℓ/∂e, nothing else
    state_iter = iter(states)
    for tokens, e_cached in zip(towers, cached):  # step 3
        for s in range(0, n, chunk):
            after = torch.get_rng_state()
            torch.set_rng_state(next(state_iter))  # the same dropout masks as step 1
            e = model(**{k: v[s : s + chunk] for k, v in tokens.items()})  # (c, D), with a graph
            torch.set_rng_state(after)
            (e * e_cached.grad[s : s + chunk]).sum().backward()
    return loss.detach()


# %% [markdown]
# **Checker.** Against something computed another way: the plain loss, one graph for the whole batch, and its
# `backward()`. The gradients must agree to float precision.

# %%
def plain_gradients(model, batch):
    model.zero_grad(set_to_none=True)
    q, d = model(**batch["q"]), model(**batch["d"])  # (B, D) each, one graph for the whole batch
    in_batch_softmax_loss(q, d, temperature=cfg.temperature, doc_ids=batch["doc_ids"]).backward()
    return {n: p.grad.clone() for n, p in model.named_parameters()}


check_batch = first_rows(big_batch, 96)
model.train()  # dropout is 0 in the presets: the plain batch and the chunks then compute the same function
want = plain_gradients(model, check_batch)
model.zero_grad(set_to_none=True)
my_cached_loss(model, check_batch, CHUNK_SIZE, cfg.temperature)
mine = {n: p.grad.clone() for n, p in model.named_parameters()}
scale = max(g.abs().max() for g in want.values())
gap = max((mine[n] - want[n]).abs().max() for n in want) / scale
print(f"inline GradCache vs the plain loss: largest gradient difference {gap:.1e} × the largest gradient")
assert gap < 1e-5

# %% [markdown]
# With dropout on, the two passes of step 1 and step 3 must draw the same masks: that is what the saved random
# state is for. Forget to restore it (`replay_rng=False` in `course_lib.gradcache`, the mistake luyug/GC-DPR
# issue 12 reports) and the cached gradients belong to other embeddings than the ones backpropagated.

# %%
dropout_model = make_encoder(cfg.replace(dropout=0.1), tokenizer).train()
runs = {}
for name, replay in (("inline", None), ("course_lib", True), ("course_lib, no replay", False)):
    torch.manual_seed(1)
    dropout_model.zero_grad(set_to_none=True)
    if replay is None:
        my_cached_loss(dropout_model, check_batch, CHUNK_SIZE, cfg.temperature)
    else:
        cached_in_batch_loss(dropout_model, check_batch["q"], check_batch["d"], chunk_size=CHUNK_SIZE,
                             temperature=cfg.temperature, doc_ids=check_batch["doc_ids"], replay_rng=replay)
    runs[name] = torch.cat([p.grad.flatten() for p in dropout_model.parameters()])
for name in ("course_lib", "course_lib, no replay"):
    rel = (runs[name] - runs["inline"]).abs().max() / runs["inline"].abs().max()
    print(f"dropout 0.1: {name:>22} vs inline: {rel:.1e} × the largest gradient")
assert (runs["course_lib"] - runs["inline"]).abs().max() < 1e-5 * runs["inline"].abs().max()
assert (runs["course_lib, no replay"] - runs["inline"]).abs().max() > 1e-2 * runs["inline"].abs().max()

# %% [markdown]
# ## 3. Negatives from other processes: a real `torchrun` run
#
# `course_lib.distributed` is a worker module: `python -m torch.distributed.run --nproc_per_node=2 -m
# course_lib.distributed ...` starts two processes (*ranks*); each joins a process group (gloo on CPU), wraps the
# encoder in DDP, takes its half of every global batch, and computes `cross_device_in_batch_loss`: its own
# queries against the documents of *every* rank, gathered with an all-gather, the labels offset by the rank's
# position. `launch` runs that command from Python (a function defined in a notebook cannot be pickled into
# worker processes, so the code lives in a module), streams the log, and returns the metrics.
#
# Two ways to gather, and their gradients. With `torch.distributed.nn.all_gather` the gathered documents keep
# their graph, gradients flow back to the rank that encoded them, and DDP's average over ranks is the gradient
# of the single-process loss over the whole batch (sentence-transformers' `gather_across_devices`). DPR, SimCSE
# and FlagEmbedding gather *detached* copies and put the local slice back: every rank computes the whole loss,
# but gets gradients only through its own rows, so after DDP's average the gradient is 1/W of the global one.
# `--grad-check` saves both, for one batch.
#
# **Checker.** One process, here, recomputes the loss of the whole global batch and its gradient; the
# differentiable run's DDP gradient must equal it, and the detached run's must be exactly 1/W of it.

# %%
run_dir = Path(tempfile.mkdtemp(prefix="course06_"))
metrics = launch(WORLD_SIZE, ["--preset", cfg.preset, "--grad-check", "--steps", str(DIST_STEPS), "--log-every", "5"]
                 + (["--eval"] if not FAST else []), run_dir, timeout_s=600)
print(json.dumps({k: metrics[k] for k in ("world_size", "per_rank_batch", "global_batch", "backend",
                                          "threads_per_rank", "steps", "examples_per_s")}, indent=1))

# %%
saved = torch.load(run_dir / "grad_check.pt", weights_only=True)
single = make_encoder(cfg, tokenizer)
single.load_state_dict(saved["state"])
single.eval()  # the worker's check runs without dropout, so one process can redo it exactly
whole = next(pair_batches(data, tokenizer, [saved["indices"]["even"]], cfg))
want = plain_gradients(single, whole)
scale = max(g.abs().max() for g in want.values())
for gather in ("differentiable", "detached"):
    got = saved["results"][f"{gather}/even"]["grads"]
    ratio = sum((got[n] * want[n]).sum() for n in want) / sum((want[n] ** 2).sum() for n in want)
    err = max((got[n] - ratio * want[n]).abs().max() for n in want) / scale
    print(f"{gather:>14} gather: DDP gradient = {ratio:.4f} × the one-process gradient (residual {err:.1e})")
    assert abs(ratio - (1.0 if gather == "differentiable" else 1.0 / WORLD_SIZE)) < 1e-3 and err < 1e-4

# %% [markdown]
# AdamW divides each gradient by its running scale, so a constant 1/W mostly washes out; plain SGD, gradient
# clipping and loss-scale logic do not: know which pattern your code uses.
#
# ## 4. Recall against effective batch size
#
# Bigger batches, reached three ways: one process (notebooks 01 and 04), GradCache (B = 256 in the memory of a
# 32-text chunk), and two processes (DDP, each with half the batch). The benchmark trains each for the preset's
# steps (`python -m course_lib.benchmark --preset fast --methods in_batch_small in_batch in_batch_large
# gradcache_large_batch distributed_2proc --seeds 3 --merge`); means ± sd over seeds where there are several.

# %%
stored = stored_results(cfg.preset)
points = {"in_batch_small": 16, "in_batch": 64, "in_batch_large": 128, "gradcache_large_batch": 256,
          "distributed_2proc": 64}
missing = [n for n in points if n not in stored]
assert not missing, f"results/{cfg.preset}/results.json lacks {missing}: run the benchmark command above"
for name, b in points.items():
    m = stored[name]
    print(f"{name:>22} (B = {b:>3}, lr {m.get('lr', cfg.lr)}): R@10 {mean_sd(m, 'recall@10')}, "
          f"{m['train_seconds']:.0f} s; commit {m.get('commit', '?')}, {m.get('date', '?')}")
one_process = ["in_batch_small", "in_batch_large"]  # the same lr (5e-4), B = 16 and 128
fig = plot_series({"one process, lr 5e-4": ([points[n] for n in one_process], [stored[n]["recall@10"] for n in one_process]),
                   "GradCache, lr 5e-4": ([points["gradcache_large_batch"]], [stored["gradcache_large_batch"]["recall@10"]]),
                   "2 processes (DDP), preset lr": ([64], [stored["distributed_2proc"]["recall@10"]]),
                   "one process, preset lr": ([64], [stored["in_batch"]["recall@10"]])},
                  "effective batch size B", "test recall@10", f"Recall@10 against batch size ({cfg.preset})")
fig.axes[0].set_xscale("log", base=2)
plt.show()
for a, b in (("gradcache_large_batch", "in_batch_large"), ("distributed_2proc", "in_batch")):
    gap, verdict = ordering(stored[a], stored[b])
    print(f"{a} vs {b}: R@10 {gap:+.3f}, {verdict}")

# %% [markdown]
# Two processes with half the batch each train on the same global batches as one process with the whole batch;
# with the differentiable gather their gradients are the same (section 3), so their recall should match
# `in_batch`'s within the seeds' spread: the verdict above says whether it does.
#
# ## 5. Conan's cross-GPU batch balance loss
#
# Conan-embedding trains with devices that hold the *same* queries and positives but *different* negatives, and
# sums the negatives of every device into one softmax denominator:
# −log e^{s⁺/τ} / (e^{s⁺/τ} + Σ_devices Σ_j e^{s(q, n_j)/τ}). So N devices multiply the negatives per query by N
# at the cost of one batch of queries.
#
# **Checker.** With simulated devices, `course_lib.losses.cross_gpu_balance_loss` must equal one-device InfoNCE
# over the union of all devices' negatives, written out here as a cross-entropy whose column 0 is the positive.

# %%
g = torch.Generator().manual_seed(0)
q = F.normalize(torch.randn(8, 16, generator=g), dim=-1).requires_grad_()  # (n, D): the shared queries
pos = F.normalize(torch.randn(8, 16, generator=g), dim=-1)  # (n, D): the shared positives
per_device = [F.normalize(torch.randn(8, 5, 16, generator=g), dim=-1) for _ in range(DEVICES)]  # (n, K, D) each
cbb = cross_gpu_balance_loss(q, pos, per_device, temperature=0.05)
union = torch.cat(per_device, dim=1)  # (n, N·K, D)
logits = torch.cat([(q * pos).sum(-1, keepdim=True), torch.einsum("nd,nkd->nk", q, union)], dim=1) / 0.05
reference = F.cross_entropy(logits, torch.zeros(8, dtype=torch.long))  # column 0 is the positive
print(f"{DEVICES} devices × 5 negatives: CBB {cbb.item():.6f}, InfoNCE over the union {reference.item():.6f}")
assert torch.allclose(cbb, reference, rtol=1e-6)

# %% [markdown]
# ## 6. Search at scale: when does an approximate index pay?
#
# Exact search is one matrix product: fast while the corpus is small, linear in its size. HNSW's cost grows
# roughly with log N, but it misses a few neighbours and must be built. Here a small curve, computed now on
# MiniLM's embeddings of this preset's corpus (cached by notebook 00; grown beyond the real corpus with perturbed
# copies: each copy is a real vector plus Gaussian noise scaled to its nearest-neighbour distance, renormalised),
# then the stored curve of the full preset on the in-batch encoder's embeddings, up to a million vectors (`python -m course_lib.search_scaling --preset full --out
# results/full/search_scaling.json`).

# %%
_, minilm_docs, minilm_queries = minilm_embeddings(data, "test")  # (N, 384), (Q, 384)
small = scaling_curve(list(SEARCH_SIZES), minilm_docs, minilm_queries[:200], M=cfg.hnsw_m, ef_construction=64, efs=(16, 32, 64, 128),
                      ef=cfg.hnsw_ef_search, repeats=1, log=print)
print("crossover (first size where HNSW is faster at recall@10 ≥ 0.98 of exact):", crossover(small))
fig = plot_search_scaling(small)
fig.suptitle(f"computed here: MiniLM embeddings of the {cfg.preset} corpus, grown by perturbed copies")
plt.show()
stored_path = RESULTS_DIR / "full" / "search_scaling.json"
if not stored_path.exists():  # said, not hidden: the full curve takes 20 minutes on 2 idle cores
    print(f"{stored_path} is not in this checkout yet: python -m course_lib.search_scaling --preset full "
          f"--out {stored_path.relative_to(RESULTS_DIR.parent)} (20 minutes on 2 idle cores, plus ~10 to train the encoder the first time) produces it")
else:
    stored_curve = json.loads(stored_path.read_text())
    print(f"stored full curve: commit {stored_curve['commit']}, {stored_curve['date']}, {stored_curve['machine']}")
    print("how the larger corpora were made:", stored_curve["copies"]["how"])
    for row in stored_curve["curve"]:
        print(f"  n={row['n']:>9,}: exact {row['exact_qps']:>8,.0f} q/s, HNSW {row['hnsw_qps']:>8,.0f} q/s "
              f"at recall@10 {row['recall_at_10']:.3f}; build {row['build_seconds']:.0f} s")
    print("crossover:", stored_curve["crossover"])
    fig = plot_search_scaling(stored_curve["curve"])
    plt.show()

# %% [markdown]
# ## 7. On 8 GPUs, or on 2 machines
#
# Nothing in the worker is specific to a laptop: the backend becomes nccl when each process has a GPU, each
# rank takes GPU `LOCAL_RANK`, and torchrun's flags say how many processes and where to meet.
#
# ```bash
# # one machine, 8 GPUs: 8 processes, each on its own GPU, nccl
# python -m torch.distributed.run --nproc_per_node=8 -m course_lib.distributed \
#     --preset full --batch-size 64 --gather differentiable --eval --out runs/ddp8
#
# # two machines with 8 GPUs each: run on both, same --rdzv_endpoint (host:port of machine 0)
# python -m torch.distributed.run --nnodes=2 --nproc_per_node=8 --rdzv_backend=c10d \
#     --rdzv_endpoint=machine0.example:29500 --rdzv_id=course06 -m course_lib.distributed \
#     --preset full --batch-size 64 --eval --out runs/ddp16
# ```
#
# `--batch-size` is per process: the global batch is W times it, and so is the number of negatives per query.
# With nccl, set `NCCL_DEBUG=INFO` the first time to see which network it uses; between machines the port must
# be open. `--timeout` bounds how long a rank waits for the others, so a crashed rank stops the run.

# %% [markdown]
# ## Summary
#
# - The in-batch loss keeps the whole batch's activations: memory grows linearly with B (section 1).
# - GradCache splits the encoder, not the loss: three steps, exactly the plain gradients, one chunk's memory, at
#   the price of a second forward pass; the random state must be replayed.
# - Across processes, the differentiable all-gather gives the exact global gradient; the detached gather (DPR,
#   SimCSE, FlagEmbedding) gives 1/W of it.
# - Conan's batch balance loss pools negatives from devices that share the queries.
# - Exact search is hard to beat while the corpus fits one matrix product; HNSW pays past the crossover.

# %% [markdown]
# ## Exercises
#
# 1. **Accumulation is not enough.** Split a batch of 64 into two halves, compute the in-batch loss of each half
#    separately and add the gradients (ordinary gradient accumulation). Write `accumulated_gradients(model,
#    batch)`; the check shows they differ from the full batch's, unlike GradCache's.
# 2. **The label offset.** Write `global_labels(sizes, rank)`: the positive's column for each local query when the
#    candidates are every rank's documents in rank order (ranks may hold different numbers of rows). The check
#    compares with a brute-force search for each query's own document among the gathered ids.

# %%
def accumulated_gradients(model, batch):
    return plain_gradients(model, batch)  # your code here: two halves, each its own in-batch loss


def check_accumulated(fn):
    batch = first_rows(big_batch, 64)
    full_grads = plain_gradients(model, batch)
    got = fn(model, batch)
    diff = max((got[n] - full_grads[n]).abs().max() for n in full_grads) / max(g.abs().max() for g in full_grads.values())
    assert diff > 1e-3, "these are the full batch's gradients: split the batch into two losses"
    print(f"accumulation differs from the full batch's gradient by {diff:.2f} × its largest entry")


# check_accumulated(accumulated_gradients)

# %%
def global_labels(sizes, rank):
    return list(range(sizes[rank]))  # your code here


def check_labels(fn):
    for sizes in ([4, 4], [3, 5, 2], [1], [2, 0, 3]):
        ids = [f"r{r}d{i}" for r, n in enumerate(sizes) for i in range(n)]  # the gathered candidates, rank order
        for rank, n in enumerate(sizes):
            expected = [ids.index(f"r{rank}d{i}") for i in range(n)]
            assert list(fn(sizes, rank)) == expected, f"sizes {sizes}, rank {rank}: expected {expected}"
    print("labels point at each query's own document")


# check_labels(global_labels)

# %%
shutil.rmtree(run_dir, ignore_errors=True)

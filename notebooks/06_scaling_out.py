# %% [markdown]
# # 06 · Scaling out: bigger batches than memory, negatives from other devices, search at scale
#
# **Papers.** GradCache: Gao, Zhang, Han & Callan, "Scaling Deep Contrastive Learning Batch Size under Memory
# Limited Setup" (2021, arXiv:2101.06983, §3); cross-device negatives: DPR (Karpukhin et al., 2020,
# arXiv:2004.04906, §3.2, in-batch negatives shared across GPUs) and SimCSE (Gao, Yao & Chen, 2021,
# arXiv:2104.08821), whose code gathers embeddings from every GPU, as does FlagEmbedding, the training code of BGE
# (Xiao et al., 2023, "C-Pack", arXiv:2309.07597); Conan-embedding's cross-GPU batch balance loss (Li et al., 2024,
# arXiv:2408.15710, §2.3); HNSW (Malkov & Yashunin, 2018, arXiv:1603.09320). The engine is PyTorch's own:
# `torch.distributed` (gloo on CPU, nccl on GPUs), launched by `torchrun`, with `DistributedDataParallel` (DDP).
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
# **Run time:** FAST preset about 60–70 s on 2 CPU cores (one two-process run); the full preset about 5 minutes.
# Terms (all-gather, DDP, rank, world size, GradCache, HNSW's M and ef) are in [GLOSSARY.md](../GLOSSARY.md).

# %%
import course_lib  # noqa: F401  first: sets OMP_WAIT_POLICY=PASSIVE before torch loads (2-core stalls otherwise)

# isort: split
import json
import math
import os
import shutil
import tempfile
from importlib.metadata import PackageNotFoundError, version
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
from course_lib.losses import cross_gpu_balance_loss, in_batch_softmax_loss, similarity_logits
from course_lib.models import make_encoder
from course_lib.samplers import NoDuplicateBatchSampler
from course_lib.search_scaling import (
    MIN_RECALL,
    best_at_recall,
    crossover,
    plot_search_scaling,
    scaling_curve,
)
from course_lib.tokenizer import load_tokenizer
from course_lib.utils import get_device, seed_everything
from course_lib.widgets import explore_ef

# %% tags=["parameters"]
PRESET = None  # None: FAST unless the environment sets COURSE_FAST=0; or "fast" / "full"
BATCH_SIZES = (32, 64, 128, 256)  # section 1: batches whose step time and activation memory are measured
CHUNK_SIZE = 32  # GradCache: texts encoded with a graph at a time; ≤ min(BATCH_SIZES) and < 96 (checked below)
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
CHECK_ROWS = 96  # rows of the batch on which section 2 compares GradCache's gradients with the plain loss's
assert max(BATCH_SIZES) >= CHECK_ROWS, (
    f"max(BATCH_SIZES) = {max(BATCH_SIZES)}: section 2's check and the exercises take {CHECK_ROWS} and 64 rows of "
    "the largest batch; keep a batch size of at least 96")
assert CHUNK_SIZE <= min(BATCH_SIZES) and CHUNK_SIZE < CHECK_ROWS, (
    f"CHUNK_SIZE = {CHUNK_SIZE} must be ≤ min(BATCH_SIZES) = {min(BATCH_SIZES)} (a batch that fits in one chunk is "
    f"just the plain loss, so section 1 would not show GradCache's memory staying one chunk's) and < {CHECK_ROWS}, "
    "the rows of section 2's check (with one chunk that check compares the plain loss with itself and proves "
    "nothing)")
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
# be alive at the backward pass: memory grows linearly with B (checked below: each batch's peak over the smallest
# batch's stays within 0.75–1.25 × the ratio of their sizes). Below, the activations autograd keeps for the backward
# pass (its peak, `course_lib.gradcache.SavedTensorPeak`) and the step time of one forward + backward (best of 3),
# for the plain loss and for GradCache. On a GPU the cell also prints `torch.cuda.max_memory_allocated`'s peak,
# which counts more: temporaries that no backward needs, the gradients, and GradCache's embeddings computed
# without a graph.
#
# GradCache's expected price: each text is encoded once more, without a graph, so a step costs one forward more
# than forward + backward. With a backward pass costing about two forwards, that is (1 + 1 + 2) / (1 + 2) ≈ 4/3
# of the plain step (`course_lib.gradcache`'s docstring); the cell prints the measured ratio beside it.

# %%
device = get_device()  # the GPU when there is one: then CUDA's own peak is printed too
model = make_encoder(cfg, tokenizer)
rows = measure_batch_cost(model.to(device), lambda b: first_rows(big_batch, b), list(BATCH_SIZES),
                          chunk_size=CHUNK_SIZE, repeats=3)
model.cpu()  # the checks below run on the CPU
for r in rows:
    cuda = "" if r["cuda_peak_bytes"] is None else f", CUDA peak {r['cuda_peak_bytes'] / 2**20:7.1f} MiB"
    print(f"B={r['batch_size']:>4} {r['method']:>6}: {r['ms']:7.0f} ms, activations "
          f"{r['saved_peak_bytes'] / 2**20:7.1f} MiB{cuda}")
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
linear = {b: (plain[b]["saved_peak_bytes"] / plain[b_small]["saved_peak_bytes"]) / (b / b_small) for b in plain}
flat = cached[b_big]["saved_peak_bytes"] / cached[b_small]["saved_peak_bytes"]
print("plain activations: (peak ratio) / (batch-size ratio) against B = " f"{b_small}: "
      + ", ".join(f"B={b} {v:.2f}" for b, v in linear.items()) + " (1.00 = exactly linear)")
print(f"B × {b_big // b_small}: GradCache's activations × {flat:.2f} (one chunk of {CHUNK_SIZE} whatever B)")
print("GradCache's step time / the plain one: " + ", ".join(f"B={b} {cached[b]['ms'] / plain[b]['ms']:.2f}"
                                                            for b in plain) + f" (expected about 4/3 = {4 / 3:.2f})")
assert all(0.75 <= v <= 1.25 for v in linear.values()), f"plain activations are not linear in B: {linear}"
assert flat < 1.5

# %% [markdown]
# ## 2. GradCache, written here
#
# The *graph* is autograd's record of the operations of a forward pass, kept (with the tensors they saved) for
# the backward pass; a forward under `torch.no_grad()` keeps none, and its activations are freed as it goes.
#
# The loss couples the rows, but the *encoder* does not: each text's embedding depends only on that text. So:
# (1) embed every chunk without a graph, remembering the random state before each chunk; (2) compute the full
# loss on those embeddings and backpropagate it only as far as the embeddings, ∂ℓ/∂e; (3) encode each chunk again
# with a graph, from the same random state, and backpropagate ⟨e, ∂ℓ/∂e⟩, the sum over the chunk's rows and
# dimensions of e times the cached gradient, `(e * grad).sum()`; its gradient with respect to the weights is that
# chunk's share of ∂ℓ/∂θ (the chain rule, with ∂ℓ/∂e held constant). Only one chunk's graph is ever alive.

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


check_batch = first_rows(big_batch, CHECK_ROWS)  # CHECK_ROWS / CHUNK_SIZE chunks (3 by default), not one
model.train()  # dropout is 0 in the presets: the plain batch and the chunks then compute the same function
want = plain_gradients(model, check_batch)
model.zero_grad(set_to_none=True)
my_cached_loss(model, check_batch, CHUNK_SIZE, cfg.temperature)
mine = {n: p.grad.clone() for n, p in model.named_parameters()}
scale = max(g.abs().max() for g in want.values())
gap = max((mine[n] - want[n]).abs().max() for n in want) / scale
print(f"inline GradCache ({math.ceil(CHECK_ROWS / CHUNK_SIZE)} chunks of at most {CHUNK_SIZE}) vs the plain loss: "
      f"largest gradient difference {gap:.1e} × the largest gradient")
assert gap < 1e-5

# %% [markdown]
# With dropout on, the two passes of step 1 and step 3 must draw the same masks: that is what the saved random
# state is for. [luyug/GC-DPR issue 12](https://github.com/luyug/GC-DPR/issues/12) asks about exactly this
# dropout randomness, and the maintainer answers that the code snapshots the random state (its `RandContext`).
# Forget to restore it (`replay_rng=False` in `course_lib.gradcache`) and the cached gradients belong to other
# embeddings than the ones backpropagated.

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
# course_lib.distributed ...` starts two processes, the *ranks* (numbered 0, 1, …); their number is the *world
# size* W (2 here). Each joins a process group (gloo on CPU), wraps the encoder in DDP, takes its 1/W of every
# global batch, and computes `cross_device_in_batch_loss`: its own queries against the documents of *every* rank,
# gathered with an all-gather, the labels offset by the rank's position. `launch` runs that command from Python,
# streams the log, and returns the metrics. The code lives in a module because torchrun starts fresh Python
# interpreters that import the worker by its module name (`-m course_lib.distributed`): a function defined in
# this notebook exists only in this kernel, where no new interpreter can import it.
#
# Two ways to gather, and their gradients. With `torch.distributed.nn.all_gather` the gathered documents keep
# their graph, gradients flow back to the rank that encoded them, and DDP's average over ranks is the gradient
# of the single-process loss over the whole batch (sentence-transformers' `MultipleNegativesRankingLoss` with
# `gather_across_devices=True`, an option since sentence-transformers 5.1; the cell below prints the installed
# version). DPR, SimCSE and FlagEmbedding gather *detached* copies and put the local slice back: every rank
# computes the whole loss, but gets gradients only through its own rows, so after DDP's average the gradient is
# 1/W of the global one. `--grad-check` saves both, for one batch.
#
# **Checker.** One process, here, recomputes the loss of the whole global batch and its gradient; the
# differentiable run's DDP gradient must equal it, and the detached run's must be exactly 1/W of it.

# %%
run_dir = Path(tempfile.mkdtemp(prefix="course06_"))
metrics = launch(WORLD_SIZE, ["--preset", cfg.preset, "--grad-check", "--steps", str(DIST_STEPS), "--log-every", "5"]
                 + (["--eval"] if not FAST else []), run_dir, timeout_s=600)
print(json.dumps({k: metrics[k] for k in ("world_size", "per_rank_batch", "global_batch", "backend", "steps",
                                          "threads_per_rank")}, indent=1))
print(f"threads_per_rank {metrics['threads_per_rank']}: launch gives each rank the machine's {os.cpu_count()} "
      f"cores // {WORLD_SIZE} ranks (at least 1), so the ranks do not fight over cores. No speed is shown: "
      f"{metrics['steps']} steps time mostly the start-up; section 4's stored entries give training seconds")
try:
    print("sentence-transformers installed here:", version("sentence-transformers"))
except PackageNotFoundError:  # only named in the prose, not used by this notebook's code
    print("sentence-transformers is not installed here")

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
# Does a constant 1/W matter? Plain SGD's step is W times smaller, and gradient clipping thresholds and loss-scale
# logic see the factor. AdamW divides each coordinate by a running estimate of its gradient's size, so a constant
# factor reaches its update only through the small ε added to that estimate. Below: three AdamW steps from the
# same start with the one-process gradient above, once as it is and once divided by W (the same gradient every
# step, so this shows the optimizer's arithmetic, not a training run). Know which pattern your code uses.

# %%
def adamw_updates(grads, steps=3):
    params = [torch.zeros_like(g, requires_grad=True) for g in grads]
    opt = torch.optim.AdamW(params, lr=cfg.lr)
    for _ in range(steps):
        for p, g in zip(params, grads):
            p.grad = g.clone()
        opt.step()
    return torch.cat([p.detach().flatten() for p in params])  # the sum of the updates (the start is 0)


full_update = adamw_updates(list(want.values()))
scaled_update = adamw_updates([g / WORLD_SIZE for g in want.values()])
adamw_gap = ((scaled_update - full_update).norm() / full_update.norm()).item()
print(f"3 AdamW steps, gradient g vs g/{WORLD_SIZE}: the updates differ by {adamw_gap:.1e} of the update's norm "
      f"(plain SGD's would differ by a factor {WORLD_SIZE})")

# %% [markdown]
# ## 4. Recall against effective batch size
#
# The *effective batch size* of a step is the number of documents each query is scored against: its positive and
# the other positives of the batch, B in all, gathered from every rank when there are several. Bigger batches,
# reached three ways: one process (notebooks 01 and 04), GradCache (B = 256 in the memory of a 32-text chunk), and
# two processes (DDP, each encoding half of a global batch of 64). The benchmark budgets every run in optimizer
# steps, the preset's (`train_steps`), with a wall-clock cap on top; the cell prints each entry's steps, marks an
# entry that stopped before them (at its cap; `capped_seeds` in newer entries), and claims no ordering from it.
# Means ± sd over the seeds where there are several. The cell also prints the benchmark command for the selected
# preset; an entry that the selected preset's results lack is named, with the command that produces it, and the
# FAST preset's stored entries are shown instead, labelled as such.

# %%
points = {"in_batch_small": 16, "in_batch": 64, "in_batch_large": 128, "gradcache_large_batch": 256,
          "distributed_2proc": 64}  # effective batch size: documents each query is scored against per step
print("the benchmark command for these entries: python -m course_lib.benchmark --preset "
      f"{cfg.preset} --out results/{cfg.preset} --methods {' '.join(points)} --seeds 3 --merge")
shown = cfg.preset
stored = stored_results(shown)
missing = [n for n in points if n not in stored]
if missing:
    print(f"results/{shown}/results.json has no {', '.join(missing)}; this command produces them:\n"
          f"  python -m course_lib.benchmark --preset {shown} --out results/{shown} --methods {' '.join(missing)} "
          "--seeds 3 --merge\nshown instead: the FAST preset's stored results (results/fast/results.json)")
    shown = "fast"
    stored = stored_results(shown)
    assert all(n in stored for n in points), "results/fast/results.json, committed with the course, lacks entries"
preset_steps, preset_lr = get_config(shown).train_steps, get_config(shown).lr


def lr_of(m):
    return m.get("lr") or m.get("config", {}).get("lr") or preset_lr  # in_batch and distributed: the preset's


def stopped_short(m):
    return bool(m.get("capped_seeds")) or m["steps"] < preset_steps


for name, b in points.items():
    m = stored[name]
    note = (f"; capped seeds {m['capped_seeds']}" if m.get("capped_seeds") else "") + (
        f"; STOPPED SHORT: {m['steps']} of the preset's {preset_steps} steps" if stopped_short(m) else "")
    print(f"[{shown}] {name:>22} (B = {b:>3}, lr {lr_of(m):g}): {m['steps']} steps, R@10 {mean_sd(m, 'recall@10')}, "
          f"{m['train_seconds']:.0f} s; commit {m.get('commit', '?')}, {m.get('date', '?')}{note}")
lrs = {name: lr_of(stored[name]) for name in points}
if len(set(lrs.values())) > 1:
    print("the points mix learning rates: " + "; ".join(
        f"lr {lr:g} for {', '.join(n for n in points if lrs[n] == lr)}" for lr in sorted(set(lrs.values())))
        + ": compare points of one lr")
fig, ax = plt.subplots(figsize=(7.5, 4.2))
looks = {"in_batch_small": ("o", 1.0, "C0", "one process"), "in_batch_large": ("o", 1.0, "C0", "one process"),
         "gradcache_large_batch": ("s", 1.0, "C1", "GradCache"), "in_batch": ("D", 0.93, "C2", "one process"),
         "distributed_2proc": ("^", 1.07, "C3", "2 processes (DDP)")}  # the two at B = 64 drawn side by side
one_process = ["in_batch_small", "in_batch_large"]  # one lr, B = 16 and 128: joined by a line
ax.plot([points[n] for n in one_process], [stored[n]["recall@10"] for n in one_process], "-", color="C0", lw=1)
for name, b in points.items():
    m, (marker, shift, color, who) = stored[name], looks[name]
    label = f"{who}, lr {lr_of(m):g}" + (" (stopped short)" if stopped_short(m) else "")
    ax.errorbar(b * shift, m["recall@10"], yerr=m.get("spread", {}).get("recall@10", 0), fmt=marker, color=color,
                capsize=3, label=label if label not in ax.get_legend_handles_labels()[1] else None)
ax.set(xscale="log", xlabel="effective batch size (documents each query is scored against per step)",
       ylabel="test recall@10 (bars: sd over seeds)",
       title=f"Recall@10 against effective batch size ({shown} preset's stored results)")
ax.set_xticks(sorted(set(points.values())), [str(b) for b in sorted(set(points.values()))])
ax.minorticks_off()
ax.legend(fontsize=8)
fig.tight_layout()
plt.show()
for a, b in (("gradcache_large_batch", "in_batch_large"), ("distributed_2proc", "in_batch")):
    gap, verdict = ordering(stored[a], stored[b])
    short = [n for n in (a, b) if stopped_short(stored[n])]
    if short and not verdict.startswith("a run stopped at its wall-clock cap"):
        verdict = f"{', '.join(short)} stopped before the preset's {preset_steps} steps: no ordering claimed"
    print(f"[{shown}] {a} vs {b}: R@10 {gap:+.3f}, {verdict}")

# %% [markdown]
# Two processes with half the batch each train on the same global batches, for the same steps and at the same
# learning rate, as one process with the whole batch (`in_batch`); with the differentiable gather their gradients
# are the same (section 3), so their recall should match `in_batch`'s within the seeds' spread: the verdict above
# says whether it does. GradCache's entry is compared with the one-process B = 128 entry of the same learning
# rate, when both ran their steps.
#
# ## 5. Conan's cross-GPU batch balance loss
#
# Conan-embedding's cross-GPU batch balance (CBB) loss balances what each training step holds: instead of one
# task drawn at random per step, every step holds every task of its mix (retrieval and semantic-similarity pairs),
# spread over the GPUs. For the retrieval term, devices hold the *same* queries and positives but *different*
# negatives, and the negatives of every device are summed into one softmax denominator:
# −log e^{s⁺/τ} / (e^{s⁺/τ} + Σ_devices Σ_j e^{s(q, n_j)/τ}). So N devices give each query N times the negatives
# (DEVICES × 5 below); each device encodes the same queries and positives. The paper adds β·L_cos (CoSENT on
# similarity pairs, β = 0.8) in the same step; that term is left out here, only the retrieval term is built.
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
print(f"{DEVICES} devices × 5 negatives = {union.shape[1]} per query: CBB {cbb.item():.6f}, "
      f"InfoNCE over the union {reference.item():.6f}")
assert torch.allclose(cbb, reference, rtol=1e-6)

# %% [markdown]
# ## 6. Search at scale: when does an approximate index pay?
#
# Exact search is one matrix product: fast while the corpus is small, linear in its size. HNSW's cost grows far
# more slowly than N (the cell prints by how much: on the stored curve, ×100 vectors cost exact search ×123 in
# speed and HNSW at a fixed ef ×5, its recall@10 falling from 0.997 to 0.972; log N grows only ×1.5 there), but
# it misses a few neighbours and must be built. Here a small curve, computed now on MiniLM's embeddings of this
# preset's corpus (cached by notebook 00; sizes beyond the real corpus are grown with perturbed copies: each copy
# is a real vector plus Gaussian noise scaled to its nearest-neighbour distance, renormalised), then the stored
# curve of the full preset on the in-batch encoder's embeddings, up to a million vectors (`python -m
# course_lib.search_scaling --preset full --out results/full/search_scaling.json`). The two curves differ in more
# than their size; the cell prints how.
#
# Each figure has four panels:
# - top left: queries per wall-clock second against corpus size, for exact search, HNSW at its ef, and HNSW at the
#   fastest ef whose recall@10 against exact search is ≥ 0.98; a dotted line where HNSW becomes faster;
# - top right: the same in queries per CPU-second (all threads' CPU time summed);
# - bottom left: what the index costs: HNSW's build time and bytes per vector (exact search's: the vector alone);
# - bottom right: at the largest size, recall@10 against queries per second for each ef swept, exact search's
#   speed as vertical lines.
#
# `crossover` is the first size at which HNSW, at recall@10 ≥ 0.98 of exact search, answers more queries per
# second than exact search; `None` means it never did in the sizes measured.

# %%
def growth(curve, label):
    """How speed falls from the smallest to the largest size, against n and log n."""
    a, z = curve[0], curve[-1]
    print(f"{label}: n {a['n']:,} → {z['n']:,} (× {z['n'] / a['n']:.0f}; log n × {math.log(z['n']) / math.log(a['n']):.2f}): "
          f"exact {a['exact_qps']:,.0f} → {z['exact_qps']:,.0f} q/s (× {a['exact_qps'] / z['exact_qps']:.1f} slower), "
          f"HNSW at ef {z['ef']} {a['hnsw_qps']:,.0f} → {z['hnsw_qps']:,.0f} q/s (× {a['hnsw_qps'] / z['hnsw_qps']:.1f} slower)")


_, minilm_docs, minilm_queries = minilm_embeddings(data, "test")  # (N, 384), (Q, 384)
here = {"encoder": f"MiniLM (all-MiniLM-L6-v2), {minilm_docs.shape[1]}-d", "M": cfg.hnsw_m, "ef_construction": 64,
        "ef": cfg.hnsw_ef_search, "efs": (16, 32, 64, 128), "queries": min(200, len(minilm_queries)), "repeats": 1}
small = scaling_curve(list(SEARCH_SIZES), minilm_docs, minilm_queries[: here["queries"]], M=here["M"],
                      ef_construction=here["ef_construction"], efs=here["efs"], ef=here["ef"],
                      repeats=here["repeats"], log=print)
cross_here = crossover(small)
print(f"crossover (first size where HNSW at recall@10 ≥ {MIN_RECALL} of exact is faster, wall clock): {cross_here}"
      + (f": HNSW was never faster in the range computed, up to n = {SEARCH_SIZES[-1]:,}" if cross_here is None else ""))
growth(small, "computed here")
grown = SEARCH_SIZES[-1] > len(minilm_docs)
fig = plot_search_scaling(small)
fig.suptitle(f"computed here: MiniLM embeddings of the {cfg.preset} corpus ({len(minilm_docs):,} vectors"
             + (", grown by perturbed copies)" if grown else "; smaller sizes are random subsets)"))
fig.tight_layout(rect=(0, 0, 1, 0.96))  # room for the title above the panels
plt.show()
stored_path = RESULTS_DIR / "full" / "search_scaling.json"
if not stored_path.exists():  # said, not hidden: the full curve takes 20 minutes on 2 idle cores
    print(f"{stored_path} is not in this checkout yet: python -m course_lib.search_scaling --preset full "
          f"--out {stored_path.relative_to(RESULTS_DIR.parent)} (20 minutes on 2 idle cores, plus ~10 to train the encoder the first time) produces it")
else:
    stored_curve = json.loads(stored_path.read_text())
    params, emb = stored_curve["params"], stored_curve["embeddings"]
    print(f"stored full curve: commit {stored_curve['commit']}, {stored_curve['date']}, {stored_curve['machine']}")
    print("how the larger corpora were made:", stored_curve["copies"]["how"])
    print(f"\n{'':<18}{'computed here':<34}stored (full)")
    for what, mine, theirs in (
            ("encoder", here["encoder"], f"in-batch course encoder ({emb['encoder']}, {emb['train_steps']} steps), {emb['dim']}-d"),
            ("M", here["M"], params["M"]), ("ef_construction", here["ef_construction"], params["ef_construction"]),
            ("ef", here["ef"], params["ef"]), ("efs swept", here["efs"], tuple(params["efs"])),
            ("queries", here["queries"], f"{emb['n_queries']:,}"), ("repeats (best of)", here["repeats"], params["repeats"]),
            ("sizes", f"{SEARCH_SIZES[0]:,}–{SEARCH_SIZES[-1]:,}",
             f"{stored_curve['curve'][0]['n']:,}–{stored_curve['curve'][-1]['n']:,}")):
        print(f"{what:<18}{str(mine):<34}{theirs}")
    print()
    for row in stored_curve["curve"]:
        best = best_at_recall(row)
        fastest = "none reaches it" if best is None else (
            f"ef {best['ef']}: {best['qps']:,.0f} q/s, recall {best['recall_at_10']:.3f}, × {best['speedup']:.1f} exact")
        print(f"  n={row['n']:>9,}: exact {row['exact_qps']:>8,.0f} q/s; HNSW at ef {row['ef']} {row['hnsw_qps']:>7,.0f} q/s, "
              f"recall@10 {row['recall_at_10']:.3f}; fastest ef with recall@10 ≥ {MIN_RECALL}: {fastest}; "
              f"build {row['build_seconds']:.0f} s")
    for clock, n in stored_curve["crossover"].items():
        print(f"crossover[{clock!r}] ({'queries per wall-clock second' if clock == 'qps' else 'queries per CPU-second, threads summed'}): "
              f"HNSW faster from n = {n if n is None else format(n, ',')}")
    growth(stored_curve["curve"], "stored")
    last = stored_curve["curve"][-1]
    checks = last["checks"]
    print(f"checks at n = {last['n']:,}:", {k: round(v, 3) for k, v in checks.items()})
    print(f"  copies are {checks['copies_share_of_corpus']:.0%} of that corpus and fill "
          f"{checks['copies_share_of_query_top10']:.0%} of the queries' exact top 10; recall@10 against the qrels "
          f"falls {emb['qrels_recall_at_10_real_corpus']:.3f} (real corpus) → {checks['qrels_recall_at_10']:.3f}: "
          "at that size the speeds are what to read, not the retrieval quality")
    fig = plot_search_scaling(stored_curve["curve"])
    fig.suptitle(f"stored: the full preset's in-batch encoder, {stored_curve['curve'][-1]['n']:,} vectors at most")
    fig.tight_layout(rect=(0, 0, 1, 0.96))
    plt.show()

# %% [markdown]
# **Explore: what `ef` buys at each size.** Move the slider to pick a corpus size of the stored curve (of the curve
# computed above when no stored one is in this checkout): each point is one `ef` of the sweep, its recall@10
# against exact search and its speed; the dotted lines are exact search's speed at that size and the 0.98 bar.
# Nothing is re-measured. Watch the exact line move left past the HNSW points as the corpus grows.

# %%
explore_ef(stored_curve["curve"] if stored_path.exists() else small, min_recall=MIN_RECALL)

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
# The learning rate is not scaled with the global batch: every run uses the preset's (pass `--lr` to change it).
# For two machines, both need this repository (the same commit) and the data cache (`.cache/`, or the folder
# `COURSE_CACHE` names: copy machine 0's, since every rank loads the data and tokenizer from it); only rank 0, on
# machine 0, writes `metrics.json` and `model.pt` into `--out` (a failing rank writes its traceback under its own
# machine's `--out/errors/`). With nccl, set `NCCL_DEBUG=INFO` the first time to see which
# network it uses; between machines the port must be open. `--timeout` bounds how long a rank waits for the
# others, so a crashed rank stops the run.

# %% [markdown]
# ## Summary
#
# - The in-batch loss keeps the whole batch's activations: memory grows linearly with B (section 1, checked).
# - GradCache splits the encoder, not the loss: three steps, exactly the plain gradients, one chunk's memory, at
#   the price of a second forward pass (about 4/3 of the step's time expected; section 1 prints the measured
#   ratio); the random state must be replayed.
# - Across processes, the differentiable all-gather gives the exact global gradient; the detached gather (DPR,
#   SimCSE, FlagEmbedding) gives 1/W of it.
# - Conan's batch balance loss pools negatives from devices that share the queries.
# - Exact search is hard to beat while the corpus fits one matrix product; HNSW pays past the crossover.

# %% [markdown]
# ## Exercises
#
# 1. **Accumulation is not enough.** Split a batch of 64 into two halves of 32, compute the in-batch loss of each
#    half separately (each half's queries against that half's documents only) and accumulate the gradients,
#    *averaged*: each half's loss divided by 2 before its `backward()`, so the scale is that of the mean loss
#    over the 64 queries (ordinary gradient accumulation over 2 micro-batches). Write
#    `accumulated_gradients(model, batch)`, returning `{name: gradient}`. The check computes the same thing
#    another way (the full batch's logits with every score across the two halves masked out) and asserts yours
#    matches it; then it shows that accumulation differs from the full batch's gradients while GradCache
#    (`course_lib.gradcache.cached_in_batch_loss`, chunks of 16) matches them.
# 2. **The label offset.** Write `global_labels(sizes, rank)`: the positive's column for each local query when the
#    candidates are every rank's documents in rank order (ranks may hold different numbers of rows). The check
#    compares with a brute-force search for each query's own document among the gathered ids.

# %%
def accumulated_gradients(model, batch):
    return plain_gradients(model, batch)  # your code here: two halves, each its own in-batch loss


def halves_reference(model, batch):
    """The mean of the two halves' in-batch losses, computed on the whole batch: each query's candidates are
    the documents of its own half (scores across the halves masked out); its gradients are the average of the
    two halves' gradients."""
    model.zero_grad(set_to_none=True)
    q, d = model(**batch["q"]), model(**batch["d"])  # (B, D) each
    logits = similarity_logits(q, d, temperature=cfg.temperature)  # (B, B)
    half = torch.arange(len(batch["doc_ids"])) < len(batch["doc_ids"]) // 2  # (B,): True in the first half
    logits = logits.masked_fill(half[:, None] != half[None, :], float("-inf"))  # only the own half's documents
    F.cross_entropy(logits, torch.arange(len(half))).backward()
    return {n: p.grad.clone() for n, p in model.named_parameters()}


def check_accumulated(fn):
    batch = first_rows(big_batch, 64)
    assert len(set(batch["doc_ids"])) == 64, "the check assumes 64 distinct positives (no duplicate to mask)"
    reference, full_grads = halves_reference(model, batch), plain_gradients(model, batch)
    model.zero_grad(set_to_none=True)
    cached_in_batch_loss(model, batch["q"], batch["d"], chunk_size=16, temperature=cfg.temperature,
                         doc_ids=batch["doc_ids"])
    gradcache = {n: p.grad.clone() for n, p in model.named_parameters()}
    got = fn(model, batch)

    def rel(a, b):  # largest entry of a − b, over the largest entry of b
        return (max((a[n] - b[n]).abs().max() for n in b) / max(g.abs().max() for g in b.values())).item()

    ratio = (sum((got[n] * reference[n]).sum() for n in reference) / sum((g ** 2).sum() for g in reference.values())).item()
    assert rel(got, full_grads) > 1e-3, "these are the full batch's gradients: split the batch into two losses"
    assert abs(ratio - 2) > 0.1, "you summed the two halves' gradients: divide each half's loss by 2 (average)"
    assert rel(got, reference) < 1e-4, (f"not the averaged gradients of the two halves' in-batch losses (off by "
                                        f"{rel(got, reference):.1e} × the largest entry)")
    assert rel(gradcache, full_grads) < 1e-5
    print(f"accumulation vs the masked reference: {rel(got, reference):.1e}; vs the full batch: "
          f"{rel(got, full_grads):.2f} × its largest entry; GradCache vs the full batch: {rel(gradcache, full_grads):.1e}")


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

"""GradCache: the in-batch loss of a large batch, in the memory of a small chunk.

The in-batch softmax couples every row of a batch (each query scores every document), so ordinary gradient
accumulation, which sums the gradients of independent sub-batches, cannot split it. GradCache (Gao, Zhang,
Han & Callan, 2021, "Scaling Deep Contrastive Learning Batch Size under Memory Limited Setup",
arXiv:2101.06983, §3) splits the *encoder* instead, in three steps:

1. embed every chunk of ``chunk_size`` texts without a graph (``torch.no_grad``), noting the random-number
   state before each chunk;
2. compute the full-batch loss on those cached embeddings, made leaf tensors that require grad, and
   backpropagate it only as far as the embeddings: their gradients ∂ℓ/∂e are the cache;
3. encode each chunk again, with a graph and the *same* random state, and backpropagate the surrogate
   ⟨e_chunk, ∂ℓ/∂e_chunk⟩, whose gradient with respect to the parameters is the chunk's share of ∂ℓ/∂θ.

The chain rule makes the parameter gradients those of ``loss.backward()`` on the plain full-batch loss, while
only one chunk's activations are alive at a time. The price is a second forward pass per text: about a third
more compute when a backward pass costs two forward passes.
Step 3 must replay step 1's dropout masks, or the cached gradients belong to other embeddings than the
ones being backpropagated: restoring the random state is what the reference implementation does and what
its issue tracker shows going wrong without it (luyug/GC-DPR issue 12). ``replay_rng=False`` reproduces
that mistake, for the notebook's demonstration.

``measure_batch_cost`` measures what the method buys: the step time and the peak activation memory of the
plain and the cached step as the batch grows (``SavedTensorPeak`` says what is counted).
"""

import contextlib
import time
from collections.abc import Callable, Mapping, Sequence

import torch

from course_lib.in_batch import _to, in_batch_step, pair_batches
from course_lib.losses import in_batch_softmax_loss
from course_lib.models import make_encoder
from course_lib.samplers import NoDuplicateBatchSampler
from course_lib.train import History, train
from course_lib.utils import get_device


def _check_positive_int(name: str, value) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, got {type(value).__name__} {value!r}")
    if value < 1:
        raise ValueError(f"{name} must be >= 1, got {value}")


class RngState:
    """The random-number state that dropout draws from: the CPU generator's, and the CUDA generator's of
    ``device`` when it is a GPU. ``replay()`` runs a block from this state and afterwards puts the generators
    back where they were before the block, so a replay consumes nothing (``torch.random.fork_rng``)."""

    def __init__(self, device: torch.device):
        if device.type not in ("cpu", "cuda"):
            raise ValueError(f"GradCache replays the CPU and CUDA random generators; the model is on {device}. "
                             "Move it to cpu or cuda")
        self.device = device
        self.cpu = torch.get_rng_state()
        self.cuda = torch.cuda.get_rng_state(device) if device.type == "cuda" else None

    def restore(self) -> None:
        """Set the generators to this state (the generators' stream continues from here)."""
        torch.set_rng_state(self.cpu)
        if self.cuda is not None:
            torch.cuda.set_rng_state(self.cuda, self.device)

    @contextlib.contextmanager
    def replay(self):
        devices = [self.device] if self.cuda is not None else []
        with torch.random.fork_rng(devices=devices, device_type="cuda"):
            self.restore()
            yield


def _check_model(model) -> torch.device:
    """The model can be trained by GradCache: a module with trainable parameters on one CPU or CUDA device,
    without batch normalisation in train mode (its chunk statistics would differ from the batch's), and
    gradients are enabled. Returns the device."""
    if not isinstance(model, torch.nn.Module):
        raise TypeError(f"model must be a torch.nn.Module (an encoder: tokens → (B, D)), got {type(model).__name__}")
    params = list(model.parameters())
    if not any(p.requires_grad for p in params):
        raise ValueError("model has no parameter that requires grad, so there is nothing to train; unfreeze it "
                         "with model.requires_grad_(True)")
    devices = {p.device for p in params}
    if len(devices) != 1:
        raise ValueError(f"model's parameters lie on several devices {sorted(map(str, devices))}; move it to one "
                         "with model.to(device)")
    norms = [name for name, m in model.named_modules()
             if isinstance(m, torch.nn.modules.batchnorm._BatchNorm) and m.training]
    if norms:
        raise ValueError(f"model has batch normalisation in train mode ({norms[:3]}): each chunk would be "
                         "normalised by its own statistics, not the batch's, so the cached gradients would not be "
                         "the full batch's; put those modules in eval mode or use an encoder without them")
    if not torch.is_grad_enabled() or torch.is_inference_mode_enabled():
        raise RuntimeError("GradCache runs backward passes itself, but gradients are disabled here; call it "
                           "outside torch.no_grad() / torch.inference_mode()")
    device = devices.pop()
    RngState(device)  # fails on a device whose generator is not replayed
    return device


def _check_tokens(name: str, tokens) -> int:
    """A dict of (n, L) tensors with ``input_ids`` and ``attention_mask``, n ≥ 1 rows each; returns n."""
    if not isinstance(tokens, Mapping) or not {"input_ids", "attention_mask"} <= set(tokens):
        raise TypeError(f"{name} must be a dict of token tensors with 'input_ids' and 'attention_mask' (as "
                        f"course_lib.models.tokenize returns), got {type(tokens).__name__}")
    rows = set()
    for key, value in tokens.items():
        if not isinstance(value, torch.Tensor) or value.dim() != 2:
            raise ValueError(f"{name}[{key!r}] must be a 2-D (rows, length) tensor, got "
                             f"{tuple(value.shape) if isinstance(value, torch.Tensor) else type(value).__name__}")
        rows.add(value.shape[0])
    if len(rows) != 1 or 0 in rows:
        raise ValueError(f"{name}'s tensors must have one common number of rows >= 1, got {sorted(rows)}")
    return rows.pop()


def _chunks(tokens: Mapping, chunk_size: int) -> list[dict]:
    """Row slices of at most ``chunk_size``, at the batch's full padded length (so each row is computed exactly
    as in the whole batch)."""
    n = tokens["input_ids"].shape[0]
    return [{k: v[s : s + chunk_size] for k, v in tokens.items()} for s in range(0, n, chunk_size)]


def _embed_without_graph(model, chunks: list[dict], device) -> tuple[list[torch.Tensor], list[RngState]]:
    """Step 1: each chunk's embeddings (b, D) under ``torch.no_grad``, and the random state before each."""
    embeddings, states = [], []
    for chunk in chunks:
        states.append(RngState(device))
        with torch.no_grad():
            e = model(**_to(chunk, device))  # (b, D)
        if not isinstance(e, torch.Tensor) or e.dim() != 2 or e.shape[0] != chunk["input_ids"].shape[0] \
                or not e.is_floating_point():
            raise ValueError(f"model must return one floating-point embedding per row, (b, D) for b = "
                             f"{chunk['input_ids'].shape[0]}, got "
                             f"{tuple(e.shape) if isinstance(e, torch.Tensor) else type(e).__name__}")
        embeddings.append(e)
    return embeddings, states


def cached_in_batch_loss(model: torch.nn.Module, q_batch: Mapping, d_batch: Mapping, *, chunk_size: int,
                         temperature: float = 0.05, negatives_batch: Mapping | None = None,
                         loss_fn: Callable = in_batch_softmax_loss, replay_rng: bool = True, **loss_kwargs) -> torch.Tensor:
    """The GradCache step (Gao et al., 2021, arXiv:2101.06983, §3): accumulate into the parameters' ``.grad``
    the gradients that ``loss.backward()`` of the plain full-batch loss would, encoding at most ``chunk_size``
    texts with a graph at a time. Returns the loss, detached (a scalar tensor).

    ``q_batch``, ``d_batch``: token dicts of B rows (row i of ``d_batch`` is the positive of query i);
    ``negatives_batch``: B·K rows in column-block order (row j·B + i is query i's j-th negative, as
    ``course_lib.in_batch.pair_batches`` lays out ``batch["n"]``). The loss is
    ``loss_fn(q, d, negatives (B, K, D) or None, temperature=temperature, **loss_kwargs)`` on the cached
    embeddings; ``loss_kwargs`` (``doc_ids``, ``symmetric``, ``margin``) go to ``loss_fn`` unchanged.

    Like ``backward``, it *adds* to ``.grad``: clear the gradients first. With dropout on (train mode) the
    plain loss it matches is the one whose encoder runs chunk by chunk from the same random state: each chunk
    draws its own masks. ``replay_rng=False`` skips the replay of step 3 (the pitfall; gradients then differ).
    Chunks keep the batch's padded length, so a chunk computes its rows exactly as the whole batch would.

    Checks before anything changes: ``chunk_size`` a positive int; ``model`` a module with trainable
    parameters on one CPU/CUDA device, no batch normalisation in train mode, gradients enabled; token dicts
    of 2-D tensors, B rows each and B·K for the negatives; the model returns (b, D); ``loss_fn`` returns a
    scalar tensor that uses every embedding. If step 1 or 2 fails, the random generators are put back as
    they were.
    """
    _check_positive_int("chunk_size", chunk_size)
    if not isinstance(replay_rng, bool):
        raise TypeError(f"replay_rng must be True or False, got {replay_rng!r}")
    device = _check_model(model)
    B = _check_tokens("q_batch", q_batch)
    if _check_tokens("d_batch", d_batch) != B:
        raise ValueError(f"d_batch has {d_batch['input_ids'].shape[0]} rows but q_batch has {B}: row i of d_batch is "
                         "the positive of query i")
    towers = [q_batch, d_batch]
    if negatives_batch is not None:
        n = _check_tokens("negatives_batch", negatives_batch)
        if n % B:
            raise ValueError(f"negatives_batch has {n} rows, not a multiple of B = {B}: give K negatives per query "
                             "in column-block order (row j·B + i is query i's j-th negative)")
        towers.append(negatives_batch)
    chunked = [_chunks(tokens, chunk_size) for tokens in towers]
    start = RngState(device)
    try:
        cached = [_embed_without_graph(model, chunks, device) for chunks in chunked]  # step 1
        loss, grads = _embedding_gradients(cached, B, temperature, loss_fn, loss_kwargs)  # step 2
    except BaseException:
        start.restore()  # bad input or a failing loss: leave the random stream as it was
        raise
    for chunks, (_, states), tower_grads in zip(chunked, cached, grads):  # step 3
        for chunk, state, grad in zip(chunks, states, tower_grads.split(chunk_size)):
            with state.replay() if replay_rng else contextlib.nullcontext():
                e = model(**_to(chunk, device))  # (b, D), with a graph this time
            surrogate = (e * grad.to(e.dtype)).sum()  # ⟨e, ∂ℓ/∂e⟩: its ∂/∂θ is the chunk's share of ∂ℓ/∂θ
            surrogate.backward()  # frees this chunk's graph before the next chunk is encoded
    return loss.detach()


def _embedding_gradients(cached, B: int, temperature, loss_fn, loss_kwargs) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """Step 2: the full-batch loss on the cached embeddings (leaves) and ∂ℓ/∂e for each tower (rows, D)."""
    leaves = [torch.cat(embeddings).requires_grad_() for embeddings, _ in cached]  # (B, D), (B, D)[, (B·K, D)]
    negatives = None
    if len(leaves) == 3:
        n = leaves[2]
        negatives = n.view(-1, B, n.shape[-1]).transpose(0, 1)  # (B, K, D), from block order
    loss = loss_fn(leaves[0], leaves[1], negatives, temperature=temperature, **loss_kwargs)
    if not isinstance(loss, torch.Tensor) or loss.dim() != 0 or not loss.requires_grad:
        raise ValueError(f"loss_fn must return a scalar tensor computed from the embeddings, got "
                         f"{tuple(loss.shape) if isinstance(loss, torch.Tensor) else type(loss).__name__}")
    grads = torch.autograd.grad(loss, leaves, allow_unused=True)
    unused = [name for name, g in zip(("queries", "positives", "negatives"), grads) if g is None]
    if unused:
        raise ValueError(f"loss_fn did not use the {', '.join(unused)}: their embeddings got no gradient. Drop "
                         "that input, or use a loss_fn that scores it")
    return loss, list(grads)


def gradcache_step(temperature: float, chunk_size: int, *, symmetric: bool = False, mask_duplicates: bool = True,
                   replay_rng: bool = True):
    """A ``step_fn`` for ``course_lib.train.train(..., step_runs_backward=True)``: the in-batch loss of a pair
    batch (``course_lib.in_batch.pair_batches``; hard negatives included) by ``cached_in_batch_loss``. It
    fills ``.grad`` and returns the detached loss; ``mask_duplicates`` passes the doc ids, as
    ``course_lib.in_batch.in_batch_step`` does."""
    _check_positive_int("chunk_size", chunk_size)

    def step(model, batch):
        ids = batch["doc_ids"] + batch.get("neg_ids", []) if "n" in batch else batch["doc_ids"]
        return cached_in_batch_loss(model, batch["q"], batch["d"], chunk_size=chunk_size, temperature=temperature,
                                    negatives_batch=batch.get("n"), replay_rng=replay_rng, symmetric=symmetric,
                                    doc_ids=ids if mask_duplicates else None)

    return step


def train_gradcache(cfg, data, tokenizer, *, batch_size: int, chunk_size: int, model=None, n_hard: int = 0,
                    steps: int | None = None, generator: torch.Generator | None = None, eval_fn=None,
                    eval_every: int | None = None, progress: bool = True) -> tuple[torch.nn.Module, History]:
    """Supervised in-batch training on ``data.train`` with GradCache: batches of ``batch_size`` pairs (no
    duplicate positives) encoded ``chunk_size`` texts at a time; a new encoder unless ``model`` is given, the
    preset's temperature, learning rate, step budget and wall-clock cap (as ``train_in_batch``)."""
    _check_positive_int("batch_size", batch_size)
    _check_positive_int("chunk_size", chunk_size)
    device = get_device()
    model = (model or make_encoder(cfg, tokenizer)).to(device)
    generator = generator or torch.Generator().manual_seed(cfg.seed)
    sampler = NoDuplicateBatchSampler(data.train, batch_size, generator)
    history = train(
        model,
        gradcache_step(cfg.temperature, chunk_size),
        pair_batches(data, tokenizer, sampler, cfg, n_hard=n_hard, generator=generator),
        optimizer=torch.optim.AdamW(model.parameters(), lr=cfg.lr),
        max_steps=steps or cfg.train_steps,
        time_budget_s=cfg.train_seconds,
        eval_fn=eval_fn,
        eval_every=eval_every,
        progress=progress,
        desc=f"GradCache B={batch_size}, chunk {chunk_size}" + (f" +{n_hard} hard" if n_hard else ""),
        step_runs_backward=True,
    )
    return model, history


class SavedTensorPeak:
    """Context manager: the peak number of bytes that autograd holds for backward at once (the activations).

    Every tensor an operation saves for its backward pass goes through ``torch.autograd.graph.
    saved_tensors_hooks``; this counts its storage (once, however many nodes save it) from the moment it is
    saved until the graph that holds it is freed (after its backward, or when it is dropped), and keeps the
    maximum. Storages of ``exclude`` (the parameters, alive anyway) are not counted. Not counted either:
    temporaries that no backward needs, the gradients, and the no-graph embeddings of GradCache's step 1
    (B·D numbers per tower). On a GPU, ``torch.cuda.max_memory_allocated`` sees all of these as well."""

    def __init__(self, exclude: Sequence[torch.Tensor] = ()):
        self._exclude = {(t.device, t.untyped_storage().data_ptr()) for t in exclude}
        self._holders: dict = {}  # storage key → [count, nbytes]
        self.live = self.peak = 0

    def _pack(self, t: torch.Tensor):
        storage = t.untyped_storage()
        key = (t.device, storage.data_ptr())
        if key in self._exclude or storage.nbytes() == 0:
            return t
        entry = self._holders.setdefault(key, [0, storage.nbytes()])
        if entry[0] == 0:
            self.live += entry[1]
            self.peak = max(self.peak, self.live)
        entry[0] += 1
        return _Held(t, self, key)

    def _release(self, key) -> None:
        entry = self._holders[key]
        entry[0] -= 1
        if entry[0] == 0:
            self.live -= entry[1]
            del self._holders[key]

    def __enter__(self):
        self._hooks = torch.autograd.graph.saved_tensors_hooks(self._pack, _unpack)
        self._hooks.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        self._hooks.__exit__(*exc)


class _Held:
    """A saved tensor as autograd keeps it; releasing it (the graph is freed) lowers the live count."""

    def __init__(self, tensor, owner: SavedTensorPeak, key):
        self.tensor, self.owner, self.key = tensor, owner, key

    def __del__(self):
        self.owner._release(self.key)


def _unpack(held):
    return held.tensor if isinstance(held, _Held) else held


def measure_batch_cost(model: torch.nn.Module, make_batch: Callable[[int], dict], batch_sizes: Sequence[int], *,
                       chunk_size: int | None = None, temperature: float = 0.05, repeats: int = 3) -> list[dict]:
    """The cost of one training step (forward and backward, no optimizer step) at each batch size, plain
    (``course_lib.in_batch.in_batch_step``) and, when ``chunk_size`` is given, cached
    (``gradcache_step``) on the same batch ``make_batch(B)`` (a ``pair_batches`` dict of B pairs).

    One row per (B, method): ``{"batch_size", "method": "plain" | "cached", "chunk_size", "ms" (best of
    ``repeats`` timings), "saved_peak_bytes" (peak activation bytes, ``SavedTensorPeak``, measured on one
    extra untimed run), "cuda_peak_bytes" (``torch.cuda.max_memory_allocated`` above the memory allocated
    before the step, gradients included; None on CPU), "loss"}``. The model's parameters, gradients,
    train/eval mode and the random generators are as before afterwards."""
    if not callable(make_batch):
        raise TypeError(f"make_batch must be a function B → pair batch, got {type(make_batch).__name__}")
    if isinstance(batch_sizes, (str, bytes)) or not isinstance(batch_sizes, Sequence) or not batch_sizes:
        raise ValueError(f"batch_sizes must be a non-empty list of ints, got {batch_sizes!r}")
    for value, name in [(b, "each batch size") for b in batch_sizes] + [(repeats, "repeats")] + (
            [(chunk_size, "chunk_size")] if chunk_size is not None else []):
        _check_positive_int(name, value)
    device = _check_model(model)
    methods = [("plain", None)] + ([("cached", chunk_size)] if chunk_size is not None else [])
    params = list(model.parameters())
    grads, was_training, rows = [p.grad for p in params], model.training, []
    try:
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else [], device_type="cuda"):
            model.train()
            for b in batch_sizes:
                batch = make_batch(b)
                if not isinstance(batch, Mapping) or not {"q", "d", "doc_ids"} <= set(batch) \
                        or _check_tokens("make_batch(B)['q']", batch["q"]) != b:
                    raise ValueError(f"make_batch({b}) must return a pair batch (a dict with 'q', 'd', 'doc_ids', "
                                     f"as course_lib.in_batch.pair_batches yields) of {b} pairs")
                for method, chunk in methods:
                    step = _plain_step(temperature) if chunk is None else gradcache_step(temperature, chunk)
                    rows.append({"batch_size": b, "method": method, "chunk_size": chunk,
                                 **_measure(model, step, batch, repeats, device)})
    finally:
        for p, g in zip(params, grads):
            p.grad = g
        model.train(was_training)
    return rows


def _plain_step(temperature: float):
    """``in_batch_step`` followed by its backward: like ``gradcache_step``, it fills ``.grad``."""
    plain = in_batch_step(temperature)

    def run(model, batch):
        loss = plain(model, batch)
        loss.backward()
        return loss.detach()

    return run


def _measure(model, run, batch, repeats: int, device) -> dict:
    cuda = device.type == "cuda"
    model.zero_grad(set_to_none=True)
    if cuda:
        torch.cuda.synchronize(device)
        before = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
    with SavedTensorPeak(exclude=list(model.parameters())) as saved:
        loss = run(model, batch)
    cuda_peak = torch.cuda.max_memory_allocated(device) - before if cuda else None
    times = []
    for _ in range(repeats):
        model.zero_grad(set_to_none=True)
        t0 = time.perf_counter()
        run(model, batch)
        if cuda:
            torch.cuda.synchronize(device)
        times.append(time.perf_counter() - t0)
    model.zero_grad(set_to_none=True)
    return {"ms": 1000 * min(times), "saved_peak_bytes": saved.peak, "cuda_peak_bytes": cuda_peak,
            "loss": float(loss)}

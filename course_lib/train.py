"""One training loop for every method in the course.

A method supplies ``step_fn(model, batch) -> loss`` (a scalar tensor) and an iterable of batches; the loop
does the rest: optimiser steps, optional gradient clipping, a step budget and a wall-clock budget, a tqdm
bar, loss history, periodic evaluation, and atomic checkpoints that load with ``weights_only=True``.

Steps, not seconds, make a run reproducible (same seed, same machine → same metrics); the wall-clock budget
is a cap for slow machines, and the history records which limit stopped the run.
"""

import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from tqdm.auto import tqdm

from course_lib.utils import atomic_path


@dataclass
class History:
    """What a run did: per-step losses, evaluations ``{"step", ...metrics}``, seconds and why it stopped."""

    losses: list[float] = field(default_factory=list)
    evals: list[dict] = field(default_factory=list)
    train_seconds: float = 0.0
    eval_seconds: float = 0.0
    stopped: str = ""

    @property
    def steps(self) -> int:
        return len(self.losses)

    def as_dict(self) -> dict:
        return asdict(self) | {"steps": self.steps}


def save_checkpoint(path, model: torch.nn.Module, optimizer=None, step: int = 0, history: History | None = None) -> None:
    """Write a checkpoint atomically: to a temporary file first, then ``os.replace`` onto ``path``, so a crash
    mid-write never leaves a truncated checkpoint behind."""
    state = {"model": model.state_dict(), "step": step}
    if optimizer is not None:
        state["optimizer"] = optimizer.state_dict()
    if history is not None:
        state["history"] = history.as_dict()
    with atomic_path(path) as tmp:
        torch.save(state, tmp)


def load_checkpoint(path, model: torch.nn.Module, optimizer=None) -> dict:
    """Load a checkpoint with ``weights_only=True`` (no pickled code runs) into ``model`` (and
    ``optimizer``); returns the whole state dict (``step``, ``history``)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint at {path}")
    state = torch.load(path, weights_only=True, map_location="cpu")
    model.load_state_dict(state["model"])
    if optimizer is not None and "optimizer" in state:
        optimizer.load_state_dict(state["optimizer"])
    return state


def train(
    model: torch.nn.Module,
    step_fn,
    batches,
    *,
    optimizer: torch.optim.Optimizer,
    max_steps: int | None = None,
    time_budget_s: float | None = None,
    grad_clip: float | None = 1.0,
    eval_fn=None,
    eval_every: int | None = None,
    checkpoint_path=None,
    checkpoint_every: int | None = None,
    progress: bool = True,
    desc: str = "train",
) -> History:
    """Run ``step_fn`` over ``batches`` until ``max_steps``, ``time_budget_s`` (training time, evaluation
    excluded) or the end of ``batches``, whichever comes first.

    ``eval_fn(model) -> dict`` runs every ``eval_every`` steps and once at the end; each record is
    ``{"step", "train_seconds" (so far), **eval_fn(model)}``, for curves against steps or seconds. A non-finite loss stops the
    run with ``FloatingPointError`` naming the step (a diverged run should not look like a finished one).
    """
    if max_steps is None and time_budget_s is None:
        raise ValueError("give max_steps or time_budget_s (or both): the loop needs a budget to stop")
    if max_steps is not None and (not isinstance(max_steps, int) or max_steps < 1):
        raise ValueError(f"max_steps must be a positive int, got {max_steps!r}")
    if time_budget_s is not None and not time_budget_s > 0:
        raise ValueError(f"time_budget_s must be positive, got {time_budget_s!r}")
    if eval_every is not None and eval_fn is None:
        raise ValueError("eval_every is set but there is no eval_fn to run")
    history = History()
    was_training = model.training
    bar = tqdm(total=max_steps, desc=desc, disable=not progress, leave=False)

    def run_eval() -> None:
        t0 = time.perf_counter()
        history.evals.append({"step": history.steps, "train_seconds": round(history.train_seconds, 3), **eval_fn(model)})
        history.eval_seconds += time.perf_counter() - t0

    try:
        for batch in batches:
            t0 = time.perf_counter()
            model.train()
            loss = step_fn(model, batch)
            if not torch.isfinite(loss):
                raise FloatingPointError(f"loss became {loss.item()} at step {history.steps + 1}; lower lr or check the inputs")
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if grad_clip is not None:
                torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
            optimizer.step()
            history.losses.append(loss.item())
            history.train_seconds += time.perf_counter() - t0
            bar.update(1)
            bar.set_postfix(loss=f"{history.losses[-1]:.3f}")
            step = history.steps
            if eval_every and step % eval_every == 0:
                run_eval()
            if checkpoint_path and checkpoint_every and step % checkpoint_every == 0:
                save_checkpoint(checkpoint_path, model, optimizer, step, history)
            if max_steps is not None and step >= max_steps:
                history.stopped = "max_steps"
                break
            if time_budget_s is not None and history.train_seconds >= time_budget_s:
                history.stopped = "time_budget"
                break
        else:
            history.stopped = "data"
    finally:
        bar.close()
        model.train(was_training)
    if eval_fn is not None and (not history.evals or history.evals[-1]["step"] != history.steps):
        run_eval()
    if checkpoint_path:
        save_checkpoint(checkpoint_path, model, optimizer, history.steps, history)
    return history


def loss_fell(losses: list[float], window: int = 10) -> bool:
    """True when the mean of the last ``window`` losses is below the mean of the first ``window``."""
    if len(losses) < 2 * window:
        raise ValueError(f"need at least {2 * window} losses to compare windows of {window}, got {len(losses)}")
    first, last = losses[:window], losses[-window:]
    return math.fsum(last) / window < math.fsum(first) / window


def measure_step(model: torch.nn.Module, step_fn, batch, repeats: int = 3) -> dict:
    """Cost of one training step, without changing the model: the best of ``repeats`` timings of the forward and
    backward pass (milliseconds) and the bytes the forward pass saves for backward (the activations, which
    grow with the batch; counted once per storage with ``torch.autograd.graph.saved_tensors_hooks``).

    The saved bytes are what a bigger batch costs in memory on any device; on a GPU,
    ``torch.cuda.max_memory_allocated`` measures the whole peak as well (``peak_cuda_bytes``, else None).
    Gradients are cleared afterwards and no optimizer step is taken."""
    if isinstance(repeats, bool) or not isinstance(repeats, int) or repeats < 1:
        raise ValueError(f"repeats must be a positive int, got {repeats!r}")
    device = next(model.parameters()).device
    seen: dict[int, int] = {}

    def pack(t: torch.Tensor):
        storage = t.untyped_storage()
        seen[storage.data_ptr()] = storage.nbytes()
        return t

    was_training = model.training
    model.train()
    times, cuda = [], device.type == "cuda"
    try:
        for r in range(repeats):
            if cuda:
                torch.cuda.reset_peak_memory_stats(device)
            t0 = time.perf_counter()
            if r == 0:
                with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
                    loss = step_fn(model, batch)
            else:
                loss = step_fn(model, batch)
            loss.backward()
            if cuda:
                torch.cuda.synchronize(device)
            times.append(time.perf_counter() - t0)
            model.zero_grad(set_to_none=True)
    finally:
        model.train(was_training)
    return {"ms": 1000 * min(times), "saved_bytes": sum(seen.values()),
            "peak_cuda_bytes": torch.cuda.max_memory_allocated(device) if cuda else None}

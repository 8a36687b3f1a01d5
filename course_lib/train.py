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
    lr_factors: list[float] = field(default_factory=list)  # per step: the schedule's multiplier of the base lr
    evals: list[dict] = field(default_factory=list)
    train_seconds: float = 0.0
    eval_seconds: float = 0.0
    stopped: str = ""

    @property
    def steps(self) -> int:
        return len(self.losses)

    def as_dict(self) -> dict:
        return asdict(self) | {"steps": self.steps}


SCHEDULES = ("constant", "linear")


def lr_factor(step: int, warmup_steps: int = 0, total_steps: int | None = None, decay: str = "constant") -> float:
    """The multiplier of the base learning rate at 0-based ``step``: a linear warm-up from 0 over ``warmup_steps``
    (``step / warmup_steps``), then 1 (``decay="constant"``) or a linear decay to 0 at ``total_steps``
    (``decay="linear"``). This is transformers' ``get_linear_schedule_with_warmup`` (the schedule of BERT,
    RetroMAE's and SimBERT's reference training), so step 0 of a warm-up runs at lr 0."""
    if decay not in SCHEDULES:
        raise ValueError(f"decay must be one of {SCHEDULES}, got {decay!r}")
    if step < warmup_steps:
        return step / warmup_steps
    if decay == "constant":
        return 1.0
    return max(0.0, (total_steps - step) / max(1, total_steps - warmup_steps))


def _check_schedule(warmup_steps, decay, max_steps) -> None:
    if isinstance(warmup_steps, bool) or not isinstance(warmup_steps, int) or warmup_steps < 0:
        raise ValueError(f"warmup_steps must be an int >= 0, got {warmup_steps!r}")
    if decay not in SCHEDULES:
        raise ValueError(f"decay must be one of {SCHEDULES}, got {decay!r}")
    if decay == "linear" and max_steps is None:
        raise ValueError("decay='linear' decays to 0 at max_steps: give max_steps (a time budget alone has no end step)")
    if max_steps is not None and warmup_steps > max_steps:
        raise ValueError(f"warmup_steps={warmup_steps} exceeds max_steps={max_steps}; the warm-up would never end")


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
    ``optimizer``); returns the whole state dict (``step``, ``history``).

    Checks before anything changes: the file exists, torch can read it, and it holds a checkpoint (a dict with a ``model`` state dict),
    its tensor names and shapes are exactly ``model``'s, and its optimizer state has as many parameter groups,
    of the same sizes, as ``optimizer``. A mismatch raises and leaves the model and optimizer untouched."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint at {path}")
    try:
        state = torch.load(path, weights_only=True, map_location="cpu")
    except (RuntimeError, EOFError) as e:
        raise ValueError(f"cannot read {path} as a checkpoint ({str(e).splitlines()[0] if str(e) else type(e).__name__}"
                         "): it is truncated or not a torch file; use another checkpoint or train again") from e
    if not isinstance(state, dict) or not isinstance(state.get("model"), dict):
        keys = sorted(state) if isinstance(state, dict) else type(state).__name__
        raise ValueError(f"{path} holds {keys}, not a checkpoint (a dict with a 'model' state dict, as "
                         "save_checkpoint writes)")
    _check_model_state(path, state["model"], model)
    if optimizer is not None and "optimizer" in state:
        _check_optimizer_state(path, state["optimizer"], optimizer)
    model.load_state_dict(state["model"])
    if optimizer is not None and "optimizer" in state:
        optimizer.load_state_dict(state["optimizer"])
    return state


def _check_model_state(path: Path, saved: dict, model: torch.nn.Module) -> None:
    """The saved tensors must have exactly the model's names and shapes (a checkpoint of another architecture
    would otherwise be copied in part before ``load_state_dict`` complains)."""
    own = model.state_dict()
    missing, unexpected = sorted(set(own) - set(saved)), sorted(set(saved) - set(own))
    shapes = [f"{k}: {_shape(saved[k])} in the file, {_shape(own[k])} in the model"
              for k in sorted(set(own) & set(saved)) if _shape(saved[k]) != _shape(own[k])]
    if missing or unexpected or shapes:
        raise ValueError(
            f"{path} was saved from another architecture: missing {missing[:5]}, unexpected {unexpected[:5]}, "
            f"shape mismatches {shapes[:5]} ({len(missing)}, {len(unexpected)}, {len(shapes)} in all); build the "
            "model with the configuration that trained this checkpoint. Nothing was loaded."
        )


def _shape(value) -> tuple | str:
    return tuple(value.shape) if isinstance(value, torch.Tensor) else type(value).__name__


def _check_optimizer_state(path: Path, saved, optimizer) -> None:
    """The saved optimizer must have the optimizer's number of parameter groups, each of the same size."""
    groups = saved.get("param_groups") if isinstance(saved, dict) else None
    got = [len(g.get("params", ())) for g in groups] if isinstance(groups, list) else None
    want = [len(g["params"]) for g in optimizer.param_groups]
    if got != want:
        raise ValueError(f"{path} holds an optimizer with parameter groups of sizes {got}, but this optimizer's are "
                         f"{want}; pass an optimizer built over the same model and parameters. Nothing was loaded.")


def _check_checkpoint_path(checkpoint_path) -> None:
    """Fail before training when a checkpoint could not be written there: the path must not be a directory and
    its nearest existing ancestor must be a directory (``save_checkpoint`` creates missing parent folders)."""
    path = Path(checkpoint_path)
    if path.is_dir():
        raise IsADirectoryError(f"checkpoint_path {path} is a directory; give a file path such as {path / 'model.pt'}")
    parent = path.parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if not parent.is_dir():
        raise NotADirectoryError(f"checkpoint_path {path} cannot be created: {parent} is a file, not a directory")


def _check_loss(loss, step: int, ran_backward: bool = False) -> None:
    """``step_fn`` must return a scalar tensor that requires grad (checked before any optimizer step); with
    ``ran_backward`` (the step ran its own backward pass), a scalar tensor that is detached."""
    if not isinstance(loss, torch.Tensor):
        raise TypeError(f"step_fn returned {type(loss).__name__} at step {step}; it must return the loss as a "
                        "scalar torch.Tensor computed from the model (not .item() or a float)")
    if loss.dim() != 0:
        raise ValueError(f"step_fn returned a tensor of shape {tuple(loss.shape)} at step {step}; reduce it to a "
                         "scalar loss (e.g. .mean())")
    if ran_backward:
        if loss.requires_grad:
            raise ValueError(f"step_fn returned a loss that requires grad at step {step}, but step_runs_backward=True "
                             "says the step already ran its backward pass; return loss.detach() after calling "
                             "backward, or use step_runs_backward=False and let the loop call backward")
        return
    if not loss.requires_grad:
        raise ValueError(f"step_fn returned a loss that does not require grad at step {step}; compute it from the "
                         "model's outputs, outside torch.no_grad()")


def _check_budget(name: str, value, kind: type) -> None:
    """``value`` is None, or a positive ``kind`` (int, or a number for float); bools are refused."""
    ok = isinstance(value, (int, float) if kind is float else int) and not isinstance(value, bool) and value > 0
    if value is not None and not ok:
        allowed = "positive (a number > 0)" if kind is float else "a positive int"
        raise ValueError(f"{name} must be {allowed} or None, got {value!r}")


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
    warmup_steps: int = 0,
    decay: str = "constant",
    step_runs_backward: bool = False,
    schedule_offset: int = 0,
    schedule_steps: int | None = None,
) -> History:
    """Run ``step_fn`` over ``batches`` until ``max_steps``, ``time_budget_s`` (training time, evaluation
    excluded) or the end of ``batches``, whichever comes first.

    ``eval_fn(model) -> dict`` runs every ``eval_every`` steps and once at the end; each record is
    ``{"step", "train_seconds" (so far), **eval_fn(model)}``, for curves against steps or seconds. A non-finite loss stops the
    run with ``FloatingPointError`` naming the step (a diverged run should not look like a finished one).

    Checks before the first step: a budget is given; ``max_steps``, ``eval_every`` and ``checkpoint_every`` are
    positive ints, ``time_budget_s`` and ``grad_clip`` positive numbers (or None; bools refused);
    ``eval_every`` needs ``eval_fn`` and ``checkpoint_every`` needs ``checkpoint_path``, which must be writable
    as a file. Each step checks that ``step_fn`` returned a scalar tensor that requires grad before the
    optimizer steps; each evaluation that ``eval_fn`` returned a dict without the keys "step"/"train_seconds".

    Learning-rate schedule: each step runs at the optimizer's lr × ``lr_factor(step, warmup_steps, max_steps,
    decay)`` (default: constant, no warm-up); the factors are recorded in ``history.lr_factors`` and the
    optimizer's own lr is restored when the loop ends. A run split into segments (``course_lib.recipe`` resumes
    from one) keeps one schedule: ``schedule_offset`` steps were done before this call and the schedule spans
    ``schedule_steps`` in all (default ``max_steps``).

    ``step_runs_backward=True`` is for a step that computes its own gradients, such as GradCache
    (``course_lib.gradcache``): the loop clears the gradients *before* calling ``step_fn``, which leaves them in
    ``.grad`` and returns the loss detached; the loop does not call backward.
    """
    _check_train_args(max_steps, time_budget_s, grad_clip, eval_fn, eval_every, checkpoint_path, checkpoint_every)
    total = schedule_steps if schedule_steps is not None else max_steps
    _check_schedule(warmup_steps, decay, total)
    if isinstance(schedule_offset, bool) or not isinstance(schedule_offset, int) or schedule_offset < 0:
        raise ValueError(f"schedule_offset must be an int >= 0 (steps done before this call), got {schedule_offset!r}")
    if not isinstance(step_runs_backward, bool):
        raise TypeError(f"step_runs_backward must be True or False, got {step_runs_backward!r}")
    base_lrs = [group["lr"] for group in optimizer.param_groups]
    history = History()
    was_training = model.training
    bar = tqdm(total=max_steps, desc=desc, disable=not progress, leave=False)

    def run_eval() -> None:
        t0 = time.perf_counter()
        metrics = eval_fn(model)
        if not isinstance(metrics, dict) or {"step", "train_seconds"} & set(metrics):
            raise TypeError(f"eval_fn must return a dict of metrics without the keys 'step' and 'train_seconds', "
                            f"got {metrics!r}; return e.g. {{'ndcg@10': value}}")
        history.evals.append({"step": history.steps, "train_seconds": round(history.train_seconds, 3), **metrics})
        history.eval_seconds += time.perf_counter() - t0

    try:
        for batch in batches:
            t0 = time.perf_counter()
            model.train()
            if step_runs_backward:
                optimizer.zero_grad(set_to_none=True)  # the step fills .grad itself
            loss = step_fn(model, batch)
            _check_loss(loss, history.steps + 1, step_runs_backward)
            if not torch.isfinite(loss):
                raise FloatingPointError(f"loss became {loss.item()} at step {history.steps + 1}; lower lr or check the inputs")
            if not step_runs_backward:
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
            if grad_clip is not None:
                torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
            factor = lr_factor(schedule_offset + history.steps, warmup_steps, total, decay)
            for group, base in zip(optimizer.param_groups, base_lrs):
                group["lr"] = base * factor
            optimizer.step()
            history.losses.append(loss.item())
            history.lr_factors.append(factor)
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
        for group, base in zip(optimizer.param_groups, base_lrs):
            group["lr"] = base  # the schedule is this run's; a continued run starts from the same base lr
    if eval_fn is not None and (not history.evals or history.evals[-1]["step"] != history.steps):
        run_eval()
    if checkpoint_path:
        save_checkpoint(checkpoint_path, model, optimizer, history.steps, history)
    return history


def _check_train_args(max_steps, time_budget_s, grad_clip, eval_fn, eval_every, checkpoint_path,
                      checkpoint_every) -> None:
    """The argument checks of ``train`` (see its docstring), all before the first step."""
    if max_steps is None and time_budget_s is None:
        raise ValueError("give max_steps or time_budget_s (or both): the loop needs a budget to stop")
    for name, value, kind in (("max_steps", max_steps, int), ("time_budget_s", time_budget_s, float),
                              ("grad_clip", grad_clip, float), ("eval_every", eval_every, int),
                              ("checkpoint_every", checkpoint_every, int)):
        _check_budget(name, value, kind)
    if eval_every is not None and eval_fn is None:
        raise ValueError("eval_every is set but there is no eval_fn to run")
    if checkpoint_every is not None and not checkpoint_path:
        raise ValueError("checkpoint_every is set but there is no checkpoint_path to write to")
    if checkpoint_path:
        _check_checkpoint_path(checkpoint_path)


def loss_fell(losses: list[float], window: int = 10) -> bool:
    """True when the mean of the last ``window`` losses is below the mean of the first ``window`` (an int >= 1)."""
    if isinstance(window, bool) or not isinstance(window, int) or window < 1:
        raise ValueError(f"window must be a positive int, got {window!r}")
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

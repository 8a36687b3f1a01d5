"""The training loop (budgets, evaluation, failures, determinism), checkpoints, presets and seeding."""

import dataclasses
import math
import pickle
import time

import pytest
import torch

import course_lib.train as ct
import course_lib.utils
from course_lib.config import PRESETS, Config, fast_mode, get_config
from course_lib.train import History, load_checkpoint, loss_fell, save_checkpoint, train
from course_lib.utils import seed_everything

TRUE_W = torch.tensor([[2.0, -1.0, 0.5, 3.0]])


def batches(generator: torch.Generator, batch_size: int = 32):
    """An endless stream of noisy linear-regression batches y = x·w + 1 + noise."""
    while True:
        x = torch.randn(batch_size, 4, generator=generator)
        y = x @ TRUE_W.T + 1.0 + 0.1 * torch.randn(batch_size, 1, generator=generator)
        yield x, y


def mse_step(model, batch):
    x, y = batch
    return torch.nn.functional.mse_loss(model(x), y)


def toy(seed: int = 0, lr: float = 0.05):
    generator = seed_everything(seed)
    model = torch.nn.Linear(4, 1)
    optimizer = torch.optim.SGD(model.parameters(), lr=lr)
    return model, optimizer, batches(generator)


# ---------------------------------------------------------------------------------------------------------
# the loop


def test_loss_falls_and_stops_at_max_steps():
    model, optimizer, stream = toy()
    history = train(model, mse_step, stream, optimizer=optimizer, max_steps=60, progress=False)
    assert history.stopped == "max_steps"
    assert history.steps == 60 == len(history.losses)
    assert all(math.isfinite(v) for v in history.losses)
    assert loss_fell(history.losses)
    assert history.train_seconds > 0 and history.evals == []


def test_stops_at_end_of_data():
    model, optimizer, stream = toy()
    finite = [next(stream) for _ in range(7)]
    history = train(model, mse_step, finite, optimizer=optimizer, max_steps=100, progress=False)
    assert history.stopped == "data" and history.steps == 7


def test_stops_on_time_budget():
    model, optimizer, stream = toy()

    def slow_step(model, batch):
        time.sleep(0.02)
        return mse_step(model, batch)

    history = train(model, slow_step, stream, optimizer=optimizer, time_budget_s=0.2, max_steps=10_000,
                    progress=False)
    assert history.stopped == "time_budget"
    assert history.train_seconds >= 0.2
    assert 1 <= history.steps < 10_000


def test_time_budget_alone_is_a_budget():
    model, optimizer, stream = toy()
    history = train(model, mse_step, stream, optimizer=optimizer, time_budget_s=0.05, progress=False)
    assert history.stopped == "time_budget" and history.steps >= 1


@pytest.mark.parametrize("max_steps, eval_every, expected", [(10, 3, [3, 6, 9, 10]), (9, 3, [3, 6, 9]), (4, None, [4])])
def test_eval_schedule(max_steps, eval_every, expected):
    model, optimizer, stream = toy()
    calls = []

    def eval_fn(m):
        calls.append(m)
        return {"w0": float(m.weight[0, 0].detach())}

    history = train(model, mse_step, stream, optimizer=optimizer, max_steps=max_steps, eval_fn=eval_fn,
                    eval_every=eval_every, progress=False)
    assert [e["step"] for e in history.evals] == expected
    assert all(set(e) == {"step", "train_seconds", "w0"} for e in history.evals)
    assert [e["train_seconds"] for e in history.evals] == sorted(e["train_seconds"] for e in history.evals)
    assert len(calls) == len(expected)  # no evaluation runs twice for one step
    assert history.eval_seconds >= 0


def test_eval_at_end_of_data_and_mode_restored():
    model, optimizer, stream = toy()
    model.eval()
    finite = [next(stream) for _ in range(5)]
    history = train(model, mse_step, finite, optimizer=optimizer, max_steps=50, eval_fn=lambda m: {"x": 1.0},
                    eval_every=2, progress=False)
    assert [e["step"] for e in history.evals] == [2, 4, 5]
    assert not model.training  # the loop trains in train mode, then restores the caller's mode


def test_nan_loss_raises():
    model, optimizer, stream = toy()
    calls = []

    def step(model, batch):
        calls.append(1)
        loss = mse_step(model, batch)
        return loss * float("nan") if len(calls) == 3 else loss

    with pytest.raises(FloatingPointError, match="at step 3"):
        train(model, step, stream, optimizer=optimizer, max_steps=10, progress=False)


def test_inf_loss_raises():
    model, optimizer, stream = toy()
    with pytest.raises(FloatingPointError, match="loss became inf at step 1"):
        train(model, lambda m, b: mse_step(m, b) * float("inf"), stream, optimizer=optimizer, max_steps=5,
              progress=False)


def test_bad_arguments():
    model, optimizer, stream = toy()
    with pytest.raises(ValueError, match="give max_steps or time_budget_s"):
        train(model, mse_step, stream, optimizer=optimizer, progress=False)
    with pytest.raises(ValueError, match="eval_every is set but there is no eval_fn"):
        train(model, mse_step, stream, optimizer=optimizer, max_steps=5, eval_every=2, progress=False)
    for bad in (0, -1, 2.5):
        with pytest.raises(ValueError, match="max_steps must be a positive int"):
            train(model, mse_step, stream, optimizer=optimizer, max_steps=bad, progress=False)
    with pytest.raises(ValueError, match="time_budget_s must be positive"):
        train(model, mse_step, stream, optimizer=optimizer, time_budget_s=0, progress=False)


def test_same_seed_same_losses():
    runs = []
    for _ in range(2):
        model, optimizer, stream = toy(seed=3)
        runs.append(train(model, mse_step, stream, optimizer=optimizer, max_steps=30, progress=False).losses)
    assert runs[0] == runs[1]
    model, optimizer, stream = toy(seed=4)
    other = train(model, mse_step, stream, optimizer=optimizer, max_steps=30, progress=False).losses
    assert other != runs[0]


def test_loss_fell():
    assert loss_fell([5.0] * 10 + [1.0] * 10)
    assert not loss_fell([1.0] * 10 + [5.0] * 10)
    assert not loss_fell([1.0] * 20)
    with pytest.raises(ValueError, match="need at least 20 losses"):
        loss_fell([1.0] * 19)


def test_history_as_dict():
    h = History(losses=[1.0, 0.5], stopped="data")
    d = h.as_dict()
    assert d["steps"] == 2 and d["losses"] == [1.0, 0.5] and d["stopped"] == "data"


# ---------------------------------------------------------------------------------------------------------
# checkpoints


def trained_toy(steps: int = 5):
    model, _, stream = toy()
    optimizer = torch.optim.Adam(model.parameters(), lr=0.01)
    history = train(model, mse_step, stream, optimizer=optimizer, max_steps=steps, progress=False)
    return model, optimizer, history


def test_checkpoint_roundtrip(tmp_path):
    model, optimizer, history = trained_toy()
    path = tmp_path / "runs" / "ck.pt"  # the parent folder is created
    save_checkpoint(path, model, optimizer, step=history.steps, history=history)
    assert path.is_file()
    assert [p.name for p in path.parent.iterdir()] == ["ck.pt"], "a temporary file was left behind"

    fresh = torch.nn.Linear(4, 1)
    fresh_opt = torch.optim.Adam(fresh.parameters(), lr=0.01)
    assert not torch.equal(fresh.weight, model.weight)
    state = load_checkpoint(path, fresh, fresh_opt)
    for a, b in zip(model.state_dict().values(), fresh.state_dict().values()):
        assert torch.equal(a, b)
    saved, loaded = optimizer.state_dict(), fresh_opt.state_dict()
    assert saved["param_groups"] == loaded["param_groups"]
    for key in saved["state"]:
        for name, value in saved["state"][key].items():
            assert torch.equal(torch.as_tensor(value), torch.as_tensor(loaded["state"][key][name]))
    assert state["step"] == 5 and state["history"]["steps"] == 5
    assert state["history"]["losses"] == history.losses


def test_checkpoint_without_optimizer(tmp_path):
    model, _, _ = trained_toy(2)
    save_checkpoint(tmp_path / "m.pt", model)
    fresh = torch.nn.Linear(4, 1)
    state = load_checkpoint(tmp_path / "m.pt", fresh, torch.optim.SGD(fresh.parameters(), lr=0.1))
    assert "optimizer" not in state and state["step"] == 0
    assert torch.equal(fresh.weight, model.weight)


class NotAllowed:
    """Anything pickled that is not a tensor or a plain container: weights_only=True must refuse it."""


def test_load_checkpoint_uses_weights_only(tmp_path):
    model, _, _ = trained_toy(2)
    path = tmp_path / "evil.pt"
    torch.save({"model": model.state_dict(), "step": 0, "payload": NotAllowed()}, path)
    with pytest.raises(pickle.UnpicklingError, match="Weights only load failed"):
        load_checkpoint(path, torch.nn.Linear(4, 1))


def test_save_is_atomic(tmp_path, monkeypatch):
    model, optimizer, history = trained_toy()
    path = tmp_path / "ck.pt"
    save_checkpoint(path, model, optimizer, step=5, history=history)
    original = path.read_bytes()
    original_weight = model.weight.detach().clone()
    with torch.no_grad():
        model.weight.add_(1.0)

    def failing_replace(src, dst):
        raise OSError("disk full (simulated)")

    monkeypatch.setattr(course_lib.utils.os, "replace", failing_replace)
    with pytest.raises(OSError, match="simulated"):
        save_checkpoint(path, model, optimizer, step=6)
    monkeypatch.undo()
    assert path.read_bytes() == original  # the old checkpoint is untouched
    fresh = torch.nn.Linear(4, 1)
    assert load_checkpoint(path, fresh)["step"] == 5
    assert torch.equal(fresh.weight, original_weight)


def test_train_writes_checkpoints(tmp_path, monkeypatch):
    model, optimizer, stream = toy()
    path = tmp_path / "ck.pt"
    saved_steps = []
    real_save = ct.save_checkpoint

    def spy(p, m, o, step, h):
        saved_steps.append(step)
        real_save(p, m, o, step, h)

    monkeypatch.setattr(ct, "save_checkpoint", spy)
    history = train(model, mse_step, stream, optimizer=optimizer, max_steps=7, checkpoint_path=path,
                    checkpoint_every=3, progress=False)
    assert saved_steps == [3, 6, 7]
    state = load_checkpoint(path, torch.nn.Linear(4, 1))
    assert state["step"] == 7 and state["history"]["losses"] == history.losses
    assert not [p for p in tmp_path.iterdir() if ".tmp" in p.name]


def test_load_missing_checkpoint(tmp_path):
    with pytest.raises(FileNotFoundError, match="no checkpoint at"):
        load_checkpoint(tmp_path / "nothing.pt", torch.nn.Linear(4, 1))


# ---------------------------------------------------------------------------------------------------------
# config


def test_presets():
    fast, full = get_config("fast"), get_config("full")
    assert isinstance(fast, Config) and fast.preset == "fast" and full.preset == "full"
    assert (fast.num_layers, fast.hidden_size, fast.num_heads, fast.intermediate_size) == (2, 128, 2, 512)
    assert fast.n_lemmas == 1700 and full.n_lemmas is None
    assert full.vocab_size > fast.vocab_size and full.train_steps > fast.train_steps  # same encoder, more data
    assert full.vocab_size > fast.vocab_size
    assert fast.hidden_size % fast.num_heads == 0 and full.hidden_size % full.num_heads == 0
    assert get_config("fast") is PRESETS["fast"]


@pytest.mark.parametrize(
    "env, expected",
    [
        ({"COURSE_FAST": "1"}, "fast"),
        ({"COURSE_FAST": "true"}, "fast"),
        ({"COURSE_FAST": " Yes "}, "fast"),
        ({"COURSE_FAST": "0"}, "full"),
        ({"COURSE_FAST": "no"}, "full"),
        ({"COURSE_FAST": "0", "CI": "true"}, "full"),  # CI plays no part
        ({"CI": "true"}, "fast"),
        ({"COURSE_FAST": ""}, "fast"),  # empty counts as unset
        ({}, "fast"),  # a learner who sets nothing gets notebooks that finish in about a minute
    ],
)
def test_env_selects_the_preset(monkeypatch, env, expected):
    # a context, so that COURSE_FAST is back before the report hook of the root conftest.py reads it
    with monkeypatch.context() as mp:
        mp.delenv("COURSE_FAST", raising=False)
        mp.delenv("CI", raising=False)
        for key, value in env.items():
            mp.setenv(key, value)
        preset, fast = get_config().preset, fast_mode()
    assert preset == expected
    assert fast == (expected == "fast")


def test_bad_course_fast_value(monkeypatch):
    monkeypatch.setenv("COURSE_FAST", "maybe")
    with pytest.raises(ValueError, match="COURSE_FAST='maybe' is not understood"):
        get_config()


def test_unknown_preset():
    with pytest.raises(ValueError, match=r"unknown preset 'medium'; choose one of \['fast', 'full'\]"):
        get_config("medium")


def test_overrides_and_replace():
    cfg = get_config("fast", lr=0.1, train_steps=5)
    assert cfg.lr == 0.1 and cfg.train_steps == 5 and cfg.preset == "fast"
    assert PRESETS["fast"].lr == 2e-3  # the preset itself is unchanged
    other = cfg.replace(seed=7)
    assert other.seed == 7 and cfg.seed == 0
    with pytest.raises(ValueError, match=r"unknown config field\(s\) \['learning_rate'\]"):
        cfg.replace(learning_rate=1.0)
    with pytest.raises(ValueError, match="unknown config field"):
        get_config("fast", hiden_size=64)


def test_config_is_frozen():
    cfg = get_config("fast")
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.lr = 1.0


# ---------------------------------------------------------------------------------------------------------
# seeding


def test_seed_everything():
    g1 = seed_everything(5)
    a = torch.rand(3)
    g2 = seed_everything(5)
    b = torch.rand(3)
    assert isinstance(g1, torch.Generator) and g1.initial_seed() == 5
    assert torch.equal(a, b)  # the global stream is seeded
    assert torch.equal(torch.rand(3, generator=g1), torch.rand(3, generator=g2))  # so is the returned one


def test_seed_everything_threads():
    before = torch.get_num_threads()
    try:
        seed_everything(0, num_threads=1)
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)


@pytest.mark.parametrize("seed", [-1, 1.0, "3", None])
def test_seed_everything_rejects_bad_seeds(seed):
    with pytest.raises(ValueError, match="seed must be a non-negative int"):
        seed_everything(seed)


def test_lr_factor_matches_transformers_linear_schedule_with_warmup():
    from transformers import get_linear_schedule_with_warmup

    from course_lib.train import lr_factor

    param = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([param], lr=1.0)
    sched = get_linear_schedule_with_warmup(opt, num_warmup_steps=5, num_training_steps=20)
    for step in range(25):
        assert lr_factor(step, 5, 20, "linear") == pytest.approx(opt.param_groups[0]["lr"]), step
        opt.step()
        sched.step()
    assert [lr_factor(s, 3) for s in range(5)] == pytest.approx([0, 1 / 3, 2 / 3, 1, 1])  # warm-up, then constant
    assert lr_factor(7) == 1.0


def test_train_applies_the_schedule_and_restores_the_base_lr():
    model = torch.nn.Linear(2, 1)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    seen = []

    def step_fn(m, batch):
        seen.append(opt.param_groups[0]["lr"])
        return m(batch).pow(2).mean()

    batches = (torch.ones(4, 2) for _ in range(100))
    history = train(model, step_fn, batches, optimizer=opt, max_steps=10, warmup_steps=2, decay="linear",
                    progress=False)
    assert history.lr_factors == pytest.approx([0, 0.5] + [(10 - s) / 8 for s in range(2, 10)])
    assert opt.param_groups[0]["lr"] == 0.1  # restored
    assert len(seen) == 10


@pytest.mark.parametrize("kwargs, message", [
    ({"warmup_steps": -1}, "warmup_steps must be an int >= 0"),
    ({"warmup_steps": True}, "warmup_steps must be an int >= 0"),
    ({"decay": "cosine"}, "decay must be one of"),
    ({"decay": "linear", "max_steps": None, "time_budget_s": 5.0}, "give max_steps"),
    ({"warmup_steps": 20}, "exceeds max_steps"),
])
def test_schedule_arguments_are_checked_before_training(kwargs, message):
    model = torch.nn.Linear(2, 1)
    before = [p.detach().clone() for p in model.parameters()]
    args = {"optimizer": torch.optim.SGD(model.parameters(), lr=0.1), "max_steps": 10, "progress": False} | kwargs
    with pytest.raises(ValueError, match=message):
        train(model, lambda m, b: m(b).sum(), (torch.ones(1, 2) for _ in range(3)), **args)
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))

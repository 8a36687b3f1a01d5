"""Bad inputs to ``course_lib.index``, ``course_lib.train`` and ``course_lib.config``: each gets a clear error that
names the problem, and changes nothing (no file rewritten, no tensor of a model or optimizer touched).

Sweeps: HNSW parameters and damaged, mixed or edited graph/sidecar pairs (the cases that crash hnswlib run in a
subprocess, so a segfault fails the test instead of killing pytest), an interrupted HNSW save, ExactIndex files
that are truncated or hold something else, ``recall_vs_exact(k)``, checkpoints of another architecture or
optimizer, ``train`` arguments, ``step_fn`` and ``eval_fn`` results, ``loss_fell(window)``, and ``Config``
fields of the wrong type or range. The last section keeps bad inputs that were already clear, clear.
"""

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

import course_lib.models
from course_lib import index as ci
from course_lib.config import HNSW_M_RANGE, POOLINGS, PRESETS, get_config
from course_lib.index import ExactIndex, HNSWIndex, recall_vs_exact
from course_lib.train import load_checkpoint, loss_fell, save_checkpoint, train

REPO = Path(__file__).resolve().parents[1]


def vectors(n: int, dim: int = 8, seed: int = 0) -> np.ndarray:
    v = np.random.default_rng(seed).normal(size=(n, dim))
    return (v / np.linalg.norm(v, axis=1, keepdims=True)).astype(np.float32)


def saved_hnsw(folder: Path, n: int = 30, prefix: str = "doc", seed: int = 0) -> Path:
    index = HNSWIndex(8, M=8, ef_construction=32, ef=16)
    index.add([f"{prefix}{i}" for i in range(n)], vectors(n, seed=seed))
    path = folder / "h.bin"
    index.save(path)
    return path


def pair_bytes(path: Path) -> tuple[bytes, bytes]:
    return path.read_bytes(), path.with_name(path.name + ".json").read_bytes()


def run_python(code: str) -> subprocess.CompletedProcess:
    """Run ``code`` in a fresh interpreter (a crash there shows as a negative return code, not a dead pytest)."""
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], cwd=REPO, capture_output=True, text=True,
                          timeout=300)


# ---------------------------------------------------------------------------------------------------------
# HNSW: inputs that crashed hnswlib (run in a subprocess)


@pytest.mark.parametrize("damage", ["truncate", "random_bytes"])
def test_hnsw_load_damaged_graph_fails_cleanly(tmp_path, damage):
    path = saved_hnsw(tmp_path)
    good = path.read_bytes()
    bad = good[: len(good) // 2] if damage == "truncate" else np.random.default_rng(0).bytes(len(good))
    path.write_bytes(bad)
    result = run_python(f"from course_lib.index import HNSWIndex\nHNSWIndex.load({str(path)!r})")
    assert result.returncode == 1, (result.returncode, result.stderr[-2000:])
    assert "does not match the sha256 recorded in" in result.stderr
    assert path.read_bytes() == bad


def test_hnsw_M_zero_fails_cleanly():
    result = run_python("""
        import numpy as np
        from course_lib.index import HNSWIndex
        HNSWIndex(8, M=0).add(["a", "b"], np.ones((2, 8), dtype=np.float32))
    """)
    assert result.returncode == 1, (result.returncode, result.stderr[-2000:])
    assert "M must be an int in [2, 100], got 0" in result.stderr


@pytest.mark.parametrize("name, value", [
    ("M", 1), ("M", -1), ("M", 101), ("M", 16.0), ("M", True), ("ef_construction", 0), ("ef", 0), ("seed", -1),
    ("num_threads", 0), ("search_threads", 0),
])
def test_hnsw_bad_parameters(name, value):
    with pytest.raises(ValueError, match=rf"{name} must be an int .*got {value!r}"):
        HNSWIndex(8, **{name: value})


def test_hnsw_set_ef_bad_value_changes_nothing():
    index = HNSWIndex(8, ef=16)
    with pytest.raises(ValueError, match="ef must be an int >= 1, got 0"):
        index.set_ef(0)
    assert index.params["ef"] == 16


# ---------------------------------------------------------------------------------------------------------
# HNSW: the graph and its sidecar are one pair


@pytest.mark.parametrize("failing", ["graph", "sidecar"])
def test_hnsw_interrupted_save_keeps_the_old_pair(tmp_path, monkeypatch, failing):
    path = saved_hnsw(tmp_path, prefix="old")
    before = pair_bytes(path)
    newer = HNSWIndex(8, M=8, ef_construction=32, ef=16)
    newer.add([f"new{i}" for i in range(40)], vectors(40, seed=5))
    real_replace = ci.os.replace
    target = path if failing == "graph" else path.with_name(path.name + ".json")

    def replace(src, dst):
        if Path(dst) == target:
            raise OSError("disk full (simulated)")
        real_replace(src, dst)

    monkeypatch.setattr(ci.os, "replace", replace)
    with pytest.raises(OSError, match="simulated"):
        newer.save(path)
    monkeypatch.undo()
    assert pair_bytes(path) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["h.bin", "h.bin.json"]
    assert HNSWIndex.load(path).ids == [f"old{i}" for i in range(30)]


def test_hnsw_graph_of_another_save_is_refused(tmp_path):
    path = saved_hnsw(tmp_path)
    other = saved_hnsw(tmp_path / "other", n=40, seed=3)
    path.write_bytes(other.read_bytes())  # a new graph under the old sidecar
    before = pair_bytes(path)
    with pytest.raises(ValueError, match="does not match the sha256 recorded in .*h.bin.json"):
        HNSWIndex.load(path)
    assert pair_bytes(path) == before


def edit_sidecar(path: Path, **changes) -> None:
    side = path.with_name(path.name + ".json")
    meta = json.loads(side.read_text())
    meta.update(changes)
    side.write_text(json.dumps(meta))


def test_hnsw_reordered_ids_are_refused(tmp_path):
    path = saved_hnsw(tmp_path)
    ids = json.loads(path.with_name("h.bin.json").read_text())["ids"]
    edit_sidecar(path, ids=ids[::-1])
    before = pair_bytes(path)
    with pytest.raises(ValueError, match="ids in .* do not match their recorded count and digest"):
        HNSWIndex.load(path)
    assert pair_bytes(path) == before


def test_hnsw_wrong_dim_in_sidecar_is_refused(tmp_path):
    path = saved_hnsw(tmp_path)
    edit_sidecar(path, dim=16)
    with pytest.raises(ValueError, match=r"records \{'dim': 16.*but the graph .* holds \{'dim': 8"):
        HNSWIndex.load(path)


def test_hnsw_sidecar_without_checksums_is_refused(tmp_path):
    path = saved_hnsw(tmp_path)
    meta = json.loads(path.with_name("h.bin.json").read_text())
    old_format = {"dim": meta["dim"], "ids": meta["ids"], "params": meta["params"]}  # as the first version wrote
    path.with_name("h.bin.json").write_text(json.dumps(old_format))
    with pytest.raises(ValueError, match="is not a sidecar of format .*save it again"):
        HNSWIndex.load(path)


def test_hnsw_sidecar_not_json(tmp_path):
    path = saved_hnsw(tmp_path)
    path.with_name("h.bin.json").write_text('{"dim": 8, "ids": [')
    with pytest.raises(ValueError, match="h.bin.json is not valid JSON"):
        HNSWIndex.load(path)


def test_hnsw_load_prints_no_already_inited_warning(tmp_path, capfd):
    path = saved_hnsw(tmp_path)
    capfd.readouterr()
    loaded = HNSWIndex.load(path)
    out, err = capfd.readouterr()
    assert "already inited" not in out + err
    assert len(loaded) == 30 and loaded.search(vectors(1), 1)[0] == [["doc0"]]


# ---------------------------------------------------------------------------------------------------------
# ExactIndex files


def saved_exact(folder: Path) -> Path:
    index = ExactIndex(8)
    index.add(["a", "b", "c"], vectors(3))
    index.save(folder / "e.pt")
    return folder / "e.pt"


def test_exact_load_truncated(tmp_path):
    path = saved_exact(tmp_path)
    path.write_bytes(path.read_bytes()[:200])
    with pytest.raises(ValueError, match=r"cannot read .*e.pt as an ExactIndex file .*truncated"):
        ExactIndex.load(path)


def test_exact_load_a_training_checkpoint(tmp_path):
    path = tmp_path / "ck.pt"
    save_checkpoint(path, torch.nn.Linear(4, 1))
    with pytest.raises(ValueError, match=r"ck.pt holds the keys \['model', 'step'\], not an ExactIndex.*load_checkpoint"):
        ExactIndex.load(path)


def test_exact_load_wrong_vector_shape(tmp_path):
    path = tmp_path / "e.pt"
    torch.save({"dim": 8, "ids": ["a", "b"], "vectors": torch.zeros(3, 8)}, path)
    with pytest.raises(ValueError, match=r"shape \(len\(ids\), dim\) = \(2, 8\)"):
        ExactIndex.load(path)


@pytest.mark.parametrize("load, name, match", [
    (HNSWIndex.load, "none.bin", "no HNSW graph file at .*none.bin; HNSWIndex.save writes"),
    (ExactIndex.load, "none.pt", "no ExactIndex file at .*none.pt; write one with ExactIndex.save"),
])
def test_missing_index_file(tmp_path, load, name, match):
    with pytest.raises(FileNotFoundError, match=match):
        load(tmp_path / name)


@pytest.mark.parametrize("cls", [ExactIndex, HNSWIndex])
def test_search_k_true_is_not_1(cls):
    index = cls(8)
    index.add(["a", "b"], vectors(2))
    with pytest.raises(ValueError, match="k must be a positive int, got True"):
        index.search(vectors(1), True)


@pytest.mark.parametrize("k", [0, -1, 1.5, True])
def test_recall_vs_exact_bad_k(k):
    with pytest.raises(ValueError, match=rf"k must be an int >= 1, got {k!r}"):
        recall_vs_exact([["a"]], [["a"]], k)


# ---------------------------------------------------------------------------------------------------------
# checkpoints


def snapshot(module: torch.nn.Module) -> dict:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def assert_unchanged(module: torch.nn.Module, before: dict) -> None:
    after = module.state_dict()
    assert after.keys() == before.keys() and all(torch.equal(after[k], before[k]) for k in before)


def test_checkpoint_of_another_architecture(tmp_path):
    torch.manual_seed(0)
    save_checkpoint(tmp_path / "ck.pt", torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.Linear(4, 1)))
    one_layer = torch.nn.Sequential(torch.nn.Linear(4, 4))
    before = snapshot(one_layer)
    with pytest.raises(ValueError, match=r"another architecture: missing \[\], unexpected \['1.bias', '1.weight'\]"):
        load_checkpoint(tmp_path / "ck.pt", one_layer)
    assert_unchanged(one_layer, before)


def test_checkpoint_with_other_shapes(tmp_path):
    save_checkpoint(tmp_path / "ck.pt", torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.Linear(4, 1)))
    wider = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.Linear(4, 2))
    before = snapshot(wider)
    with pytest.raises(ValueError, match=r"shape mismatches \['1.bias: \(1,\) in the file, \(2,\) in the model'"):
        load_checkpoint(tmp_path / "ck.pt", wider)
    assert_unchanged(wider, before)


def test_checkpoint_with_the_optimizer_of_another_model(tmp_path):
    model = torch.nn.Linear(4, 1)
    save_checkpoint(tmp_path / "ck.pt", model, torch.optim.Adam(model.parameters()))
    fresh = torch.nn.Linear(4, 1)
    optimizer = torch.optim.Adam([fresh.weight])  # one group of 1 parameter, not of 2
    before, opt_before = snapshot(fresh), optimizer.state_dict()
    with pytest.raises(ValueError, match=r"parameter groups of sizes \[2\], but this optimizer's are \[1\]"):
        load_checkpoint(tmp_path / "ck.pt", fresh, optimizer)
    assert_unchanged(fresh, before)
    assert optimizer.state_dict() == opt_before


def test_load_truncated_checkpoint(tmp_path):
    model = torch.nn.Linear(4, 1)
    save_checkpoint(tmp_path / "ck.pt", model)
    (tmp_path / "ck.pt").write_bytes((tmp_path / "ck.pt").read_bytes()[:100])
    before = snapshot(model)
    with pytest.raises(ValueError, match="cannot read .*ck.pt as a checkpoint .*truncated"):
        load_checkpoint(tmp_path / "ck.pt", model)
    assert_unchanged(model, before)


def test_load_checkpoint_of_an_index_file(tmp_path):
    path = saved_exact(tmp_path)
    model = torch.nn.Linear(4, 1)
    before = snapshot(model)
    with pytest.raises(ValueError, match=r"holds \['dim', 'ids', 'vectors'\], not a checkpoint"):
        load_checkpoint(path, model)
    assert_unchanged(model, before)


# ---------------------------------------------------------------------------------------------------------
# train


def toy():
    torch.manual_seed(0)
    model = torch.nn.Linear(4, 1)
    batches = [(torch.randn(8, 4), torch.randn(8, 1)) for _ in range(5)]
    return model, torch.optim.SGD(model.parameters(), lr=0.1), batches


def mse(model, batch):
    return torch.nn.functional.mse_loss(model(batch[0]), batch[1])


@pytest.mark.parametrize("make_path, error, match", [
    (lambda tmp: tmp, IsADirectoryError, "is a directory; give a file path"),
    (lambda tmp: tmp / "file.txt" / "ck.pt", NotADirectoryError, "file.txt is a file, not a directory"),
])
def test_train_unwritable_checkpoint_path_fails_before_training(tmp_path, make_path, error, match):
    (tmp_path / "file.txt").write_text("x")
    model, optimizer, batches = toy()
    before, files = snapshot(model), sorted(tmp_path.iterdir())
    with pytest.raises(error, match=match):
        train(model, mse, batches, optimizer=optimizer, max_steps=3, checkpoint_path=make_path(tmp_path),
              progress=False)
    assert_unchanged(model, before)
    assert sorted(tmp_path.iterdir()) == files


@pytest.mark.parametrize("kwargs, match", [
    ({"max_steps": True}, "max_steps must be a positive int or None, got True"),
    ({"max_steps": 3, "time_budget_s": True}, "time_budget_s must be positive"),
    ({"max_steps": 3, "grad_clip": 0}, "grad_clip must be positive"),
    ({"max_steps": 3, "eval_fn": lambda m: {}, "eval_every": 0}, "eval_every must be a positive int"),
    ({"max_steps": 3, "checkpoint_every": 2}, "checkpoint_every is set but there is no checkpoint_path"),
])
def test_train_bad_arguments_change_nothing(kwargs, match):
    model, optimizer, batches = toy()
    before = snapshot(model)
    with pytest.raises(ValueError, match=match):
        train(model, mse, batches, optimizer=optimizer, progress=False, **kwargs)
    assert_unchanged(model, before)


@pytest.mark.parametrize("step_fn, error, match", [
    (lambda m, b: torch.nn.functional.mse_loss(m(b[0]), b[1], reduction="none"), ValueError,
     r"tensor of shape \(8, 1\) at step 1; reduce it to a scalar"),
    (lambda m, b: mse(m, b).item(), TypeError, "step_fn returned float at step 1"),
    (lambda m, b: mse(m, b).detach(), ValueError, "loss that does not require grad"),
])
def test_bad_step_fn_result_fails_before_any_optimizer_step(step_fn, error, match):
    model, optimizer, batches = toy()
    before = snapshot(model)
    with pytest.raises(error, match=match):
        train(model, step_fn, batches, optimizer=optimizer, max_steps=3, progress=False)
    assert_unchanged(model, before)


def test_eval_fn_returning_a_float():
    model, optimizer, batches = toy()
    with pytest.raises(TypeError, match="eval_fn must return a dict of metrics .*got 0.5"):
        train(model, mse, batches, optimizer=optimizer, max_steps=2, eval_fn=lambda m: 0.5, progress=False)


@pytest.mark.parametrize("window", [0, -2, 2.5, True])
def test_loss_fell_bad_window(window):
    with pytest.raises(ValueError, match=rf"window must be a positive int, got {window!r}"):
        loss_fell([1.0] * 20, window=window)


# ---------------------------------------------------------------------------------------------------------
# config


@pytest.mark.parametrize("override, match", [
    ({"batch_size": "64"}, r"Config.batch_size must be an int >= 1, got '64' \(str\); the default is 64"),
    ({"lr": -1}, r"Config.lr must be a number in \(0, inf\), got -1"),
    ({"lr": float("nan")}, r"Config.lr must be a number in \(0, inf\), got nan"),
    ({"num_heads": 0}, r"Config.num_heads must be an int >= 1, got 0"),
    ({"num_heads": 3}, r"hidden_size 128 is not divisible by num_heads 3"),
    ({"temperature": 0}, r"Config.temperature must be a number in \(0, inf\), got 0"),
    ({"dropout": 1.5}, r"Config.dropout must be a number in \[0, 1\), got 1.5"),
    ({"seed": True}, r"Config.seed must be an int >= 0, got True \(bool\)"),
    ({"n_lemmas": 0}, r"Config.n_lemmas must be an int >= 1, got 0"),
    ({"pooling": "max"}, r"Config.pooling must be one of \('mean', 'cls'\), got 'max'"),
    ({"hnsw_m": 1}, r"Config.hnsw_m must be an int in \[2, 100\], got 1"),
    ({"train_steps": 0}, r"Config.train_steps must be an int >= 1, got 0"),
])
def test_bad_config_override(override, match):
    with pytest.raises(ValueError, match=match):
        get_config("fast", **override)
    with pytest.raises(ValueError, match=match):  # replace checks too
        PRESETS["full"].replace(**override)


def test_presets_construct_and_ranges_agree_with_the_modules():
    for name, preset in PRESETS.items():
        assert preset.replace() == preset and preset.preset == name
    assert POOLINGS == course_lib.models.POOLINGS
    assert HNSW_M_RANGE == ci.M_RANGE


# ---------------------------------------------------------------------------------------------------------
# already clear: keep them so


ALREADY_CLEAR = [
    (lambda tmp: ExactIndex(0), ValueError, "dim must be a positive int"),
    (lambda tmp: HNSWIndex(8).add(["a", "a"], vectors(2)), ValueError, "ids must be unique"),
    (lambda tmp: ExactIndex(8).add(["a"], vectors(1, dim=6)), ValueError, "width 6 but this index holds 8"),
    (lambda tmp: recall_vs_exact([], [], 1), ValueError, "same, non-zero number"),
    (lambda tmp: load_checkpoint(tmp / "none.pt", torch.nn.Linear(2, 1)), FileNotFoundError, "no checkpoint at"),
    (lambda tmp: train(torch.nn.Linear(2, 1), mse, [], optimizer=None, progress=False), ValueError,
     "give max_steps or time_budget_s"),
    (lambda tmp: loss_fell([1.0] * 5, 3), ValueError, "need at least 6 losses"),
    (lambda tmp: get_config("medium"), ValueError, "unknown preset 'medium'"),
    (lambda tmp: get_config("fast", hiden_size=64), ValueError, "unknown config field"),
]


@pytest.mark.parametrize("call, error, match", ALREADY_CLEAR)
def test_already_clear_errors(tmp_path, call, error, match):
    with pytest.raises(error, match=match):
        call(tmp_path)
    assert list(tmp_path.iterdir()) == []

"""The recipe (course_lib.recipe) and its export: resumable to the same metrics, and a sentence-transformers
model folder that encodes as the course does."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from course_lib.config import get_config
from course_lib.data import load_dataset
from course_lib.export import save_sentence_transformer
from course_lib.folder import load_folder, write_folder
from course_lib.models import encode, make_encoder
from course_lib.recipe import RecipeSettings, main, run_recipe
from course_lib.tokenizer import load_tokenizer

ROOT = Path(__file__).resolve().parent.parent
CFG = get_config("fast")


@pytest.fixture(scope="module")
def small_folder(tmp_path_factory):
    return write_folder(load_dataset("wordnet", "fast"), tmp_path_factory.mktemp("data") / "mini", n_docs=300,
                        n_train=200, seed=1)


def recipe_command(folder, out, *more):
    return [sys.executable, "-m", "course_lib.recipe", "--data", str(folder), "--out", str(out), "--preset", "fast",
            "--pretrain-steps", "8", "--finetune-steps", "24", "--segment-steps", "4", "--batch-size", "16", *more]


def run(cmd, **kw):
    env = dict(os.environ, OMP_WAIT_POLICY="PASSIVE")
    return subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600, **kw)


def test_interrupted_run_resumes_to_the_same_metrics(small_folder, tmp_path):
    whole = run(recipe_command(small_folder, tmp_path / "whole", "--curve-every", "8"))
    assert whole.returncode == 0, whole.stderr[-3000:]
    # the same run, killed once fine-tuning has written a checkpoint, then started again
    out = tmp_path / "killed"
    proc = subprocess.Popen(recipe_command(small_folder, out, "--curve-every", "8"), cwd=ROOT, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, env=dict(os.environ, OMP_WAIT_POLICY="PASSIVE"))
    deadline = time.time() + 300
    while not (out / "state" / "finetune.pt").exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.05)
    assert proc.poll() is None, "the run ended before it could be interrupted; give it more steps"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    step = torch.load(out / "state" / "finetune.pt", weights_only=False)["step"]
    assert 0 < step < 24
    assert not (out / "metrics.json").exists()
    resumed = run(recipe_command(small_folder, out, "--curve-every", "8"))
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    a, b = (json.loads((d / "metrics.json").read_text()) for d in (tmp_path / "whole", out))
    # the dev learning curve: the start, steps 8 and 16, the end; the same points after the interruption
    curve = [{k: v for k, v in p.items() if k != "eval_seconds"} for p in a["metrics"]["dev_curve"]]
    assert [p["step"] for p in curve] == [0, 8, 16, 24] and curve[-1] == {"step": 24, **a["metrics"]["dev"]}
    assert curve == [{k: v for k, v in p.items() if k != "eval_seconds"} for p in b["metrics"]["dev_curve"]]
    # recording the curve does not change the training: a run without it ends at the same metrics
    plain = run(recipe_command(small_folder, tmp_path / "plain"))
    assert plain.returncode == 0, plain.stderr[-3000:]
    c = json.loads((tmp_path / "plain" / "metrics.json").read_text())
    assert "dev_curve" not in c["metrics"] and c["metrics"]["test"] == a["metrics"]["test"]
    # exact search is deterministic; hnswlib inserts with 2 threads in a nondeterministic order, so the HNSW
    # graph (and its recall) may differ slightly between two builds of the same vectors
    # (the dev points' eval_seconds are timings, not metrics: compared above without them)
    assert {k: v for k, v in a["metrics"].items() if k not in ("test_hnsw", "dev_curve")} == \
        {k: v for k, v in b["metrics"].items() if k not in ("test_hnsw", "dev_curve")}
    assert all(abs(a["metrics"]["test_hnsw"][k] - b["metrics"]["test_hnsw"][k]) < 0.02 for k in a["metrics"]["test"])
    assert a["plan"] == b["plan"] and a["mining_events"] == [e | {"seconds": x["seconds"]} for e, x in
                                                              zip(b["mining_events"], a["mining_events"])]
    assert any(e["event"] == "mine" for e in a["mining_events"]), "the run should mine hard negatives"
    # the hybrid with BM25: α chosen on dev (its table is there), the test scored at that α, and the same on resume
    h = a["metrics"]["hybrid"]
    assert h["alpha"] == max(map(float, h["dev_mrr@10_by_alpha"]), key=lambda x: (h["dev_mrr@10_by_alpha"][str(x)], x))
    assert set(a["metrics"]["test_hybrid"]) == set(a["metrics"]["test"]) and b["metrics"]["hybrid"] == h
    # the exported model and index are there
    assert (out / "model" / "modules.json").exists() and (out / "index" / "hnsw.bin").exists()


def test_other_settings_in_the_same_folder_are_refused(small_folder, tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    (out / "plan.json").write_text(json.dumps({"identity": {"data": "something else"}, "plan": {}}))
    result = run(recipe_command(small_folder, out))
    assert result.returncode != 0 and "holds a recipe run of other data or settings" in result.stderr


@pytest.fixture(scope="module")
def wordnet_tokenizer():
    return load_tokenizer(load_dataset("wordnet", "fast"), CFG.vocab_size)


TINY = RecipeSettings(pretrain=None, batch_size=8, dynamic_checks=0, segment_steps=2)  # seconds, not minutes


def test_a_planned_run_trains_as_the_fixed_run_of_its_step_counts(small_folder, tmp_path, wordnet_tokenizer):
    """Timing the steps draws from the global generator; a run planned from minutes must still train exactly as
    a run given its step counts (before the fix, the 30-minute WordNet command ended 0.05 below the benchmark's
    run of the same counts)."""
    data = load_folder(small_folder)
    capped = RecipeSettings(pretrain="mlm", batch_size=8, dynamic_checks=0, segment_steps=2, max_pretrain_steps=4,
                            max_passes=0.5)  # both caps bind at 2 minutes: 4 + 14 steps whatever the machine
    planned = run_recipe(data, wordnet_tokenizer, CFG, tmp_path / "planned", minutes=2, settings=capped,
                         progress=False)
    counts = {k: planned["plan"][k] for k in ("pretrain_steps", "finetune_steps")}
    assert counts == {"pretrain_steps": 4, "finetune_steps": 14}
    fixed = run_recipe(data, wordnet_tokenizer, CFG, tmp_path / "fixed", steps=counts, settings=capped, progress=False)
    assert planned["metrics"]["test"] == fixed["metrics"]["test"] and planned["metrics"]["dev"] == fixed["metrics"]["dev"]


def test_a_folder_without_train_jsonl_is_refused_before_anything_is_written(tmp_path, wordnet_tokenizer):
    folder = write_folder(load_dataset("wordnet", "fast"), tmp_path / "no_train", n_docs=100, seed=1)
    (folder / "train.jsonl").unlink()
    data = load_folder(folder)
    assert data.train == [] and data.corpus
    out = tmp_path / "run"
    with pytest.raises(ValueError, match=r"needs train\.jsonl .*data/README\.md"):
        run_recipe(data, wordnet_tokenizer, CFG, out, steps={"pretrain_steps": 2, "finetune_steps": 2})
    assert not out.exists()


def test_a_batch_larger_than_the_distinct_positives_says_which_batch_size_to_pass(tmp_path):
    folder = write_folder(load_dataset("wordnet", "fast"), tmp_path / "few_pairs", n_docs=100, n_train=20, seed=1)
    out = tmp_path / "run"
    # the CLI's default --batch-size (128) against 20 training pairs
    with pytest.raises(ValueError, match=r"pass a smaller --batch-size N .*N at most \d+$"):
        main(["--data", str(folder), "--out", str(out), "--preset", "fast", "--pretrain-steps", "2",
              "--finetune-steps", "2"])
    assert not out.exists()


def test_resuming_checks_the_data_and_the_budget(small_folder, tmp_path, wordnet_tokenizer):
    data, out, steps = load_folder(small_folder), tmp_path / "run", {"pretrain_steps": 0, "finetune_steps": 4}
    first = run_recipe(data, wordnet_tokenizer, CFG, out, steps=steps, settings=TINY, progress=False)
    assert len(first["identity"]["corpus_sha256"]) == len(first["identity"]["train_sha256"]) == 16
    again = run_recipe(data, wordnet_tokenizer, CFG, out, steps=steps, settings=TINY, progress=False)
    assert again["metrics"]["test"] == first["metrics"]["test"]  # the same data and arguments resume
    # the same folder with one document edited, or one training pair dropped: refused, naming what differs
    edited = tmp_path / "edited"
    shutil.copytree(small_folder, edited)
    lines = (edited / "corpus.jsonl").read_text().splitlines(keepends=True)
    row = json.loads(lines[0])
    lines[0] = json.dumps(row | {"text": row["text"] + " (edited)"}) + "\n"
    (edited / "corpus.jsonl").write_text("".join(lines))
    edited_data = load_folder(edited)
    edited_data.name = data.name  # a folder edited in place keeps its name
    with pytest.raises(ValueError, match=r"other data or settings \(differing: corpus_sha256\); resume it with"):
        run_recipe(edited_data, wordnet_tokenizer, CFG, out, steps=steps, settings=TINY, progress=False)
    fewer = load_folder(small_folder)
    fewer.train = fewer.train[1:]
    with pytest.raises(ValueError, match=r"differing: train_sha256\)"):
        run_recipe(fewer, wordnet_tokenizer, CFG, out, steps=steps, settings=TINY, progress=False)
    # other step counts, or a time budget instead of them
    with pytest.raises(ValueError, match=r"differing: budget\)"):
        run_recipe(data, wordnet_tokenizer, CFG, out, steps=steps | {"finetune_steps": 6}, settings=TINY)
    with pytest.raises(ValueError, match=r"differing: budget\)"):
        run_recipe(data, wordnet_tokenizer, CFG, out, minutes=10, settings=TINY)
    # a run planned from --minutes 10 resumes with --minutes 10 only
    recorded = json.loads((out / "plan.json").read_text())
    recorded["identity"]["budget"] = {"minutes": 10}
    (out / "plan.json").write_text(json.dumps(recorded))
    with pytest.raises(ValueError, match=r"differing: budget\)"):
        run_recipe(data, wordnet_tokenizer, CFG, out, minutes=20, settings=TINY)
    resumed = run_recipe(data, wordnet_tokenizer, CFG, out, minutes=10, settings=TINY, progress=False)
    assert resumed["plan"] == first["plan"] and resumed["metrics"]["test"] == first["metrics"]["test"]
    # a plan.json written before the digests were recorded: the same clear refusal, not a KeyError
    for key in ("corpus_sha256", "train_sha256", "budget"):
        del recorded["identity"][key]
    (out / "plan.json").write_text(json.dumps(recorded))
    with pytest.raises(ValueError, match=r"differing: budget, corpus_sha256, train_sha256\); it was written before "
                                         r"runs recorded data digests.*course version that started it"):
        run_recipe(data, wordnet_tokenizer, CFG, out, steps=steps, settings=TINY, progress=False)


def test_sentence_transformers_round_trip(tmp_path):
    from sentence_transformers import SentenceTransformer

    data = load_dataset("wordnet", "fast")
    tokenizer = load_tokenizer(data, CFG.vocab_size)
    torch.manual_seed(0)
    model = make_encoder(CFG, tokenizer).eval()
    path = save_sentence_transformer(model, tokenizer, tmp_path / "model", max_seq_length=CFG.max_doc_len)
    st = SentenceTransformer(str(path), device="cpu")
    docs = [data.corpus[d] for d in sorted(data.corpus)[:64]]
    queries = sorted(data.queries["test"].values())[:64]
    ours_d = encode(model, tokenizer, docs, max_length=CFG.max_doc_len)
    ours_q = encode(model, tokenizer, queries, max_length=CFG.max_doc_len)
    theirs_d = torch.as_tensor(st.encode(docs, batch_size=16, convert_to_numpy=True))
    theirs_q = torch.as_tensor(st.encode(queries, batch_size=16, convert_to_numpy=True))
    assert (ours_d - theirs_d).abs().max() < 1e-5
    assert (ours_q - theirs_q).abs().max() < 1e-5
    # a random encoder gives distinct vectors, so equality above is not a coincidence of collapsed outputs
    assert (ours_d[0] - ours_d[1]).abs().max() > 1e-3


def test_bad_settings_raise():
    with pytest.raises(ValueError, match="pretrain must be one of"):
        RecipeSettings(pretrain="bert")
    with pytest.raises(ValueError, match="pretrain_share"):
        RecipeSettings(pretrain_share=1.5)
    with pytest.raises(ValueError, match="batch_size"):
        RecipeSettings(batch_size=1)
    with pytest.raises(ValueError, match="max_pretrain_steps"):
        RecipeSettings(max_pretrain_steps=0)
    for bad in (0, -1.0, "7", True):
        with pytest.raises(ValueError, match="RecipeSettings.max_passes must be a positive number"):
            RecipeSettings(max_passes=bad)


def test_a_dev_curve_between_checkpoints_is_refused(small_folder, tmp_path):
    data = load_folder(small_folder)
    with pytest.raises(ValueError, match="multiple of segment_steps"):
        run_recipe(data, load_tokenizer(data, CFG.vocab_size), CFG, tmp_path / "r", steps={"pretrain_steps": 0,
                   "finetune_steps": 8}, settings=RecipeSettings(segment_steps=4), curve_every=6)
    assert not (tmp_path / "r").exists()


def test_plan_only_prints_the_plan_and_writes_nothing(small_folder, tmp_path, capsys, monkeypatch):
    """``--plan-only`` times the stages for ``--minutes`` and prints the plan (with both caps applied), without
    an --out and without writing anything; with fixed step counts it is refused."""
    monkeypatch.chdir(tmp_path)
    main(["--data", str(small_folder), "--preset", "fast", "--minutes", "0.2", "--batch-size", "8", "--plan-only",
          "--max-pretrain-steps", "3"])
    plan = json.loads(capsys.readouterr().out)
    assert plan["minutes"] == 0.2 and plan["pretrain_steps"] <= 3 and plan["finetune_steps"] >= 1
    assert plan["finetune_steps"] <= plan["finetune_steps_cap"]
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(SystemExit):
        main(["--data", str(small_folder), "--plan-only", "--pretrain-steps", "1", "--finetune-steps", "1"])
    with pytest.raises(SystemExit):
        main(["--data", str(small_folder), "--minutes", "1"])  # no --out, no --plan-only

"""The recipe (course_lib.recipe) and its export: resumable to the same metrics, and a sentence-transformers
model folder that encodes as the course does."""

import json
import os
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
from course_lib.folder import write_folder
from course_lib.models import encode, make_encoder
from course_lib.recipe import RecipeSettings
from course_lib.tokenizer import load_tokenizer

ROOT = Path(__file__).resolve().parent.parent
CFG = get_config("fast")


@pytest.fixture(scope="module")
def small_folder(tmp_path_factory):
    return write_folder(load_dataset("wordnet", "fast"), tmp_path_factory.mktemp("data") / "mini", n_docs=300,
                        n_train=200, seed=1)


def recipe_command(folder, out):
    return [sys.executable, "-m", "course_lib.recipe", "--data", str(folder), "--out", str(out), "--preset", "fast",
            "--pretrain-steps", "8", "--finetune-steps", "24", "--segment-steps", "4", "--batch-size", "16"]


def run(cmd, **kw):
    env = dict(os.environ, OMP_WAIT_POLICY="PASSIVE")
    return subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600, **kw)


def test_interrupted_run_resumes_to_the_same_metrics(small_folder, tmp_path):
    whole = run(recipe_command(small_folder, tmp_path / "whole"))
    assert whole.returncode == 0, whole.stderr[-3000:]
    # the same run, killed once fine-tuning has written a checkpoint, then started again
    out = tmp_path / "killed"
    proc = subprocess.Popen(recipe_command(small_folder, out), cwd=ROOT, stdout=subprocess.DEVNULL,
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
    resumed = run(recipe_command(small_folder, out))
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    a, b = (json.loads((d / "metrics.json").read_text()) for d in (tmp_path / "whole", out))
    # exact search is deterministic; hnswlib inserts with 2 threads in a nondeterministic order, so the HNSW
    # graph (and its recall) may differ slightly between two builds of the same vectors
    assert {k: v for k, v in a["metrics"].items() if k != "test_hnsw"} == \
        {k: v for k, v in b["metrics"].items() if k != "test_hnsw"}
    assert all(abs(a["metrics"]["test_hnsw"][k] - b["metrics"]["test_hnsw"][k]) < 0.02 for k in a["metrics"]["test"])
    assert a["plan"] == b["plan"] and a["mining_events"] == [e | {"seconds": x["seconds"]} for e, x in
                                                              zip(b["mining_events"], a["mining_events"])]
    assert any(e["event"] == "mine" for e in a["mining_events"]), "the run should mine hard negatives"
    # the exported model and index are there
    assert (out / "model" / "modules.json").exists() and (out / "index" / "hnsw.bin").exists()


def test_other_settings_in_the_same_folder_are_refused(small_folder, tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    (out / "plan.json").write_text(json.dumps({"identity": {"data": "something else"}, "plan": {}}))
    result = run(recipe_command(small_folder, out))
    assert result.returncode != 0 and "holds a recipe run of other data or settings" in result.stderr


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

"""The in-batch training pieces: batch layout, hard-negative columns, SimCSE views, a short training run."""

import pytest
import torch

from course_lib.config import get_config
from course_lib.data import load_dataset
from course_lib.in_batch import in_batch_step, pair_batches, pretrain_simcse, simcse_batches, train_in_batch
from course_lib.metrics import evaluate
from course_lib.models import make_encoder
from course_lib.samplers import NoDuplicateBatchSampler
from course_lib.tokenizer import load_tokenizer
from course_lib.utils import seed_everything

CFG = get_config("fast")


@pytest.fixture(scope="module")
def setup():
    data = load_dataset("wordnet", "fast")
    return data, load_tokenizer(data, CFG.vocab_size)


def test_pair_batch_layout(setup):
    data, tok = setup
    g = torch.Generator().manual_seed(0)
    batch = next(pair_batches(data, tok, NoDuplicateBatchSampler(data.train, 8, g), CFG, n_hard=2, generator=g))
    assert batch["q"]["input_ids"].shape[0] == 8 and batch["d"]["input_ids"].shape[0] == 8
    assert batch["n"]["input_ids"].shape[0] == 16 and len(batch["neg_ids"]) == 16
    # column-block order: entry j*B + i is the j-th negative of query i, never the query's own positive
    for j in range(2):
        for i in range(8):
            assert batch["neg_ids"][j * 8 + i] != batch["doc_ids"][i]
    assert batch["q"]["input_ids"].shape[1] <= CFG.max_query_len and batch["d"]["input_ids"].shape[1] <= CFG.max_doc_len


def test_hard_negatives_come_from_natural_senses_when_available(setup):
    data, tok = setup
    g = torch.Generator().manual_seed(1)
    batch = next(pair_batches(data, tok, NoDuplicateBatchSampler(data.train, 16, g), CFG, n_hard=1, generator=g))
    by_positive = {t.positive: set(t.negatives) for t in data.train}
    natural = [n in by_positive[p] for p, n in zip(batch["doc_ids"], batch["neg_ids"]) if by_positive[p]]
    assert natural and all(natural)


def test_step_masks_duplicates(setup):
    data, tok = setup
    seed_everything(0)
    model = make_encoder(CFG, tok).eval()
    g = torch.Generator().manual_seed(0)
    batch = next(pair_batches(data, tok, NoDuplicateBatchSampler(data.train, 4, g), CFG, generator=g))
    batch["d"] = {k: torch.cat([v[:3], v[:1]]) for k, v in batch["d"].items()}  # row 3 repeats row 0's positive
    batch["doc_ids"] = batch["doc_ids"][:3] + batch["doc_ids"][:1]
    with torch.no_grad():
        masked = in_batch_step(0.05)(model, batch)
        unmasked = in_batch_step(0.05, mask_duplicates=False)(model, batch)
    assert masked < unmasked  # the duplicate no longer counts as a negative of rows 0 and 3


def test_simcse_batches_have_distinct_texts(setup):
    _, tok = setup
    texts = ["a cat", "a dog", "a cat", "a bird", "a fish"]
    batch = next(simcse_batches(texts, tok, 4, 16, torch.Generator().manual_seed(0)))
    assert len({tuple(r.tolist()) for r in batch["input_ids"]}) == 4
    with pytest.raises(ValueError, match="distinct texts"):
        next(simcse_batches(texts, tok, 5, 16, torch.Generator().manual_seed(0)))


def test_simcse_needs_dropout(setup):
    _, tok = setup
    with pytest.raises(ValueError, match="dropout"):
        pretrain_simcse(CFG, ["a", "b"], tok, dropout=0.0)


def test_short_training_beats_untrained_and_is_deterministic(setup):
    data, tok = setup
    runs = []
    for _ in range(2):
        seed_everything(CFG.seed, CFG.num_threads)
        model, history = train_in_batch(CFG, data, tok, steps=25, batch_size=32, progress=False)
        runs.append(history.losses)
    assert runs[0] == runs[1]  # same seed, same machine: the same losses
    assert sum(runs[0][-5:]) < sum(runs[0][:5])
    seed_everything(CFG.seed, CFG.num_threads)
    untrained = make_encoder(CFG, tok)
    kw = dict(tokenizer=tok, max_query_len=CFG.max_query_len, max_doc_len=CFG.max_doc_len)
    assert evaluate(model, data, "dev", **kw)["recall@10"] > evaluate(untrained, data, "dev", **kw)["recall@10"]

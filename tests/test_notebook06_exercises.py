"""Notebook 06's exercises: each check fails on the unsolved stub and passes on the kept solution below."""

import pytest
import torch

from course_lib.config import get_config
from course_lib.data import load_dataset
from course_lib.in_batch import pair_batches
from course_lib.losses import in_batch_softmax_loss
from course_lib.models import make_encoder
from course_lib.samplers import NoDuplicateBatchSampler
from course_lib.tokenizer import load_tokenizer

CFG = get_config("fast")


@pytest.fixture(scope="module")
def setup():
    data = load_dataset("wordnet", "fast")
    tokenizer = load_tokenizer(data, CFG.vocab_size)
    torch.manual_seed(0)
    model = make_encoder(CFG, tokenizer)
    sampler = NoDuplicateBatchSampler(data.train, 64, torch.Generator().manual_seed(0))
    return model, next(pair_batches(data, tokenizer, sampler, CFG))


def plain_gradients(model, batch):
    model.zero_grad(set_to_none=True)
    q, d = model(**batch["q"]), model(**batch["d"])
    in_batch_softmax_loss(q, d, temperature=CFG.temperature, doc_ids=batch["doc_ids"]).backward()
    return {n: p.grad.clone() for n, p in model.named_parameters()}


# exercise 1: gradient accumulation is not the in-batch loss of the whole batch ------------------------------


def accumulated_gradients(model, batch):  # the kept solution
    model.zero_grad(set_to_none=True)
    half = len(batch["doc_ids"]) // 2
    for part in (slice(0, half), slice(half, None)):
        q = model(**{k: v[part] for k, v in batch["q"].items()})
        d = model(**{k: v[part] for k, v in batch["d"].items()})
        (in_batch_softmax_loss(q, d, temperature=CFG.temperature, doc_ids=batch["doc_ids"][part]) / 2).backward()
    return {n: p.grad.clone() for n, p in model.named_parameters()}


def accumulated_stub(model, batch):
    return plain_gradients(model, batch)


def check_accumulated(fn, model, batch):  # the notebook's check
    full = plain_gradients(model, batch)
    got = fn(model, batch)
    diff = max((got[n] - full[n]).abs().max() for n in full) / max(g.abs().max() for g in full.values())
    assert diff > 1e-3


def test_accumulated_solution_passes(setup):
    check_accumulated(accumulated_gradients, *setup)


def test_accumulated_stub_fails(setup):
    with pytest.raises(AssertionError):
        check_accumulated(accumulated_stub, *setup)


# exercise 2: the label offset of a gathered batch ------------------------------------------------------------


def global_labels(sizes, rank):  # the kept solution
    start = sum(sizes[:rank])
    return list(range(start, start + sizes[rank]))


def labels_stub(sizes, rank):
    return list(range(sizes[rank]))


def check_labels(fn):  # the notebook's check
    for sizes in ([4, 4], [3, 5, 2], [1], [2, 0, 3]):
        ids = [f"r{r}d{i}" for r, n in enumerate(sizes) for i in range(n)]
        for rank, n in enumerate(sizes):
            assert list(fn(sizes, rank)) == [ids.index(f"r{rank}d{i}") for i in range(n)]


def test_labels_solution_passes():
    check_labels(global_labels)


def test_labels_stub_fails():
    with pytest.raises(AssertionError):
        check_labels(labels_stub)


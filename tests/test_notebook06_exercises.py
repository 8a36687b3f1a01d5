"""Notebook 06's exercises: each check fails on the unsolved stub and passes on the kept solution below."""

import pytest
import torch

from course_lib.config import get_config
from course_lib.data import load_dataset
from course_lib.gradcache import cached_in_batch_loss
from course_lib.in_batch import pair_batches
from course_lib.losses import in_batch_softmax_loss, similarity_logits
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


def accumulated_gradients(model, batch):  # the kept solution: two halves, each its own loss, gradients averaged
    model.zero_grad(set_to_none=True)
    half = len(batch["doc_ids"]) // 2
    for part in (slice(0, half), slice(half, None)):
        q = model(**{k: v[part] for k, v in batch["q"].items()})
        d = model(**{k: v[part] for k, v in batch["d"].items()})
        (in_batch_softmax_loss(q, d, temperature=CFG.temperature, doc_ids=batch["doc_ids"][part]) / 2).backward()
    return {n: p.grad.clone() for n, p in model.named_parameters()}


def accumulated_stub(model, batch):
    return plain_gradients(model, batch)


def accumulated_summed(model, batch):  # a wrong answer the old check let through: the halves' gradients summed
    return {n: 2 * g for n, g in accumulated_gradients(model, batch).items()}


def accumulated_no_split(model, batch):  # another: the first half's loss only
    model.zero_grad(set_to_none=True)
    part = slice(0, len(batch["doc_ids"]) // 2)
    q = model(**{k: v[part] for k, v in batch["q"].items()})
    d = model(**{k: v[part] for k, v in batch["d"].items()})
    in_batch_softmax_loss(q, d, temperature=CFG.temperature, doc_ids=batch["doc_ids"][part]).backward()
    return {n: p.grad.clone() for n, p in model.named_parameters()}


def halves_reference(model, batch):  # the notebook's reference: the whole batch, scores across the halves masked
    model.zero_grad(set_to_none=True)
    q, d = model(**batch["q"]), model(**batch["d"])
    logits = similarity_logits(q, d, temperature=CFG.temperature)
    half = torch.arange(len(batch["doc_ids"])) < len(batch["doc_ids"]) // 2
    logits = logits.masked_fill(half[:, None] != half[None, :], float("-inf"))
    torch.nn.functional.cross_entropy(logits, torch.arange(len(half))).backward()
    return {n: p.grad.clone() for n, p in model.named_parameters()}


def check_accumulated(fn, model, batch):  # the notebook's check
    assert len(set(batch["doc_ids"])) == len(batch["doc_ids"])
    reference, full_grads = halves_reference(model, batch), plain_gradients(model, batch)
    model.zero_grad(set_to_none=True)
    cached_in_batch_loss(model, batch["q"], batch["d"], chunk_size=16, temperature=CFG.temperature,
                         doc_ids=batch["doc_ids"])
    gradcache = {n: p.grad.clone() for n, p in model.named_parameters()}
    got = fn(model, batch)

    def rel(a, b):
        return (max((a[n] - b[n]).abs().max() for n in b) / max(g.abs().max() for g in b.values())).item()

    ratio = (sum((got[n] * reference[n]).sum() for n in reference) / sum((g ** 2).sum() for g in reference.values())).item()
    assert rel(got, full_grads) > 1e-3
    assert abs(ratio - 2) > 0.1
    assert rel(got, reference) < 1e-4
    assert rel(gradcache, full_grads) < 1e-5


def test_accumulated_solution_passes(setup):
    check_accumulated(accumulated_gradients, *setup)


@pytest.mark.parametrize("wrong", [accumulated_stub, accumulated_summed, accumulated_no_split],
                         ids=["stub", "summed", "one half"])
def test_accumulated_wrong_answers_fail(setup, wrong):
    with pytest.raises(AssertionError):
        check_accumulated(wrong, *setup)


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


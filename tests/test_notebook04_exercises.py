"""Notebook 04's exercises: each check fails on the unsolved stub and passes on the kept solution below."""

import math

import pytest
import torch

from course_lib.cbns import CBNSSettings, CBNSStep, cbns_sampler
from course_lib.config import get_config
from course_lib.data import load_dataset
from course_lib.in_batch import pair_batches
from course_lib.losses import cbns_loss
from course_lib.memory import MemoryBank, StreamingFrequencyEstimator
from course_lib.models import make_encoder
from course_lib.tokenizer import load_tokenizer
from course_lib.train import measure_step
from course_lib.utils import seed_everything

CFG = get_config("fast")


def randn(*shape, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


# exercise 1: enqueue first ------------------------------------------------------------------------------


def step_enqueue_first(q, d, ids, bank):  # the kept solution
    bank.enqueue(d.detach(), ids)
    memory, memory_ids, _ = bank.tensors()
    return cbns_loss(q, d, memory, doc_ids=ids, memory_ids=memory_ids)


def step_enqueue_first_stub(q, d, ids, bank):  # what the learner starts from: the right order, unchanged
    memory, memory_ids, _ = bank.tensors()
    loss = cbns_loss(q, d, memory if len(bank) else None, doc_ids=ids, memory_ids=memory_ids if len(bank) else None)
    bank.enqueue(d.detach(), ids)
    return loss


def exercise_1_check(fn) -> bool:
    q, d, ids = randn(8, 16, seed=1), randn(8, 16, seed=2), [f"d{i}" for i in range(8)]
    right = step_enqueue_first_stub(q, d, ids, MemoryBank(16, 16))
    wrong = fn(q, d, ids, MemoryBank(16, 16))
    return bool(wrong > right)


def test_exercise_1():
    assert exercise_1_check(step_enqueue_first) and not exercise_1_check(step_enqueue_first_stub)


# exercise 2: ages ----------------------------------------------------------------------------------------


def max_age(m, b, t):  # the kept solution: the bank holds the newest m rows, from the last ceil(m / b) batches
    return min(t, math.ceil(m / b)) - 1


def exercise_2_check(fn) -> bool:
    ok = True
    for m, b, t in [(20, 8, 10), (24, 8, 10), (24, 8, 2), (7, 3, 9), (5, 5, 1)]:
        bank = MemoryBank(m, 2)
        for _ in range(t):
            bank.enqueue(torch.zeros(b, 2), list(range(b)))
        ok &= bank.ages().max().item() == fn(m, b, t)
    return bool(ok)


def test_exercise_2():
    assert exercise_2_check(max_age) and not exercise_2_check(lambda m, b, t: None)


# exercise 3: the estimator's bias ------------------------------------------------------------------------


def sightings(est, n, k=4):  # the kept solution
    for step in range(k, k * n + 1, k):
        est.update([0], step)
    return est


def exercise_3_check(fn) -> bool:
    est = fn(StreamingFrequencyEstimator(16, alpha=0.1), 20)
    return abs(est.gap([0]).item() - (4 + 96 * 0.9**20)) < 1e-9


def test_exercise_3():
    assert exercise_3_check(sightings) and not exercise_3_check(lambda est, n: est)


# exercise 4: what a memory costs -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def setup():
    data = load_dataset("wordnet", "fast")
    return data, load_tokenizer(data, CFG.vocab_size)


def step_cost(data, tok, memory_size, fill: bool = True):  # the kept solution (fill=False: the unsolved stub)
    s = CBNSSettings(batch_size=16, memory_size=memory_size, warmup_steps=0, momentum=None)
    seed_everything(0)
    model = make_encoder(CFG, tok)
    step = CBNSStep(s, 0.05, dim=model.dim)
    measured = next(pair_batches(data, tok, cbns_sampler(data, s, torch.Generator().manual_seed(0)), CFG))
    others = pair_batches(data, tok, cbns_sampler(data, s, torch.Generator().manual_seed(1)), CFG)
    with torch.no_grad():
        while fill and len(step.probe.memory) < memory_size:
            step(model, next(others))
    return len(step.probe.memory), measure_step(model, step, measured, repeats=1)


def exercise_4_check(plain, memory) -> bool:
    return memory[0] == 240 and memory[1]["saved_bytes"] < 1.1 * plain[1]["saved_bytes"]


def test_exercise_4(setup):
    data, tok = setup
    plain = step_cost(data, tok, 0)
    assert exercise_4_check(plain, step_cost(data, tok, 240))
    assert not exercise_4_check(plain, step_cost(data, tok, 240, fill=False))

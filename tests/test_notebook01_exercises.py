"""Notebook 01's exercises: each check (the notebook's assertion, as a function) fails on the unsolved starting
point and passes on the kept solution below. Everything runs on the FAST preset, as the notebook does by default."""

import collections
import math

import pytest
import torch

from course_lib.config import get_config
from course_lib.data import load_dataset
from course_lib.in_batch import pair_batches, train_in_batch
from course_lib.losses import in_batch_softmax_loss
from course_lib.metrics import evaluate, uniformity
from course_lib.models import make_encoder
from course_lib.samplers import NoDuplicateBatchSampler, RandomBatchSampler
from course_lib.tokenizer import load_tokenizer
from course_lib.utils import seed_everything

CFG = get_config("fast")
SHOW_B, TEMPERATURE, SWEEP_STEPS = 8, 0.05, 15  # the notebook's parameters and FAST sweep length


@pytest.fixture(scope="module")
def nb():
    """What the notebook has at its exercises: data, tokenizer, and the section-1 batch embedded untrained."""
    seed_everything(CFG.seed, CFG.num_threads)
    data = load_dataset("wordnet", "fast")
    tokenizer = load_tokenizer(data, CFG.vocab_size)
    generator = torch.Generator().manual_seed(CFG.seed)
    model = make_encoder(CFG, tokenizer)
    batch = next(pair_batches(data, tokenizer, NoDuplicateBatchSampler(data.train, SHOW_B, generator), CFG, n_hard=1,
                              generator=generator))
    with torch.no_grad():
        q, d = model(**batch["q"]), model(**batch["d"])
    return {"data": data, "tokenizer": tokenizer, "q": q, "d": d}


def metrics_of(model, nb):
    return evaluate(model, nb["data"], "test", tokenizer=nb["tokenizer"], max_query_len=CFG.max_query_len,
                    max_doc_len=CFG.max_doc_len)


def run(nb, batch_size, steps, cfg=CFG):
    seed_everything(cfg.seed, cfg.num_threads)
    return train_in_batch(cfg, nb["data"], nb["tokenizer"], steps=steps, batch_size=batch_size, progress=False)


def loss_floor(b, tau):  # section 3's floor, as the notebook defines it
    return math.log(1 + (b - 1) * math.exp(-b / ((b - 1) * tau)))


# exercise 1: scale is 1/τ --------------------------------------------------------------------------------


def exercise_1_check(my_scale, nb) -> bool:
    from sentence_transformers.sentence_transformer.losses import MultipleNegativesRankingLoss

    peer = MultipleNegativesRankingLoss(torch.nn.Module(), scale=my_scale)
    q, d = nb["q"], nb["d"]
    return bool(torch.isclose(peer.compute_loss_from_embeddings([q, d], None), in_batch_softmax_loss(q, d, temperature=0.02)))


def test_exercise_1(nb):
    assert exercise_1_check(1 / 0.02, nb)  # the kept solution: scale = 1/τ = 50
    assert not exercise_1_check(20.0, nb)  # the starting point: MNRL's default scale, τ = 0.05


# exercise 2: collapse ------------------------------------------------------------------------------------


def exercise_2_check(same) -> bool:
    loss = in_batch_softmax_loss(same, same, temperature=TEMPERATURE)
    return abs(loss.item() - math.log(SHOW_B)) < 1e-5 and abs(uniformity(same)) < 1e-6


def test_exercise_2(nb):
    q = nb["q"]
    assert exercise_2_check(q[:1].expand_as(q).clone())  # the kept solution: row 0 everywhere
    assert not exercise_2_check(q.clone())  # the starting point: the embeddings as they are


# exercise 3: too warm ------------------------------------------------------------------------------------


def exercise_3_check(h_warm) -> bool:
    return min(h_warm.losses) > loss_floor(32, 1.0)


def test_exercise_3(nb):
    _, h_warm = run(nb, 32, SWEEP_STEPS, CFG.replace(temperature=1.0))  # the kept solution
    _, h_default = run(nb, 32, SWEEP_STEPS)  # the starting point: the preset's τ = 0.05
    assert exercise_3_check(h_warm) and not exercise_3_check(h_default)


# exercise 4: equal examples ------------------------------------------------------------------------------


def test_exercise_4(nb):
    sweep8 = metrics_of(run(nb, 8, SWEEP_STEPS)[0], nb)  # section 7's B = 8 point
    m8, _ = run(nb, 8, 4 * SWEEP_STEPS)  # the kept solution
    stub, _ = run(nb, 8, SWEEP_STEPS)  # the starting point: the same steps as the sweep

    def exercise_4_check(model) -> bool:
        return metrics_of(model, nb)["mrr@10"] > sweep8["mrr@10"]

    assert exercise_4_check(m8) and not exercise_4_check(stub)


# exercise 5: predict the duplicates ----------------------------------------------------------------------


def measured_share(data) -> float:  # section 4's count, as the notebook makes it
    batches = RandomBatchSampler(data.train, 64, torch.Generator().manual_seed(CFG.seed))
    dup = 0
    for _, idx in zip(range(300), batches):
        positives = [data.train[i].positive for i in idx]
        dup += len(set(positives)) < len(positives)
    return dup / 300


def predicted_share(data) -> float:  # the kept solution
    n = len(data.train)
    counts = collections.Counter(e.positive for e in data.train)
    lam = math.comb(64, 2) * sum(c * (c - 1) for c in counts.values()) / (n * (n - 1))
    return 1 - math.exp(-lam)


def exercise_5_check(p_duplicate, data) -> bool:
    return abs(p_duplicate - measured_share(data)) < 0.04


def test_exercise_5(nb):
    data = nb["data"]
    assert exercise_5_check(predicted_share(data), data)
    assert not exercise_5_check(0.0, data)  # the starting point: no prediction

"""Notebook 02's exercises: each check fails on the unsolved stub and passes on the kept solution below.

The fixture rebuilds what the notebook has when its exercises start (FAST preset, the parameters cell's
defaults): the small batch of section 2, the untrained and the trained SimBERT, the held-out pairs."""

import functools
import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from course_lib.config import get_config
from course_lib.data import load_dataset
from course_lib.generation import generate
from course_lib.masks import attention_bias, unilm_mask
from course_lib.metrics import evaluate, mean_token_f1
from course_lib.retromae import pretrain, pretrain_texts
from course_lib.simbert import (
    held_out_pairs,
    make_pairs,
    make_simbert,
    pair_rows,
    simbert_from_pretrained,
    train_simbert,
)
from course_lib.tokenizer import load_tokenizer
from course_lib.utils import seed_everything

CFG = get_config("fast")
SCALE, SHOW_PAIRS, STEPS, BATCH_PAIRS, N_GEN = 30.0, 4, 100, 16, 60  # the notebook's FAST values


@pytest.fixture(scope="module")
def nb():
    data = load_dataset("wordnet", "fast")
    tok = load_tokenizer(data, CFG.vocab_size)
    pairs = make_pairs(data, "gloss")
    first_of_sense = {}
    for p in pairs:
        first_of_sense.setdefault(p.group, p)
    small = pair_rows(tok, list(first_of_sense.values())[:SHOW_PAIRS], max_length=CFG.max_query_len + CFG.max_doc_len)
    c = small["token_type_ids"].cumsum(1)
    r = int(small["attention_mask"].sum(1).argmin())
    seed_everything(CFG.seed, CFG.num_threads)
    model0 = make_simbert(CFG, tok).eval()
    gen_src, gen_ref = held_out_pairs(data, "test", N_GEN, CFG.seed)
    nb = SimpleNamespace(
        data=data, tokenizer=tok, pairs=pairs, small=small, model0=model0, gen_src=gen_src, gen_ref=gen_ref,
        raw=c[:, None, :] <= c[:, :, None], my_mask=unilm_mask(small["token_type_ids"], small["attention_mask"]),
        r=r, last=int(small["attention_mask"][r].sum()) - 1,
    )
    nb.train = functools.lru_cache(maxsize=None)(lambda lr: _train_simbert(nb, lr))
    nb.simbert, nb.parts = nb.train(CFG.simbert_lr)  # section 7's model
    nb.f1_after = mean_token_f1(generate(nb.simbert, tok, gen_src, no_repeat_ngram_size=2), gen_ref)
    return nb


def _train_simbert(nb, lr, pairs=None, start=None):  # section 7's seeding and call; start() builds the model
    seed_everything(CFG.seed, CFG.num_threads)
    model = start() if start else None
    model, _, parts = train_simbert(CFG.replace(simbert_lr=lr), nb.data, nb.tokenizer, pairs=pairs or nb.pairs,
                                    model=model, steps=STEPS, batch_size=BATCH_PAIRS, scale=SCALE, progress=False)
    return model, parts


# exercise 1: pads that leak ------------------------------------------------------------------------------


def final_sep_output(nb, mask, pad_seed):  # the kept solution
    ids = nb.small["input_ids"].clone()
    pads = ~nb.small["attention_mask"][nb.r].bool()
    g = torch.Generator().manual_seed(pad_seed)
    ids[nb.r, pads] = torch.randint(len(nb.tokenizer.all_special_ids), len(nb.tokenizer), (int(pads.sum()),), generator=g)
    with torch.no_grad():
        out = nb.model0.bert(input_ids=ids, attention_mask=attention_bias(mask),
                             token_type_ids=nb.small["token_type_ids"]).last_hidden_state
    return out[nb.r, nb.last]


def final_sep_output_stub(nb, mask, pad_seed):  # the pads are left as they are
    with torch.no_grad():
        out = nb.model0.bert(input_ids=nb.small["input_ids"], attention_mask=attention_bias(mask),
                             token_type_ids=nb.small["token_type_ids"]).last_hidden_state
    return out[nb.r, nb.last]


def exercise_1_check(nb, fn) -> bool:
    return (not torch.allclose(fn(nb, nb.raw, 0), fn(nb, nb.raw, 1))
            and torch.allclose(fn(nb, nb.my_mask, 0), fn(nb, nb.my_mask, 1), atol=1e-6))


def test_exercise_1(nb):
    assert exercise_1_check(nb, final_sep_output) and not exercise_1_check(nb, final_sep_output_stub)


# exercise 2: collapse ------------------------------------------------------------------------------------


def similarity_after(nb, lr):  # the kept solution
    return float(np.mean(nb.train(lr)[1]["similarity"][-10:]))


def similarity_after_stub(nb, lr):  # section 7's run, whatever the lr
    return float(np.mean(nb.parts["similarity"][-10:]))


def exercise_2_check(nb, fn) -> bool:
    return fn(nb, 2e-3) > 0.95 * math.log(2 * BATCH_PAIRS - 1) > fn(nb, CFG.simbert_lr)


def test_exercise_2(nb):
    assert exercise_2_check(nb, similarity_after) and not exercise_2_check(nb, similarity_after_stub)


# exercise 3: example ↔ example pairs ---------------------------------------------------------------------


def recall_at_10(nb, model):  # the notebook's test_metrics(model)["recall@10"]
    return evaluate(model, nb.data, "test", tokenizer=nb.tokenizer, max_query_len=CFG.max_query_len,
                    max_doc_len=CFG.max_doc_len)["recall@10"]


def train_on_examples(nb):  # the kept solution
    return _train_simbert(nb, CFG.simbert_lr, pairs=make_pairs(nb.data, "example"))[0]


def exercise_3_check(nb, fn) -> bool:
    return recall_at_10(nb, fn(nb)) < recall_at_10(nb, nb.simbert)


def test_exercise_3(nb):
    assert exercise_3_check(nb, train_on_examples) and not exercise_3_check(nb, lambda nb: nb.simbert)


# exercise 4: diversity -----------------------------------------------------------------------------------


def distinct_words(nb, temperature):  # the kept solution
    outs = [generate(nb.simbert, nb.tokenizer, nb.gen_src[:1], do_sample=True, temperature=temperature, top_p=1.0,
                     no_repeat_ngram_size=2, generator=torch.Generator().manual_seed(seed))[0] for seed in range(10)]
    return len({w for out in outs for w in out.split()})


def exercise_4_check(nb, fn) -> bool:
    return fn(nb, 1.5) > 2 * fn(nb, 0.3)


def test_exercise_4(nb):
    assert exercise_4_check(nb, distinct_words) and not exercise_4_check(nb, lambda nb, temperature: 0)


# exercise 5: a pretrained start --------------------------------------------------------------------------


def pretrained_start(nb):  # the kept solution
    seed_everything(CFG.seed, CFG.num_threads)
    mlm, _, _ = pretrain(CFG, pretrain_texts(nb.data), nb.tokenizer, decoder=False, steps=300, batch_size=32, progress=False)
    return _train_simbert(nb, CFG.finetune_lr, start=lambda: simbert_from_pretrained(mlm))[0]


def exercise_5_check(nb, fn) -> bool:
    m_pre = fn(nb)
    return mean_token_f1(generate(m_pre, nb.tokenizer, nb.gen_src, no_repeat_ngram_size=2), nb.gen_ref) > nb.f1_after


def test_exercise_5(nb):
    assert exercise_5_check(nb, pretrained_start) and not exercise_5_check(nb, lambda nb: nb.simbert)

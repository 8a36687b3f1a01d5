"""Notebook 03's exercises: each check fails on the unsolved stub and passes on the kept solution below.

The fixture rebuilds what the notebook has when its exercises start (FAST preset, the parameters cell's
defaults): the three example sentences of section 2, the batch of section 1, the untrained model, and the
RetroMAE-pretrained encoder of section 6."""

import itertools
from types import SimpleNamespace

import pytest
import torch

from course_lib.config import get_config
from course_lib.data import load_dataset
from course_lib.in_batch import train_in_batch
from course_lib.masks import retromae_decoder_mask
from course_lib.metrics import evaluate
from course_lib.models import encoder_from_bert
from course_lib.retromae import make_retromae, pretrain, pretrain_batch, pretrain_texts
from course_lib.tokenizer import load_tokenizer
from course_lib.utils import seed_everything

CFG = get_config("fast")
PRETRAIN_STEPS, PRETRAIN_BATCH, FINETUNE_STEPS, FINETUNE_BATCH = 60, 32, 40, 32  # the notebook's FAST values


@pytest.fixture(scope="module")
def nb():
    data = load_dataset("wordnet", "fast")
    tok = load_tokenizer(data, CFG.vocab_size)
    texts = pretrain_texts(data)
    seed_everything(CFG.seed, CFG.num_threads)
    model0 = make_retromae(CFG, tok)
    batch = pretrain_batch(tok, texts[:8], CFG.max_doc_len, generator=torch.Generator().manual_seed(0))
    examples = list(itertools.islice((t for t in texts if any(p.startswith("##") for p in tok.tokenize(t))), 3))
    enc = tok(examples, padding=True, return_tensors="pt")
    word_ids = torch.tensor([[-1 if w is None else w for w in enc.word_ids(b)] for b in range(len(examples))])
    special = (word_ids < 0) & enc["attention_mask"].bool()
    with torch.no_grad():
        h = model0(batch["encoder_input_ids"], batch["attention_mask"])[:, 0]
    return SimpleNamespace(data=data, tokenizer=tok, texts=texts, model0=model0, batch=batch, h=h, enc=enc,
                           special=special, ordinary=enc["attention_mask"].bool() & ~special)


def recall_at_10(nb, model):  # the notebook's test_metrics(model)["recall@10"]
    return evaluate(model, nb.data, "test", tokenizer=nb.tokenizer, max_query_len=CFG.max_query_len,
                    max_doc_len=CFG.max_doc_len)["recall@10"]


# exercise 1: what a decoder row sees ---------------------------------------------------------------------


def visible_others(n, own_is_ordinary, ratio):  # the kept solution
    m = n - 1 if own_is_ordinary else n  # the row's own token is never a candidate
    return m - round(m * ratio)


def exercise_1_check(nb, fn) -> bool:
    ok = True
    for ratio in (0.15, 0.5, 0.9):
        m = retromae_decoder_mask(nb.enc["attention_mask"], nb.special, ratio, torch.Generator().manual_seed(3))
        for b in range(len(m)):
            for i in nb.enc["attention_mask"][b].nonzero().flatten().tolist():
                ok &= int((m[b, i] & nb.ordinary[b]).sum()) == fn(int(nb.ordinary[b].sum()), bool(nb.ordinary[b, i]), ratio)
    return bool(ok)


def test_exercise_1(nb):
    assert exercise_1_check(nb, visible_others)
    assert not exercise_1_check(nb, lambda n, own_is_ordinary, ratio: None)
    assert not exercise_1_check(nb, lambda n, own_is_ordinary, ratio: n - round(n * ratio))  # forgets the own token


# exercise 2: the leak ------------------------------------------------------------------------------------


def row_reads_own_token(nb, mask, i=1):  # the kept solution; position 1 is sentence 0's first word token
    ids = nb.batch["input_ids"]
    first = len(nb.tokenizer.all_special_ids)  # regular ids are first … len(tokenizer) − 1
    changed = ids.clone()
    changed[0, i] = first + (int(ids[0, i]) - first + 1) % (len(nb.tokenizer) - first)  # another regular token
    with torch.no_grad():
        before = nb.model0.decode(nb.h, ids, mask)[0, i]
        after = nb.model0.decode(nb.h, changed, mask)[0, i]
    return bool((after - before).abs().max() > 1e-5)


def exercise_2_check(nb, fn) -> bool:
    L = nb.batch["input_ids"].shape[1]
    return fn(nb, nb.batch["decoder_mask"] | torch.eye(L, dtype=torch.bool)) and not fn(nb, nb.batch["decoder_mask"])


def test_exercise_2(nb):
    assert exercise_2_check(nb, row_reads_own_token) and not exercise_2_check(nb, lambda nb, mask: False)


# exercise 3: encoder ratio 0.9 ---------------------------------------------------------------------------


def target_share(nb, b):  # the kept solution
    ids = b["input_ids"]
    special = torch.isin(ids, torch.tensor(nb.tokenizer.all_special_ids))
    words = b["attention_mask"].bool() & ~special
    return float((b["encoder_labels"] != -100).sum() / words.sum())


def exercise_3_check(nb, fn) -> bool:
    pb = pretrain_batch(nb.tokenizer, nb.texts[:256], CFG.max_doc_len, encoder_mask_ratio=0.9,
                        generator=torch.Generator().manual_seed(0))
    return 0.8 < fn(nb, pb) < 0.9


def test_exercise_3(nb):
    assert exercise_3_check(nb, target_share) and not exercise_3_check(nb, lambda nb, b: 0.0)


# exercise 4: mean pooling from the RetroMAE start --------------------------------------------------------


@pytest.fixture(scope="module")
def retromae(nb):  # section 6's RetroMAE pretraining
    seed_everything(CFG.seed, CFG.num_threads)
    model, _, _ = pretrain(CFG, nb.texts, nb.tokenizer, decoder=True, steps=PRETRAIN_STEPS, batch_size=PRETRAIN_BATCH,
                           progress=False)
    return model


def finetune_mean(nb, bert):  # the kept solution
    seed_everything(CFG.seed, CFG.num_threads)
    encoder, _ = train_in_batch(CFG.replace(pooling="mean", batch_size=FINETUNE_BATCH), nb.data, nb.tokenizer,
                                model=encoder_from_bert(CFG, nb.tokenizer, bert, pooling="mean"), steps=FINETUNE_STEPS,
                                progress=False)
    return encoder


def finetune_mean_stub(nb, bert):  # the encoder, not yet fine-tuned
    return encoder_from_bert(CFG, nb.tokenizer, bert, pooling="mean")


def exercise_4_check(nb, fn, bert, before) -> bool:  # before: the R@10 of the encoder not yet fine-tuned
    return recall_at_10(nb, fn(nb, bert)) > before


def test_exercise_4(nb, retromae):
    before = recall_at_10(nb, encoder_from_bert(CFG, nb.tokenizer, retromae.bert, pooling="mean"))
    assert exercise_4_check(nb, finetune_mean, retromae.bert, before)
    assert not exercise_4_check(nb, finetune_mean_stub, retromae.bert, before)

"""``encode_cached`` keeps what an interrupted run finished: chunks are saved as they are done, a later call
encodes only the rest, and the result equals an uninterrupted run's (and a single ``encode`` call's)."""

import pytest
import torch

import course_lib.models as cm
from course_lib.config import get_config
from course_lib.models import encode, encode_cached, make_encoder
from course_lib.tokenizer import train_tokenizer
from course_lib.utils import seed_everything

WORDS = "dog cat bank river deposit run fast storm interest rate money water land feline mammal fur".split()
# 70 texts of varied lengths (sorted by length they interleave with input order)
TEXTS = [" ".join(WORDS[(i * 7 + j) % len(WORDS)] for j in range(1 + (i * 5) % 13)) + f" {i}" for i in range(70)]


@pytest.fixture(scope="module")
def setup():
    tok = train_tokenizer(TEXTS, vocab_size=200)
    seed_everything(0)
    return make_encoder(get_config("fast"), tok).eval(), tok


class Interrupted(RuntimeError):
    pass


def counting(real, log, fail_after=None):
    """``encode`` that records the texts of each call and raises on call number ``fail_after + 1``."""

    def fake(model, tok, texts, **kwargs):
        if fail_after is not None and len(log) >= fail_after:
            raise Interrupted("stopped by the test")
        log.append(list(texts))
        return real(model, tok, texts, **kwargs)

    return fake


def test_an_interrupted_run_resumes_where_it_stopped(setup, tmp_path, monkeypatch):
    model, tok = setup
    kwargs = dict(key="toy", max_length=32, batch_size=8, chunk_size=16)  # 70 texts: chunks of 16 → 5 chunks

    monkeypatch.setenv("COURSE_CACHE", str(tmp_path / "whole"))
    whole = encode_cached(model, tok, TEXTS, **kwargs)  # uninterrupted, for reference
    torch.testing.assert_close(whole, encode(model, tok, TEXTS, max_length=32, batch_size=8), atol=1e-6, rtol=0)

    monkeypatch.setenv("COURSE_CACHE", str(tmp_path / "resumed"))
    first_log, second_log = [], []
    monkeypatch.setattr(cm, "encode", counting(encode, first_log, fail_after=3))
    with pytest.raises(Interrupted):
        encode_cached(model, tok, TEXTS, **kwargs)
    folder = tmp_path / "resumed" / "embeddings"
    assert not list(folder.glob("*.pt")), "no final file after an interruption"
    [parts] = list(folder.glob("*.parts"))
    assert len(list(parts.glob("*.pt"))) == 3 and not list(parts.glob("*.tmp*"))  # three chunks kept, atomically

    monkeypatch.setattr(cm, "encode", counting(encode, second_log))
    resumed = encode_cached(model, tok, TEXTS, **kwargs)
    assert len(second_log) == 2, "only the two unfinished chunks are encoded again"
    assert not set(map(tuple, first_log)) & set(map(tuple, second_log))
    assert sorted(t for call in first_log + second_log for t in call) == sorted(TEXTS)  # each text encoded once
    assert torch.equal(resumed, whole)
    assert not parts.exists() and len(list(folder.glob("*.pt"))) == 1  # the chunks joined and removed
    assert torch.equal(torch.load(next(folder.glob("*.pt")), weights_only=True), whole)

    monkeypatch.setattr(cm, "encode", counting(encode, [], fail_after=0))  # a third call reads the final file
    assert torch.equal(encode_cached(model, tok, TEXTS, **kwargs), whole)


def test_a_bad_chunk_is_encoded_again(setup, tmp_path, monkeypatch):
    model, tok = setup
    kwargs = dict(key="toy", max_length=32, batch_size=8, chunk_size=16)
    monkeypatch.setenv("COURSE_CACHE", str(tmp_path))
    monkeypatch.setattr(cm, "encode", counting(encode, [], fail_after=2))
    with pytest.raises(Interrupted):
        encode_cached(model, tok, TEXTS, **kwargs)
    [parts] = list((tmp_path / "embeddings").glob("*.parts"))
    chunks = sorted(parts.glob("*.pt"))
    torch.save(torch.full((16, model.dim), float("nan")), chunks[1])
    log = []
    monkeypatch.setattr(cm, "encode", counting(encode, log))
    with pytest.warns(UserWarning, match="non-finite.*encoding it again"):
        resumed = encode_cached(model, tok, TEXTS, **kwargs)
    assert len(log) == 4  # the bad chunk and the three never written
    monkeypatch.setattr(cm, "encode", encode)
    torch.testing.assert_close(resumed, encode(model, tok, TEXTS, max_length=32, batch_size=8), atol=1e-6, rtol=0)

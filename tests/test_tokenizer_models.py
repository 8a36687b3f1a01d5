"""The WordPiece tokenizer, the encoder (pooling, normalisation, ``encode``), MiniLM and the embedding cache."""

import hashlib
import json
from pathlib import Path

import pytest
import torch

import course_lib.models as cm
from course_lib.config import get_config
from course_lib.data import load_dataset
from course_lib.models import Encoder, encode, encode_cached, load_minilm, make_encoder, minilm_dir, tokenize
from course_lib.tokenizer import SPECIAL_TOKENS, load_tokenizer, train_tokenizer, vocab_digest
from course_lib.utils import seed_everything

MINILM_SHA256 = "53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db"  # official all-MiniLM-L6-v2

TEXTS = [
    "dog, domestic dog: a member of the genus Canis that has been domesticated by man",
    "cat, true cat: feline mammal usually having thick soft fur and no ability to roar",
    "bank: sloping land beside a body of water",
    "bank, depository financial institution: a financial institution that accepts deposits",
    "run: move fast by using one's feet, with one foot off the ground at any given time",
    "the dog chased the cat along the river bank",
    "she deposited her savings in the bank",
    "he ran to catch the bus",
    "interest rates rose sharply at the central bank",
    "the river overflowed its banks after the storm",
] * 3

SENTENCES = [
    "The cat sits on the mat.",
    "A man is playing a guitar on stage.",
    "Interest rates were raised by the central bank.",
    "He walked along the river bank at dawn.",
    "我爱北京天安门",
]


@pytest.fixture(scope="module")
def tok():
    return train_tokenizer(TEXTS, vocab_size=300)


@pytest.fixture(scope="module")
def model(tok):
    seed_everything(0)
    return make_encoder(get_config("fast"), tok).eval()


# ---------------------------------------------------------------------------------------------------------
# tokenizer


def test_ids_are_canonical(tok):
    # HF tokenizers breaks count ties in hash-map order (huggingface/tokenizers#1794), so ids are re-numbered:
    # special tokens first, then the learned tokens sorted; two trainings give the same ids for the same set
    vocab = tok.get_vocab()
    by_id = [t for t, _ in sorted(vocab.items(), key=lambda kv: kv[1])]
    assert by_id[: len(SPECIAL_TOKENS)] == SPECIAL_TOKENS
    assert by_id[len(SPECIAL_TOKENS):] == sorted(by_id[len(SPECIAL_TOKENS):])
    # the learned *set* is reproducible too, even on a toy corpus full of ties (continuation tokens get sorted
    # ids before training; tests/test_bad_inputs_data.py trains in separate processes and compares)


def test_course_tokenizer_matches_manifest():
    # the FAST tokenizer (trained on ~150k texts, where the token set is stable) must match the recorded one:
    # a cold cache (CI, a new laptop) retrains it, so this checks that the vocabulary is reproducible
    manifest = json.loads((Path(__file__).resolve().parent.parent / "data" / "manifest_wordnet_fast.json").read_text())
    data = load_dataset("wordnet", "fast")
    tok = load_tokenizer(data, manifest["tokenizer"]["vocab_size"])
    assert vocab_digest(tok) == manifest["tokenizer"]["vocab_sha256"], (
        "the FAST tokenizer's vocabulary changed; if on purpose, regenerate with python -m course_lib.data"
    )


def test_special_tokens(tok):
    vocab = tok.get_vocab()
    for special in SPECIAL_TOKENS:
        assert special in vocab, special
    assert len(SPECIAL_TOKENS) == 5
    assert (tok.pad_token, tok.unk_token, tok.cls_token, tok.sep_token, tok.mask_token) == tuple(SPECIAL_TOKENS)
    assert 100 < len(tok) <= 300


def test_single_text_is_wrapped(tok):
    ids = tok("The dog chased the cat")["input_ids"]
    assert ids[0] == tok.cls_token_id and ids[-1] == tok.sep_token_id
    assert ids.count(tok.sep_token_id) == 1
    tokens = tok.convert_ids_to_tokens(ids)
    assert tokens[1:3] == ["the", "dog"]  # lower-cased, whole words that occur in the training text


def test_pair_template_segments(tok):
    enc = tok.backend_tokenizer.encode("the dog", "the river bank")
    assert enc.tokens == ["[CLS]", "the", "dog", "[SEP]", "the", "river", "bank", "[SEP]"]
    assert enc.type_ids == [0, 0, 0, 0, 1, 1, 1, 1]
    explicit = tok("the dog", "the river bank", return_token_type_ids=True)
    assert explicit["token_type_ids"] == [0, 0, 0, 0, 1, 1, 1, 1]


def test_pair_encoding_segments(tok):
    # what transformers code (e.g. a BERT cross-encoder doing model(**tok(q, d))) gets by default
    enc = tok("the dog", "the river bank")
    tokens = tok.convert_ids_to_tokens(enc["input_ids"])
    assert tokens == ["[CLS]", "the", "dog", "[SEP]", "the", "river", "bank", "[SEP]"]
    assert "token_type_ids" in enc, (
        f"the wrapped tokenizer returns only {tok.model_input_names}: pair encodings lose their segment ids "
        "unless return_token_type_ids=True is passed"
    )
    assert enc["token_type_ids"] == [0, 0, 0, 0, 1, 1, 1, 1]


def test_chinese_characters(tok):
    # trained on English only: every CJK character is its own token, here [UNK]
    tokens = tok.convert_ids_to_tokens(tok("我爱北京 dog")["input_ids"])
    assert tokens[0] == "[CLS]" and tokens[-1] == "[SEP]"
    assert tokens[1:5] == ["[UNK]"] * 4 and tokens[5] == "dog"
    # trained with Chinese text: the characters are split apart, each one a token of its own
    zh = train_tokenizer(TEXTS + ["我爱北京天安门", "北京是中国的首都"], vocab_size=300)
    tokens = zh.convert_ids_to_tokens(zh("我爱北京")["input_ids"])
    assert tokens == ["[CLS]", "我", "爱", "北", "京", "[SEP]"]


@pytest.mark.parametrize("vocab_size", [50, 104, 300.0, "300", None])
def test_bad_vocab_size(vocab_size):
    with pytest.raises(ValueError, match="vocab_size must be an int"):
        train_tokenizer(TEXTS, vocab_size=vocab_size)


def test_empty_texts():
    with pytest.raises(ValueError, match="empty list"):
        train_tokenizer([], vocab_size=300)


# ---------------------------------------------------------------------------------------------------------
# encoder


def test_make_encoder_fast_shape(model, tok):
    cfg = model.bert.config
    assert (cfg.num_hidden_layers, cfg.hidden_size, cfg.num_attention_heads, cfg.intermediate_size) == (2, 128, 2, 512)
    assert len(model.bert.encoder.layer) == 2
    assert cfg.vocab_size == len(tok) and cfg.pad_token_id == tok.pad_token_id
    assert model.pooling == "mean" and model.normalize and model.dim == 128
    assert model.bert.pooler is None


def test_forward_shape_and_norm(model, tok):
    batch = tokenize(tok, SENTENCES[:4], max_length=32)
    with torch.no_grad():
        out = model(**batch)
    assert out.shape == (4, 128) and out.dtype == torch.float32
    torch.testing.assert_close(out.norm(dim=1), torch.ones(4), atol=1e-5, rtol=0)


def test_mean_pooling_ignores_padding(model, tok):
    short, long = "the dog", "the dog chased the cat along the river bank after the storm"
    with torch.no_grad():
        padded = model(**tokenize(tok, [short, long], max_length=32))
        alone = model(**tokenize(tok, [short], max_length=32))
    assert tokenize(tok, [short, long], 32)["attention_mask"][0].sum() < tokenize(tok, [short, long], 32)["attention_mask"][1].sum()
    torch.testing.assert_close(padded[0], alone[0], atol=1e-5, rtol=0)


def test_mean_pooling_is_masked_mean(model, tok):
    raw = Encoder(model.bert, pooling="mean", normalize=False).eval()
    batch = tokenize(tok, ["the dog", "the bank of the river"], max_length=32)
    with torch.no_grad():
        hidden = model.bert(**batch).last_hidden_state
        pooled = raw(**batch)
    n0 = int(batch["attention_mask"][0].sum())
    torch.testing.assert_close(pooled[0], hidden[0, :n0].mean(0), atol=1e-5, rtol=0)
    torch.testing.assert_close(pooled[1], hidden[1].mean(0), atol=1e-5, rtol=0)


def test_cls_pooling(model, tok):
    cls = Encoder(model.bert, pooling="cls", normalize=False).eval()
    batch = tokenize(tok, SENTENCES[:3], max_length=32)
    with torch.no_grad():
        torch.testing.assert_close(cls(**batch), model.bert(**batch).last_hidden_state[:, 0])
        normalized = Encoder(model.bert, pooling="cls", normalize=True)(**batch)
    torch.testing.assert_close(normalized.norm(dim=1), torch.ones(3), atol=1e-5, rtol=0)


def test_unknown_pooling(model):
    with pytest.raises(ValueError, match="pooling must be one of"):
        Encoder(model.bert, pooling="max")


def test_heads_must_divide_hidden(tok):
    with pytest.raises(ValueError, match="not divisible by num_heads 3"):
        make_encoder(get_config("fast", num_heads=3), tok)


# ---------------------------------------------------------------------------------------------------------
# encode


def test_encode_keeps_input_order(model, tok):
    texts = TEXTS[:7] + ["bank", "a very long sentence about the dog and the cat and the river bank and money"]
    out = encode(model, tok, texts, max_length=32, batch_size=3, device="cpu")
    assert out.shape == (len(texts), 128) and out.dtype == torch.float32 and out.device.type == "cpu"
    alone = torch.cat([encode(model, tok, [t], max_length=32, device="cpu") for t in texts])
    torch.testing.assert_close(out, alone, atol=1e-5, rtol=0)
    # rows differ from each other: the order check above is not vacuous
    assert (out[0] - out[1]).abs().max() > 1e-3


def test_encode_restores_mode(model, tok):
    try:
        model.train()
        encode(model, tok, ["the dog"], device="cpu")
        assert model.training
        model.eval()
        encode(model, tok, ["the dog"], device="cpu")
        assert not model.training
    finally:
        model.eval()


def test_encode_rejects_bad_input(model, tok):
    with pytest.raises(TypeError, match="not a single string"):
        encode(model, tok, "the dog", device="cpu")
    with pytest.raises(ValueError, match="empty list"):
        encode(model, tok, [], device="cpu")


# ---------------------------------------------------------------------------------------------------------
# MiniLM


def test_minilm_weights_sha256():
    assert cm.MINILM_SHA256 == MINILM_SHA256
    digest = hashlib.sha256((minilm_dir() / "model.safetensors").read_bytes()).hexdigest()
    assert digest == MINILM_SHA256


def test_minilm_checksum_mismatch_raises(monkeypatch):
    monkeypatch.setattr(cm, "MINILM_SHA256", "0" * 64)
    with pytest.raises(ValueError, match="not the official all-MiniLM-L6-v2"):
        load_minilm()


def test_minilm_equals_sentence_transformers():
    from sentence_transformers import SentenceTransformer

    model, tok = load_minilm()
    assert model.dim == 384 and model.pooling == "mean"
    ours = encode(model, tok, SENTENCES, device="cpu")
    st = SentenceTransformer(str(minilm_dir()), device="cpu")
    theirs = torch.from_numpy(st.encode(SENTENCES, normalize_embeddings=True, convert_to_numpy=True))
    assert ours.shape == theirs.shape == (5, 384)
    torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=0)


# ---------------------------------------------------------------------------------------------------------
# encode_cached


def test_encode_cached(model, tok, tmp_path, monkeypatch):
    monkeypatch.setenv("COURSE_CACHE", str(tmp_path))
    calls = []
    real_encode = cm.encode

    def counting_encode(*args, **kwargs):
        calls.append(args[2])
        if len(calls) > 1:
            raise AssertionError("encode ran again: the cache was not used")
        return real_encode(*args, **kwargs)

    monkeypatch.setattr(cm, "encode", counting_encode)
    texts = TEXTS[:5]
    first = encode_cached(model, tok, texts, key="toy-model", max_length=32)
    assert len(calls) == 1
    files = list((tmp_path / "embeddings").glob("*.pt"))
    assert len(files) == 1 and not list((tmp_path / "embeddings").glob("*.tmp*"))
    second = encode_cached(model, tok, texts, key="toy-model", max_length=32)
    assert torch.equal(first, second)
    torch.testing.assert_close(first, real_encode(model, tok, texts, max_length=32, device="cpu"), atol=1e-5, rtol=0)

    # another key, other texts or another max_length is another cache entry
    monkeypatch.setattr(cm, "encode", real_encode)
    encode_cached(model, tok, texts, key="other-model", max_length=32)
    encode_cached(model, tok, texts[:4], key="toy-model", max_length=32)
    encode_cached(model, tok, texts, key="toy-model", max_length=16)
    assert len(list((tmp_path / "embeddings").glob("*.pt"))) == 4


def test_encode_cached_recomputes_a_corrupt_file(model, tok, tmp_path, monkeypatch):
    monkeypatch.setenv("COURSE_CACHE", str(tmp_path))
    texts = TEXTS[:3]
    first = encode_cached(model, tok, texts, key="toy", max_length=32)
    (path,) = (tmp_path / "embeddings").glob("*.pt")
    path.write_bytes(b"not a tensor")
    again = encode_cached(model, tok, texts, key="toy", max_length=32)
    torch.testing.assert_close(again, first)
    assert torch.equal(torch.load(path, weights_only=True), again)

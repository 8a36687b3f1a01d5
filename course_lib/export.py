"""A course encoder as a sentence-transformers model folder, so it can leave the course.

``save_sentence_transformer(model, tokenizer, path)`` writes the three modules a ``SentenceTransformer``
needs (Reimers & Gurevych, 2019, arXiv:1908.10084): the transformers weights and the tokenizer, the pooling
the course encoder uses (masked mean, or [CLS]) and, when the encoder normalises, a ``Normalize`` module.
``SentenceTransformer(path)`` then encodes as ``course_lib.models.encode`` does, with one difference: a
sentence-transformers model has one ``max_seq_length`` (we use the documents' limit), while the course
truncates queries at ``max_query_len``; queries shorter than that limit encode identically
(tests/test_export.py checks both).
"""

import shutil
import tempfile
from pathlib import Path

from course_lib.models import Encoder


def save_sentence_transformer(model: Encoder, tokenizer, path, *, max_seq_length: int) -> Path:
    """Write ``model`` (a ``course_lib.models.Encoder``) and its tokenizer to ``path`` as a sentence-transformers
    folder, replacing what is there only once the new folder is complete. Returns ``path``."""
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer.modules import Normalize, Pooling, Transformer

    if not isinstance(model, Encoder):
        raise TypeError(f"model must be a course_lib.models.Encoder, got {type(model).__name__}")
    if isinstance(max_seq_length, bool) or not isinstance(max_seq_length, int) or max_seq_length < 1:
        raise ValueError(f"max_seq_length must be a positive int (tokens), got {max_seq_length!r}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=path.parent) as tmp:
        hf = Path(tmp) / "hf"
        model.bert.save_pretrained(hf)
        tokenizer.save_pretrained(hf)
        # the course's BertModel has no pooler layer (add_pooling_layer=False): load it the same way
        transformer = Transformer(str(hf), max_seq_length=max_seq_length, model_kwargs={"add_pooling_layer": False})
        pooling = Pooling(model.dim, pooling_mode="cls" if model.pooling == "cls" else "mean")
        modules = [transformer, pooling] + ([Normalize()] if model.normalize else [])
        staged = Path(tmp) / "model"
        SentenceTransformer(modules=modules, device="cpu").save(str(staged))
        if path.exists():
            shutil.rmtree(path)
        staged.rename(path)
    return path

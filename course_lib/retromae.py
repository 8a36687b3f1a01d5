"""RetroMAE: retrieval-oriented pretraining with an asymmetric masked auto-encoder (Xiao et al., 2022).

Plain masked-language-model (MLM) pretraining teaches every *token* vector to predict its masked
neighbours; nothing asks the [CLS] vector to hold the whole sentence, which is what a dense retriever uses.
RetroMAE (§3) adds a bottleneck that does:

* **encoder** (the course BERT): the input with ~30 % of its words masked → MLM loss, and the sentence
  embedding h = the last-layer [CLS] state;
* **decoder** (one transformer layer): reconstructs *every* token of the original sentence from h plus a
  random ~50 % of the other tokens. Its queries are h + position (one per token to predict), its keys and
  values are [h, embeddings of the unmasked tokens], and a position-specific mask
  (``course_lib.masks.retromae_decoder_mask``) hides each row's own token and a different random half of the
  rest ("enhanced decoding", §3.2). With so little context, the decoder leans on h;
* loss = encoder MLM + decoder reconstruction, unweighted. The word-embedding table and the LM head are the
  encoder's (shared), as in the reference code.

``decoder=False`` gives the plain MLM baseline with the same encoder, data and masking, so the two
pretrainings differ only by the bottleneck. After pretraining, ``model.bert`` is fine-tuned as any encoder.
"""

import math

import torch
import torch.nn.functional as F
from transformers import BertConfig, BertModel

from course_lib.masks import attention_bias, retromae_decoder_mask, whole_word_mask
from course_lib.models import LMHead, bert_config
from course_lib.train import History, train
from course_lib.utils import get_device


class EnhancedDecoderLayer(torch.nn.Module):
    """One post-LayerNorm transformer layer (BERT's) in which queries and keys/values come from two different
    streams: ``query`` (B, L, H) attends over ``content`` (B, L, H) under an additive ``bias`` (B, 1, L, L), and
    the residual adds the *query* stream (RetroMAE §3.2, eq. 6–7)."""

    def __init__(self, config: BertConfig):
        super().__init__()
        hidden = config.hidden_size
        self.num_heads = config.num_attention_heads
        self.head_dim = hidden // self.num_heads
        self.query = torch.nn.Linear(hidden, hidden)
        self.key = torch.nn.Linear(hidden, hidden)
        self.value = torch.nn.Linear(hidden, hidden)
        self.attn_out = torch.nn.Linear(hidden, hidden)
        self.attn_norm = torch.nn.LayerNorm(hidden, eps=config.layer_norm_eps)
        self.ffn_in = torch.nn.Linear(hidden, config.intermediate_size)
        self.ffn_out = torch.nn.Linear(config.intermediate_size, hidden)
        self.ffn_norm = torch.nn.LayerNorm(hidden, eps=config.layer_norm_eps)
        self.dropout = torch.nn.Dropout(config.hidden_dropout_prob)

    def _heads(self, x: torch.Tensor) -> torch.Tensor:
        B, L, _ = x.shape
        return x.view(B, L, self.num_heads, self.head_dim).transpose(1, 2)  # (B, heads, L, d)

    def forward(self, query: torch.Tensor, content: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        q = self._heads(self.query(query))  # (B, heads, L, d)
        k = self._heads(self.key(content))  # (B, heads, L, d)
        v = self._heads(self.value(content))  # (B, heads, L, d)
        scores = q @ k.transpose(-1, -2) / math.sqrt(self.head_dim) + bias  # (B, heads, L, L)
        ctx = scores.softmax(-1) @ v  # (B, heads, L, d)
        ctx = ctx.transpose(1, 2).reshape(query.shape)  # (B, L, H)
        x = self.attn_norm(query + self.dropout(self.attn_out(ctx)))  # (B, L, H) residual from the query stream
        return self.ffn_norm(x + self.dropout(self.ffn_out(F.gelu(self.ffn_in(x)))))  # (B, L, H)


def bert_style_init(module: torch.nn.Module, std: float = 0.02) -> None:
    """BERT's initialisation of one module (Devlin et al., 2019; transformers' ``BertPreTrainedModel``): linear
    weights N(0, std²) with zero biases, LayerNorm weight 1 and bias 0. PyTorch's default for a linear layer,
    U(±1/√fan_in), has a standard deviation of 1/√(3·fan_in): 0.051 at width 128, 2.5× BERT's 0.02."""
    if isinstance(module, torch.nn.Linear):
        torch.nn.init.normal_(module.weight, mean=0.0, std=std)
        if module.bias is not None:
            torch.nn.init.zeros_(module.bias)
    elif isinstance(module, torch.nn.LayerNorm):
        torch.nn.init.ones_(module.weight)
        torch.nn.init.zeros_(module.bias)


class RetroMAE(torch.nn.Module):
    """Encoder BERT + shared LM head, and (unless ``decoder=False``, the plain MLM baseline) the one-layer
    enhanced decoder. ``forward`` returns the encoder's last hidden states; the losses are below."""

    def __init__(self, bert: BertModel, decoder: bool = True):
        super().__init__()
        self.bert = bert
        self.lm_head = LMHead(bert.get_input_embeddings(), bert.config.layer_norm_eps)
        self.decoder = EnhancedDecoderLayer(bert.config) if decoder else None
        if self.decoder is not None:  # BERT's initialisation, as the reference applies the encoder's to its decoder
            self.decoder.apply(lambda m: bert_style_init(m, bert.config.initializer_range))

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                token_type_ids: torch.Tensor | None = None) -> torch.Tensor:
        return self.bert(input_ids=input_ids, attention_mask=attention_mask,
                         token_type_ids=token_type_ids).last_hidden_state  # (B, L, H)

    def decoder_streams(self, h: torch.Tensor, input_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The two decoder inputs (RetroMAE §3.2): query stream H1 = h + p_i (a raw position-table row, no
        LayerNorm, as the reference code), content stream H2 = [h, e(x_1) + p_1, …] from the encoder's own
        embedding layer on the *unmasked* ids, with h in slot 0 instead of [CLS]'s embedding."""
        emb = self.bert.embeddings  # shared with the encoder
        L = input_ids.shape[1]
        pos = emb.position_embeddings(torch.arange(L, device=input_ids.device))  # (L, H)
        query = h[:, None, :] + pos[None]  # (B, L, H)
        content = torch.cat([h[:, None, :], emb(input_ids=input_ids)[:, 1:]], 1)  # (B, L, H)
        return query, content

    def decode(self, h: torch.Tensor, input_ids: torch.Tensor, decoder_mask: torch.Tensor) -> torch.Tensor:
        """Decoder hidden states (B, L, H): row i reconstructs token i from h and the columns ``decoder_mask``
        (B, L, L) lets it see."""
        if self.decoder is None:
            raise ValueError("this model was built with decoder=False (the plain MLM baseline); it has no decoder")
        query, content = self.decoder_streams(h, input_ids)  # (B, L, H) each
        return self.decoder(query, content, attention_bias(decoder_mask, query.dtype))  # (B, L, H)


def make_retromae(cfg, tokenizer, decoder: bool = True) -> RetroMAE:
    """A randomly initialised RetroMAE (or, ``decoder=False``, MLM-only) model of the course encoder's size."""
    return RetroMAE(BertModel(bert_config(cfg, tokenizer), add_pooling_layer=False), decoder=decoder)


def token_loss(model: RetroMAE, hidden: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy of the LM head over the positions whose label is not −100; the head runs only there
    (most of its (·, V) matmul is saved)."""
    where = labels != -100  # (B, L)
    return F.cross_entropy(model.lm_head(hidden[where]), labels[where])  # (T, V) logits


@torch.no_grad()
def bottleneck_usage(model: RetroMAE, batch: dict) -> dict[str, float]:
    """Does the decoder use the sentence embedding h? Its reconstruction loss on ``batch`` (a
    ``pretrain_batch``) with each row's own h, with h rolled by one row (another sentence's h: the right shape and
    scale, the wrong content) and with the batch-mean h (no sentence-specific content). A decoder that reads h
    has ``own`` clearly below the other two; one that ignores it scores all three alike."""
    if model.decoder is None:
        raise ValueError("this model was built with decoder=False (the plain MLM baseline); it has no decoder")
    if batch["input_ids"].shape[0] < 2:
        raise ValueError("bottleneck_usage needs a batch of at least 2 sentences (it swaps h between rows)")
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    batch = {k: v.to(device) for k, v in batch.items()}
    h = model(batch["encoder_input_ids"], batch["attention_mask"])[:, 0]  # (B, H)
    variants = {"own": h, "rolled": h.roll(1, dims=0), "mean": h.mean(0, keepdim=True).expand_as(h)}
    out = {name: float(token_loss(model, model.decode(v, batch["input_ids"], batch["decoder_mask"]),
                                  batch["decoder_labels"])) for name, v in variants.items()}
    model.train(was_training)
    return out


# ---------------------------------------------------------------------------------------------------------
# Batches and the training step


def pretrain_texts(data) -> list[str]:
    """Unlabelled pretraining text: the corpus's documents and the training queries, never a dev or test query
    (their text is held out, as their labels are)."""
    return [data.corpus[d] for d in sorted(data.corpus)] + [e.query for e in data.train]


def pretrain_batch(
    tokenizer,
    texts: list[str],
    max_length: int,
    *,
    encoder_mask_ratio: float = 0.3,
    decoder_mask_ratio: float = 0.5,
    generator: torch.Generator | None = None,
) -> dict[str, torch.Tensor]:
    """One pretraining batch (the reference's ``RetroMAECollator``):

    ``input_ids`` / ``attention_mask`` (B, L) the original text (the decoder's input: its "masking" exists
    only in ``decoder_mask``); ``encoder_input_ids`` / ``encoder_labels`` after whole-word masking;
    ``decoder_labels`` the original ids with [CLS], [SEP] and padding set to −100; ``decoder_mask`` (B, L, L).
    """
    enc = tokenizer(list(texts), padding=True, truncation=True, max_length=max_length, return_tensors="pt")
    ids, att = enc["input_ids"], enc["attention_mask"]  # (B, L)
    word_ids = torch.tensor([[-1 if w is None else w for w in enc.word_ids(b)] for b in range(len(texts))])  # (B, L)
    special = (word_ids < 0) & att.bool()  # (B, L) [CLS], [SEP]
    encoder_ids, encoder_labels = whole_word_mask(
        ids, word_ids, mask_token_id=tokenizer.mask_token_id, vocab_size=len(tokenizer),
        first_regular_id=len(tokenizer.all_special_ids), mask_ratio=encoder_mask_ratio, generator=generator)
    return {
        "input_ids": ids,
        "attention_mask": att,
        "encoder_input_ids": encoder_ids,
        "encoder_labels": encoder_labels,
        "decoder_labels": ids.masked_fill(word_ids < 0, -100),
        "decoder_mask": retromae_decoder_mask(att, special, decoder_mask_ratio, generator),
    }


def pretrain_batches(tokenizer, texts: list[str], batch_size: int, max_length: int, *, generator: torch.Generator, **ratios):
    """Endless shuffled epochs of ``pretrain_batch`` over distinct ``texts`` (last partial batch dropped)."""
    texts = list(dict.fromkeys(texts))
    if batch_size > len(texts):
        raise ValueError(f"batch_size {batch_size} exceeds the {len(texts)} distinct texts")
    while True:
        order = torch.randperm(len(texts), generator=generator).tolist()
        for start in range(0, len(order) - batch_size + 1, batch_size):
            chunk = [texts[i] for i in order[start : start + batch_size]]
            yield pretrain_batch(tokenizer, chunk, max_length, generator=generator, **ratios)


def pair_pretrain_batches(tokenizer, texts: list[str], batch_size: int, max_length: int, *,
                          generator: torch.Generator, encoder_mask_ratio: float = 0.3):
    """Endless MLM batches whose rows are *pairs* of distinct texts drawn at random, ``[CLS] a [SEP] b [SEP]``
    with ``token_type_ids`` 1 on b and up to ``max_length`` tokens: the input shape of BERT's own pretraining
    (Devlin et al., 2019, §3.1, without its next-sentence task) and of SimBERT's seq2seq rows, so the segment-1
    embedding and the positions past a single text's length are trained before SimBERT needs them. Words are
    masked whole within their own segment. Keys: ``input_ids``, ``attention_mask``, ``token_type_ids``,
    ``encoder_input_ids``, ``encoder_labels``."""
    texts = list(dict.fromkeys(texts))
    if 2 * batch_size > len(texts):
        raise ValueError(f"a pair batch of {batch_size} rows needs {2 * batch_size} distinct texts, got {len(texts)}")
    while True:
        order = torch.randperm(len(texts), generator=generator).tolist()
        for start in range(0, len(order) - 2 * batch_size + 1, 2 * batch_size):
            chunk = [texts[i] for i in order[start:start + 2 * batch_size]]
            enc = tokenizer(chunk[::2], chunk[1::2], padding=True, truncation="longest_first", max_length=max_length,
                            return_token_type_ids=True, return_tensors="pt")
            ids, att = enc["input_ids"], enc["attention_mask"]  # (B, L)
            word_ids = torch.tensor([[-1 if w is None else w + 100_000 * s  # segment b's words numbered apart
                                      for w, s in zip(enc.word_ids(b), enc.sequence_ids(b))] for b in range(len(ids))])
            encoder_ids, labels = whole_word_mask(
                ids, word_ids, mask_token_id=tokenizer.mask_token_id, vocab_size=len(tokenizer),
                first_regular_id=len(tokenizer.all_special_ids), mask_ratio=encoder_mask_ratio, generator=generator)
            yield {"input_ids": ids, "attention_mask": att, "token_type_ids": enc["token_type_ids"],
                   "encoder_input_ids": encoder_ids, "encoder_labels": labels}


def retromae_step():
    """A ``step_fn`` for ``course_lib.train.train``: encoder MLM loss, plus the decoder's reconstruction loss
    when the model has a decoder (RetroMAE §3.3: the two are summed). Parts go to ``step.parts``."""

    def step(model, batch):
        device = next(model.parameters()).device
        batch = {k: v.to(device) for k, v in batch.items()}
        hidden = model(batch["encoder_input_ids"], batch["attention_mask"], batch.get("token_type_ids"))  # (B, L, H)
        loss = mlm = token_loss(model, hidden, batch["encoder_labels"])
        step.parts["encoder"].append(mlm.item())
        if model.decoder is not None:
            decoded = model.decode(hidden[:, 0], batch["input_ids"], batch["decoder_mask"])  # (B, L, H)
            dec = token_loss(model, decoded, batch["decoder_labels"])
            step.parts["decoder"].append(dec.item())
            loss = loss + dec
        return loss

    step.parts = {"encoder": [], "decoder": []}
    return step


def pretrain(
    cfg,
    texts: list[str],
    tokenizer,
    *,
    decoder: bool = True,
    model: RetroMAE | None = None,
    steps: int | None = None,
    batch_size: int | None = None,
    encoder_mask_ratio: float | None = None,
    decoder_mask_ratio: float | None = None,
    generator: torch.Generator | None = None,
    progress: bool = True,
    warmup_steps: int = 0,
    decay: str = "constant",
    pairs: bool = False,
) -> tuple[RetroMAE, History, dict[str, list[float]]]:
    """RetroMAE pretraining on raw ``texts`` (``decoder=False``: plain MLM at the same steps, batch and
    encoder masking), with the preset's ``pretrain_*`` settings. The lr is constant by default; ``warmup_steps``
    and ``decay="linear"`` give the reference's shape (a linear warm-up over 10 % of the steps, then a linear decay
    to 0: staoxiao/RetroMAE, examples/pretrain/README.md, lr 1e-4). ``pairs=True`` (MLM only) trains on
    ``pair_pretrain_batches`` of ``cfg.max_query_len + cfg.max_doc_len`` tokens, the rows SimBERT will see.
    Returns the model, the loop's history (total loss) and the loss parts per step (``encoder``, ``decoder``)."""
    if pairs and (decoder if model is None else model.decoder is not None):
        raise ValueError("pairs=True is plain MLM pretraining: pass decoder=False (RetroMAE's decoder rebuilds one "
                         "sentence from its [CLS] vector, not a pair)")
    device = get_device()
    model = (model or make_retromae(cfg, tokenizer, decoder=decoder)).to(device)
    generator = generator or torch.Generator().manual_seed(cfg.seed)
    ratios = {
        "encoder_mask_ratio": cfg.encoder_mask_ratio if encoder_mask_ratio is None else encoder_mask_ratio,
        "decoder_mask_ratio": cfg.decoder_mask_ratio if decoder_mask_ratio is None else decoder_mask_ratio,
    }
    step = retromae_step()
    history = train(
        model,
        step,
        (pair_pretrain_batches(tokenizer, texts, batch_size or cfg.batch_size, cfg.max_query_len + cfg.max_doc_len,
                               generator=generator, encoder_mask_ratio=ratios["encoder_mask_ratio"]) if pairs else
         pretrain_batches(tokenizer, texts, batch_size or cfg.batch_size, cfg.max_doc_len, generator=generator, **ratios)),
        optimizer=torch.optim.AdamW(model.parameters(), lr=cfg.pretrain_lr, weight_decay=0.01),
        max_steps=steps or cfg.pretrain_steps,
        time_budget_s=cfg.pretrain_seconds,
        progress=progress,
        desc="RetroMAE" if model.decoder is not None else "MLM",
        warmup_steps=warmup_steps,
        decay=decay,
    )
    return model, history, step.parts

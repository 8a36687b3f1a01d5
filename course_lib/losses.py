"""Losses of the in-batch negatives family: the softmax over a batch's candidates (InfoNCE /
MultipleNegativesRankingLoss), its symmetric variant, the additive margin, masking of duplicate positives, and
the same softmax over the candidates of several processes (cross-device negatives; Conan's CBB loss).

A batch holds B (query, positive) pairs. Every query scores every candidate column: first the B positives,
then optional hard negatives. Row i's target is column i, and the other columns are its negatives, for free
(DPR, Karpukhin et al., 2020, §3.2 "in-batch negatives"). The loss is the cross-entropy of the softmax over
the row, InfoNCE (van den Oord et al., 2018, §2.3) with a temperature τ (SimCSE, Gao et al., 2021, §2, eq. 1).
The column layout and the symmetric term follow sentence-transformers' ``MultipleNegativesRankingLoss``, the
margin follows PaddleNLP's in-batch-negatives model; the checks that
``tests/test_losses.py`` runs.
"""

import math
from collections.abc import Hashable, Sequence
from numbers import Real

import torch
import torch.nn.functional as F

SIMILARITIES = ("cos", "dot")


def _check_number(name: str, value, *, positive: bool = False) -> None:
    if isinstance(value, bool) or not isinstance(value, Real):
        raise TypeError(f"{name} must be a real number, got {type(value).__name__} {value!r}")
    if not math.isfinite(value):
        raise ValueError(f"{name} must be finite, got {value!r}")
    if positive and not value > 0:
        raise ValueError(f"{name} must be > 0, got {value!r}; a temperature of 0.05 is scale 20 (τ = 1/scale)")


def _check_finite(named: list[tuple[str, torch.Tensor]]) -> None:
    """Every tensor is free of NaN and inf (one device sync for all of them)."""
    finite = torch.stack([torch.isfinite(t.detach()).all() for _, t in named])  # (n,)
    if not finite.all():
        name = named[int((~finite).nonzero()[0])][0]
        raise ValueError(
            f"{name} holds non-finite values (NaN or inf): the loss and every gradient would be NaN. Check what "
            f"produced {name}; a NaN encoder output usually means training diverged (lower the learning rate, "
            "clip gradients) or an input row is empty"
        )


def _check_logits(logits: torch.Tensor, temperature: float, similarity: str) -> None:
    """|logits| stays within sqrt of the dtype's max, so the softmax and Adam's squared gradients stay finite."""
    limit = math.sqrt(torch.finfo(logits.dtype).max)
    peak = logits.detach().abs().amax()
    if not peak <= limit:  # also catches NaN
        hint = (" or the embeddings are too large for similarity='dot': normalise them or use similarity='cos'"
                if similarity == "dot" else "")
        raise ValueError(
            f"logits reach {float(peak):.3g} (similarity / temperature), more than {logits.dtype} can carry through "
            f"the softmax and its squared gradients (|logit| <= {limit:.3g}): temperature={temperature!r} is too "
            f"small{hint}; typical temperatures are 0.01 to 0.1"
        )


def _check_embeddings(q, d, negatives, negatives_name: str = "negatives") -> None:
    named = [("q", q), ("d", d)] + ([(negatives_name, negatives)] if negatives is not None else [])
    for name, t in named:
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{name} must be a torch.Tensor of embeddings, got {type(t).__name__}")
        if not t.is_floating_point():
            raise TypeError(f"{name} must be a floating-point tensor, got dtype {t.dtype}; convert it with .float()")
        if t.dtype != q.dtype:
            raise TypeError(f"{name} has dtype {t.dtype} but q has {q.dtype}; cast all embeddings to one dtype")
    if q.dim() != 2 or d.dim() != 2:
        raise ValueError(
            f"q and d must be 2-D (B, D) embeddings, got shapes {tuple(q.shape)} and {tuple(d.shape)}; "
            "encode a batch of texts into one row per text"
        )
    if q.shape != d.shape:
        raise ValueError(
            f"q {tuple(q.shape)} and d {tuple(d.shape)} must have the same shape (B, D): row i of d is the "
            "positive of row i of q"
        )
    B, D = q.shape
    if B < 1:
        raise ValueError("the batch is empty (B = 0): the in-batch loss needs at least one (query, positive) pair")
    if negatives is not None:
        _check_negatives_shape(negatives, B, D)
    _check_finite(named)


def _check_negatives_shape(negatives: torch.Tensor, B: int, D: int) -> None:
    if negatives.dim() == 3:
        if negatives.shape[0] != B or negatives.shape[2] != D:
            raise ValueError(
                f"per-query negatives must have shape (B, K, D) = ({B}, K, {D}), got {tuple(negatives.shape)}"
            )
    elif negatives.dim() == 2:
        if negatives.shape[1] != D:
            raise ValueError(f"shared negatives must have shape (M, D) with D = {D}, got {tuple(negatives.shape)}")
    else:
        raise ValueError(
            f"negatives must be (B, K, D) per-query or (M, D) shared embeddings, got {negatives.dim()}-D "
            f"shape {tuple(negatives.shape)}"
        )


def candidate_columns(d: torch.Tensor, negatives: torch.Tensor | None = None) -> torch.Tensor:
    """The candidate columns in sentence-transformers' ``MultipleNegativesRankingLoss`` order
    (sentence-transformers' losses): the B positives, then the negatives. Per-query negatives (B, K, D) are laid out in K column blocks,
    block j holding the j-th negative of every query: ``[d_0..d_{B-1}, n_{0,0}..n_{B-1,0}, n_{0,1}, …]``.
    Shared negatives (M, D) follow the positives as they are. Returns (B + B·K, D) or (B + M, D)."""
    if negatives is None:
        return d  # (B, D)
    if negatives.dim() == 3:
        negatives = negatives.transpose(0, 1).reshape(-1, d.shape[1])  # (K·B, D), block j = negatives[:, j]
    return torch.cat([d, negatives], dim=0)  # (C, D)


def similarity_logits(
    q: torch.Tensor,
    d: torch.Tensor,
    negatives: torch.Tensor | None = None,
    *,
    temperature: float = 0.05,
    margin: float = 0.0,
    similarity: str = "cos",
) -> torch.Tensor:
    """The (B, C) logits of the in-batch softmax: ``(S − m·I) / τ`` (DPR, Karpukhin et al., 2020, §3.2).

    ``S[i, j]`` is the similarity of query i and candidate column j (``candidate_columns``: B positives, then
    negatives); ``similarity="cos"`` L2-normalises every embedding first (``F.normalize``, so a zero vector
    scores 0), ``"dot"`` takes raw inner products (DPR, Karpukhin et al., 2020, §3.1). The additive margin m
    (PaddleNLP's in-batch-negatives model) is subtracted from each row's positive, column i of row i, before the
    temperature τ scales everything (scale = 1/τ, SimCSE, Gao et al., 2021, §2, eq. 1). Row i's target is i.

    Checks: embeddings are floating-point tensors of one dtype, (B, D) with B ≥ 1, negatives (B, K, D) or (M, D),
    all finite; ``temperature`` finite and > 0, ``margin`` finite; the logits stay within sqrt of the dtype's
    max (a tiny temperature, or huge ``"dot"`` embeddings, would overflow the softmax).
    """
    return _logits(q, d, negatives, "negatives", temperature=temperature, margin=margin, similarity=similarity)


def _logits(q, d, negatives, negatives_name: str, *, temperature, margin, similarity) -> torch.Tensor:
    """``similarity_logits`` with the extra columns named ``negatives_name`` in errors (cbns: "memory")."""
    _check_embeddings(q, d, negatives, negatives_name)
    _check_number("temperature", temperature, positive=True)
    _check_number("margin", margin)
    if similarity not in SIMILARITIES:
        raise ValueError(f"similarity must be one of {SIMILARITIES}, got {similarity!r}")
    candidates = candidate_columns(d, negatives)  # (C, D)
    if similarity == "cos":
        q = F.normalize(q, dim=-1)  # (B, D)
        candidates = F.normalize(candidates, dim=-1)  # (C, D)
    scores = q @ candidates.T  # (B, C)
    if margin:
        scores = scores - margin * torch.eye(*scores.shape, dtype=scores.dtype, device=scores.device)  # (B, C)
    logits = scores / temperature  # (B, C)
    _check_logits(logits, temperature, similarity)
    return logits


def duplicate_mask(doc_ids: Sequence[Hashable], batch_size: int, n_columns: int) -> torch.Tensor:
    """Boolean (B, C) mask of false negatives: True at (i, j) when column j ≠ i carries the id of row i's
    positive, i.e. the same document appears again in the batch (sentence-transformers #3189 and #2732: duplicates are false
    negatives; masking them with −inf is Tom Aarsen's alternative to the no-duplicates sampler).

    ``doc_ids`` names the B positive columns (length B; negative columns are then never masked) or every
    column in order (length C, the negatives' ids after the positives, in ``candidate_columns`` order).
    """
    if isinstance(doc_ids, (str, bytes)) or not isinstance(doc_ids, Sequence):
        raise TypeError(
            f"doc_ids must be a sequence (list or tuple) of ids, one per column, got {type(doc_ids).__name__}"
        )
    if len(doc_ids) not in (batch_size, n_columns):
        expected = f"{batch_size}" if batch_size == n_columns else f"{batch_size} (the positives) or {n_columns} (every column)"
        raise ValueError(
            f"doc_ids has {len(doc_ids)} ids but the batch has {batch_size} positives and {n_columns} columns; "
            f"pass {expected} ids, the negatives' ids after the positives' in column order"
        )
    codes: dict = {}
    try:
        column_codes = [codes.setdefault(i, len(codes)) for i in doc_ids]
    except TypeError:
        raise TypeError("doc_ids must be hashable (str or int ids); got an unhashable id") from None
    # columns without an id get codes no id can have, so they never match
    column_codes += range(-1, -1 - (n_columns - len(column_codes)), -1)
    columns = torch.tensor(column_codes)  # (C,)
    mask = columns[:batch_size, None] == columns[None, :]  # (B, C), row i: same id as positive i
    return mask & ~torch.eye(batch_size, n_columns, dtype=torch.bool)  # (B, C), the positive itself stays


def in_batch_softmax_loss(
    q: torch.Tensor,
    d: torch.Tensor,
    negatives: torch.Tensor | None = None,
    *,
    temperature: float = 0.05,
    margin: float = 0.0,
    similarity: str = "cos",
    doc_ids: Sequence[Hashable] | None = None,
    symmetric: bool = False,
) -> torch.Tensor:
    """In-batch negatives softmax loss (InfoNCE / MultipleNegativesRankingLoss), a scalar tensor.

    ``ℓ = (1/B) Σ_i CE(L_i, i)`` over the logits ``L = (S − m·I)/τ`` of ``similarity_logits``
    (DPR, Karpukhin et al., 2020, §3.2; van den Oord et al., 2018, §2.3). ``q``, ``d``: (B, D), row i of
    ``d`` is the positive of row i of ``q``; ``negatives``: (B, K, D) per-query hard negatives or (M, D)
    shared ones, extra columns after the positives.

    ``doc_ids`` (see ``duplicate_mask``) masks with −inf every other column that holds row i's own positive
    document, so a duplicate is not pushed away as a negative. ``symmetric=True`` averages in the
    document→query term, ``½[CE(L, arange) + CE(L[:, :B]ᵀ, arange)]`` (MultipleNegativesSymmetricRankingLoss;
    the backward term uses only the B positive columns); the same ``doc_ids`` mask then also hides other
    queries whose positive has the same id.
    """
    logits = similarity_logits(q, d, negatives, temperature=temperature, margin=margin, similarity=similarity)  # (B, C)
    B, C = logits.shape
    if doc_ids is not None:
        mask = duplicate_mask(doc_ids, B, C).to(logits.device)  # (B, C)
        logits = logits.masked_fill(mask, float("-inf"))  # (B, C)
    labels = torch.arange(B, device=logits.device)  # (B,)
    loss = F.cross_entropy(logits, labels)
    if symmetric:
        # document j picks its query among the B queries; the positive block's mask is symmetric
        loss = 0.5 * (loss + F.cross_entropy(logits[:, :B].T, labels))  # logits[:, :B].T: (B, B)
    return loss


def symmetric_in_batch_loss(q: torch.Tensor, d: torch.Tensor, negatives: torch.Tensor | None = None, **kwargs) -> torch.Tensor:
    """The symmetric in-batch loss (sentence-transformers' MultipleNegativesSymmetricRankingLoss):
    ``in_batch_softmax_loss(..., symmetric=True)``, with the same keyword arguments."""
    return in_batch_softmax_loss(q, d, negatives, symmetric=True, **kwargs)


def cbns_loss(
    q: torch.Tensor,
    d: torch.Tensor,
    memory: torch.Tensor | None = None,
    *,
    temperature: float = 0.05,
    logq: torch.Tensor | None = None,
    memory_logq: torch.Tensor | None = None,
    doc_ids: Sequence[Hashable] | None = None,
    memory_ids: Sequence[Hashable] | None = None,
    similarity: str = "cos",
) -> torch.Tensor:
    """Cross-batch negative sampling loss (CBNS; Wang et al., SIGIR 2021, arXiv:2110.15154, §3): the in-batch
    softmax over the candidates [batch ∪ memory], a scalar tensor.

    ``q``, ``d``: (B, D), row i of ``d`` is the positive of query i; ``memory``: (M, D) detached document
    embeddings from recent batches (``course_lib.memory.MemoryBank``), extra columns after the B positives;
    None or M = 0 gives exactly ``in_batch_softmax_loss``. Logits are ``s(q_i, c_j)/τ − log q(c_j)``: the
    sampling-bias (logQ) correction of Yi et al. (RecSys 2019, §3) subtracts each candidate's log
    sampling probability from *every* column, the positive's included, after the temperature (as TensorFlow
    Recommenders does). ``logq`` (B,) belongs to the batch's documents, ``memory_logq`` (M,) to the memory's
    (the value stored when each entry was enqueued); give both or neither when there is a memory. A constant
    shift of every column changes nothing, so uniform q is a no-op.

    Accidental hits (Merlin's and TFRS's ``RemoveAccidentalHits``): with ``doc_ids`` (B,) — and ``memory_ids``
    (M,) when there is a memory — every column other than column i that holds row i's positive document, in
    the batch or in the memory, is masked with −inf; this equals deleting it from the row.
    """
    M = 0 if memory is None else memory.shape[0] if isinstance(memory, torch.Tensor) and memory.dim() == 2 else None
    if memory is not None and M is None:
        raise ValueError(
            f"memory must be a 2-D (M, D) tensor of stored document embeddings, got "
            f"{type(memory).__name__}{' of shape ' + str(tuple(memory.shape)) if isinstance(memory, torch.Tensor) else ''}"
        )
    if memory is not None and memory.requires_grad:
        raise ValueError("memory must hold detached embeddings (requires_grad=False): gradients never flow into the "
                         "memory bank; store vectors with .detach()")
    logits = _logits(q, d, memory if M else None, "memory", temperature=temperature, margin=0.0,
                     similarity=similarity)  # (B, B+M)
    B = q.shape[0]
    if (logq is None) != (memory_logq is None) and M:
        raise ValueError("give logq and memory_logq together (or neither): the correction must apply to every column")
    if logq is not None:
        column_logq = [("logq", logq, B)] + ([("memory_logq", memory_logq, M)] if M else [])
        for name, t, n in column_logq:
            if not isinstance(t, torch.Tensor) or t.shape != (n,):
                shape = tuple(t.shape) if isinstance(t, torch.Tensor) else type(t).__name__
                raise ValueError(f"{name} must be a tensor of shape ({n},), one log-probability per column, got {shape}")
            if not torch.isfinite(t).all():
                raise ValueError(f"{name} holds non-finite values; log q must be finite (clip q to [1e-6, 1] first)")
        shift = torch.cat([t for _, t, _ in column_logq]).to(device=logits.device, dtype=logits.dtype)  # (B+M,)
        logits = logits - shift[None, :]  # (B, B+M), every column, the positive too
    if doc_ids is not None:
        if M and memory_ids is None:
            raise ValueError("doc_ids is given but memory_ids is not: pass the memory's ids to mask accidental hits")
        if len(doc_ids) != B:
            raise ValueError(f"doc_ids must hold the B = {B} positives' ids, got {len(doc_ids)}")
        if M and len(memory_ids) != M:
            raise ValueError(f"memory_ids must hold one id per memory row (M = {M}), got {len(memory_ids)}")
        ids = list(doc_ids) + (list(memory_ids) if M else [])
        logits = logits.masked_fill(duplicate_mask(ids, B, B + M).to(logits.device), float("-inf"))  # (B, B+M)
    elif memory_ids is not None:
        raise ValueError("memory_ids is given without doc_ids: accidental hits are found by comparing the two")
    return F.cross_entropy(logits, torch.arange(B, device=logits.device))


GATHERS = ("differentiable", "detached")


def cross_device_in_batch_loss(q: torch.Tensor, d: torch.Tensor, negatives: torch.Tensor | None = None, *,
                               temperature: float = 0.05, gather: str = "differentiable", group=None,
                               similarity: str = "cos") -> torch.Tensor:
    """The in-batch softmax over the candidates of every rank (process) of ``group``, a scalar tensor.

    Rank r holds B_r pairs ``q``, ``d`` (B_r, D) and optional ``negatives`` (B_r, K, D) or (M_r, D); N = Σ_r B_r,
    W ranks. The columns are every rank's positives in rank order, then every rank's negatives (per-query ones
    flattened as ``candidate_columns`` does: extra columns for every query); local query i of rank r has label
    ``o_r + i``, ``o_r = Σ_{s<r} B_s`` (r·B for equal batches; DPR, Karpukhin et al., 2020, §3.2, arXiv:2004.04906).
    ``L = (1/N) Σ_i CE_i`` is the loss of one process over the concatenated batch. ``gather``:

    - ``"differentiable"`` (sentence-transformers' ``gather_across_devices``): candidates go through
      ``torch.distributed.nn.all_gather``, whose backward returns every rank's gradient to the candidate's owner;
      anchors stay local. Rank r returns ``(W·B_r/N) · mean_{i ∈ r} CE_i``, so the mean over ranks is L and DDP's
      gradient average is exactly ∇L, uneven batches included (equal batches: the plain local mean).
    - ``"detached"`` (DPR; SimCSE, Gao et al., 2021, arXiv:2104.08821; BGE, Xiao et al., 2023, arXiv:2309.07597):
      detached copies of q, d and negatives are gathered, the local live tensors put back in their slot, and
      every rank computes the whole L over all N queries. Gradients reach only the local slice, so DDP's average
      is ∇L / W: a constant factor that Adam mostly absorbs but gradient clipping and SGD feel.

    Not initialised, or one rank: exactly ``in_batch_softmax_loss(q, d, negatives, ...)``. Each rank checks its
    inputs as that loss does, then one collective exchanges shapes, dtype, temperature, similarity and
    ``gather``: when a rank's inputs fail or the ranks disagree (another embedding width, negatives on some
    ranks only), every rank raises the same ``ValueError`` instead of waiting forever in the gather. B_r and M_r
    may differ (rows are padded for the collective). The logits are checked against ``max‖q‖·max‖c‖/τ``.
    """
    if gather not in GATHERS:
        raise ValueError(f"gather must be one of {GATHERS}, got {gather!r}")
    from course_lib.distributed import exchange, gather_rows, rank_and_world

    rank, world = rank_and_world(group)
    if world == 1:
        return in_batch_softmax_loss(q, d, negatives, temperature=temperature, similarity=similarity)
    try:  # a failing rank still takes part in the exchange, or the others would wait for it
        _check_embeddings(q, d, negatives)
        _check_number("temperature", temperature, positive=True)
        if similarity not in SIMILARITIES:
            raise ValueError(f"similarity must be one of {SIMILARITIES}, got {similarity!r}")
        extra = candidate_columns(d, negatives)[d.shape[0]:]  # (M_r, D): B_r·K rows for per-query negatives
        norms = [1.0, 1.0] if similarity == "cos" else [float(t.detach().norm(dim=-1).max()) for t in (q, d)]
        info, error = {"rows": (q.shape[0], extra.shape[0]), "norms": norms, "same": {
            "embedding width D": q.shape[1], "dtype": str(q.dtype), "temperature": temperature, "gather": gather,
            "negatives": negatives if negatives is None else f"{negatives.dim()}-D", "similarity": similarity}}, None
        if similarity == "dot" and len(extra):
            norms[1] = max(norms[1], float(extra.detach().norm(dim=-1).max()))
    except (TypeError, ValueError) as e:
        info, error = None, e
    infos = exchange(info, error, group, "cross_device_in_batch_loss")
    sizes = [i["rows"] for i in infos]  # (B_s, M_s) of each rank s
    peak = max(i["norms"][0] for i in infos) * max(i["norms"][1] for i in infos) / temperature
    limit = math.sqrt(torch.finfo(q.dtype).max)
    if not peak <= limit:
        raise ValueError(f"logits can reach {peak:.3g} (max‖q‖·max‖c‖/τ), more than {q.dtype} carries through the "
                         f"softmax (|logit| <= {limit:.3g}); normalise the embeddings or use similarity='cos'")
    detached = gather == "detached"
    skip = [b if detached else 0 for b, _ in sizes]  # the q rows in front of each rank's rows (detached only)
    sent = [s + b + m for s, (b, m) in zip(skip, sizes)]  # rows each rank sends
    parts = gather_rows(torch.cat([q, d, extra] if detached else [d, extra]), sent, differentiable=not detached,
                        group=group)
    candidates = torch.cat([p[s : s + b] for p, s, (b, _) in zip(parts, skip, sizes)]
                           + [p[s + b :] for p, s, (b, _) in zip(parts, skip, sizes)])  # (N + ΣM, D)
    B, N, offset = q.shape[0], sum(b for b, _ in sizes), sum(b for b, _ in sizes[:rank])
    anchors = torch.cat([p[:b] for p, (b, _) in zip(parts, sizes)]) if detached else q  # (N or B, D)
    labels = torch.arange(N) if detached else torch.arange(offset, offset + B)
    if similarity == "cos":
        anchors, candidates = F.normalize(anchors, dim=-1), F.normalize(candidates, dim=-1)
    loss = F.cross_entropy(anchors @ candidates.T / temperature, labels.to(q.device))  # logits (N or B, N + ΣM)
    return loss if detached else loss * (world * B / N)


def cross_gpu_balance_loss(q: torch.Tensor, pos: torch.Tensor, negatives_per_device: Sequence[torch.Tensor], *,
                           temperature: float = 0.05, similarity: str = "cos", in_batch: bool = False) -> torch.Tensor:
    """The retrieval term of Conan-embedding's cross-GPU batch balance (CBB) loss (Li et al., 2024,
    arXiv:2408.15710, §2.3) on one process: N simulated devices share the queries ``q`` and positives ``pos``
    (n, D), each holds its own negatives ``negatives_per_device[k]``, (M_k, D) scored by every query or
    (n, K_k, D) per query, all of one kind. ``−(1/n) Σ_i log[e^{s(x_i,y_i⁺)/τ} / (e^{s(x_i,y_i⁺)/τ} +
    Σ_{k=1..N} Σ_j e^{s(x_i,y_j⁻)/τ})]`` is InfoNCE over the union of the devices' negatives.

    ``in_batch=False`` is the paper's denominator (positive and negatives only); ``in_batch=True`` adds the other
    queries' positives, and is then exactly ``in_batch_softmax_loss(q, pos, union)``. The paper adds β·L_cos
    (CoSENT on STS pairs, β = 0.8) in the same step; that term is left out here. Across real ranks:
    ``course_lib.distributed.cross_gpu_balance_loss_across_ranks``.
    """
    if isinstance(negatives_per_device, torch.Tensor) or not isinstance(negatives_per_device, Sequence) or not (
            negatives_per_device and all(isinstance(t, torch.Tensor) for t in negatives_per_device)):
        raise TypeError("negatives_per_device must be a non-empty list of tensors, one per device: [(M_k, D) or "
                        f"(n, K_k, D), ...], got {type(negatives_per_device).__name__}")
    kinds = {t.dim() for t in negatives_per_device}
    if len(kinds) != 1 or kinds - {2, 3}:
        raise ValueError(f"every device's negatives must be (M_k, D) shared or (n, K_k, D) per-query, all one kind; "
                         f"got shapes {[tuple(t.shape) for t in negatives_per_device]}")
    union = torch.cat(list(negatives_per_device), dim=0 if kinds == {2} else 1)  # (ΣM_k, D) or (n, ΣK_k, D)
    if in_batch:
        return in_batch_softmax_loss(q, pos, union, temperature=temperature, similarity=similarity)
    _check_embeddings(q, pos, union, "negatives_per_device")
    _check_number("temperature", temperature, positive=True)
    if similarity not in SIMILARITIES:
        raise ValueError(f"similarity must be one of {SIMILARITIES}, got {similarity!r}")
    if similarity == "cos":
        q, pos, union = F.normalize(q, dim=-1), F.normalize(pos, dim=-1), F.normalize(union, dim=-1)
    negative_scores = q @ union.T if union.dim() == 2 else torch.einsum("nd,nkd->nk", q, union)  # (n, M) or (n, K)
    logits = torch.cat([(q * pos).sum(-1, keepdim=True), negative_scores], dim=1) / temperature  # (n, 1 + M)
    _check_logits(logits, temperature, similarity)
    return F.cross_entropy(logits, torch.zeros(len(q), dtype=torch.long, device=q.device))  # the positive is column 0


def __getattr__(name):  # GradCache lives in its own module (it needs the model, not only embeddings)
    if name == "cached_in_batch_loss":
        from course_lib.gradcache import cached_in_batch_loss

        return cached_in_batch_loss
    raise AttributeError(f"module 'course_lib.losses' has no attribute {name!r}")

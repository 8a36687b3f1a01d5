"""The in-batch softmax loss (DPR, Karpukhin et al., 2020, §3.2): the MNRL identity, peer equivalence with sentence-transformers,
the symmetric term, the margin, duplicate masking, gradient checks, finiteness, properties and validation."""

import math
import warnings

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from course_lib.losses import (
    candidate_columns,
    duplicate_mask,
    in_batch_softmax_loss,
    similarity_logits,
    symmetric_in_batch_loss,
)

F64 = torch.float64


def randn(*shape, seed: int = 0, dtype=F64) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=dtype)


def cos(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return F.normalize(a, dim=-1) @ F.normalize(b, dim=-1).T


def arange(n: int) -> torch.Tensor:
    return torch.arange(n)


# ---------------------------------------------------------------------------------------------------------
# the MNRL identity and the column layout


@pytest.mark.parametrize("temperature", [0.05, 0.5, 1.0])
def test_mnrl_identity(temperature):
    A, P = randn(6, 5, seed=1), randn(6, 5, seed=2)
    expected = F.cross_entropy(cos(A, P) / temperature, arange(6))
    torch.testing.assert_close(in_batch_softmax_loss(A, P, temperature=temperature), expected, rtol=0, atol=1e-12)


def test_mnrl_identity_with_hard_negatives_in_column_blocks():
    A, P, N = randn(5, 4, seed=1), randn(5, 4, seed=2), randn(5, 3, 4, seed=3)
    columns = torch.cat([P, N[:, 0], N[:, 1], N[:, 2]])  # block j: the j-th negative of every query
    expected = F.cross_entropy(20.0 * cos(A, columns), arange(5))  # labels stay arange(B)
    torch.testing.assert_close(in_batch_softmax_loss(A, P, N), expected, rtol=0, atol=1e-12)
    torch.testing.assert_close(candidate_columns(P, N), columns, rtol=0, atol=0)


def test_shared_negatives_follow_the_positives():
    A, P, M = randn(4, 3, seed=1), randn(4, 3, seed=2), randn(7, 3, seed=3)
    logits = similarity_logits(A, P, M, temperature=0.1, similarity="dot")
    assert logits.shape == (4, 11)
    torch.testing.assert_close(logits, A @ torch.cat([P, M]).T / 0.1, rtol=0, atol=1e-12)
    expected = F.cross_entropy(A @ torch.cat([P, M]).T / 0.1, arange(4))
    torch.testing.assert_close(in_batch_softmax_loss(A, P, M, temperature=0.1, similarity="dot"), expected)


def test_dot_uses_raw_inner_products():
    A, P = randn(4, 3, seed=1), randn(4, 3, seed=2) * 5
    torch.testing.assert_close(similarity_logits(A, P, temperature=1.0, similarity="dot"), A @ P.T)


# ---------------------------------------------------------------------------------------------------------
# peer equivalence: sentence-transformers 6.2.0


@pytest.fixture(scope="module")
def st_losses():
    """sentence-transformers' MNRL classes (the import takes ~10 s, so only once, and only here).

    Their entry point for precomputed embeddings is ``compute_loss_from_embeddings(embeddings, labels)``
    (``forward`` only embeds the columns with ``self.model`` and calls it), so a bare ``nn.Module`` stands in
    for the model, which that method never touches."""
    from sentence_transformers.sentence_transformer.losses import (
        MultipleNegativesRankingLoss,
        MultipleNegativesSymmetricRankingLoss,
    )
    from sentence_transformers.util import cos_sim, dot_score

    return MultipleNegativesRankingLoss, MultipleNegativesSymmetricRankingLoss, cos_sim, dot_score


@pytest.mark.parametrize("similarity", ["cos", "dot"])
@pytest.mark.parametrize("k", [0, 1, 3])
def test_equals_sentence_transformers_mnrl(st_losses, similarity, k):
    MNRL, _, cos_sim, dot_score = st_losses
    temperature = 0.05 if similarity == "cos" else 1.0
    A, P, N = randn(8, 6, seed=11), randn(8, 6, seed=12), randn(8, k, 6, seed=13)
    peer = MNRL(torch.nn.Module(), scale=1 / temperature, similarity_fct=cos_sim if similarity == "cos" else dot_score)
    expected = peer.compute_loss_from_embeddings([A, P, *N.unbind(1)], None)
    ours = in_batch_softmax_loss(A, P, N if k else None, temperature=temperature, similarity=similarity)
    torch.testing.assert_close(ours, expected, rtol=0, atol=1e-6)


def test_symmetric_equals_sentence_transformers_mnsrl(st_losses):
    MNRL, MNSRL, _, _ = st_losses
    A, P = randn(8, 6, seed=21), randn(8, 6, seed=22)
    ours = in_batch_softmax_loss(A, P, symmetric=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # MNSRL is deprecated in favour of MNRL(directions=…)
        deprecated = MNSRL(torch.nn.Module(), scale=20.0)
    merged = MNRL(torch.nn.Module(), scale=20.0, directions=("query_to_doc", "doc_to_query"), partition_mode="per_direction")
    for peer in (deprecated, merged):
        torch.testing.assert_close(ours, peer.compute_loss_from_embeddings([A, P], None), rtol=0, atol=1e-6)


# ---------------------------------------------------------------------------------------------------------
# symmetric loss and margin


def test_symmetric_is_the_mean_of_both_directions_and_swap_invariant():
    A, P = randn(6, 4, seed=31), randn(6, 4, seed=32)
    S = cos(A, P) / 0.05
    expected = 0.5 * (F.cross_entropy(S, arange(6)) + F.cross_entropy(S.T, arange(6)))
    torch.testing.assert_close(in_batch_softmax_loss(A, P, symmetric=True), expected, rtol=0, atol=1e-12)
    torch.testing.assert_close(in_batch_softmax_loss(P, A, symmetric=True), expected, rtol=0, atol=1e-12)
    torch.testing.assert_close(symmetric_in_batch_loss(A, P), expected, rtol=0, atol=1e-12)


def test_symmetric_backward_term_leaves_hard_negatives_out():
    A, P, N = randn(5, 4, seed=33), randn(5, 4, seed=34), randn(5, 2, 4, seed=35)
    L = similarity_logits(A, P, N)
    expected = 0.5 * (F.cross_entropy(L, arange(5)) + F.cross_entropy(L[:, :5].T, arange(5)))
    torch.testing.assert_close(in_batch_softmax_loss(A, P, N, symmetric=True), expected, rtol=0, atol=1e-12)


@pytest.mark.parametrize("similarity", ["cos", "dot"])
def test_margin_is_subtracted_from_the_positive_before_scaling(similarity):
    A, P, N = randn(4, 3, seed=41), randn(4, 3, seed=42), randn(4, 2, 3, seed=43)
    m, tau = 0.3, 1 / 30
    S = similarity_logits(A, P, N, temperature=1.0, similarity=similarity)
    L = similarity_logits(A, P, N, temperature=tau, margin=m, similarity=similarity)
    torch.testing.assert_close(L[:, :4], (S[:, :4] - m * torch.eye(4, dtype=F64)) / tau, rtol=0, atol=1e-10)
    torch.testing.assert_close(L[:, 4:], S[:, 4:] / tau, rtol=0, atol=1e-10)  # negatives untouched
    expected = F.cross_entropy((S - m * torch.eye(4, 12, dtype=F64)) / tau, arange(4))
    torch.testing.assert_close(in_batch_softmax_loss(A, P, N, temperature=tau, margin=m, similarity=similarity), expected)
    # m = 0 is the plain loss, and a margin makes the task harder
    plain = in_batch_softmax_loss(A, P, N, temperature=tau, similarity=similarity)
    torch.testing.assert_close(in_batch_softmax_loss(A, P, N, temperature=tau, margin=0.0, similarity=similarity), plain)
    assert in_batch_softmax_loss(A, P, N, temperature=tau, margin=m, similarity=similarity) > plain


# ---------------------------------------------------------------------------------------------------------
# duplicate positives (false negatives)


def duplicate_batch():
    """Examples 0 and 3 share one positive document: d3 = d0."""
    q, d = randn(4, 5, seed=51), randn(4, 5, seed=52)
    d[3] = d[0]
    return q, d, ["a", "b", "c", "a"]


def ce_row(row: torch.Tensor, target: int) -> torch.Tensor:
    return -torch.log_softmax(row, dim=0)[target]


def test_masking_a_duplicate_equals_deleting_its_column():
    q, d, ids = duplicate_batch()
    L = similarity_logits(q, d)  # (4, 4)
    rows = [
        ce_row(L[0, [0, 1, 2]], 0),  # row 0 without column 3
        ce_row(L[1], 1),
        ce_row(L[2], 2),
        ce_row(L[3, [1, 2, 3]], 2),  # row 3 without column 0; its positive is now at index 2
    ]
    expected = torch.stack(rows).mean()
    torch.testing.assert_close(in_batch_softmax_loss(q, d, doc_ids=ids), expected, rtol=0, atol=1e-10)
    mask = duplicate_mask(ids, 4, 4)
    assert mask.nonzero().tolist() == [[0, 3], [3, 0]]


def test_masking_covers_hard_negative_columns_when_every_column_has_an_id():
    q, d, ids = duplicate_batch()
    n = randn(4, 1, 5, seed=53)
    n[1, 0] = d[0]  # query 1's hard negative is document "a", the positive of rows 0 and 3
    L = similarity_logits(q, d, n)  # (4, 8): positives 0..3, negatives 4..7 (query 1's at column 5)
    all_ids = ids + ["n0", "a", "n2", "n3"]
    rows = [
        ce_row(L[0, [0, 1, 2, 4, 6, 7]], 0),
        ce_row(L[1], 1),
        ce_row(L[2], 2),
        ce_row(L[3, [1, 2, 3, 4, 6, 7]], 2),
    ]
    expected = torch.stack(rows).mean()
    torch.testing.assert_close(in_batch_softmax_loss(q, d, n, doc_ids=all_ids), expected, rtol=0, atol=1e-10)
    # with the positives' ids only, the negative columns are never masked
    rows[0], rows[3] = ce_row(L[0, [0, 1, 2, 4, 5, 6, 7]], 0), ce_row(L[3, [1, 2, 3, 4, 5, 6, 7]], 2)
    torch.testing.assert_close(in_batch_softmax_loss(q, d, n, doc_ids=ids), torch.stack(rows).mean(), rtol=0, atol=1e-10)


def test_symmetric_masking_hides_the_other_query_of_a_shared_document():
    q, d, ids = duplicate_batch()
    L = similarity_logits(q, d)
    forward = torch.stack([ce_row(L[0, [0, 1, 2]], 0), ce_row(L[1], 1), ce_row(L[2], 2), ce_row(L[3, [1, 2, 3]], 2)])
    T = L.T  # document j (row) picks its query (column)
    backward = torch.stack([ce_row(T[0, [0, 1, 2]], 0), ce_row(T[1], 1), ce_row(T[2], 2), ce_row(T[3, [1, 2, 3]], 2)])
    expected = 0.5 * (forward.mean() + backward.mean())
    torch.testing.assert_close(in_batch_softmax_loss(q, d, doc_ids=ids, symmetric=True), expected, rtol=0, atol=1e-10)


def test_an_unmasked_duplicate_inflates_the_loss():
    e = torch.eye(4, dtype=F64)
    d = torch.stack([e[0], e[1], e[2], e[0]])  # d3 = d0
    q = torch.stack([e[0] + 0.01 * e[1], e[1], e[2], e[0]])  # q0 close to d0
    ids = ["a", "b", "c", "a"]
    masked = in_batch_softmax_loss(q, d, doc_ids=ids)
    unmasked = in_batch_softmax_loss(q, d)
    # rows 0 and 3 each see their positive tied with the duplicate: at least ln 2 more each, over B = 4 rows
    assert unmasked - masked > 0.3
    assert masked < 0.01


def test_distinct_ids_change_nothing():
    A, P = randn(5, 4, seed=54), randn(5, 4, seed=55)
    torch.testing.assert_close(in_batch_softmax_loss(A, P, doc_ids=list(range(5))), in_batch_softmax_loss(A, P))


# ---------------------------------------------------------------------------------------------------------
# gradients and finiteness


@pytest.mark.parametrize("similarity", ["cos", "dot"])
@pytest.mark.parametrize("symmetric", [False, True])
def test_gradcheck(similarity, symmetric):
    q = randn(3, 4, seed=61).requires_grad_()
    d = randn(3, 4, seed=62).requires_grad_()
    n = randn(3, 2, 4, seed=63).requires_grad_()

    def f(q, d, n):
        return in_batch_softmax_loss(q, d, n, temperature=0.5, margin=0.2, similarity=similarity, symmetric=symmetric)

    assert torch.autograd.gradcheck(f, (q, d, n))


def test_gradcheck_with_masking_and_shared_negatives():
    q, d, m = randn(4, 3, seed=64), randn(4, 3, seed=65), randn(2, 3, seed=66)
    d[3] = d[0]

    def f(q, d, m):
        return in_batch_softmax_loss(q, d, m, temperature=0.3, doc_ids=["a", "b", "c", "a", "x", "b"], symmetric=True)

    assert torch.autograd.gradcheck(f, tuple(t.requires_grad_() for t in (q, d, m)))


def inputs(kind: str):
    if kind == "zeros":
        return torch.zeros(4, 8), torch.zeros(4, 8), torch.zeros(4, 2, 8)
    if kind == "identical":
        return torch.ones(4, 8), torch.ones(4, 8), torch.ones(4, 2, 8)
    if kind == "large":
        return randn(4, 8, seed=71, dtype=torch.float32) * 1e4, randn(4, 8, seed=72, dtype=torch.float32) * 1e4, \
            randn(4, 2, 8, seed=73, dtype=torch.float32) * 1e4
    return randn(4, 8, seed=74, dtype=torch.float32), randn(4, 8, seed=75, dtype=torch.float32), \
        randn(4, 2, 8, seed=76, dtype=torch.float32)


@pytest.mark.parametrize("kind", ["zeros", "identical", "large", "random"])
@pytest.mark.parametrize("similarity", ["cos", "dot"])
@pytest.mark.parametrize("temperature", [0.01, 100.0])
@pytest.mark.parametrize("symmetric", [False, True])
def test_finite_loss_and_gradients(kind, similarity, temperature, symmetric):
    q, d, n = (t.requires_grad_() for t in inputs(kind))
    loss = in_batch_softmax_loss(q, d, n, temperature=temperature, similarity=similarity, symmetric=symmetric,
                                 margin=0.2, doc_ids=["a", "b", "a", "c"])
    loss.backward()
    assert torch.isfinite(loss)
    for t in (q, d, n):
        assert torch.isfinite(t.grad).all()


def test_zero_vectors_give_uniform_logits_with_cos():
    z = torch.zeros(3, 4)
    torch.testing.assert_close(in_batch_softmax_loss(z, z), torch.tensor(math.log(3)))


# ---------------------------------------------------------------------------------------------------------
# properties


@settings(max_examples=40, deadline=None)
@given(
    B=st.integers(1, 6),
    D=st.integers(1, 5),
    K=st.integers(0, 2),
    seed=st.integers(0, 2**16),
    temperature=st.floats(0.01, 10.0),
    margin=st.floats(-1.0, 1.0),
    similarity=st.sampled_from(["cos", "dot"]),
    symmetric=st.booleans(),
)
def test_loss_is_nonnegative_and_permutation_invariant(B, D, K, seed, temperature, margin, similarity, symmetric):
    q, d, n = randn(B, D, seed=seed), randn(B, D, seed=seed + 1), randn(B, K, D, seed=seed + 2)
    ids = [f"doc{i % 3}" for i in range(B)]  # some duplicates, masked
    kw = dict(temperature=temperature, margin=margin, similarity=similarity, symmetric=symmetric, doc_ids=ids)
    loss = in_batch_softmax_loss(q, d, n if K else None, **kw)
    assert loss >= 0
    perm = torch.randperm(B, generator=torch.Generator().manual_seed(seed))
    kw["doc_ids"] = [ids[i] for i in perm.tolist()]
    permuted = in_batch_softmax_loss(q[perm], d[perm], n[perm] if K else None, **kw)
    torch.testing.assert_close(permuted, loss, rtol=1e-9, atol=1e-9)


@settings(max_examples=40, deadline=None)
@given(B=st.integers(1, 16), D=st.integers(1, 8), seed=st.integers(0, 2**16), temperature=st.floats(0.01, 10.0))
def test_identical_rows_give_ln_b(B, D, seed, temperature):
    v, w = randn(1, D, seed=seed), randn(1, D, seed=seed + 1)
    q, d = v.expand(B, D), w.expand(B, D)  # every logit equal: the softmax is uniform over B columns
    loss = in_batch_softmax_loss(q, d, temperature=temperature)
    assert abs(loss.item() - math.log(B)) < 1e-6


# ---------------------------------------------------------------------------------------------------------
# validation


Q, P = torch.zeros(3, 4), torch.zeros(3, 4)


@pytest.mark.parametrize(
    "args, kwargs, error, match",
    [
        ((torch.zeros(3), P), {}, ValueError, "must be 2-D"),
        ((Q, torch.zeros(2, 4)), {}, ValueError, "same shape"),
        ((Q, torch.zeros(3, 5)), {}, ValueError, "same shape"),
        ((torch.zeros(0, 4), torch.zeros(0, 4)), {}, ValueError, "batch is empty"),
        (([[0.0]], P), {}, TypeError, "q must be a torch.Tensor"),
        ((Q, torch.zeros(3, 4, dtype=torch.long)), {}, TypeError, "floating-point"),
        ((Q, torch.zeros(3, 4, dtype=F64)), {}, TypeError, "one dtype"),
        ((Q, P, torch.zeros(3, 2, 5)), {}, ValueError, r"\(B, K, D\)"),
        ((Q, P, torch.zeros(2, 2, 4)), {}, ValueError, r"\(B, K, D\)"),
        ((Q, P, torch.zeros(5, 3)), {}, ValueError, r"\(M, D\)"),
        ((Q, P, torch.zeros(4)), {}, ValueError, "1-D"),
        ((Q, P, torch.zeros(3, 1, 1, 4)), {}, ValueError, "4-D"),
        ((Q, P), {"temperature": 0.0}, ValueError, "temperature must be > 0"),
        ((Q, P), {"temperature": -0.05}, ValueError, "temperature must be > 0"),
        ((Q, P), {"temperature": float("inf")}, ValueError, "temperature must be finite"),
        ((Q, P), {"temperature": float("nan")}, ValueError, "temperature must be finite"),
        ((Q, P), {"temperature": "0.05"}, TypeError, "temperature must be a real number"),
        ((Q, P), {"margin": float("nan")}, ValueError, "margin must be finite"),
        ((Q, P), {"similarity": "cosine"}, ValueError, "similarity must be one of"),
        ((Q, P), {"doc_ids": ["a", "b"]}, ValueError, "doc_ids has 2 ids"),
        ((Q, P, torch.zeros(3, 1, 4)), {"doc_ids": ["a"] * 5}, ValueError, r"3 \(the positives\) or 6"),
        ((Q, P), {"doc_ids": "abc"}, TypeError, "doc_ids must be a sequence"),
        ((Q, P), {"doc_ids": [["a"], ["b"], ["c"]]}, TypeError, "hashable"),
    ],
)
def test_validation_errors(args, kwargs, error, match):
    with pytest.raises(error, match=match):
        in_batch_softmax_loss(*args, **kwargs)


def test_similarity_logits_validates_too():
    with pytest.raises(ValueError, match="similarity must be one of"):
        similarity_logits(Q, P, similarity="l2")

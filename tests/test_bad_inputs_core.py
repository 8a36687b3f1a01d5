"""Bad inputs to the core modules (masks, losses, metrics, SimBERT's similarity loss, plots, widgets) must raise
a clear error that names the problem, and change nothing.

One test per kind of bad input the audit found (each failed before its fix), then grouped, parametrized cases
of bad inputs that already gave clear errors, so they stay fixed. Every case asserts the error type and that
the message names what is wrong."""

import math

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

import course_lib.plots as plots  # noqa: E402
import course_lib.widgets as widgets  # noqa: E402
from course_lib.losses import cbns_loss, in_batch_softmax_loss, similarity_logits  # noqa: E402
from course_lib.masks import (  # noqa: E402
    attention_bias,
    causal_mask,
    padding_mask,
    retromae_decoder_mask,
    unilm_mask,
    whole_word_mask,
)
from course_lib.metrics import (  # noqa: E402
    alignment,
    corpus_bleu,
    frequent_words,
    mean_token_f1,
    mrr_at_k,
    ndcg_at_k,
    recall_at_k,
    uniformity,
)
from course_lib.simbert import simbert_similarity_loss  # noqa: E402

NAN, INF = float("nan"), float("inf")


@pytest.fixture(autouse=True)
def close_figures():
    yield
    plt.close("all")


def randn(*shape, seed: int = 0) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def with_value(t: torch.Tensor, value: float) -> torch.Tensor:
    """A copy of ``t`` with its first element set to ``value``."""
    t = t.clone()
    t.view(-1)[0] = value
    return t


# ---------------------------------------------------------------------------------------------------------
# masks: the audit's items


def test_unilm_mask_rejects_segment_ids_that_go_back_to_segment_a():
    seg = torch.tensor([[0, 0, 1, 1], [0, 0, 1, 0]])  # row 1: a segment-A token after segment B
    with pytest.raises(ValueError, match=r"row 1.*segment B.*back to 0"):
        unilm_mask(seg, torch.ones_like(seg))


def test_unilm_mask_accepts_trailing_and_leading_padding_with_segment_0():
    seg = torch.tensor([[0, 0, 1, 0, 0], [0, 0, 0, 1, 1]])  # row 0: two pads (segment 0) after B
    att = torch.tensor([[1, 1, 1, 0, 0], [0, 1, 1, 1, 1]])  # row 1: left padding
    assert unilm_mask(seg, att).shape == (2, 5, 5)


@pytest.mark.parametrize("mask_token_id", [-1, 30, 3.0, True])
def test_whole_word_mask_rejects_a_mask_token_id_outside_the_vocabulary(mask_token_id):
    ids, words = torch.tensor([[1, 5, 6, 2]]), torch.tensor([[-1, 0, 1, -1]])
    before = ids.clone()
    with pytest.raises(ValueError, match=r"mask_token_id .* must be an int in \[0, vocab_size=30\)"):
        whole_word_mask(ids, words, mask_token_id=mask_token_id, vocab_size=30, mask_ratio=0.5)
    assert torch.equal(ids, before)


def test_causal_mask_rejects_1d_input():
    with pytest.raises(ValueError, match=r"attention_mask must be a 2-D tensor \(batch, length\), got \(4,\)"):
        causal_mask(torch.ones(4))


def test_retromae_decoder_mask_rejects_length_0():
    with pytest.raises(ValueError, match="length 0"):
        retromae_decoder_mask(torch.ones(2, 0, dtype=torch.long))


@pytest.mark.parametrize(
    "call, match",
    [
        (lambda: padding_mask(torch.ones(3)), "2-D"),
        (lambda: unilm_mask(torch.zeros(1, 4), torch.ones(1, 5)), "differ in shape"),
        (lambda: unilm_mask(torch.tensor([[0, 2]]), torch.ones(1, 2)), "only 0 .* and 1"),
        (lambda: attention_bias(torch.ones(1, 3, 3)), "square BoolTensor"),
        (lambda: attention_bias(torch.ones(1, 3, 4, dtype=torch.bool)), "square BoolTensor"),
        (lambda: whole_word_mask(torch.ones(1, 3), torch.ones(1, 4), mask_token_id=1, vocab_size=9), "differ in shape"),
        (lambda: whole_word_mask(torch.ones(1, 3), torch.ones(1, 3), mask_token_id=1, vocab_size=9, mask_ratio=1.0),
         r"mask_ratio must be a number in \[0, 1\)"),
        (lambda: whole_word_mask(torch.ones(1, 3), torch.ones(1, 3), mask_token_id=1, vocab_size=9,
                                 first_regular_id=9), "first_regular_id"),
        (lambda: retromae_decoder_mask(torch.ones(2, 4), torch.ones(2, 3)), "differ"),
        (lambda: retromae_decoder_mask(torch.ones(2, 4), mask_ratio=-0.1), "mask_ratio"),
    ],
)
def test_masks_already_clear(call, match):
    with pytest.raises(ValueError, match=match):
        call()


# ---------------------------------------------------------------------------------------------------------
# SimBERT's similarity loss


@pytest.mark.parametrize("scale, error", [(0.0, ValueError), (-30.0, ValueError), (NAN, ValueError),
                                          (INF, ValueError), ("30", TypeError)])
def test_simbert_similarity_loss_rejects_a_bad_scale(scale, error):
    with pytest.raises(error, match="scale must be"):
        simbert_similarity_loss(randn(4, 8), scale)


@pytest.mark.parametrize("cls, match", [(torch.zeros(4), r"\(2n, H\)"), (torch.zeros(3, 8), "even size")])
def test_simbert_similarity_loss_already_clear(cls, match):
    with pytest.raises(ValueError, match=match):
        simbert_similarity_loss(cls)


# ---------------------------------------------------------------------------------------------------------
# metrics


@pytest.mark.parametrize("metric", [recall_at_k, mrr_at_k, ndcg_at_k])
def test_ranking_metrics_reject_a_flat_list_of_ids(metric):
    with pytest.raises(TypeError, match=r"list of ranked-id lists, one per query.*\[\['d1', 'd7'\], \['d3'\]\]"):
        metric(["d1"], [{"d1"}], 10)


@pytest.mark.parametrize("metric", [recall_at_k, mrr_at_k, ndcg_at_k])
def test_ranking_metrics_reject_relevance_given_as_strings(metric):
    with pytest.raises(TypeError, match=r"relevant\[0\] must be a set of ids"):
        metric([["d1"]], ["d1"], 10)


@pytest.mark.parametrize(
    "call, match",
    [
        (lambda: recall_at_k([["a"]], [{"a"}, {"b"}], 1), "1 rankings but 2 relevance sets"),
        (lambda: recall_at_k([], [], 1), "empty"),
        (lambda: mrr_at_k([["a"]], [{"a"}], 0), "k must be a positive int"),
        (lambda: ndcg_at_k([["a"]], [{"a"}], 2.0), "k must be a positive int"),
        (lambda: recall_at_k([["a"]], [set()], 1), "no relevant document"),
        (lambda: alignment(torch.zeros(2, 3), torch.zeros(2, 4)), "same shape"),
        (lambda: uniformity(torch.zeros(1, 3)), "N >= 2"),
        (lambda: frequent_words(["a b"], 0), "k must be >= 1"),
        (lambda: frequent_words([], 2), "no words"),
        (lambda: corpus_bleu(["a"], ["a"], max_n=0), "max_n must be a positive int"),
        (lambda: mean_token_f1(["a"], []), "as many predictions as references"),
    ],
)
def test_metrics_already_clear(call, match):
    with pytest.raises(ValueError, match=match):
        call()


# ---------------------------------------------------------------------------------------------------------
# plots


@pytest.mark.parametrize("value", [1.2, -0.1, NAN, INF])
def test_plot_recall_at_k_rejects_recall_outside_0_1(value):
    with pytest.raises(ValueError, match=r"recall@10 of 'bm25' is .*; recall lies in \[0, 1\]"):
        plots.plot_recall_at_k({"bm25": {"recall@1": 0.3, "recall@10": value}})


def test_plot_recall_at_k_rejects_k_below_1_on_its_log_axis():
    with pytest.raises(ValueError, match=r"k must be >= 1 .*log axis"):
        plots.plot_recall_at_k({"bm25": {"recall@0": 0.0, "recall@10": 0.5}})


@pytest.mark.parametrize("xs", [[0, 1, 2], [-4, 8, 16]])
def test_plot_curve_rejects_non_positive_x_on_a_log_axis(xs):
    with pytest.raises(ValueError, match=r"xs must all be > 0 .*logx=True"):
        plots.plot_curve(xs, {"recall": [0.1, 0.2, 0.3]}, "batch size", "recall", logx=True)


def test_plot_ann_tradeoff_rejects_non_positive_ef_on_its_log_axis():
    with pytest.raises(ValueError, match=r"efs must all be > 0"):
        plots.plot_ann_tradeoff([0, 16], [0.9, 0.95], [1.0, 2.0], 5.0)


@pytest.mark.parametrize(
    "call, match",
    [
        (lambda: plots.plot_recall_at_k({}), "at least one method"),
        (lambda: plots.plot_ann_tradeoff([8, 16], [0.9], [1.0, 2.0], 5.0), "equal length"),
        (lambda: plots.plot_ranked_scores([], [], []), "non-empty"),
        (lambda: plots.plot_loss_curve([]), "at least one loss value"),
        (lambda: plots.plot_similarity_matrix(torch.zeros(3)), r"\(B, C\)"),
        (lambda: plots.plot_similarity_matrix(torch.zeros(2, 3), targets=[0, 3]), "targets"),
        (lambda: plots.plot_curve([1, 2], {"a": [0.1]}, "x", "y"), "as long as xs"),
        (lambda: plots.plot_align_uniform({}), "at least one"),
        (lambda: plots.plot_attention_masks({"m": torch.ones(2, 2)}, ["a", "b", "c"]), r"expected \(3, 3\)"),
        (lambda: plots.plot_attention_masks({"m": torch.ones(2, 2)}, ["a", "b"], row=2), "row must be in"),
        (lambda: plots.plot_drift({}), "at least one run"),
        (lambda: plots.plot_frequency_tracking([1], [[0.1]], [[0.1, 0.2]], {}), r"\(T, N\)"),
        (lambda: plots.plot_score_histograms({"pos": []}), "non-empty"),
        (lambda: plots.plot_series({"a": ([1], [])}, "x", "y"), "equal, non-zero length"),
    ],
)
def test_plots_already_clear(call, match):
    with pytest.raises(ValueError, match=match):
        call()


# ---------------------------------------------------------------------------------------------------------
# widgets


@pytest.mark.parametrize("temperature, error", [("0.05", TypeError), (None, TypeError), (0.0, ValueError),
                                                (-0.05, ValueError), (NAN, ValueError)])
def test_explore_temperature_rejects_a_bad_temperature(temperature, error):
    with pytest.raises(error, match="temperature must be"):
        widgets.explore_temperature(randn(3, 4), randn(3, 4, seed=1), temperature=temperature)


def test_explore_mask_rows_rejects_an_empty_token_list():
    with pytest.raises(ValueError, match="tokens is empty"):
        widgets.explore_mask_rows({"causal": torch.ones(0, 0, dtype=torch.bool)}, [])


@pytest.mark.parametrize(
    "call, match",
    [
        (lambda: widgets.explore_memory_size(randn(2, 4), randn(2, 4), torch.zeros(5, 3)), r"memory must be \(M, 4\)"),
        (lambda: widgets.explore_generation(None, None, ["a"], []), "as many references as texts"),
        (lambda: widgets.explore_mining([]), "items is empty"),
    ],
)
def test_widgets_already_clear(call, match):
    with pytest.raises(ValueError, match=match):
        call()


# ---------------------------------------------------------------------------------------------------------
# losses

LOSSES = {
    "in_batch_softmax_loss": lambda q, d, n=None, **kw: in_batch_softmax_loss(q, d, n, **kw),
    "similarity_logits": lambda q, d, n=None, **kw: similarity_logits(q, d, n, **kw),
    "cbns_loss": lambda q, d, n=None, **kw: cbns_loss(q, d, n, **kw),
}


@pytest.mark.parametrize("fn", LOSSES)
@pytest.mark.parametrize("value", [NAN, INF, -INF])
@pytest.mark.parametrize("bad", ["q", "d"])
def test_losses_reject_non_finite_embeddings(fn, value, bad):
    q, d = randn(3, 4), randn(3, 4, seed=1)
    q, d = (with_value(q, value), d) if bad == "q" else (q, with_value(d, value))
    with pytest.raises(ValueError, match=rf"{bad} holds non-finite values \(NaN or inf\)"):
        LOSSES[fn](q, d)


@pytest.mark.parametrize("fn, name", [("in_batch_softmax_loss", "negatives"), ("similarity_logits", "negatives"),
                                      ("cbns_loss", "memory")])
def test_losses_reject_non_finite_extra_columns_by_their_name(fn, name):
    with pytest.raises(ValueError, match=rf"{name} holds non-finite values"):
        LOSSES[fn](randn(3, 4), randn(3, 4, seed=1), with_value(randn(5, 4, seed=2), NAN))


@pytest.mark.parametrize("fn", LOSSES)
@pytest.mark.parametrize("similarity", ["cos", "dot"])
def test_losses_reject_a_temperature_so_small_the_logits_overflow(fn, similarity):
    with pytest.raises(ValueError, match=r"logits reach .* temperature=1e-30 is too small"):
        LOSSES[fn](randn(3, 4), randn(3, 4, seed=1), temperature=1e-30, similarity=similarity)


@pytest.mark.parametrize("fn", LOSSES)
def test_losses_reject_dot_products_that_overflow(fn):
    with pytest.raises(ValueError, match=r"logits reach .*similarity='dot'"):
        LOSSES[fn](randn(3, 4) * 1e20, randn(3, 4, seed=1) * 1e20, similarity="dot")


def test_loss_at_a_small_but_sane_temperature_stays_finite():
    loss = in_batch_softmax_loss(randn(3, 4), randn(3, 4, seed=1), temperature=1e-4)
    assert torch.isfinite(loss)


@pytest.mark.parametrize("fn", LOSSES)
@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        ({"temperature": 0.0}, ValueError, "temperature must be > 0"),
        ({"temperature": -0.05}, ValueError, "temperature must be > 0"),
        ({"temperature": NAN}, ValueError, "temperature must be finite"),
        ({"temperature": INF}, ValueError, "temperature must be finite"),
        ({"temperature": "0.05"}, TypeError, "temperature must be a real number"),
        ({"similarity": "cosine"}, ValueError, "similarity must be one of"),
    ],
)
def test_losses_already_clear_about_temperature_and_similarity(fn, kwargs, error, match):
    with pytest.raises(error, match=match):
        LOSSES[fn](randn(3, 4), randn(3, 4, seed=1), **kwargs)


@pytest.mark.parametrize(
    "call, error, match",
    [
        (lambda: in_batch_softmax_loss(torch.zeros(3), torch.zeros(3, 4)), ValueError, "must be 2-D"),
        (lambda: in_batch_softmax_loss(torch.zeros(3, 4), torch.zeros(2, 4)), ValueError, "same shape"),
        (lambda: in_batch_softmax_loss(torch.zeros(3, 4, dtype=torch.long), torch.zeros(3, 4)), TypeError,
         "floating-point"),
        (lambda: cbns_loss(randn(3, 4), randn(3, 4), randn(5, 4).requires_grad_()), ValueError, "detached"),
        (lambda: cbns_loss(randn(3, 4), randn(3, 4), randn(4)), ValueError, r"2-D \(M, D\)"),
        (lambda: cbns_loss(randn(3, 4), randn(3, 4), randn(5, 4), logq=torch.zeros(3)), ValueError, "together"),
        (lambda: cbns_loss(randn(3, 4), randn(3, 4), memory_ids=["m"]), ValueError, "without doc_ids"),
    ],
)
def test_losses_already_clear(call, error, match):
    with pytest.raises(error, match=match):
        call()


def test_non_finite_checks_leave_finite_inputs_alone():
    q, d = randn(3, 4), randn(3, 4, seed=1)
    assert math.isfinite(cbns_loss(q, d, randn(5, 4, seed=2), temperature=0.05).item())

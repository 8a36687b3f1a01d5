"""Every plot_* returns a Figure with data in it; explore_queries builds controls whose callback runs."""

import matplotlib

matplotlib.use("Agg")

import ipywidgets as W  # noqa: E402
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

import course_lib.plots as plots  # noqa: E402
import course_lib.widgets as widgets  # noqa: E402
from course_lib.data import RetrievalData  # noqa: E402
from course_lib.widgets import explore_queries  # noqa: E402


@pytest.fixture(autouse=True)
def close_figures():
    yield
    plt.close("all")


def has_data(fig) -> bool:
    return any(ax.lines or ax.patches or ax.collections or ax.images for ax in fig.axes)


METRICS = {
    "bm25": {"recall@1": 0.26, "recall@10": 0.78, "recall@100": 0.97, "mrr@10": 0.41},
    "untrained": {"recall@1": 0.04, "recall@10": 0.09, "recall@100": 0.19, "mrr@10": 0.05},
}


# ---------------------------------------------------------------------------------------------------------
# plots


def test_every_plot_function_is_covered():
    names = {n for n in dir(plots) if n.startswith("plot_")}
    assert names == {"plot_recall_at_k", "plot_ann_tradeoff", "plot_ranked_scores", "plot_length_histogram",
                     "plot_loss_curve", "plot_similarity_matrix", "plot_curve", "plot_align_uniform",
                     "plot_attention_masks", "plot_drift", "plot_frequency_tracking", "plot_score_histograms",
                     "plot_series"}, (
        "a new plot_* function needs a test here"
    )


def test_plot_recall_at_k():
    fig = plots.plot_recall_at_k(METRICS)
    assert isinstance(fig, Figure) and has_data(fig)
    ax = fig.axes[0]
    assert len(ax.lines) == 2
    np.testing.assert_allclose(ax.lines[0].get_xdata(), [1, 10, 100])
    np.testing.assert_allclose(ax.lines[0].get_ydata(), [0.26, 0.78, 0.97])
    assert "bm25" in ax.get_legend().get_texts()[0].get_text()
    assert ax.get_ylim() == (0, 1) and ax.get_ylabel() == "Recall@k"
    # a hard task (every recall ≤ 0.25, as Chinese idioms): the axis is cut above the largest value, and says so
    low = {"bm25": {"recall@1": 0.002, "recall@10": 0.016, "recall@100": 0.046}}
    ax_low = plots.plot_recall_at_k(low).axes[0]
    assert ax_low.get_ylim() == pytest.approx((0, 0.046 * 1.15)) and "cut at 0.053, not 1" in ax_low.get_ylabel()
    # ks restricts the points; an ax can be passed in
    fig2, ax2 = plt.subplots()
    assert plots.plot_recall_at_k(METRICS, ks=[1, 10], ax=ax2) is fig2
    assert list(ax2.lines[0].get_xdata()) == [1, 10]
    # many methods: the legend moves beside the axes (it would hide the curves), widening an own figure only
    many = {f"method {i}": METRICS["bm25"] for i in range(8)}
    fig3 = plots.plot_recall_at_k(many)
    assert fig3.axes[0].get_legend().get_bbox_to_anchor().x0 > fig3.axes[0].get_window_extent().x1
    assert fig3.get_figwidth() > fig.get_figwidth()
    fig4, ax4 = plt.subplots(figsize=(4, 3))
    plots.plot_recall_at_k(many, ax=ax4)
    assert fig4.get_figwidth() == 4
    # more methods than colours: no two lines share both colour and style
    lots = {f"method {i}": METRICS["bm25"] for i in range(len(plots.COLORS) + 3)}
    looks = [(line.get_color(), line.get_linestyle()) for line in plots.plot_recall_at_k(lots).axes[0].lines]
    assert len(set(looks)) == len(lots)


def test_plot_ann_tradeoff():
    fig = plots.plot_ann_tradeoff([16, 32, 64], [0.9, 0.96, 0.99], [20.0, 35.0, 60.0], exact_ms_per_1k=80.0)
    assert isinstance(fig, Figure) and has_data(fig)
    assert len(fig.axes) == 2  # recall on the left axis, time on the right one
    assert all(ax.lines for ax in fig.axes)


def test_plot_ranked_scores():
    texts = ["dog: a domesticated canid", "cat: a feline", "x" * 200]
    fig = plots.plot_ranked_scores(texts, np.array([0.9, 0.5, 0.1]), [False, True, False], query="the dog barked")
    assert isinstance(fig, Figure) and has_data(fig)
    bars = fig.axes[0].patches
    assert len(bars) == 3
    assert sorted(b.get_width() for b in bars) == pytest.approx([0.1, 0.5, 0.9])
    labels = [t.get_text() for t in fig.axes[0].get_yticklabels()]
    assert max(len(label) for label in labels) <= 70  # long texts are shortened


def test_plot_length_histogram():
    fig = plots.plot_length_histogram({"queries": [5, 7, 9, 7], "documents": [12, 20, 40]}, max_length=32)
    assert isinstance(fig, Figure) and has_data(fig)
    assert len(fig.axes[0].patches) > 0


def test_plot_loss_curve():
    losses = list(np.linspace(3.0, 1.0, 25))
    fig = plots.plot_loss_curve(losses, smooth=5)
    assert isinstance(fig, Figure) and has_data(fig)
    raw, smooth = fig.axes[0].lines
    assert len(raw.get_xdata()) == 25 and len(smooth.get_xdata()) == 21  # 'valid' running mean over 5
    assert isinstance(plots.plot_loss_curve([2.0]), Figure)  # a single value works too
    both = plots.plot_loss_curve({"seq2seq": losses, "similarity": losses[:10]}, smooth=5)
    assert len(both.axes[0].lines) == 4  # raw and smoothed per curve
    assert {line.get_color() for line in both.axes[0].lines[:2]} != {line.get_color() for line in both.axes[0].lines[2:]}


def test_plot_similarity_matrix():
    import torch

    logits = torch.randn(3, 5, generator=torch.Generator().manual_seed(0))  # 3 positives, 2 hard negatives
    fig = plots.plot_similarity_matrix(logits, n_positive_cols=3, row_labels=["q1", "q2", "q3"])
    assert isinstance(fig, Figure) and has_data(fig)
    panels = [ax for ax in fig.axes if ax.images]
    assert len(panels) == 2  # logits and their row softmax
    np.testing.assert_allclose(panels[0].images[0].get_array(), logits.numpy(), atol=1e-6)
    np.testing.assert_allclose(np.asarray(panels[1].images[0].get_array()).sum(1), 1.0, atol=1e-5)
    assert all(len(ax.patches) == 3 for ax in panels)  # each row's positive is boxed
    single = plots.plot_similarity_matrix(np.eye(2), softmax=False)
    assert len([ax for ax in single.axes if ax.images]) == 1
    # SimBERT: own row masked (-inf, blank), partner i XOR 1 boxed
    sim = torch.randn(4, 4).fill_diagonal_(float("-inf"))
    fig = plots.plot_similarity_matrix(sim, targets=[1, 0, 3, 2], axis_labels=("rows", "rows"))
    logit_panel, softmax_panel = [ax for ax in fig.axes if ax.images]
    boxes = [(p.get_x() + 0.5, p.get_y() + 0.5) for p in logit_panel.patches]
    assert boxes == [(1, 0), (0, 1), (3, 2), (2, 3)]
    np.testing.assert_allclose(np.diag(np.asarray(softmax_panel.images[0].get_array())), 0.0)  # softmax of -inf
    with pytest.raises(ValueError, match="targets must give one column"):
        plots.plot_similarity_matrix(sim, targets=[1, 0, 3])


def test_plot_attention_masks():
    import torch

    tokens = ["[CLS]", "a", "[SEP]", "b", "[SEP]"]
    causal = torch.ones(5, 5).tril().bool()
    fig = plots.plot_attention_masks({"bidirectional": torch.ones(5, 5, dtype=torch.bool), "causal": causal}, tokens, row=3)
    panels = [ax for ax in fig.axes if ax.images]
    assert len(panels) == 2
    np.testing.assert_array_equal(panels[1].images[0].get_array(), causal.float().numpy())
    assert [t.get_text() for t in panels[0].get_xticklabels()] == tokens
    assert len(panels[0].patches) == 1  # the chosen row is outlined
    with pytest.raises(ValueError, match="expected \\(5, 5\\)"):
        plots.plot_attention_masks({"bad": torch.ones(4, 4)}, tokens)
    with pytest.raises(ValueError, match="row must be in"):
        plots.plot_attention_masks({"causal": causal}, tokens, row=5)


def test_plot_curve():
    fig = plots.plot_curve([16, 32, 64], {"in-batch": [0.3, 0.4, 0.5], "hard negatives": [0.35, 0.45, 0.55]},
                           "batch size", "recall@10", logx=True)
    assert isinstance(fig, Figure) and has_data(fig)
    assert len(fig.axes[0].lines) == 2
    assert list(fig.axes[0].lines[1].get_ydata()) == [0.35, 0.45, 0.55]


def test_plot_score_histograms():
    fig = plots.plot_score_histograms({"positive": [0.8, 0.9, 0.7], "hardest negative": [0.5, 0.6, 0.65]})
    assert isinstance(fig, Figure) and has_data(fig)
    assert len(fig.axes[0].patches) == 2 * 40  # one bar per bin and list


def test_plot_series():
    fig = plots.plot_series({"a": ([0, 1, 2], [0.1, 0.2, 0.3]), "b": ([0, 5], [0.2, 0.4])}, "seconds", "recall")
    assert isinstance(fig, Figure) and [len(line.get_xdata()) for line in fig.axes[0].lines] == [3, 2]


def test_plot_align_uniform():
    fig = plots.plot_align_uniform({"untrained": (0.2, -0.5), "trained": (0.6, -2.5)})
    assert isinstance(fig, Figure) and has_data(fig)
    offsets = [tuple(c.get_offsets()[0]) for c in fig.axes[0].collections]
    assert offsets == [(-0.5, 0.2), (-2.5, 0.6)]  # x = uniformity, y = alignment


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda: plots.plot_recall_at_k({}), "at least one method"),
        (lambda: plots.plot_ann_tradeoff([], [], [], 1.0), "non-empty and of equal length"),
        (lambda: plots.plot_ann_tradeoff([16, 32], [0.9], [1.0, 2.0], 1.0), "non-empty and of equal length"),
        (lambda: plots.plot_ranked_scores([], [], []), "non-empty and of equal length"),
        (lambda: plots.plot_ranked_scores(["a", "b"], [1.0], [True, False]), "non-empty and of equal length"),
        (lambda: plots.plot_loss_curve([]), "at least one loss value"),
        (lambda: plots.plot_similarity_matrix(np.zeros((3, 2))), "C >= B >= 1"),
        (lambda: plots.plot_similarity_matrix(np.zeros(4)), "C >= B >= 1"),
        (lambda: plots.plot_similarity_matrix(np.zeros((0, 3))), "C >= B >= 1"),
        (lambda: plots.plot_curve([1, 2], {}, "x", "y"), "as long as xs"),
        (lambda: plots.plot_curve([1, 2], {"a": [1.0]}, "x", "y"), "as long as xs"),
        (lambda: plots.plot_align_uniform({}), "at least one"),
    ],
)
def test_plot_errors(call, message):
    with pytest.raises(ValueError, match=message):
        call()


# ---------------------------------------------------------------------------------------------------------
# widgets


@pytest.fixture
def tiny():
    corpus = {
        "d1": "dog: a domesticated canid",
        "d2": "cat: a small feline",
        "d3": "bank: sloping land beside water",
        "d4": "bank: a financial institution",
        "d5": "run: move fast on foot",
        "d6": "run: a score in baseball",
    }
    queries = {"test": {"q1": "the dog barked", "q2": "she opened a bank account", "q3": "he scored a run"},
               "dev": {}, "train": {}}
    qrels = {"test": {"q1": {"d1"}, "q2": {"d4"}, "q3": {"d6"}}, "dev": {}, "train": {}}
    return RetrievalData("tiny", "custom", corpus, dict(corpus), queries, qrels, [])


def rankings_for(order_by_query: list[list[str]]):
    scores = np.tile(np.linspace(1.0, 0.5, len(order_by_query[0])), (len(order_by_query), 1))
    return order_by_query, scores


@pytest.fixture
def rankings():
    # split_items order: q1, q2, q3
    return {
        "good": rankings_for([["d1", "d2", "d3", "d4", "d5", "d6"],
                              ["d4", "d3", "d1", "d2", "d5", "d6"],
                              ["d6", "d5", "d1", "d2", "d3", "d4"]]),
        "bad": rankings_for([["d2", "d3", "d1", "d4"],
                             ["d3", "d1", "d2", "d5"],
                             ["d5", "d1", "d2", "d3"]]),
    }


def controls(box):
    assert isinstance(box, W.VBox)
    row, out = box.children
    assert isinstance(out, W.Output)
    query, method, k = row.children
    assert isinstance(query, W.IntSlider) and isinstance(method, W.Dropdown) and isinstance(k, W.IntSlider)
    return query, method, k


def test_explore_queries(tiny, rankings, capsys):
    box = explore_queries(tiny, rankings)
    query, method, k = controls(box)
    assert (query.min, query.max) == (0, 2)
    assert list(method.options) == ["good", "bad"]
    assert k.max == 4 and k.value == 4  # k is capped by the shortest ranking
    first = capsys.readouterr().out
    assert "[good] gold: 'dog: a domesticated canid' — rank 1" in first

    # outside a kernel interactive_output runs the callback right away and re-raises its errors
    query.value = 1
    assert "[good] gold: 'bank: a financial institution' — rank 1" in capsys.readouterr().out
    method.value = "bad"
    assert "[bad] gold: 'bank: a financial institution' — not in the top 4" in capsys.readouterr().out
    k.value = 2
    query.value = 2
    assert "[bad] gold: 'run: a score in baseball' — not in the top 4" in capsys.readouterr().out
    method.value = "good"
    assert "[good] gold: 'run: a score in baseball' — rank 1" in capsys.readouterr().out


def test_explore_queries_callback_errors_surface(tiny, rankings, monkeypatch):
    box = explore_queries(tiny, rankings)
    query, _, _ = controls(box)

    def broken(*args, **kwargs):
        raise RuntimeError("broken view")

    monkeypatch.setattr(widgets, "_query_view", broken)
    with pytest.raises(RuntimeError, match="broken view"):
        query.value = 1


def test_query_view_figure(tiny, rankings):
    fig, summary = widgets._query_view(tiny, "test", rankings, "good", 1, 3)
    assert isinstance(fig, Figure) and len(fig.axes[0].patches) == 3
    assert summary.startswith("[good]")
    with pytest.raises(ValueError, match="unknown method 'nope'"):
        widgets._query_view(tiny, "test", rankings, "nope", 0, 3)
    with pytest.raises(ValueError, match="query_index must be in \\[0, 2\\]"):
        widgets._query_view(tiny, "test", rankings, "good", 3, 3)
    with pytest.raises(ValueError, match="k must be in \\[1, 6\\]"):
        widgets._query_view(tiny, "test", rankings, "good", 0, 7)


def test_explore_queries_row_mismatch(tiny, rankings):
    rankings["bad"] = rankings_for([["d1", "d2"], ["d2", "d1"]])
    with pytest.raises(ValueError, match="rankings\\['bad'\\] has 2 rows but split 'test' has 3 queries"):
        explore_queries(tiny, rankings)


def test_explore_queries_needs_a_method(tiny):
    with pytest.raises(ValueError, match="at least one method"):
        explore_queries(tiny, {})


def test_explore_queries_empty_split(tiny, rankings):
    with pytest.raises(ValueError, match="split 'dev' of 'tiny' has no queries"):
        explore_queries(tiny, rankings, split="dev")


def test_explore_mask_rows(capsys):
    import torch

    from course_lib.widgets import explore_mask_rows

    tokens = ["[CLS]", "a", "[SEP]", "b", "[SEP]"]
    seq2seq = torch.tensor([[1, 1, 1, 0, 0]] * 3 + [[1, 1, 1, 1, 0], [1, 1, 1, 1, 1]]).bool()
    box = explore_mask_rows({"seq2seq": seq2seq}, tokens, row=1)
    assert "row 1 ('a') attends to:" in capsys.readouterr().out
    slider = box.children[0]
    slider.value = 3
    assert "seq2seq: [CLS] a [SEP] b" in capsys.readouterr().out


def test_explore_retromae_masking(capsys):
    from course_lib.config import get_config
    from course_lib.data import load_dataset
    from course_lib.tokenizer import load_tokenizer
    from course_lib.widgets import explore_retromae_masking

    tok = load_tokenizer(load_dataset("wordnet", "fast"), get_config("fast").vocab_size)
    text = "the bank approved the loan for the new house"
    box = explore_retromae_masking(tok, text, encoder_ratio=5.0, decoder_ratio=-1.0, row=99)  # clamped
    first = capsys.readouterr().out
    assert "encoder input" in first and "decoder row" in first
    enc, dec, row = box.children[0].children
    assert enc.value == 0.9 and dec.value == 0.0 and row.value == row.max
    dec.value = 0.9
    out = capsys.readouterr().out
    visible = out.split("visible tokens):")[0].rsplit("(", 1)[1]
    assert int(visible.split()[0]) <= 3  # at ratio 0.9 a row sees only specials and ~10 % of the words


def test_plot_drift():
    from course_lib.cbns import DriftRecord

    records = [DriftRecord(10, [0, 1, 2], [1.0, 0.9, 0.5]), DriftRecord(20, [0, 1, 2], [0.99, 0.2, -0.6])]
    fig = plots.plot_drift({"live": records, "slow": records[:1]})
    assert isinstance(fig, Figure) and len(fig.axes) == 2
    assert [len(ax.get_lines()) for ax in fig.axes] == [3, 2]  # one line per probe step, plus the zero line
    np.testing.assert_allclose(fig.axes[0].get_lines()[1].get_ydata(), [0.99, 0.2, -0.6])
    plt.close(fig)
    with pytest.raises(ValueError, match="at least one run"):
        plots.plot_drift({"empty": []})


def test_plot_frequency_tracking():
    steps = [100, 200, 300]
    true_p = np.array([[0.1, 0.2], [0.1, 0.2], [0.3, 0.0]])
    est_p = np.array([[0.0, 0.2], [0.1, 0.1], [0.3, 0.2]])
    fig = plots.plot_frequency_tracking(steps, true_p, est_p, {"a": 0, "b": 1}, switch_step=250)
    left, right = fig.axes
    assert len(left.get_lines()) == 2 * 2 + 1  # truth and estimate per item, the switch
    np.testing.assert_allclose(right.get_lines()[0].get_ydata(), [0.05, 0.05, 0.1])
    plt.close(fig)
    with pytest.raises(ValueError, match=r"\(T, N\)"):
        plots.plot_frequency_tracking(steps, true_p[:2], est_p[:2], {"a": 0})


def test_explore_memory_size():
    import torch

    from course_lib.widgets import _memory_size_view, explore_memory_size

    g = torch.Generator().manual_seed(0)
    q, d, memory = torch.randn(4, 8, generator=g), torch.randn(4, 8, generator=g), torch.randn(12, 8, generator=g)
    box = explore_memory_size(q, d, memory, temperature=0.1, size=99)  # clamped to the memory's 12 rows
    slider = box.children[0]
    assert slider.value == 12 and slider.max == 12
    slider.value = 0
    _, loss_0, p_0 = _memory_size_view(q, d, memory, 0.1, 0)
    _, loss_12, p_12 = _memory_size_view(q, d, memory, 0.1, 12)
    assert loss_12 > loss_0 and p_12 < p_0  # more candidates: a higher loss and less mass on the positive
    with pytest.raises(ValueError, match=r"size must be in \[0, 12\]"):
        _memory_size_view(q, d, memory, 0.1, 13)
    with pytest.raises(ValueError, match="memory must be"):
        explore_memory_size(q, d, memory[:, :4])
    plt.close("all")


def test_explore_ef_draws_each_size_sweep():
    from course_lib.widgets import _ef_view, explore_ef

    curve = [{"n": n, "exact_qps": 1000.0 / k, "ef_sweep": [{"ef": ef, "qps": 5000.0 / ef, "recall_at_10": r - 0.01 * k}
                                                              for ef, r in ((16, 0.8), (64, 0.95), (256, 0.99))]}
             for k, n in enumerate((1000, 10_000), start=1)]
    box = explore_ef(curve)
    slider = box.children[0]
    assert slider.value == 1 and [label for label, _ in slider.options] == ["1,000", "10,000"]
    fig = _ef_view(curve, 0, 0.98)
    ax = fig.axes[0]
    np.testing.assert_allclose(ax.get_lines()[0].get_ydata(), [0.79, 0.94, 0.98])  # the sweep, ef ascending
    assert ax.get_lines()[1].get_xdata()[0] == 1000.0  # exact search's speed at that size
    assert "1,000" in ax.get_title()
    slider.value = 0  # the callback redraws without raising
    with pytest.raises(ValueError, match="ef_sweep"):
        explore_ef([{"n": 10, "exact_qps": 1.0}])
    plt.close("all")

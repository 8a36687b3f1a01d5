"""Interactive explorers. Each ``explore_*`` draws its figure once directly (so a broken plot raises in the
cell, where nbmake sees it), then wires the controls with ``interactive_output`` (see STYLE.md: a callback
that raises inside an Output widget is silently swallowed). Sliders only re-slice precomputed results."""

import ipywidgets as W
import matplotlib.pyplot as plt
import torch
from IPython.display import display

from course_lib.plots import plot_ranked_scores, plot_similarity_matrix


def _query_view(data, split: str, rankings: dict, method: str, query_index: int, k: int):
    qids, texts, relevant = data.split_items(split)
    if method not in rankings:
        raise ValueError(f"unknown method {method!r}; have {sorted(rankings)}")
    n_available = len(rankings[method][0][0])
    if not 0 <= query_index < len(qids):
        raise ValueError(f"query_index must be in [0, {len(qids) - 1}], got {query_index}")
    if not 1 <= k <= n_available:
        raise ValueError(f"k must be in [1, {n_available}] (the rankings hold {n_available}), got {k}")
    ids, scores = rankings[method]
    top, top_scores = ids[query_index][:k], scores[query_index][:k]
    gold = relevant[query_index]
    rank = next((r + 1 for r, d in enumerate(ids[query_index]) if d in gold), None)
    fig = plot_ranked_scores([data.corpus[d] for d in top], top_scores, [d in gold for d in top],
                             f"{texts[query_index]}  [{method}; red = relevant]")
    where = f"rank {rank}" if rank else f"not in the top {n_available}"
    summary = f"[{method}] gold: {data.corpus[next(iter(gold))]!r} — {where}"
    return fig, summary


def explore_queries(data, rankings: dict[str, tuple[list[list[str]], object]], split: str = "test", k: int = 10):
    """Pick a query and a method; see its top-k documents with scores, the relevant one in red.

    ``rankings`` maps a method name to ``(ranked ids, scores)`` for every query of ``split`` in
    ``data.split_items(split)`` order (what ``index.search`` returns).
    """
    qids, _, _ = data.split_items(split)
    methods = list(rankings)
    if not methods:
        raise ValueError("explore_queries needs rankings for at least one method")
    for name, (ids, _) in rankings.items():
        if len(ids) != len(qids):
            raise ValueError(f"rankings[{name!r}] has {len(ids)} rows but split {split!r} has {len(qids)} queries")
    n_available = min(len(r[0][0]) for r in rankings.values())
    k = max(1, min(k, n_available))
    fig, summary = _query_view(data, split, rankings, methods[0], 0, k)  # once directly: errors surface here
    print(summary)
    display(fig)
    plt.close(fig)

    query = W.IntSlider(value=0, min=0, max=len(qids) - 1, description="query", continuous_update=False)
    method = W.Dropdown(options=methods, value=methods[0], description="method")
    kk = W.IntSlider(value=k, min=1, max=n_available, description="k", continuous_update=False)

    def show(query_index, method_name, k):
        fig, summary = _query_view(data, split, rankings, method_name, query_index, k)
        print(summary)
        display(fig)
        plt.close(fig)

    out = W.interactive_output(show, {"query_index": query, "method_name": method, "k": kk})
    out.layout.min_height = "420px"
    box = W.VBox([W.HBox([query, method, kk]), out])
    display(box)
    return box


def _temperature_view(q, d, negatives, temperature: float, title_prefix: str = ""):
    from course_lib.losses import in_batch_softmax_loss, similarity_logits

    if not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    logits = similarity_logits(q, d, negatives, temperature=temperature)  # (B, C)
    loss = in_batch_softmax_loss(q, d, negatives, temperature=temperature).item()
    p_pos = torch.softmax(logits, dim=1).diagonal().mean().item()
    fig = plot_similarity_matrix(logits, n_positive_cols=q.shape[0],
                                 title=f"{title_prefix}τ = {temperature:.3g} (scale {1 / temperature:.3g}): "
                                       f"loss {loss:.3f}, mean p(positive) {p_pos:.2f}")
    return fig, loss


def explore_temperature(q, d, negatives=None, temperature: float = 0.05, title_prefix: str = ""):
    """A temperature slider (log scale, clamped to [0.005, 2]) over a fixed batch of embeddings: redraws the
    logits and their row softmax and prints the in-batch loss. Sharper τ puts all the mass on the top column."""
    temperature = float(min(max(temperature, 0.005), 2.0))
    fig, _ = _temperature_view(q, d, negatives, temperature, title_prefix)  # once directly
    display(fig)
    plt.close(fig)
    slider = W.FloatLogSlider(value=temperature, base=10, min=-2.3, max=0.3, step=0.05, description="τ",
                              continuous_update=False, readout_format=".3f")

    def show(temperature):
        fig, _ = _temperature_view(q, d, negatives, temperature, title_prefix)
        display(fig)
        plt.close(fig)

    out = W.interactive_output(show, {"temperature": slider})
    out.layout.min_height = "360px"
    box = W.VBox([slider, out])
    display(box)
    return box

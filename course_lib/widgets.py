"""Interactive explorers. Each ``explore_*`` draws its figure once directly (so a broken plot raises in the
cell, where nbmake sees it), then wires the controls with ``interactive_output`` (a callback
that raises inside an Output widget is silently swallowed). Sliders re-slice precomputed results, or redo
work that takes well under a second (decoding three sentences)."""

import math
from numbers import Real

import ipywidgets as W
import matplotlib.pyplot as plt
import torch
from IPython.display import display

from course_lib.plots import plot_attention_masks, plot_ranked_scores, plot_similarity_matrix


def _detached(fig):
    """``fig``, already taken out of pyplot's registry (``plt.close``): call it before printing or displaying
    anything. JupyterLab ≥ 4.4 sends widget messages over kernel subshells, which ipykernel 7 handles on threads
    of their own, and each such message fires IPython's ``post_execute`` hook, where the inline backend draws and
    closes every figure pyplot still holds. A figure still registered while a callback draws it was drawn by two
    threads at once and reached the learner in part (the browser check saw it: notebook 00, first slider move).
    A closed figure still displays."""
    plt.close(fig)
    return fig


def _one_slider_box(slider, name: str, draw, min_height: str = "360px"):
    """Wire one control to a function ``draw(value) -> Figure``: each change redraws the figure below it."""

    def show(**value):
        display(_detached(draw(value[name])))

    out = W.interactive_output(show, {name: slider})
    out.layout.min_height = min_height
    box = W.VBox([slider, out])
    display(box)
    return box


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
    fig = _detached(fig)
    print(summary)
    display(fig)

    query = W.IntSlider(value=0, min=0, max=len(qids) - 1, description="query", continuous_update=False)
    method = W.Dropdown(options=methods, value=methods[0], description="method")
    kk = W.IntSlider(value=k, min=1, max=n_available, description="k", continuous_update=False)

    def show(query_index, method_name, k):
        fig, summary = _query_view(data, split, rankings, method_name, query_index, k)
        fig = _detached(fig)
        print(summary)
        display(fig)

    out = W.interactive_output(show, {"query_index": query, "method_name": method, "k": kk})
    out.layout.min_height = "420px"
    box = W.VBox([W.HBox([query, method, kk]), out])
    display(box)
    return box


def _check_temperature(temperature) -> None:
    """``temperature`` must be a finite real number > 0 (not a str: a slider or text box gives one)."""
    if isinstance(temperature, bool) or not isinstance(temperature, Real):
        raise TypeError(f"temperature must be a real number, got {type(temperature).__name__} {temperature!r}; "
                        "pass e.g. temperature=0.05, or float(text) for a typed value")
    if not (math.isfinite(temperature) and temperature > 0):
        raise ValueError(f"temperature must be finite and > 0, got {temperature!r}; the course uses 0.05")


def _temperature_view(q, d, negatives, temperature: float, title_prefix: str = ""):
    from course_lib.losses import in_batch_softmax_loss, similarity_logits

    _check_temperature(temperature)
    logits = similarity_logits(q, d, negatives, temperature=temperature)  # (B, C)
    loss = in_batch_softmax_loss(q, d, negatives, temperature=temperature).item()
    p_pos = torch.softmax(logits, dim=1).diagonal().mean().item()
    fig = plot_similarity_matrix(logits, n_positive_cols=q.shape[0],
                                 title=f"{title_prefix}τ = {temperature:.3g} (scale {1 / temperature:.3g}): "
                                       f"loss {loss:.3f}, mean p(positive) {p_pos:.2f}")
    return fig, loss


def explore_temperature(q, d, negatives=None, temperature: float = 0.05, title_prefix: str = ""):
    """A temperature slider (log scale, clamped to [0.005, 2]) over a fixed batch of embeddings: redraws the
    logits and their row softmax and prints the in-batch loss. Sharper τ puts all the mass on the top column.
    A ``temperature`` that is not a finite number > 0 raises; a valid one outside the slider's range is clamped."""
    _check_temperature(temperature)
    temperature = float(min(max(temperature, 0.005), 2.0))
    fig, _ = _temperature_view(q, d, negatives, temperature, title_prefix)  # once directly
    display(_detached(fig))
    slider = W.FloatLogSlider(value=temperature, base=10, min=-2.3, max=0.3, step=0.05, description="τ",
                              continuous_update=False, readout_format=".3f")

    return _one_slider_box(slider, "temperature", lambda temperature: _temperature_view(q, d, negatives, temperature,
                                                                                       title_prefix)[0])


def _mask_row_view(masks: dict, tokens: list[str], row: int) -> str:
    display(_detached(plot_attention_masks(masks, tokens, row=row)))
    lines = [f"row {row} ({tokens[row]!r}) attends to:"]
    for name, m in masks.items():
        seen = [t for t, v in zip(tokens, torch.as_tensor(m)[row].tolist()) if v]
        lines.append(f"  {name:>14}: {' '.join(seen) if seen else '(nothing)'}")
    return "\n".join(lines)


def explore_mask_rows(masks: dict, tokens: list[str], row: int = 0):
    """Pick a query position; see, in every mask, which tokens it may attend to (its row, outlined).
    ``tokens`` must be non-empty; ``row`` is clamped to [0, len(tokens) − 1]."""
    if not tokens:
        raise ValueError("tokens is empty: explore_mask_rows needs one token per mask row and column, e.g. "
                         "tokenizer.convert_ids_to_tokens(input_ids[0])")
    row = max(0, min(row, len(tokens) - 1))
    print(_mask_row_view(masks, tokens, row))  # once directly
    slider = W.IntSlider(value=row, min=0, max=len(tokens) - 1, description="row", continuous_update=False)
    out = W.interactive_output(lambda row: print(_mask_row_view(masks, tokens, row)), {"row": slider})
    out.layout.min_height = "380px"
    box = W.VBox([slider, out])
    display(box)
    return box


def _generation_view(model, tokenizer, texts: list[str], references: list[str], temperature: float, top_p: float,
                     seed: int) -> str:
    from course_lib.generation import generate
    from course_lib.metrics import token_f1

    greedy = generate(model, tokenizer, texts)
    sampled = generate(model, tokenizer, texts, do_sample=True, temperature=temperature, top_p=top_p,
                       generator=torch.Generator().manual_seed(seed))
    lines = []
    for text, ref, g, smp in zip(texts, references, greedy, sampled):
        lines += [f"A: {text}", f"   reference : {ref}", f"   greedy    : {g}   (F1 {token_f1(g, ref):.2f})",
                  f"   sampled   : {smp}   (F1 {token_f1(smp, ref):.2f})", ""]
    return "\n".join(lines)


def explore_generation(model, tokenizer, texts: list[str], references: list[str], temperature: float = 1.0,
                       top_p: float = 0.9, seed: int = 0):
    """Temperature and top-p sliders over a few source sentences: greedy and sampled SimBERT outputs next to
    the reference, each with its token F1. Higher temperature / top-p: more varied, less faithful text."""
    if len(texts) != len(references) or not texts:
        raise ValueError(f"need as many references as texts, at least one; got {len(texts)} and {len(references)}")
    print(_generation_view(model, tokenizer, texts, references, temperature, top_p, seed))  # once directly
    temp = W.FloatSlider(value=temperature, min=0.1, max=2.0, step=0.1, description="temperature", continuous_update=False)
    nucleus = W.FloatSlider(value=top_p, min=0.1, max=1.0, step=0.05, description="top-p", continuous_update=False)
    sample_seed = W.IntSlider(value=seed, min=0, max=20, description="seed", continuous_update=False)
    out = W.interactive_output(
        lambda temperature, top_p, seed: print(_generation_view(model, tokenizer, texts, references, temperature, top_p, seed)),
        {"temperature": temp, "top_p": nucleus, "seed": sample_seed},
    )
    box = W.VBox([W.HBox([temp, nucleus, sample_seed]), out])
    display(box)
    return box


def _retromae_masking_view(tokenizer, text: str, encoder_ratio: float, decoder_ratio: float, row: int, seed: int) -> str:
    from course_lib.retromae import pretrain_batch

    batch = pretrain_batch(tokenizer, [text], 64, encoder_mask_ratio=encoder_ratio, decoder_mask_ratio=decoder_ratio,
                           generator=torch.Generator().manual_seed(seed))
    tokens = tokenizer.convert_ids_to_tokens(batch["input_ids"][0])
    row = max(1, min(row, len(tokens) - 2))  # an ordinary token's row
    decoder_mask = batch["decoder_mask"][0]  # (L, L)
    display(_detached(plot_attention_masks({f"decoder mask (ratio {decoder_ratio:.2f})": decoder_mask}, tokens, row=row)))
    chosen = batch["encoder_labels"][0] != -100
    shown = tokenizer.convert_ids_to_tokens(batch["encoder_input_ids"][0])
    encoder_view = [f"[{s}]" if c and s != "[MASK]" else s for s, c in zip(shown, chosen.tolist())]
    decoder_view = ["h" if j == 0 else t if decoder_mask[row, j] else "_" for j, t in enumerate(tokens)]
    return "\n".join([
        f"encoder input ({int(chosen.sum())} of {len(tokens) - 2} tokens chosen; [x] = swapped or kept but predicted):",
        "  " + " ".join(encoder_view),
        f"decoder row {row} must rebuild {tokens[row]!r} from h and ({int(decoder_mask[row, 1:].sum())} visible tokens):",
        "  " + " ".join(decoder_view),
    ])


def explore_retromae_masking(tokenizer, text: str, encoder_ratio: float = 0.3, decoder_ratio: float = 0.5,
                             row: int = 1, seed: int = 0):
    """Two mask-ratio sliders (clamped to [0, 0.9]) and a decoder-row slider over one sentence: prints what the
    RetroMAE encoder sees (whole words masked) and what one decoder row sees (h plus the visible tokens, "_"
    where hidden), and draws the decoder mask with that row outlined."""
    encoder_ratio = float(min(max(encoder_ratio, 0.0), 0.9))
    decoder_ratio = float(min(max(decoder_ratio, 0.0), 0.9))
    n_tokens = len(tokenizer(text, truncation=True, max_length=64)["input_ids"])
    print(_retromae_masking_view(tokenizer, text, encoder_ratio, decoder_ratio, row, seed))  # once directly
    enc = W.FloatSlider(value=encoder_ratio, min=0.0, max=0.9, step=0.05, description="encoder", continuous_update=False)
    dec = W.FloatSlider(value=decoder_ratio, min=0.0, max=0.9, step=0.05, description="decoder", continuous_update=False)
    pick = W.IntSlider(value=max(1, min(row, n_tokens - 2)), min=1, max=max(1, n_tokens - 2), description="row",
                       continuous_update=False)
    out = W.interactive_output(
        lambda encoder, decoder, row: print(_retromae_masking_view(tokenizer, text, encoder, decoder, row, seed)),
        {"encoder": enc, "decoder": dec, "row": pick})
    out.layout.min_height = "420px"
    box = W.VBox([W.HBox([enc, dec, pick]), out])
    display(box)
    return box


def _memory_size_view(q, d, memory, temperature: float, size: int):
    from course_lib.losses import cbns_loss, similarity_logits

    if not 0 <= size <= memory.shape[0]:
        raise ValueError(f"size must be in [0, {memory.shape[0]}] (the memory's rows), got {size}")
    kept = memory[:size] if size else None  # (M, D), the first (oldest) ``size`` entries
    logits = similarity_logits(q, d, kept, temperature=temperature)  # (B, B+M)
    loss = cbns_loss(q, d, kept, temperature=temperature).item()
    p_pos = torch.softmax(logits, dim=1).diagonal().mean().item()
    fig = plot_similarity_matrix(logits, n_positive_cols=q.shape[0], extra_columns="memory",
                                 title=f"M = {size}: loss {loss:.3f}, mean p(positive) {p_pos:.3f}")
    return fig, loss, p_pos


def explore_memory_size(q, d, memory, temperature: float = 0.05, size: int | None = None):
    """A memory-size slider over a fixed batch: the queries ``q`` (B, D) scored against their positives ``d``
    (B, D) and the first M rows of ``memory`` (M_max, D), for M from 0 to M_max. Redraws the B × (B + M) logits
    and their row softmax and prints the loss and the mean probability of the positive (nothing retrains)."""
    if memory.dim() != 2 or memory.shape[1] != q.shape[1]:
        raise ValueError(f"memory must be (M, {q.shape[1]}), got {tuple(memory.shape)}")
    n = memory.shape[0]
    size = n if size is None else max(0, min(int(size), n))
    fig, _, _ = _memory_size_view(q, d, memory, temperature, size)  # once directly
    display(_detached(fig))
    slider = W.IntSlider(value=size, min=0, max=n, step=1, description="memory M", continuous_update=False)

    return _one_slider_box(slider, "size", lambda size: _memory_size_view(q, d, memory, temperature, size)[0])


def _mining_view(item: dict, lo: int, n: int, margin: float) -> str:
    """One query's candidates around the window [lo, lo + n): score, whether the sign-robust relative margin
    keeps it (s ≤ s⁺ − |s⁺|·m), and the judges' flags. Mining samples from the kept rows inside the window."""
    s_plus = item["s_plus"]
    limit = s_plus - abs(s_plus) * margin
    lines = [f"query: {item['query']}", f"positive (s⁺ = {s_plus:.3f}): {item['positive'][:90]}",
             f"window ranks [{lo}, {lo + n}), relative margin {margin:.2f} → keep s ≤ {limit:.3f}",
             " rank  score  in window  kept  judges  document"]
    shown = [c for c in item["candidates"] if lo - 3 <= c["rank"] < lo + n + 3]
    kept = 0
    for c in shown:
        inside = lo <= c["rank"] < lo + n
        ok = c["score"] <= limit
        kept += inside and ok
        flags = ",".join(c["flags"]) or "-"
        lines.append(f"{c['rank']:>5}  {c['score']:.3f}  {'yes' if inside else '   ':>9}  {'yes' if ok else 'NO':>4}  "
                     f"{flags:>6}  {c['text'][:70]}")
    lines.append(f"{kept} of {n} window candidates kept")
    return "\n".join(lines)


def explore_mining(items: list[dict], lo: int = 10, n: int = 8, margin: float = 0.05):
    """Pick a query, slide the rank window's start and the relative margin; see what would be mined.

    ``items``: per query ``{"query", "positive", "s_plus", "candidates": [{"rank", "score", "text", "flags"}]}``
    with candidates in rank order (ranks after removing the positive), precomputed, so sliding costs nothing."""
    if not items:
        raise ValueError("items is empty: give at least one query's candidates")
    max_lo = max(c["rank"] for c in items[0]["candidates"]) - n + 1
    print(_mining_view(items[0], lo, n, margin))  # once directly
    controls = {
        "query": W.IntSlider(value=0, min=0, max=len(items) - 1, description="query", continuous_update=False),
        "lo": W.IntSlider(value=lo, min=0, max=max(0, max_lo), description="window start", continuous_update=False),
        "margin": W.FloatSlider(value=margin, min=0.0, max=0.5, step=0.01, description="rel. margin",
                                continuous_update=False),
    }
    out = W.interactive_output(lambda query, lo, margin: print(_mining_view(items[query], lo, n, margin)), controls)
    out.layout.min_height = "380px"
    box = W.VBox([W.HBox(list(controls.values())), out])
    display(box)
    return box


def _topk_view(searchers: dict, corpus: dict, text: str, a: str, b: str, k: int, gold: set | None = None) -> str:
    """Two methods' top-k for one query, side by side as text; documents in ``gold`` are starred."""
    for name in (a, b):
        if name not in searchers:
            raise ValueError(f"unknown method {name!r}; have {sorted(searchers)}")
    if not isinstance(text, str) or not text.strip():
        return "type a query"
    ranked = {name: searchers[name](text, k) for name in (a, b)}
    width = 58
    lines = [f"query: {text}", f"{'rank':>4}  {a[:width]:<{width}}  {b[:width]}"]
    for r in range(k):
        cells = []
        for name in (a, b):
            ids, scores = ranked[name]
            doc = ids[r]
            mark = "*" if gold and doc in gold else " "
            cells.append(f"{mark}{scores[r]:6.3f} {corpus[doc][:width - 8]:<{width - 8}}")
        lines.append(f"{r + 1:>4}  " + "  ".join(cells))
    shared = len(set(ranked[a][0][:k]) & set(ranked[b][0][:k]))
    lines.append(f"{shared} of the top {k} documents are shared" + ("; * = relevant" if gold else ""))
    return "\n".join(lines)


def compare_topk(searchers: dict, corpus: dict, queries: dict[str, set] | None = None, text: str = "", k: int = 5):
    """Type any query; see two methods' top-k next to each other. ``searchers`` maps a method name to a
    function ``(text, k) -> (doc ids, scores)``; ``queries`` (query text → relevant ids) stars the relevant
    documents when the typed text is a known query."""
    names = list(searchers)
    if len(names) < 2:
        raise ValueError("compare_topk needs at least two methods to compare")
    queries = queries or {}
    print(_topk_view(searchers, corpus, text, names[0], names[1], k, queries.get(text)))  # errors surface here
    box_text = W.Text(value=text, description="query", layout=W.Layout(width="70%"), continuous_update=False)
    a = W.Dropdown(options=names, value=names[0], description="left")
    b = W.Dropdown(options=names, value=names[1], description="right")
    kk = W.IntSlider(value=k, min=1, max=20, description="k", continuous_update=False)
    out = W.interactive_output(lambda text, a, b, k: print(_topk_view(searchers, corpus, text, a, b, k, queries.get(text))),
                               {"text": box_text, "a": a, "b": b, "k": kk})
    box = W.VBox([box_text, W.HBox([a, b, kk]), out])
    display(box)
    return box


def _ef_view(curve: list[dict], index: int, min_recall: float):
    """Recall@10 (against exact search) against queries per second for each ef of ``curve[index]``'s sweep, with
    exact search's speed and the recall bar."""
    row = curve[index]
    points = sorted(row["ef_sweep"], key=lambda p: p["ef"])
    fig, ax = plt.subplots(figsize=(6.4, 4.0))
    ax.plot([p["qps"] for p in points], [p["recall_at_10"] for p in points], marker="o", label="HNSW, one point per ef")
    for p in points:
        ax.annotate(f"ef {p['ef']}", (p["qps"], p["recall_at_10"]), textcoords="offset points", xytext=(5, -10),
                    fontsize=7)
    ax.axvline(row["exact_qps"], color="k", ls=":", label=f"exact search: {row['exact_qps']:,.0f} q/s")
    ax.axhline(min_recall, color="C1", ls=":", label=f"recall@10 = {min_recall}")
    ax.set(xscale="log", xlabel="queries per second (wall clock)", ylabel="recall@10 against exact search",
           title=f"What ef buys at n = {row['n']:,} vectors")
    ax.legend(fontsize=7, loc="lower left")
    fig.tight_layout()
    return fig


def explore_ef(curve: list[dict], min_recall: float = 0.98):
    """A corpus-size slider over a search-scaling curve (``course_lib.search_scaling.scaling_curve`` rows, or a
    stored ``search_scaling.json``'s ``curve``): for the chosen size, HNSW's recall@10 against its speed at each
    swept ef, next to exact search's speed (nothing is re-measured)."""
    if not curve or any(not r.get("ef_sweep") or "exact_qps" not in r for r in curve):
        raise ValueError("curve must be a non-empty list of scaling-curve rows with 'ef_sweep' and 'exact_qps' "
                         "(course_lib.search_scaling.scaling_curve with efs=...)")
    last = len(curve) - 1
    display(_detached(_ef_view(curve, last, min_recall)))  # once directly
    slider = W.SelectionSlider(options=[(f"{r['n']:,}", i) for i, r in enumerate(curve)], value=last,
                               description="corpus size", continuous_update=False)
    return _one_slider_box(slider, "index", lambda index: _ef_view(curve, index, min_recall))

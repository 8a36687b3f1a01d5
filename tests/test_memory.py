"""The CBNS memory bank (FIFO layout, ages, detachment, size 0, reset, validation, peer layout with
pytorch-metric-learning's CrossBatchMemory) and Yi et al.'s streaming frequency estimator (the exact bias
formula, repeats and collisions, multiple hash tables, the §6.1 simulation, determinism, validation)."""

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from course_lib.memory import MemoryBank, StreamingFrequencyEstimator

D = 3


def batch(step: int, n: int, dim: int = D) -> tuple[torch.Tensor, list[int], torch.Tensor]:
    """Rows whose id is step·100 + row and whose vector and log q encode that id, so contents can be checked."""
    ids = [step * 100 + r for r in range(n)]
    vectors = torch.tensor(ids, dtype=torch.float32)[:, None].repeat(1, dim) + torch.arange(dim) / 10  # (n, dim)
    logq = -torch.tensor(ids, dtype=torch.float32) / 1000  # (n,)
    return vectors, ids, logq


def snapshot(bank: MemoryBank):
    vectors, ids, logq = bank.tensors()
    return vectors.clone(), list(ids), None if logq is None else logq.clone(), bank.ages().clone(), bank.step, len(bank)


def assert_same(a, b):
    assert a[1:2] + a[4:] == b[1:2] + b[4:]
    torch.testing.assert_close(a[0], b[0], rtol=0, atol=0)
    torch.testing.assert_close(a[3], b[3], rtol=0, atol=0)
    assert (a[2] is None) == (b[2] is None)
    if a[2] is not None:
        torch.testing.assert_close(a[2], b[2], rtol=0, atol=0)


# ---------------------------------------------------------------------------------------------------------
# MemoryBank: FIFO layout and ages


def check_fifo(size: int, batch_size: int, steps: int):
    bank = MemoryBank(size, D)
    for t in range(1, steps + 1):
        bank.enqueue(*batch(t, batch_size))
    all_ids = [t * 100 + r for t in range(1, steps + 1) for r in range(batch_size)]
    kept = all_ids[len(all_ids) - min(size, len(all_ids)):]  # the newest min(M, total) rows, oldest first
    vectors, ids, logq = bank.tensors()
    assert ids == kept and len(bank) == len(kept) and bank.step == steps
    assert bank.is_full == (len(kept) == size)
    expected = batch(0, 0)[0] if not kept else torch.cat([batch(i // 100, 100)[0][i % 100: i % 100 + 1] for i in kept])
    torch.testing.assert_close(vectors, expected.reshape(-1, D), rtol=0, atol=0)
    if batch_size and steps:
        torch.testing.assert_close(logq, -torch.tensor(kept, dtype=torch.float32) / 1000, rtol=0, atol=0)
    else:
        assert logq is None  # no non-empty enqueue yet: nothing decided whether entries carry log q
    assert bank.ages().tolist() == [steps - i // 100 for i in kept]  # age 0: written by the last enqueue


@pytest.mark.parametrize("size, batch_size", [(8, 4), (12, 4), (10, 4), (7, 3), (5, 8), (4, 4)])
def test_fifo_keeps_the_newest_rows_in_order(size, batch_size):
    check_fifo(size, batch_size, steps=5)


@settings(max_examples=60, deadline=None)
@given(st.integers(0, 12), st.integers(0, 15), st.integers(0, 8))
def test_fifo_property(size, batch_size, steps):
    check_fifo(size, batch_size, steps)


def test_larger_batch_than_bank_keeps_its_last_rows():
    bank = MemoryBank(3, D)
    vectors, ids, logq = batch(1, 7)
    bank.enqueue(vectors, ids, logq)
    stored, stored_ids, stored_logq = bank.tensors()
    assert stored_ids == ids[-3:]
    torch.testing.assert_close(stored, vectors[-3:], rtol=0, atol=0)
    torch.testing.assert_close(stored_logq, logq[-3:], rtol=0, atol=0)


def test_ages_after_partial_overwrite():
    bank = MemoryBank(5, D)
    for t in range(1, 4):
        bank.enqueue(*batch(t, 2))  # 6 rows into 5 slots: step 1 keeps its second row
    assert bank.tensors()[1] == [101, 200, 201, 300, 301]
    assert bank.ages().tolist() == [2, 1, 1, 0, 0]
    assert bank.ages().dtype == torch.long


# ---------------------------------------------------------------------------------------------------------
# MemoryBank: detachment, copies, size 0, reset


def test_stored_rows_are_detached_copies():
    bank = MemoryBank(4, D)
    x = torch.randn(3, D, requires_grad=True)
    source = 2 * x  # (3, D), part of a graph
    bank.enqueue(source, ["a", "b", "c"])
    before = bank.tensors()[0].clone()
    with torch.no_grad():
        source.add_(100.0)  # the caller changes its tensor afterwards
    stored, _, logq = bank.tensors()
    assert logq is None
    torch.testing.assert_close(stored, before, rtol=0, atol=0)
    assert not stored.requires_grad and stored.grad_fn is None
    stored.add_(5.0)  # and the returned tensor is a copy too
    torch.testing.assert_close(bank.tensors()[0], before, rtol=0, atol=0)
    q = torch.randn(2, D, requires_grad=True)
    loss = (q @ bank.tensors()[0].T).logsumexp(dim=1).sum() + (x * 0).sum()
    loss.backward()
    assert q.grad is not None
    assert torch.count_nonzero(x.grad) == 0  # nothing flows through the memory to the encoder's output


def test_size_zero_is_no_memory():
    bank = MemoryBank(0, D)
    bank.enqueue(*batch(1, 4))
    vectors, ids, logq = bank.tensors()
    assert vectors.shape == (0, D) and ids == [] and logq.shape == (0,) and len(bank) == 0
    assert bank.step == 1 and bank.ages().shape == (0,) and bank.is_full
    with pytest.raises(ValueError, match="with logq"):  # the log q decision still holds
        bank.enqueue(batch(2, 4)[0], batch(2, 4)[1])


def test_reset_empties_the_bank_and_the_logq_decision():
    bank = MemoryBank(4, D)
    bank.enqueue(*batch(1, 3))
    bank.reset()
    assert len(bank) == 0 and bank.step == 0 and bank.tensors()[0].shape == (0, D) and bank.tensors()[2] is None
    vectors, ids, _ = batch(2, 2)
    bank.enqueue(vectors, ids)  # without logq is fine now
    assert bank.tensors()[1] == ids and bank.tensors()[2] is None and bank.ages().tolist() == [0, 0]
    assert repr(bank) == "MemoryBank(size=4, dim=3, filled=2, step=1)"


def test_empty_enqueue_is_a_step_and_does_not_decide_logq():
    bank = MemoryBank(4, D)
    bank.enqueue(torch.zeros(0, D), [])
    bank.enqueue(*batch(1, 2)[:2])
    assert bank.step == 2 and bank.ages().tolist() == [0, 0] and bank.tensors()[2] is None


# ---------------------------------------------------------------------------------------------------------
# MemoryBank: validation


@pytest.mark.parametrize("kwargs, error, message", [
    (dict(size=-1, dim=3), ValueError, "size must be >= 0"),
    (dict(size=2.0, dim=3), TypeError, "size must be an int"),
    (dict(size=True, dim=3), TypeError, "size must be an int"),
    (dict(size=4, dim=0), ValueError, "dim must be >= 1"),
    (dict(size=4, dim=3, dtype=torch.long), TypeError, "floating"),
])
def test_bank_constructor_validation(kwargs, error, message):
    with pytest.raises(error, match=message):
        MemoryBank(**kwargs)


def nan_rows():
    v = batch(9, 4)[0]
    v[1, 0], v[3, 2] = float("nan"), float("inf")
    return v


V, IDS, LOGQ = batch(9, 4)
BAD_ENQUEUES = {
    "not a tensor": ((V.tolist(), IDS, LOGQ), TypeError, "must be a torch.Tensor"),
    "1-D": ((V[0], IDS[:1], LOGQ[:1]), ValueError, "must be 2-D"),
    "width": ((torch.zeros(4, D + 1), IDS, LOGQ), ValueError, "dim = 3"),
    "dtype": ((V.double(), IDS, LOGQ), TypeError, r"\.to\(torch\.float32\)"),
    "device": ((V.to("meta"), IDS, LOGQ), ValueError, "on meta but the bank is on cpu"),
    "non-finite": ((nan_rows(), IDS, LOGQ), ValueError, "2 of 4 rows"),
    "too few ids": ((V, IDS[:3], LOGQ), ValueError, "3 ids for 4 rows"),
    "ids a string": ((V, "abcd", LOGQ), TypeError, "list or tuple"),
    "ids a tensor": ((V, torch.tensor(IDS), LOGQ), TypeError, r"\.tolist\(\)"),
    "unhashable id": ((V, [1, 2, [3], 4], LOGQ), TypeError, "hashable"),
    "logq shape": ((V, IDS, LOGQ[:3]), ValueError, r"shape \(4,\)"),
    "logq not a tensor": ((V, IDS, LOGQ.tolist()), TypeError, "floating tensor"),
    "logq non-finite": ((V, IDS, torch.tensor([0.0, -1.0, -math.inf, -2.0])), ValueError, "non-finite"),
    "logq missing": ((V, IDS, None), ValueError, "enqueued with logq, this call is without"),
}


@pytest.mark.parametrize("case", BAD_ENQUEUES)
def test_bad_enqueue_raises_and_changes_nothing(case):
    args, error, message = BAD_ENQUEUES[case]
    bank = MemoryBank(5, D)
    for t in (1, 2, 3):
        bank.enqueue(*batch(t, 2))
    before = snapshot(bank)
    with pytest.raises(error, match=message):
        bank.enqueue(*args)
    assert_same(snapshot(bank), before)


def test_logq_on_a_bank_without_it_raises_and_changes_nothing():
    bank = MemoryBank(5, D)
    bank.enqueue(*batch(1, 2)[:2])
    before = snapshot(bank)
    with pytest.raises(ValueError, match="enqueued without logq, this call is with"):
        bank.enqueue(*batch(2, 2))
    assert_same(snapshot(bank), before)


def test_peer_crossbatchmemory_slot_layout():
    """pytorch-metric-learning writes batch i at slots (i·B) % M onwards; read from queue_idx (oldest) around,
    its memory holds the same rows in the same order as ours."""
    losses = pytest.importorskip("pytorch_metric_learning.losses")
    for size, batch_size in [(12, 4), (10, 4), (7, 3), (6, 6)]:
        peer = losses.CrossBatchMemory(losses.NTXentLoss(), embedding_size=D, memory_size=size)
        bank = MemoryBank(size, D)
        for t in range(1, 8):
            vectors, ids, _ = batch(t, batch_size)
            peer.add_to_memory(vectors, torch.tensor(ids), batch_size)
            bank.enqueue(vectors, ids)
            if peer.has_been_filled:
                order = (peer.queue_idx + torch.arange(size)) % size  # oldest first
            else:
                order = torch.arange(peer.queue_idx)
            stored, stored_ids, _ = bank.tensors()
            assert stored_ids == peer.label_memory[order].tolist()
            torch.testing.assert_close(stored, peer.embedding_memory[order], rtol=0, atol=0)


# ---------------------------------------------------------------------------------------------------------
# StreamingFrequencyEstimator: exact recursion, repeats, collisions


@pytest.mark.parametrize("alpha", [0.01, 0.1, 0.5])
@pytest.mark.parametrize("k", range(1, 11))
def test_gap_of_a_periodic_id_follows_the_closed_form(k, alpha):
    est = StreamingFrequencyEstimator(1 << 20, alpha=alpha, initial_gap=100.0)
    for n in range(1, 61):
        est.update(["doc"], n * k)  # hits at k, 2k, …: every observed gap is k, the first one too (A starts at 0)
        expected = k + (100.0 - k) * (1 - alpha) ** n
        torch.testing.assert_close(est.gap(["doc"]), torch.tensor([expected], dtype=torch.float64), rtol=1e-9, atol=0)
    if alpha == 0.5:
        torch.testing.assert_close(est.prob(["doc"]), torch.tensor([1 / k], dtype=torch.float64), rtol=1e-9, atol=0)


def test_prob_log_prob_and_unseen_ids():
    est = StreamingFrequencyEstimator(1 << 20, alpha=0.5, initial_gap=50.0)
    assert est.prob(["never seen"]).tolist() == [1 / 50]
    est.update(["a", "b"], 3)
    ids = ["a", "b", "never seen"]
    assert est.prob(ids).dtype == torch.float64 and est.prob(ids).shape == (3,)
    torch.testing.assert_close(est.log_prob(ids), est.prob(ids).log(), rtol=1e-12, atol=0)
    assert est.gap(ids).tolist() == [26.5, 26.5, 50.0]  # 0.5·50 + 0.5·(3 − 0)
    assert est.prob([]).shape == (0,) and est.step == 3


def test_a_repeated_id_counts_once_per_step():
    once, twice = StreamingFrequencyEstimator(1 << 16, alpha=0.1), StreamingFrequencyEstimator(1 << 16, alpha=0.1)
    for t in (2, 5, 6):
        once.update(["x", "y"], t)
        twice.update(["x", "x", "y", "x"], t)
    torch.testing.assert_close(once.tables(), twice.tables(), rtol=0, atol=0)


def test_colliding_ids_update_their_bucket_once_per_step():
    est = StreamingFrequencyEstimator(1, alpha=0.1, initial_gap=10.0)  # one bucket: everything collides
    est.update(["a", "b", 3], 4)
    A, B = est.tables()
    assert A.tolist() == [[4.0]] and B.item() == pytest.approx(0.9 * 10 + 0.1 * 4, rel=1e-12)  # not 0.9²·… for b


def test_integer_ids_as_tensor_match_lists():
    a, b = StreamingFrequencyEstimator(97, alpha=0.2, num_hashes=2), StreamingFrequencyEstimator(97, alpha=0.2, num_hashes=2)
    for t in range(1, 30):
        ids = [(t * 7 + j) % 40 for j in range(5)]
        a.update(ids, t)
        b.update(torch.tensor(ids), t)
    torch.testing.assert_close(a.tables(), b.tables(), rtol=0, atol=0)
    assert a.buckets(torch.arange(3)).tolist() == a.buckets([0, 1, 2]).tolist()


# ---------------------------------------------------------------------------------------------------------
# StreamingFrequencyEstimator: multiple hash tables (Algorithm 3)


def test_more_tables_never_estimate_higher():
    g = torch.Generator().manual_seed(3)
    ids = [f"doc-{i}" for i in range(300)]
    one = StreamingFrequencyEstimator(16, alpha=0.05, num_hashes=1, seed=5)  # 16 buckets: many collisions
    four = StreamingFrequencyEstimator(16, alpha=0.05, num_hashes=4, seed=5)
    assert torch.equal(four.buckets(ids)[0], one.buckets(ids)[0])  # table 0 is the single table
    for t in range(1, 201):
        drawn = [ids[i] for i in torch.randint(0, 300, (20,), generator=g).tolist()]
        one.update(drawn, t)
        four.update(drawn, t)
    assert (four.prob(ids) <= one.prob(ids)).all()
    assert (four.prob(ids) < one.prob(ids)).any()  # and the max over tables does undo some collisions


# ---------------------------------------------------------------------------------------------------------
# StreamingFrequencyEstimator: Yi et al.'s §6.1 simulation


def test_simulation_tracks_a_distribution_switch():
    """Yi et al. §6.1: M = 1,000 items, batches of 128 drawn i.i.d. (with replacement) from q_i ∝ (i + 1)² for
    i = 0..M−1, then from the mirror image q_i ∝ (M − i)²; H = 5,000 buckets, one hash, α = 0.01, A = 0 and
    B = 100 at the start. The paper switches at step 10,000 of 20,000; we switch at 5,000 of 10,000 to keep the
    test at ~3 s, which changes nothing measured here (α = 0.01 forgets within ~100 hits, a few hundred steps
    for the top items). The truth is the per-step hit probability 1 − (1 − q_i)^128. Error: the mean absolute
    error of p̂ over the 100 most frequent items of the current distribution (their p ≈ 0.26–0.32).

    The paper's rescaled L1 over all items, ``Σ|p̂ − p| / 2B``, is only reported in the message: it stays
    higher after the switch than before because items that vanish keep their old estimate, and a rare item
    sharing a bucket with a popular one inherits its p̂ (1,000 items in 5,000 buckets: about 18% share one),
    which also holds the Pearson r over all items near 0.8."""
    M, B, H, T = 1000, 128, 5000, 5_000
    i = torch.arange(M, dtype=torch.float64)
    q_before = (i + 1) ** 2 / ((i + 1) ** 2).sum()  # (M,)
    q_after = q_before.flip(0)  # (M,), ∝ (M − i)²
    g = torch.Generator().manual_seed(0)
    draws = torch.cat([torch.multinomial(q, T * B, replacement=True, generator=g).view(T, B)
                       for q in (q_before, q_after)]).tolist()  # (2T, B)
    est = StreamingFrequencyEstimator(H, alpha=0.01, seed=0)
    items = list(range(M))

    def errors(q):
        p = 1 - (1 - q) ** B  # (M,)
        p_hat = est.prob(items)  # (M,)
        top = p.argsort(descending=True)[:100]
        return (p_hat[top] - p[top]).abs().mean().item(), ((p_hat - p).abs().sum() / (2 * B)).item()

    seen = {}
    for t, drawn in enumerate(draws, 1):
        est.update(drawn, t)
        if t in (T, T + 100, 2 * T):
            seen[t] = errors(q_before if t == T else q_after)
    message = f"(top-100 MAE, rescaled L1) at steps {T}, {T + 100}, {2 * T}: {seen}"
    assert seen[T][0] < 0.05, message  # converged before the switch (≈ 0.025: α = 0.01's noise, collisions)
    assert seen[T + 100][0] > 0.15, message  # the new popular items were rare a moment ago
    assert seen[2 * T][0] < 0.05, message  # re-converged


# ---------------------------------------------------------------------------------------------------------
# StreamingFrequencyEstimator: determinism and validation


def test_hashing_is_deterministic_and_seeded():
    ids = ["doc-1", "doc-2", 0, 12345]
    # fixed values: BLAKE2b is the same in every process, unlike Python's salted hash() of a str
    assert StreamingFrequencyEstimator(1000, num_hashes=2, seed=0).buckets(ids).tolist() == [
        [143, 628, 576, 453], [334, 691, 848, 865]]
    many = [f"doc-{i}" for i in range(200)]
    a, b = StreamingFrequencyEstimator(1000, seed=1), StreamingFrequencyEstimator(1000, seed=1)
    assert torch.equal(a.buckets(many), b.buckets(many))
    assert not torch.equal(a.buckets(many), StreamingFrequencyEstimator(1000, seed=2).buckets(many))
    wide = StreamingFrequencyEstimator(1 << 20, seed=1)
    assert wide.buckets([7]).tolist() != wide.buckets(["7"]).tolist()  # an int and its str are different ids


@pytest.mark.parametrize("kwargs, error, message", [
    (dict(num_buckets=0), ValueError, "num_buckets must be >= 1"),
    (dict(num_buckets=10.0), TypeError, "num_buckets must be an int"),
    (dict(num_buckets=10, num_hashes=0), ValueError, "num_hashes must be >= 1"),
    (dict(num_buckets=10, alpha=0.0), ValueError, r"alpha must be in \(0, 1\]"),
    (dict(num_buckets=10, alpha=1.5), ValueError, r"alpha must be in \(0, 1\]"),
    (dict(num_buckets=10, alpha="0.1"), TypeError, "alpha must be a real number"),
    (dict(num_buckets=10, initial_gap=0.0), ValueError, "initial_gap must be a finite number > 0"),
    (dict(num_buckets=10, initial_gap=math.inf), ValueError, "initial_gap must be a finite number > 0"),
    (dict(num_buckets=10, seed=1.0), TypeError, "seed must be an int"),
])
def test_estimator_constructor_validation(kwargs, error, message):
    with pytest.raises(error, match=message):
        StreamingFrequencyEstimator(**kwargs)


@pytest.mark.parametrize("ids, step, error, message", [
    (["a"], 5, ValueError, "strictly increasing"),  # same step as the previous update
    (["a"], 3, ValueError, "strictly increasing"),
    (["a"], 6.0, TypeError, "step must be an int"),
    (["a"], True, TypeError, "step must be an int"),
    ([], 6, ValueError, "ids is empty"),
    ("abc", 6, TypeError, "list or tuple"),
    (["a", 1.5], 6, TypeError, "str or int"),
    (["a", True], 6, TypeError, "str or int"),
    (["a", ["b"]], 6, TypeError, "str or int"),
])
def test_bad_update_raises_and_changes_nothing(ids, step, error, message):
    est = StreamingFrequencyEstimator(64, alpha=0.1, num_hashes=2)
    est.update(["a", "b"], 2)
    est.update(["a", 1], 5)
    before = est.tables()
    with pytest.raises(error, match=message):
        est.update(ids, step)
    torch.testing.assert_close(est.tables(), before, rtol=0, atol=0)
    assert est.step == 5


def test_first_step_must_be_positive():
    with pytest.raises(ValueError, match="> 0"):
        StreamingFrequencyEstimator(8).update(["a"], 0)

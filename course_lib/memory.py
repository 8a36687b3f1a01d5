"""State that outlives one training step: a FIFO memory of document embeddings and a streaming estimate of how
often each document shows up in a batch.

``MemoryBank`` is the queue of cross-batch negative sampling (CBNS; Wang et al., "Cross-Batch Negative Sampling
for Training Two-Tower Recommenders", SIGIR 2021, arXiv:2110.15154, §3): the detached document embeddings of
the last few batches, with their ids and log q, reused as extra negatives by later batches.

``StreamingFrequencyEstimator`` is the hashed estimator of Yi et al., "Sampling-Bias-Corrected Neural Modeling
for Large Corpus Item Recommendations", RecSys 2019 (doi:10.1145/3298689.3346996), §4, Algorithms 2 and 3:
it tracks, per hash bucket, the average number of steps between two hits, and 1 / that gap is the probability
that a batch contains the document, the p of their logQ correction ``s − log p`` (§3).
"""

import hashlib
import math
from collections.abc import Hashable, Sequence
from numbers import Integral, Real

import torch


def _check_int(name: str, value, low: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, got {type(value).__name__} {value!r}")
    if value < low:
        raise ValueError(f"{name} must be >= {low}, got {value}")


def _check_id_list(ids, what: str) -> list:
    if isinstance(ids, torch.Tensor):
        raise TypeError(f"{what} must be a list or tuple of ids, got a tensor; convert it with .tolist()")
    if isinstance(ids, (str, bytes)) or not isinstance(ids, Sequence):
        raise TypeError(f"{what} must be a list or tuple of ids (one per row), got {type(ids).__name__}")
    return list(ids)


class MemoryBank:
    """A FIFO ring of ``size`` detached document embeddings (dim ``dim``), each with its doc id, its log q
    (optional) and the step at which it was written: the memory of CBNS (Wang et al., SIGIR 2021, §3).

    Protocol: a training step first scores its batch against ``tensors()`` (the memory as the previous steps
    left it) and only then calls ``enqueue`` with the batch's own detached document embeddings. This is the
    CBNS / MoCo order (He et al., 2020, arXiv:1911.05722, Algorithm 1: enqueue and dequeue after the logits),
    so a document of the current batch is never scored twice, once in-batch and once from the memory. XBM
    (Wang et al., 2020, arXiv:1912.06798) and pytorch-metric-learning's ``CrossBatchMemory`` enqueue first, so
    a batch meets its own copies in the memory; the latter then drops those self-pairs.

    ``enqueue`` writes the newest rows over the oldest; one call is one step (``step`` counts the calls, also
    empty ones and those of a ``size=0`` bank, which stores nothing). ``tensors()`` and ``ages()`` list the
    filled slots from oldest to newest; age 0 means written by the most recent ``enqueue``. Stored vectors
    are detached copies: no gradient flows into the memory, and later changes to the caller's tensor do not
    reach it. ``reset()`` empties the bank (pytorch-metric-learning's ``reset_queue``).
    """

    def __init__(self, size: int, dim: int, *, dtype: torch.dtype = torch.float32, device="cpu"):
        _check_int("size", size, 0)
        _check_int("dim", dim, 1)
        if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
            raise TypeError(f"dtype must be a floating torch.dtype (e.g. torch.float32), got {dtype!r}")
        self._vectors = torch.zeros(size, dim, dtype=dtype, device=device)  # (M, D)
        self._logq = torch.zeros(size, dtype=dtype, device=device)  # (M,)
        self._written = torch.zeros(size, dtype=torch.long)  # (M,), step at which each slot was written
        self._ids: list = [None] * size
        self.reset()

    def reset(self) -> None:
        """Empty the bank, set ``step`` back to 0 and forget whether entries carry log q."""
        self._head = 0  # next slot to write
        self._filled = 0
        self._step = 0
        self._with_logq: bool | None = None  # decided by the first non-empty enqueue
        self._ids = [None] * self.size
        self._vectors.zero_()
        self._logq.zero_()
        self._written.zero_()

    size = property(lambda self: self._vectors.shape[0], doc="Capacity M in rows (0: no memory).")
    dim = property(lambda self: self._vectors.shape[1], doc="Width D of a stored embedding.")
    dtype = property(lambda self: self._vectors.dtype, doc="dtype of the stored embeddings.")
    device = property(lambda self: self._vectors.device, doc="Device of the stored embeddings.")
    step = property(lambda self: self._step, doc="Number of ``enqueue`` calls since creation or ``reset``.")
    is_full = property(lambda self: self._filled == self.size, doc="Every slot filled (always True if size 0).")

    def __len__(self) -> int:
        return self._filled

    def __repr__(self) -> str:
        return f"MemoryBank(size={self.size}, dim={self.dim}, filled={self._filled}, step={self._step})"

    def _validate(self, vectors, ids, logq) -> list:
        if not isinstance(vectors, torch.Tensor):
            raise TypeError(f"vectors must be a torch.Tensor of shape (n, {self.dim}), got {type(vectors).__name__}")
        if vectors.dim() != 2:
            raise ValueError(f"vectors must be 2-D (n, {self.dim}), one embedding per row, got shape {tuple(vectors.shape)}")
        if vectors.shape[1] != self.dim:
            raise ValueError(f"vectors have width {vectors.shape[1]} but the bank stores dim = {self.dim}; "
                             "enqueue embeddings of the encoder the bank was built for")
        if vectors.dtype != self.dtype:
            raise TypeError(f"vectors have dtype {vectors.dtype} but the bank stores {self.dtype}; "
                            f"cast them with .to({self.dtype})")
        if vectors.device != self.device:
            raise ValueError(f"vectors are on {vectors.device} but the bank is on {self.device}; move them with "
                             f".to('{self.device}') or build the bank on the encoder's device")
        n = vectors.shape[0]
        bad_rows = int((~torch.isfinite(vectors)).any(dim=1).sum())
        if bad_rows:
            raise ValueError(f"{bad_rows} of {n} rows of vectors hold NaN or inf; a non-finite negative would poison "
                             "every later loss, so fix the encoder's output before enqueueing")
        ids = _check_id_list(ids, "ids")
        if len(ids) != n:
            raise ValueError(f"got {len(ids)} ids for {n} rows of vectors; pass one doc id per row")
        for i in ids:
            try:
                hash(i)
            except TypeError:
                raise TypeError(f"ids must be hashable (str or int), got {type(i).__name__} {i!r}") from None
        if logq is not None:
            if not isinstance(logq, torch.Tensor) or not logq.is_floating_point():
                raise TypeError(f"logq must be a floating tensor of shape ({n},), got {type(logq).__name__}")
            if logq.shape != (n,):
                raise ValueError(f"logq must have shape ({n},), one log-probability per row, got {tuple(logq.shape)}")
            if logq.device != self.device:
                raise ValueError(f"logq is on {logq.device} but the bank is on {self.device}; move it with .to()")
            if not torch.isfinite(logq.to(self.dtype)).all():
                raise ValueError(f"logq holds non-finite values (in {self.dtype}); log q must be finite, so clip q "
                                 "away from 0 (e.g. q.clamp_min(1e-12)) before taking the log")
        if n and self._with_logq is not None and self._with_logq != (logq is not None):
            have, got = ("with", "without") if self._with_logq else ("without", "with")
            raise ValueError(f"the bank holds entries enqueued {have} logq, this call is {got} logq; every "
                             "enqueue must agree (call reset() to change)")
        return ids

    def enqueue(self, vectors: torch.Tensor, ids: Sequence[Hashable], logq: torch.Tensor | None = None) -> None:
        """Store a batch: ``vectors`` (n, D) document embeddings in the bank's dtype and device, ``ids`` their n
        doc ids, ``logq`` optionally their (n,) finite log sampling probabilities. The rows overwrite the oldest
        slots; when n > size only the newest ``size`` rows (the last ones) are kept. Counts as one step. Any
        invalid argument raises before the bank changes."""
        ids = self._validate(vectors, ids, logq)
        n = vectors.shape[0]
        self._step += 1
        if n and self._with_logq is None:
            self._with_logq = logq is not None
        keep = min(n, self.size)
        if keep == 0:
            return
        rows = vectors.detach()[n - keep:]  # (k, D)
        slots = (self._head + torch.arange(keep)) % self.size  # (k,), distinct since k <= size
        with torch.no_grad():
            self._vectors.index_copy_(0, slots.to(self.device), rows)  # copies: the caller keeps its tensor
            if logq is not None:
                self._logq.index_copy_(0, slots.to(self.device), logq.detach()[n - keep:].to(self.dtype))
        self._written[slots] = self._step
        for slot, doc_id in zip(slots.tolist(), ids[n - keep:]):
            self._ids[slot] = doc_id
        self._head = (self._head + keep) % self.size
        self._filled = min(self._filled + keep, self.size)

    def _order(self) -> torch.Tensor:
        return (self._head - self._filled + torch.arange(self._filled)) % max(self.size, 1)  # (n,) oldest first

    def tensors(self) -> tuple[torch.Tensor, list, torch.Tensor | None]:
        """The filled slots, oldest first: vectors (n, D) (a fresh tensor, ``requires_grad=False``), their ids
        (a list of n) and log q (n,), or None when the entries were enqueued without logq."""
        order = self._order()  # (n,)
        on_device = order.to(self.device)
        vectors = self._vectors.index_select(0, on_device)  # (n, D)
        logq = self._logq.index_select(0, on_device) if self._with_logq else None  # (n,)
        return vectors, [self._ids[i] for i in order.tolist()], logq

    def ages(self) -> torch.Tensor:
        """Age in steps of each filled slot, in ``tensors()`` order: ``step − step written``, so 0 for the
        rows of the most recent ``enqueue`` and k for rows written k calls earlier. A LongTensor (n,) on CPU."""
        return self._step - self._written[self._order()]  # (n,)


class StreamingFrequencyEstimator:
    """Streaming estimate of each id's per-step hit probability (Yi et al., RecSys 2019, §4, Algorithms 2–3).

    Each of ``num_hashes`` tables holds, per bucket, A (the last step the bucket was hit, initially 0) and B
    (the estimated gap in steps between two hits, initially ``initial_gap``; §6.1's simulation used 100).
    ``update(ids, t)`` at global step t: for every distinct id y of the batch and every table i, with
    b = h_i(y), ``B_i[b] ← (1 − α)·B_i[b] + α·(t − A_i[b])`` and then ``A_i[b] ← t``. The estimate is
    ``p̂(y) = 1 / max_i B_i[h_i(y)]``: a collision makes a bucket stand for the union of several ids, which only
    shortens its gap, so the largest gap over tables is the least over-estimated (Algorithm 3).

    Counting choices. An id repeated within one batch counts once. A bucket hit by several distinct ids in one
    step is updated once for that step (the union of those ids was hit), where the paper's sequential loop
    would feed it an extra gap of 0 per additional id. Ids are str or int, hashed with keyed BLAKE2b (key from
    ``seed`` and the table index), so buckets are the same in every process; table 0 does not depend on
    ``num_hashes``. Steps need not be consecutive (gaps are measured in the caller's step numbers) but must
    increase. An id whose buckets were never hit gets ``1 / initial_gap``.

    p̂ is a per-step (per-batch) probability: with batches of B i.i.d. draws of probability q it estimates
    ``1 − (1 − q)^B ≈ B·q``. In the logQ correction ``s − log p̂`` a constant factor shifts every logit of a
    row alike and cancels in the softmax, so per-step and per-draw probabilities give the same loss as long as
    B·q ≪ 1.

    Bias. For an id hit exactly every k steps (at k, 2k, …; the first gap is k because A starts at 0), after
    its n-th hit ``B_n = k + (B_0 − k)(1 − α)^n``: the initialisation error decays geometrically, faster for a
    larger α, while a larger α also lets the noise of random gaps through (Proposition 4.1's variance bound).
    Proposition 4.1 prints the bias as ``(1 − α)^t δ_0 − (1 − α)^{t−1} δ`` and suggests ``δ_0 = δ/(1 − α)``; the
    recursion of its own proof gives ``(1 − α)^t (δ_0 − δ)``, zero for ``δ_0 = δ``, which is what this code does.
    An id that stops appearing keeps its last estimate until it is hit again.
    """

    def __init__(self, num_buckets: int, alpha: float = 0.01, num_hashes: int = 1, *, initial_gap: float = 100.0,
                 seed: int = 0):
        _check_int("num_buckets", num_buckets, 1)
        _check_int("num_hashes", num_hashes, 1)
        if isinstance(seed, bool) or not isinstance(seed, int):
            raise TypeError(f"seed must be an int, got {type(seed).__name__} {seed!r}")
        for name, value in (("alpha", alpha), ("initial_gap", initial_gap)):
            if isinstance(value, bool) or not isinstance(value, Real):
                raise TypeError(f"{name} must be a real number, got {type(value).__name__} {value!r}")
        if not 0 < alpha <= 1:
            raise ValueError(f"alpha must be in (0, 1], got {alpha!r}; it is the moving average's learning rate "
                             "(Yi et al. use 0.01)")
        if not (math.isfinite(initial_gap) and initial_gap > 0):
            raise ValueError(f"initial_gap must be a finite number > 0 (steps), got {initial_gap!r}")
        self.num_buckets, self.num_hashes, self.seed = num_buckets, num_hashes, seed
        self.alpha, self.initial_gap = float(alpha), float(initial_gap)
        self._keys = [hashlib.blake2b(f"course_lib.memory/{seed}/{i}".encode(), digest_size=32).digest()
                      for i in range(num_hashes)]
        self._cache: dict = {}  # id → tuple of flat indices table·H + bucket, one per table
        self._offsets = [i * num_buckets for i in range(num_hashes)]
        self._A = torch.zeros(num_hashes, num_buckets, dtype=torch.float64)  # (m, H), last step hit
        self._B = torch.full((num_hashes, num_buckets), self.initial_gap, dtype=torch.float64)  # (m, H), gap
        self._step = 0

    step = property(lambda self: self._step, doc="The step of the last ``update`` (0 before any).")

    def __repr__(self) -> str:
        return (f"StreamingFrequencyEstimator(num_buckets={self.num_buckets}, alpha={self.alpha}, "
                f"num_hashes={self.num_hashes}, step={self._step})")

    def _flat(self, doc_id) -> tuple:
        try:
            flat = None if isinstance(doc_id, bool) else self._cache.get(doc_id)  # True == 1 must not hit 1's entry
        except TypeError:  # unhashable: reported below
            flat = None
        if flat is not None:
            return flat
        if isinstance(doc_id, str):
            data = b"s" + doc_id.encode("utf-8", "surrogatepass")
        elif isinstance(doc_id, Integral) and not isinstance(doc_id, bool):
            data = b"i" + str(int(doc_id)).encode()
        else:
            raise TypeError(f"ids must be str or int (hashed in a process-independent way), got "
                            f"{type(doc_id).__name__} {doc_id!r}; convert ids with str()")
        flat = tuple(off + int.from_bytes(hashlib.blake2b(data, digest_size=8, key=key).digest(), "little")
                     % self.num_buckets for off, key in zip(self._offsets, self._keys))
        self._cache[doc_id] = flat
        return flat

    def _rows(self, ids, what: str) -> torch.Tensor:
        if isinstance(ids, torch.Tensor) and ids.dim() == 1 and not ids.is_floating_point():
            ids = ids.tolist()  # integer ids as a tensor: accepted
        ids = _check_id_list(ids, what)
        return torch.tensor([self._flat(i) for i in ids], dtype=torch.long).reshape(len(ids), self.num_hashes)

    def buckets(self, ids: Sequence) -> torch.Tensor:
        """The bucket of each id in each table, a LongTensor (num_hashes, n)."""
        offsets = torch.tensor(self._offsets, dtype=torch.long)  # (m,)
        return (self._rows(ids, "ids") - offsets).T  # (m, n)

    def update(self, ids: Sequence, step: int) -> None:
        """Record that the batch of global step ``step`` held ``ids`` (a non-empty list or tuple of str or int
        ids, or a 1-D integer tensor; repeats count once). ``step`` must be an int larger than the previous
        update's step. Invalid input raises before anything changes."""
        if isinstance(step, bool) or not isinstance(step, Integral):
            raise TypeError(f"step must be an int (the global training step), got {type(step).__name__} {step!r}")
        if step <= self._step:
            raise ValueError(f"step must be strictly increasing and > 0: got {step} after step {self._step}; "
                             "pass the global step (1, 2, …) once per batch")
        rows = self._rows(ids, "ids")  # (n, m)
        if rows.shape[0] == 0:
            raise ValueError("ids is empty: update needs the ids of the batch's documents")
        flat = rows.reshape(-1)  # (n·m,), repeats allowed
        A, B = self._A.view(-1), self._B.view(-1)  # (m·H,)
        # gathered before any write, so every copy of a repeated index writes the same value: one update per bucket
        B[flat] = (1 - self.alpha) * B[flat] + self.alpha * (step - A[flat])  # (n·m,)
        A[flat] = float(step)
        self._step = int(step)

    def gap(self, ids: Sequence) -> torch.Tensor:
        """The estimated gap δ in steps between two hits of each id, ``max_i B_i[h_i(y)]``: float64 (n,)."""
        rows = self._rows(ids, "ids")  # (n, m)
        return self._B.view(-1)[rows].amax(dim=1) if rows.numel() else torch.zeros(0, dtype=torch.float64)  # (n,)

    def prob(self, ids: Sequence) -> torch.Tensor:
        """Estimated probability that one batch contains each id, ``1 / gap``: float64 (n,)."""
        return 1.0 / self.gap(ids)  # (n,)

    def log_prob(self, ids: Sequence) -> torch.Tensor:
        """Natural log of ``prob``: ``−log gap``, float64 (n,)."""
        return -torch.log(self.gap(ids))  # (n,)

    def tables(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Copies of the arrays A (last step hit) and B (gap), each float64 (num_hashes, num_buckets)."""
        return self._A.clone(), self._B.clone()

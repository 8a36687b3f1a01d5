"""Batch samplers: which training examples form a batch. Each yields lists of indices into a list of
``TrainExample`` (``data.train``), forever, epoch after epoch; stop them with the training loop's step budget.
The generator's state is read when a sampler is built, and every ``iter()`` replays the same batches.
"""

import math
from collections import defaultdict
from collections.abc import Mapping
from numbers import Real

import torch

from course_lib.data import TrainExample


class _BatchSampler:
    """Shared validation and the replayable random stream of the samplers below."""

    def __init__(self, examples, batch_size: int, generator: torch.Generator):
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
        self.examples = list(examples)
        if not self.examples:
            raise ValueError("examples is empty: a sampler needs at least one TrainExample (e.g. data.train)")
        bad = next((e for e in self.examples if not isinstance(e, TrainExample)), None)
        if bad is not None:
            raise TypeError(f"examples must be TrainExample objects (e.g. data.train), got a {type(bad).__name__}")
        if not isinstance(generator, torch.Generator):
            raise TypeError(
                f"generator must be a torch.Generator, got {type(generator).__name__}; "
                "pass torch.Generator().manual_seed(seed)"
            )
        if generator.device.type != "cpu":
            raise ValueError(f"generator must be a CPU torch.Generator (index shuffling runs on the CPU), got {generator.device}")
        self.batch_size = batch_size
        self._state = generator.get_state()

    def _generator(self) -> torch.Generator:
        """A fresh generator in the state the sampler was built with: iteration never touches the caller's."""
        g = torch.Generator()
        g.set_state(self._state)
        return g


class RandomBatchSampler(_BatchSampler):
    """Uniform random batches, the standard setting of in-batch negatives (DPR, Karpukhin et al., 2020, §3.2).

    Each epoch is a fresh permutation of the examples cut into batches of ``batch_size``; ``drop_last=True``
    drops each epoch's incomplete last batch, ``drop_last=False`` yields it, so an epoch then covers every
    index exactly once. Iteration is infinite: epoch follows epoch, each reshuffled. A batch may hold two
    examples with the same positive document (a false negative); see ``NoDuplicateBatchSampler``.
    """

    def __init__(self, examples, batch_size: int, generator: torch.Generator, drop_last: bool = True):
        super().__init__(examples, batch_size, generator)
        if drop_last and batch_size > len(self.examples):
            raise ValueError(
                f"batch_size {batch_size} exceeds the {len(self.examples)} examples, so with drop_last=True "
                "no batch is ever complete; lower batch_size or pass drop_last=False"
            )
        self.drop_last = drop_last

    def __iter__(self):
        g = self._generator()
        n, bs = len(self.examples), self.batch_size
        stop = n - n % bs if self.drop_last else n
        while True:
            order = torch.randperm(n, generator=g).tolist()
            for start in range(0, stop, bs):
                yield order[start : start + bs]


class NoDuplicateBatchSampler(_BatchSampler):
    """Batches in which no two examples share a positive document id or a query text, like
    sentence-transformers' ``BatchSamplers.NO_DUPLICATES`` (sentence-transformers #2954: a repeated positive is a false
    negative for the other rows; the query is checked too because the symmetric loss scores queries, #2954).

    It walks a shuffled order and fills each batch with the first examples that clash with nothing already in
    it; a clashing example is deferred, keeping its place at the front of the queue for the next batch. When
    the queue cannot fill a batch, a fresh permutation of the examples not already waiting is appended (a new
    epoch: each example waits at most once). An example is never passed over for more batches than there are
    examples ahead of it in the queue. Iteration is infinite and every batch is full. With a few very frequent
    positives, their examples are drawn at most once per batch and so less often than the rest: that is the
    price of no duplicates.
    """

    def __init__(self, examples, batch_size: int, generator: torch.Generator):
        super().__init__(examples, batch_size, generator)
        for what, values in (("positive documents", {e.positive for e in self.examples}),
                             ("query texts", {e.query for e in self.examples})):
            if batch_size > len(values):
                raise ValueError(
                    f"batch_size {batch_size} exceeds the {len(values)} distinct {what} in the examples, so no "
                    "batch can be free of duplicates; lower batch_size or use RandomBatchSampler"
                )

    def _take(self, queue: list[int]) -> list[int] | None:
        """Pick the next batch from the front of ``queue`` (and remove it there), or None if it cannot fill."""
        batch, positives, queries = [], set(), set()
        for pos, i in enumerate(queue):
            e = self.examples[i]
            if e.positive in positives or e.query in queries:
                continue  # deferred: it keeps its place in the queue
            batch.append(i)
            positives.add(e.positive)
            queries.add(e.query)
            if len(batch) == self.batch_size:
                taken = set(batch)
                queue[: pos + 1] = [j for j in queue[: pos + 1] if j not in taken]
                return batch
        return None

    def __iter__(self):
        g = self._generator()
        queue: list[int] = []
        while True:
            batch = self._take(queue)
            if batch is None:
                waiting = set(queue)
                queue.extend(i for i in torch.randperm(len(self.examples), generator=g).tolist() if i not in waiting)
                batch = self._take(queue)
                if batch is None:  # the queue now holds every example once: no order of this walk can fill it
                    raise RuntimeError(
                        f"could not fill a batch of {self.batch_size} examples with distinct positives and queries: "
                        "too many examples share a positive or a query with each other; lower batch_size"
                    )
            yield batch


class PopularitySampler(_BatchSampler):
    """Popularity-skewed batches: each of the ``batch_size`` draws picks an example, with replacement, with
    probability ∝ ``(popularity[positive] + 1) ** alpha``. ``alpha=0`` is uniform, ``alpha=1`` follows the
    counts (add-one smoothed), ``alpha=0.75`` is word2vec's flattened unigram (Mikolov et al., 2013, §2.2).

    Popular documents then show up as in-batch negatives far more often than rare ones, the sampling bias that
    the logQ correction removes (Yi et al., RecSys 2019, §3): ``doc_probability(doc_id)`` is its q.
    ``popularity`` maps doc id → count (a missing id counts 0). Iteration is infinite.
    """

    def __init__(self, examples, popularity, batch_size: int, generator: torch.Generator, alpha: float = 1.0):
        super().__init__(examples, batch_size, generator)
        if not isinstance(popularity, Mapping):
            raise TypeError(f"popularity must be a dict doc id → count (e.g. data.popularity), got {type(popularity).__name__}")
        if isinstance(alpha, bool) or not isinstance(alpha, Real) or not math.isfinite(alpha) or alpha < 0:
            raise ValueError(f"alpha must be a finite number >= 0 (0 is uniform), got {alpha!r}")
        counts = []
        for e in self.examples:
            c = popularity.get(e.positive, 0)
            if isinstance(c, bool) or not isinstance(c, Real) or not math.isfinite(c) or c < 0:
                raise ValueError(f"popularity[{e.positive!r}] must be a finite count >= 0, got {c!r}")
            counts.append(float(c))
        self.alpha = float(alpha)
        # p ∝ (count + 1) ** alpha, computed in log space so a large alpha cannot overflow
        self.probabilities = torch.softmax(self.alpha * torch.tensor(counts, dtype=torch.float64).log1p(), dim=0)  # (N,)
        self._doc_probabilities: dict[str, float] = defaultdict(float)
        for e, p in zip(self.examples, self.probabilities.tolist()):
            self._doc_probabilities[e.positive] += p

    def doc_probability(self, doc_id: str) -> float:
        """The probability that one draw puts ``doc_id`` into the batch as a positive column: the sum of the
        probabilities of the examples whose positive it is (0.0 for a document that is no example's positive).
        This is q(d) of the logQ correction ``s − log q`` (Yi et al., RecSys 2019, §3)."""
        return self._doc_probabilities.get(doc_id, 0.0)

    def __iter__(self):
        g = self._generator()
        while True:
            yield torch.multinomial(self.probabilities, self.batch_size, replacement=True, generator=g).tolist()

"""Notebook 05's exercises: each check fails on the unsolved stub and passes on the kept solution below."""

import numpy as np
import torch

from course_lib.mining import AnceRefresher, conan_window

# exercise 1: flagged share by rank bucket ----------------------------------------------------------------

POSITIVES = [f"p{i}" for i in range(7)]
RANKED = [[f"d{(i * 7 + j) % 23}" for j in range(30)] for i in range(7)]  # 7 queries × ranks 0–29


def judge(p, n):  # flags documents with an id divisible by 3, more of them near the top for query 0
    return int(n[1:]) % 3 == 0


def flagged_by_rank(judge, bucket, positives=POSITIVES, ranked=RANKED):  # the kept solution
    pairs = [(p, n) for p, row in zip(positives, ranked) for n in row[5 * bucket : 5 * bucket + 5]]
    return float(np.mean([judge(p, n) for p, n in pairs]))


def flagged_by_rank_stub(judge, bucket, positives=POSITIVES, ranked=RANKED):
    return 0.0


def exercise_1_check(fn) -> bool:
    overall = np.mean([judge(p, n) for p, row in zip(POSITIVES, RANKED) for n in row])
    return abs(sum(fn(judge, b) for b in range(6)) / 6 - overall) < 1e-9


def test_exercise_1():
    assert exercise_1_check(flagged_by_rank) and not exercise_1_check(flagged_by_rank_stub)


# exercise 2: Conan's windows -----------------------------------------------------------------------------


def window(i, n):  # the kept solution
    return 10 + (i - 1) * n, 10 + i * n


def window_stub(i, n):
    return 0, n


def exercise_2_check(fn) -> bool:
    literal = [fn(i, 8) for i in (1, 2, 3)] == [(10, 18), (18, 26), (26, 34)]
    return literal and all(fn(i, n) == conan_window(i, n) for i in range(1, 6) for n in range(1, 17))


def test_exercise_2():
    assert exercise_2_check(window) and not exercise_2_check(window_stub)


# exercise 3: the ANCE lag --------------------------------------------------------------------------------


def age(t, every):  # the kept solution
    return t % every


def age_stub(t, every):
    return 0


def exercise_3_check(fn) -> bool:
    docs = torch.eye(8)
    q = docs[:2]
    r = AnceRefresher(every=50, rank_range=(0, 3))
    seen = []
    for t in range(150):
        if t == 0 or r.due(t):
            r.refresh(t, q, ["d0", "d1"], [f"d{i}" for i in range(8)], docs)
        seen.append(t - r.built_at_step)
    return [fn(t, 50) for t in range(150)] == seen


def test_exercise_3():
    assert exercise_3_check(age) and not exercise_3_check(age_stub)

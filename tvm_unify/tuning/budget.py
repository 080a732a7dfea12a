"""Splitting a trial budget over tuning tasks by expected gain."""

from __future__ import annotations

TRIALS_PER_ITER = 8  # small, so a budget of ~10 trials per kernel still reaches every kernel


def allocate(costs: list[float], trials: int, per_iter: int = TRIALS_PER_ITER) -> list[int]:
    """Trials per task for ``costs`` sorted in decreasing order, in iterations of ``per_iter`` trials: one
    iteration each while the budget lasts, the remaining iterations in proportion to the costs (largest
    remainders round up)."""
    iters = trials // per_iter
    alloc = [1 if i < iters else 0 for i in range(len(costs))]
    extra = max(0, iters - len(costs))
    quota = [c / sum(costs) * extra for c in costs]
    share = [int(q) for q in quota]
    for i in sorted(range(len(costs)), key=lambda i: share[i] - quota[i])[: extra - sum(share)]:
        share[i] += 1
    return [per_iter * (a + s) for a, s in zip(alloc, share)]

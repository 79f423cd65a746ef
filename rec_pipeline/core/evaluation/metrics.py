"""Ranking metrics of the evaluation protocol (`../shared/DESIGN.md`, "Evaluation protocol").

Full-catalogue top-K (no sampled negatives) excluding items the user touched before, then
Recall@K = hits / min(|target|, K) and NDCG@K with binary relevance, DCG discount log2(rank + 1)
and ideal DCG over min(|target|, K); plus catalogue coverage.

Conventions shared by every function here:

* Item sets per user ("exclude", "targets") are either a sequence of integer index arrays (one per
  user row) or anything with ``tocsr()`` (a scipy.sparse matrix, users x items, non-zero = member).
  ``top_k_excluding`` also takes a dense boolean mask (users x items).
* Recommendation rows are padded with ``-1`` where a user has fewer than K eligible items; ``-1``
  is never a hit and never counts towards coverage.
* Users with an empty target set have no defined recall or NDCG: the per-user functions return
  NaN for them and ``evaluate`` leaves them out of the means and of ``users``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

PAD = -1

ItemSets = Sequence[Sequence[int] | np.ndarray] | Any  # index arrays per user, or scipy.sparse


@dataclass(frozen=True)
class RankingMetrics:
    """Means over the evaluated users (those with a non-empty target set)."""

    recall: float
    ndcg: float
    coverage: float
    users: int


def _csr_parts(sets: ItemSets, n_rows: int) -> tuple[np.ndarray, np.ndarray]:
    """(row index, item index) of every member of `sets`, whatever its form."""
    if hasattr(sets, "tocsr"):
        csr = sets.tocsr()
        if csr.shape[0] != n_rows:
            raise ValueError(f"expected {n_rows} rows of items, got {csr.shape[0]}")
        rows = np.repeat(np.arange(csr.shape[0]), np.diff(csr.indptr))
        stored = csr.data != 0  # explicit zeros are not members
        rows, items = rows[stored], csr.indices[stored]
    else:
        if len(sets) != n_rows:
            raise ValueError(f"expected {n_rows} item sets, got {len(sets)}")
        arrays = [np.asarray(s, dtype=np.int64).ravel() for s in sets]
        rows = np.repeat(np.arange(len(arrays)), [a.size for a in arrays])
        items = np.concatenate(arrays) if arrays else np.empty(0, dtype=np.int64)
    items = np.asarray(items, dtype=np.int64)
    if items.min(initial=0) < 0:
        raise ValueError("item indices must be non-negative")
    return rows.astype(np.int64), items


def top_k_excluding(scores: np.ndarray, exclude: ItemSets | None, k: int) -> np.ndarray:
    """Top-`k` item indices per user row, best first, never an excluded item.

    Ties are broken by the lower item index, also at the K-th place, so results do not depend on
    argpartition's arbitrary order among equal scores. Scores must be finite (the -inf that marks
    excluded items has to rank below every eligible one).
    """
    scores = np.asarray(scores, dtype=np.float64)
    n_users, n_items = scores.shape
    if not 1 <= k <= n_items:
        raise ValueError(f"k must be in [1, {n_items}], got {k}")
    if not np.isfinite(scores).all():
        raise ValueError("scores must be finite")
    work = scores.copy()
    if exclude is not None:
        if isinstance(exclude, np.ndarray) and exclude.dtype == bool:
            work[exclude] = -np.inf
        else:
            rows, items = _csr_parts(exclude, n_users)
            work[rows, items] = -np.inf

    # Keep everything strictly above the K-th best score, then fill up with the lowest-index ties.
    kth = np.partition(work, n_items - k, axis=1)[:, n_items - k, None]
    above = work > kth
    tied = work == kth
    room = k - above.sum(axis=1, keepdims=True)
    chosen = above | (tied & (np.cumsum(tied, axis=1) <= room))
    cols = np.nonzero(chosen)[1].reshape(n_users, k)  # ascending item index within each row

    vals = np.take_along_axis(work, cols, axis=1)
    order = np.argsort(-vals, axis=1, kind="stable")  # stable: equal scores keep index order
    top = np.take_along_axis(cols, order, axis=1)
    top[np.take_along_axis(vals, order, axis=1) == -np.inf] = PAD
    return top


def _hits(recommended: np.ndarray, targets: ItemSets) -> tuple[np.ndarray, np.ndarray]:
    """Boolean hit matrix (users x k) and distinct target count per user."""
    recommended = np.asarray(recommended, dtype=np.int64)
    if recommended.ndim != 2 or recommended.min(initial=0) < PAD:
        raise ValueError("recommended must be a 2-D array of item indices (or -1 padding)")
    srt = np.sort(recommended, axis=1)
    if ((srt[:, 1:] == srt[:, :-1]) & (srt[:, 1:] != PAD)).any():
        raise ValueError("a recommendation row lists the same item twice")
    n_users = recommended.shape[0]
    rows, items = _csr_parts(targets, n_users)
    # Membership test for all users at once on (user, item) keys.
    width = int(max(recommended.max(initial=0), items.max(initial=0))) + 1
    target_keys = np.unique(rows * width + items)
    n_targets = np.bincount(target_keys // width, minlength=n_users)
    rec_keys = np.arange(n_users)[:, None] * width + recommended
    hits = np.isin(rec_keys, target_keys) & (recommended != PAD)
    return hits, n_targets


def _recall_ndcg(recommended: np.ndarray, targets: ItemSets) -> tuple[np.ndarray, np.ndarray]:
    hits, n_targets = _hits(recommended, targets)
    k = hits.shape[1]
    cut = np.minimum(n_targets, k)
    discounts = 1.0 / np.log2(np.arange(k) + 2.0)  # rank r (1-based) -> 1 / log2(r + 1)
    ideal = np.concatenate([[0.0], np.cumsum(discounts)])[cut]
    has_target = n_targets > 0
    with np.errstate(invalid="ignore", divide="ignore"):
        recall = np.where(has_target, hits.sum(axis=1) / cut, np.nan)
        ndcg = np.where(has_target, (hits @ discounts) / ideal, np.nan)
    return recall, ndcg


def recall_at_k(recommended: np.ndarray, targets: ItemSets) -> np.ndarray:
    """Per-user hits / min(|target|, k), k = recommended.shape[1]; NaN where the target is empty."""
    return _recall_ndcg(recommended, targets)[0]


def ndcg_at_k(recommended: np.ndarray, targets: ItemSets) -> np.ndarray:
    """Per-user binary-relevance NDCG@k, k = recommended.shape[1]; NaN where the target is empty."""
    return _recall_ndcg(recommended, targets)[1]


def catalogue_coverage(recommended: np.ndarray, n_items: int) -> float:
    """Share of the catalogue that appears in at least one recommendation row."""
    recommended = np.asarray(recommended)
    return float(np.unique(recommended[recommended != PAD]).size / n_items)


def evaluate(recommended: np.ndarray, targets: ItemSets, n_items: int, k: int) -> RankingMetrics:
    """Protocol metrics over the first `k` columns of `recommended`.

    Coverage counts every row passed in (what was shown), recall and NDCG only the users with a
    non-empty target; with no such user, recall and NDCG are NaN and ``users`` is 0.
    """
    recommended = np.asarray(recommended)
    if recommended.ndim != 2 or recommended.shape[1] < k:
        raise ValueError(f"recommended must have at least k={k} columns")
    top = recommended[:, :k]
    recall, ndcg = _recall_ndcg(top, targets)
    evaluated = ~np.isnan(recall)
    users = int(evaluated.sum())
    return RankingMetrics(
        recall=float(recall[evaluated].mean()) if users else float("nan"),
        ndcg=float(ndcg[evaluated].mean()) if users else float("nan"),
        coverage=catalogue_coverage(top, n_items),
        users=users,
    )

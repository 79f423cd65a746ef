"""Tests of the ranking metrics (rec_pipeline.core.evaluation.metrics).

Hand-computed cases spell out their arithmetic; ranx (an established IR evaluation library, test
extra) cross-checks NDCG@k and Recall@k on random cases with |target| <= k, where ranx's recall
(hits / |target|) equals the protocol's hits / min(|target|, k).
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.sparse as sp
from hypothesis import given, settings
from hypothesis import strategies as st

from rec_pipeline.core.evaluation.metrics import (
    PAD,
    RankingMetrics,
    catalogue_coverage,
    evaluate,
    ndcg_at_k,
    recall_at_k,
    top_k_excluding,
)

# ---------------------------------------------------------------- top_k_excluding


def test_top_k_orders_best_first() -> None:
    scores = np.array([[0.1, 0.9, 0.5, 0.7], [4.0, 3.0, 2.0, 1.0]])
    assert top_k_excluding(scores, None, 3).tolist() == [[1, 3, 2], [0, 1, 2]]


def test_top_k_never_returns_excluded_items_in_any_exclusion_form() -> None:
    scores = np.array([[0.1, 0.9, 0.5, 0.7, 0.3], [5.0, 4.0, 3.0, 2.0, 1.0]])
    per_user = [np.array([1, 3]), np.array([0])]
    mask = np.zeros_like(scores, dtype=bool)
    mask[0, [1, 3]] = mask[1, 0] = True
    csr = sp.csr_matrix(mask)
    for exclude in (per_user, mask, csr):
        top = top_k_excluding(scores, exclude, 2)
        # user 0 without items 1, 3: 2 (0.5) then 4 (0.3); user 1 without item 0: 1 then 2
        assert top.tolist() == [[2, 4], [1, 2]]


def test_top_k_breaks_ties_by_item_index_also_at_the_cut() -> None:
    # Five items tie at 1.0 around the cut at k=3: item 4 (2.0) first, then the two lowest tied.
    scores = np.array([[1.0, 1.0, 1.0, 1.0, 2.0, 1.0]])
    assert top_k_excluding(scores, None, 3).tolist() == [[4, 0, 1]]
    top = top_k_excluding(np.zeros((2, 7)), [[0, 2], []], 4)
    assert top.tolist() == [[1, 3, 4, 5], [0, 1, 2, 3]]


def test_top_k_pads_with_minus_one_when_too_few_items_are_eligible() -> None:
    top = top_k_excluding(np.array([[3.0, 2.0, 1.0]]), [[0, 2]], 3)
    assert top.tolist() == [[1, PAD, PAD]]


def test_top_k_rejects_bad_input() -> None:
    with pytest.raises(ValueError, match="k must be"):
        top_k_excluding(np.zeros((1, 3)), None, 4)
    with pytest.raises(ValueError, match="finite"):
        top_k_excluding(np.array([[np.nan, 1.0]]), None, 1)
    with pytest.raises(ValueError, match="non-negative"):
        top_k_excluding(np.zeros((1, 3)), [[-1]], 1)


def test_top_k_is_deterministic_under_heavy_ties() -> None:
    rng = np.random.default_rng(7)
    scores = rng.integers(0, 3, size=(50, 200)).astype(float)  # many ties
    exclude = [rng.choice(200, size=20, replace=False) for _ in range(50)]
    top = top_k_excluding(scores, exclude, 10)
    for u in range(50):  # reference: full sort on (-score, item index)
        allowed = np.setdiff1d(np.arange(200), exclude[u])
        expected = allowed[np.lexsort((allowed, -scores[u, allowed]))][:10]
        assert top[u].tolist() == expected.tolist()


# ---------------------------------------------------------------- recall / NDCG, by hand


def test_ndcg_and_recall_hand_computed() -> None:
    # targets {2, 5}, recs [5, 1, 2]: hits at ranks 1 and 3.
    # DCG  = 1/log2(1+1) + 1/log2(3+1) = 1 + 0.5 = 1.5
    # IDCG over min(|t|=2, k=3) = 2 ranks = 1/log2(2) + 1/log2(3) = 1 + 0.6309... = 1.6309...
    # NDCG = 1.5 / 1.6309 = 0.9197...; Recall = 2 hits / min(2, 3) = 1.0
    recs, targets = np.array([[5, 1, 2]]), [[2, 5]]
    assert ndcg_at_k(recs, targets)[0] == pytest.approx(1.5 / (1 + 1 / math.log2(3)))
    assert recall_at_k(recs, targets)[0] == 1.0


def test_target_larger_than_k_caps_the_ideal_at_k() -> None:
    # targets {0..9} (10 items), k=3, recs [7, 20, 3]: hits at ranks 1 and 3.
    # Recall = 2 / min(10, 3) = 2/3
    # DCG = 1 + 1/log2(4) = 1.5; IDCG = 1 + 1/log2(3) + 1/log2(4) = 2.1309...; NDCG = 0.7039...
    recs, targets = np.array([[7, 20, 3]]), [np.arange(10)]
    assert recall_at_k(recs, targets)[0] == pytest.approx(2 / 3)
    assert ndcg_at_k(recs, targets)[0] == pytest.approx(1.5 / (1 + 1 / math.log2(3) + 0.5))


def test_k_larger_than_target() -> None:
    # targets {4}, k=5, recs [0, 1, 4, 2, 3]: one hit at rank 3.
    # Recall = 1 / min(1, 5) = 1; DCG = 1/log2(4) = 0.5; IDCG (1 rank) = 1; NDCG = 0.5
    recs, targets = np.array([[0, 1, 4, 2, 3]]), [[4]]
    assert recall_at_k(recs, targets)[0] == 1.0
    assert ndcg_at_k(recs, targets)[0] == pytest.approx(0.5)


def test_no_hits_and_all_hits() -> None:
    recs = np.array([[0, 1, 2], [3, 4, 5]])
    targets = [[7, 8], [5, 4, 3]]  # user 0: no hit; user 1: every slot a hit, any order
    assert recall_at_k(recs, targets).tolist() == [0.0, 1.0]
    assert ndcg_at_k(recs, targets).tolist() == pytest.approx([0.0, 1.0])


def test_padding_is_never_a_hit_and_duplicate_targets_count_once() -> None:
    # targets {1} given twice; recs [1, -1, -1] -> one hit at rank 1 of min(1, 3) = 1
    recs = np.array([[1, PAD, PAD]])
    assert recall_at_k(recs, [[1, 1]])[0] == 1.0
    assert ndcg_at_k(recs, [[1, 1]])[0] == 1.0


def test_users_with_empty_targets_are_nan_and_left_out_of_evaluate() -> None:
    recs = np.array([[0, 1], [2, 3], [4, 5]])
    targets = [[0], [], [9]]  # user 0: hit at rank 1; user 1: no target; user 2: no hit
    assert np.isnan(recall_at_k(recs, targets)[1])
    assert np.isnan(ndcg_at_k(recs, targets)[1])
    m = evaluate(recs, targets, n_items=12, k=2)
    # means over users 0 and 2 only: recall (1 + 0) / 2, ndcg (1 + 0) / 2; coverage 6 of 12 items
    assert m == RankingMetrics(recall=0.5, ndcg=0.5, coverage=0.5, users=2)


def test_evaluate_with_no_target_at_all() -> None:
    m = evaluate(np.array([[0, 1]]), [[]], n_items=4, k=2)
    assert m.users == 0 and math.isnan(m.recall) and math.isnan(m.ndcg) and m.coverage == 0.5


def test_targets_as_sparse_matrix_match_index_arrays() -> None:
    recs = np.array([[5, 1, 2], [0, 3, 4]])
    lists = [[2, 5], [4]]
    csr = sp.csr_matrix((np.ones(3), ([0, 0, 1], [2, 5, 4])), shape=(2, 8))
    assert recall_at_k(recs, csr).tolist() == recall_at_k(recs, lists).tolist()
    assert ndcg_at_k(recs, csr).tolist() == ndcg_at_k(recs, lists).tolist()


def test_evaluate_cuts_to_k_and_rejects_bad_rows() -> None:
    # recs [9, 2, 5] cut to k=2 -> [9, 2]; targets {5}: the hit at rank 3 no longer counts
    assert evaluate(np.array([[9, 2, 5]]), [[5]], n_items=10, k=2).recall == 0.0
    with pytest.raises(ValueError, match="at least k"):
        evaluate(np.array([[1]]), [[1]], n_items=3, k=2)
    with pytest.raises(ValueError, match="twice"):
        recall_at_k(np.array([[1, 1]]), [[1]])
    with pytest.raises(ValueError, match="expected 2"):
        recall_at_k(np.array([[1], [2]]), [[1]])


def test_catalogue_coverage() -> None:
    # distinct items {0, 1, 2, 7} (padding ignored) of 10 -> 0.4
    assert catalogue_coverage(np.array([[0, 1], [1, 2], [7, PAD]]), 10) == 0.4


# ---------------------------------------------------------------- cross-check with ranx


@pytest.mark.slow  # ~15 s: numba compiles ranx's kernels on every run
@pytest.mark.filterwarnings("ignore:unsafe cast from uint64 to int64")  # inside ranx's ndcg
def test_matches_ranx_on_random_cases() -> None:
    ranx = pytest.importorskip("ranx")
    rng = np.random.default_rng(3)
    n_users, n_items, k = 40, 30, 10
    scores = rng.random((n_users, n_items))
    recs = top_k_excluding(scores, None, k)
    sizes = rng.integers(1, k + 1, size=n_users)  # 1 <= |target| <= k
    targets = [rng.choice(n_items, size=size, replace=False) for size in sizes]

    qrels = ranx.Qrels.from_dict(
        {f"u{u}": {f"i{i}": 1 for i in t} for u, t in enumerate(targets)}
    )
    run = ranx.Run.from_dict(  # scores k, k-1, ... keep our rank order, with no ties
        {f"u{u}": {f"i{i}": float(k - r) for r, i in enumerate(row)} for u, row in enumerate(recs)}
    )
    ranx.evaluate(qrels, run, [f"ndcg@{k}", f"recall@{k}"], save_results_in_run=True)
    ours = {"ndcg": ndcg_at_k(recs, targets), "recall": recall_at_k(recs, targets)}
    for metric, per_user in ours.items():
        theirs = run.scores[f"{metric}@{k}"]
        assert per_user == pytest.approx([theirs[f"u{u}"] for u in range(n_users)])


# ---------------------------------------------------------------- properties


@st.composite
def _cases(draw):
    n_users = draw(st.integers(1, 6))
    n_items = draw(st.integers(1, 12))
    k = draw(st.integers(1, n_items))
    seed = draw(st.integers(0, 2**32 - 1))
    rng = np.random.default_rng(seed)
    scores = rng.integers(0, 4, size=(n_users, n_items)).astype(float)
    targets = [rng.choice(n_items, size=rng.integers(0, n_items + 1), replace=False)
               for _ in range(n_users)]
    return scores, targets, n_items, k


@settings(max_examples=200, deadline=None)
@given(_cases())
def test_metrics_lie_in_unit_interval(case) -> None:
    scores, targets, n_items, k = case
    recs = top_k_excluding(scores, None, k)
    m = evaluate(recs, targets, n_items, k)
    for per_user in (recall_at_k(recs, targets), ndcg_at_k(recs, targets)):
        defined = per_user[~np.isnan(per_user)]
        assert ((defined >= 0) & (defined <= 1 + 1e-12)).all()
    assert 0 <= m.coverage <= 1
    assert m.users == sum(len(t) > 0 for t in targets)


@settings(max_examples=200, deadline=None)
@given(_cases())
def test_perfect_ranking_scores_one(case) -> None:
    _, targets, n_items, k = case
    scores = np.zeros((len(targets), n_items))
    for u, t in enumerate(targets):  # every target item outranks every other item
        scores[u, t] = 1.0
    recs = top_k_excluding(scores, None, k)
    m = evaluate(recs, targets, n_items, k)
    if m.users:
        assert m.recall == pytest.approx(1.0)
        assert m.ndcg == pytest.approx(1.0)

"""Tests of the evaluation gate decision (rec_pipeline.core.model.gate)."""

from __future__ import annotations

import dataclasses

import pytest

from rec_pipeline.core.evaluation.metrics import RankingMetrics
from rec_pipeline.core.model.gate import GateDecision, GatePolicy, decide

FLOOR = RankingMetrics(recall=0.30, ndcg=0.25, coverage=0.05, users=100)


def m(ndcg: float, users: int = 100, recall: float = 0.4, coverage: float = 0.2) -> RankingMetrics:
    return RankingMetrics(recall=recall, ndcg=ndcg, coverage=coverage, users=users)


def test_first_model_above_floor_is_promoted() -> None:
    d = decide(m(0.30), None, FLOOR)
    assert d.promoted and "no champion" in d.reason and "0.2500" in d.reason


def test_first_model_not_above_floor_is_rejected() -> None:
    assert not decide(m(0.20), None, FLOOR).promoted


def test_equal_to_floor_does_not_beat_it() -> None:
    d = decide(m(FLOOR.ndcg), None, FLOOR)
    assert not d.promoted and "does not beat the popularity floor" in d.reason


def test_floor_applies_also_when_the_champion_is_worse() -> None:
    # 0.24 is far above the champion's 0.10 but below the 0.25 floor
    assert not decide(m(0.24), m(0.10), FLOOR).promoted


def test_champion_tolerance_boundary() -> None:
    champion = m(0.50)
    bound = 0.50 * (1 - 0.02)  # 0.49: the lowest NDCG the default policy promotes
    assert decide(m(bound), champion, FLOOR).promoted
    below = decide(m(bound - 1e-9), champion, FLOOR)
    assert not below.promoted and "2% tolerance" in below.reason
    assert decide(m(0.55), champion, FLOOR).promoted


def test_zero_tolerance_promotes_equal_but_not_worse() -> None:
    policy = GatePolicy(tolerance=0.0)
    assert decide(m(0.40), m(0.40), FLOOR, policy).promoted
    assert not decide(m(0.3999), m(0.40), FLOOR, policy).promoted


def test_too_few_users_is_never_promoted() -> None:
    # min_users=20: 19 is too few, with or without a champion; 20 is enough
    for champion in (None, m(0.10)):
        d = decide(m(0.9, users=19), champion, FLOOR)
        assert not d.promoted and "19 users" in d.reason
        assert decide(m(0.9, users=20), champion, FLOOR).promoted


def test_floor_check_can_be_switched_off() -> None:
    policy = GatePolicy(require_above_floor=False)
    assert decide(m(0.10), None, FLOOR, policy).promoted
    d = decide(m(0.10), m(0.10), FLOOR, policy)
    assert d.promoted and "floor" not in d.reason


def test_recall_as_gate_metric() -> None:
    policy = GatePolicy(metric="recall@10")
    # NDCG is below the floor's, recall above it: recall decides
    d = decide(m(0.01, recall=0.31), None, FLOOR, policy)
    assert d.promoted and "Recall@10" in d.reason
    assert not decide(m(0.99, recall=0.30), None, FLOOR, policy).promoted


def test_metrics_dict_is_flat_and_numeric() -> None:
    d = decide(m(0.30, recall=0.41, coverage=0.2, users=50), m(0.28), FLOOR)
    assert d.metrics == {
        "challenger_recall": 0.41, "challenger_ndcg": 0.30,
        "challenger_coverage": 0.2, "challenger_users": 50,
        "champion_recall": 0.4, "champion_ndcg": 0.28,
        "champion_coverage": 0.2, "champion_users": 100,
        "floor_recall": 0.30, "floor_ndcg": 0.25, "floor_coverage": 0.05, "floor_users": 100,
    }
    assert not any(k.startswith("champion_") for k in decide(m(0.3), None, FLOOR).metrics)


def test_reason_is_one_sentence() -> None:
    cases = [(m(0.3), None), (m(0.2), None), (m(0.3, users=1), None), (m(0.3), m(0.5)),
             (m(0.5), m(0.5))]
    for challenger, champion in cases:
        reason = decide(challenger, champion, FLOOR).reason
        assert reason.endswith(".") and reason.count(". ") == 0 and "  " not in reason


def test_decision_and_policy_are_frozen() -> None:
    d = decide(m(0.3), None, FLOOR)
    assert isinstance(d, GateDecision)
    with pytest.raises(dataclasses.FrozenInstanceError):
        d.promoted = False  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        GatePolicy().tolerance = 0.5  # type: ignore[misc]


@pytest.mark.parametrize(
    "kwargs",
    [{"metric": "coverage@10"}, {"metric": "ndcg"}, {"metric": "ndcg@0"}, {"tolerance": -0.1},
     {"tolerance": 1.0}, {"min_users": 0}],
)
def test_policy_rejects_nonsense(kwargs) -> None:
    with pytest.raises(ValueError):
        GatePolicy(**kwargs)

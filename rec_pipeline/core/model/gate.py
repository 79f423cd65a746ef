"""The evaluation gate (`../shared/DESIGN.md`, "Evaluation gate"): promote the challenger or keep the champion.

All three `RankingMetrics` come from the same evaluation slice: the newest events neither model has
trained on, with the popularity baseline on that slice as the absolute floor. Rules, in order:

1. Fewer than `min_users` evaluated users: not promoted, also when there is no champion yet. A
   mean over a handful of users is noise, and without a champion the popularity baseline (the
   floor) keeps serving, which is the safe default until a slice is large enough to judge.
2. `require_above_floor`: the challenger must be strictly above the floor (equal is not "beats").
3. With a champion: challenger >= champion * (1 - tolerance) (equal to that bound is promoted).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from rec_pipeline.core.evaluation.metrics import RankingMetrics

_LABELS = {"recall": "Recall", "ndcg": "NDCG"}


@dataclass(frozen=True)
class GatePolicy:
    """`metric` is "<recall|ndcg>@K"; K only labels it (K is fixed when the slice is evaluated)."""

    metric: str = "ndcg@10"
    tolerance: float = 0.02  # relative: the challenger may be at most 2% below the champion
    require_above_floor: bool = True
    min_users: int = 20

    def __post_init__(self) -> None:
        name, _, k = self.metric.partition("@")
        if name not in _LABELS or not k.isdigit() or int(k) < 1:
            raise ValueError(f"metric must look like 'ndcg@10' or 'recall@10', got {self.metric!r}")
        if not 0.0 <= self.tolerance < 1.0:
            raise ValueError(f"tolerance must be in [0, 1), got {self.tolerance}")
        if self.min_users < 1:
            raise ValueError(f"min_users must be at least 1, got {self.min_users}")

    @property
    def metric_name(self) -> str:
        return self.metric.partition("@")[0]

    def value(self, metrics: RankingMetrics) -> float:
        return float(getattr(metrics, self.metric_name))


@dataclass(frozen=True)
class GateDecision:
    promoted: bool
    reason: str
    metrics: dict[str, float | int] = field(default_factory=dict)


def _flatten(
    challenger: RankingMetrics, champion: RankingMetrics | None, floor: RankingMetrics
) -> dict[str, float | int]:
    out: dict[str, float | int] = {}
    for role, m in (("challenger", challenger), ("champion", champion), ("floor", floor)):
        if m is not None:
            out |= {f"{role}_recall": m.recall, f"{role}_ndcg": m.ndcg,
                    f"{role}_coverage": m.coverage, f"{role}_users": m.users}
    return out


def decide(
    challenger: RankingMetrics,
    champion: RankingMetrics | None,
    floor: RankingMetrics,
    policy: GatePolicy = GatePolicy(),
) -> GateDecision:
    metrics = _flatten(challenger, champion, floor)
    name, _, k = policy.metric.partition("@")
    label = f"{_LABELS[name]}@{k}"
    ours, base = policy.value(challenger), policy.value(floor)
    tolerance = f"{policy.tolerance * 100:g}%"

    def verdict(promoted: bool, reason: str) -> GateDecision:
        return GateDecision(promoted=promoted, reason=reason, metrics=metrics)

    if challenger.users < policy.min_users:
        return verdict(False, f"Not promoted: only {challenger.users} users were evaluated, "
                              f"fewer than the {policy.min_users} the gate requires.")
    if policy.require_above_floor and not ours > base:
        return verdict(False, f"Not promoted: challenger {label} {ours:.4f} does not beat the "
                              f"popularity floor {base:.4f}.")
    floor_note = f" beats the popularity floor {base:.4f} and" if policy.require_above_floor else ""
    if champion is None:
        return verdict(True, f"Promoted: challenger {label} {ours:.4f}{floor_note or ' wins, as'} "
                             f"there is no champion yet.")
    best, bound = policy.value(champion), policy.value(champion) * (1.0 - policy.tolerance)
    if not ours >= bound:
        return verdict(False, f"Not promoted: challenger {label} {ours:.4f} is below {bound:.4f}, "
                              f"the champion's {best:.4f} less the {tolerance} tolerance.")
    return verdict(True, f"Promoted: challenger {label} {ours:.4f}{floor_note} is within "
                         f"{tolerance} of the champion's {best:.4f}.")

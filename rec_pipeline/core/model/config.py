"""What a refresh does, in numbers: the settings of every stage of the online loop."""

from __future__ import annotations

from dataclasses import dataclass, field

from rec_pipeline.core.errors import InputError
from rec_pipeline.core.model.features import FeatureConfig
from rec_pipeline.core.model.gate import GatePolicy
from rec_pipeline.core.model.ranking import RankerConfig
from rec_pipeline.core.model.retrieval import RetrievalConfig


@dataclass(frozen=True)
class RefreshConfig:
    features: FeatureConfig = field(default_factory=FeatureConfig)
    retrieval: RetrievalConfig = field(default_factory=RetrievalConfig)
    ranker: RankerConfig = field(default_factory=RankerConfig)
    gate: GatePolicy = field(default_factory=GatePolicy)
    k: int = 20  # recommendations published per user
    eval_k: int = 10
    candidates: int = 50  # retrieval candidates the ranker orders per user (benchmarks/README.md: 50 vs 100)
    popular_candidates: int = 50  # plus the most popular items now (longest popularity window); 0: none
    holdout_fraction: float = 0.2
    replay_events: int = 50_000  # recent history mixed into each retrieval refresh
    ranker_users: int = 5_000  # users sampled to train the ranker each refresh
    eval_users: int = 5_000
    exclude_event_types: tuple[str, ...] = ("purchase", "rating")  # never recommended again
    publish_chunk_users: int = 10_000  # users ranked at once when publishing (bounds memory)
    # Users and items with no event for this long (before the newest trained event) lose their
    # embedding rows: the tables stop growing with everyone ever seen. None keeps every id.
    expire_after_days: float | None = 90.0
    # True: every refresh trains both models from scratch, retrieval on all history (the replay's
    # full-retrain baseline); False: warm start from the champion (the online loop).
    from_scratch: bool = False

    def __post_init__(self) -> None:
        counts = ("k", "eval_k", "candidates", "ranker_users", "eval_users", "publish_chunk_users")
        if any(getattr(self, name) < 1 for name in counts) or self.popular_candidates < 0:
            raise InputError(f"{', '.join(counts)} must be >= 1 and popular_candidates >= 0")
        if self.candidates < self.k:
            raise InputError(f"candidates ({self.candidates}) must be >= k ({self.k}): lists are cut from them")
        if not 0 < self.holdout_fraction < 1 or self.replay_events < 0:
            raise InputError("holdout_fraction must be in (0, 1) and replay_events >= 0")
        if self.expire_after_days is not None and self.expire_after_days <= 0:
            raise InputError("expire_after_days must be > 0 (or None to keep every id)")

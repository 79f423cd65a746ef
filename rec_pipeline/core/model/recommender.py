"""The two-stage recommender a model version holds: Keras retrieval proposes candidates, LightGBM
ranks them on the retrieval score and the warehouse features. Items outside a user's candidates
rank below them, so lists cover the full catalogue with no sampled negatives."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import duckdb
import polars as pl

from rec_pipeline.core.model.features import (
    FeatureConfig,
    item_popularity_at,
    user_item_features,
)
from rec_pipeline.core.model.ranking import Ranker
from rec_pipeline.core.model.retrieval import RetrievalModel

RETRIEVAL_DIR, RANKER_DIR = "retrieval", "ranker"
FALLBACK = "fallback"


@dataclass(frozen=True)
class Recommender:
    retrieval: RetrievalModel
    ranker: Ranker | None  # None until a ranker has been trained: rank by retrieval score

    def save(self, folder: Path) -> None:
        self.retrieval.save(folder / RETRIEVAL_DIR)
        if self.ranker is not None:
            self.ranker.save(folder / RANKER_DIR)

    @classmethod
    def load(cls, folder: Path) -> Recommender:
        ranker = Ranker.load(folder / RANKER_DIR) if (folder / RANKER_DIR).is_dir() else None
        return cls(RetrievalModel.load(folder / RETRIEVAL_DIR), ranker)

    def candidates(self, user_ids: list[str], n: int, exclude: pl.DataFrame,
                   popular: list[str] | None = None) -> pl.DataFrame:
        """[user_id, item_id, retrieval_score, retrieval_rank] for users the retrieval model knows:
        retrieval's top `n`, plus every item of `popular` the user has not touched that retrieval did
        not propose (retrieval_rank null). Two sources, so the ranker can weigh what is popular now
        against what this user's embedding prefers, which retrieval alone ranks low for most users."""
        items, scores = self.retrieval.top_n(user_ids, n, exclude=exclude)
        width = items.shape[1]
        retrieved = pl.DataFrame({
            "user_id": pl.Series([u for u in user_ids for _ in range(width)], dtype=pl.String),
            "item_id": pl.Series(items.ravel().tolist(), dtype=pl.String),
            "retrieval_score": pl.Series(scores.ravel(), dtype=pl.Float64),
            "retrieval_rank": pl.Series(list(range(1, width + 1)) * len(user_ids), dtype=pl.Int32),
        }).filter(pl.col("item_id").is_not_null())
        if not popular:
            return retrieved
        known = [u for u, ok in zip(user_ids, self.retrieval.known(user_ids)) if ok]
        extra = (pl.DataFrame({"user_id": known}, schema={"user_id": pl.String})
                 .join(pl.DataFrame({"item_id": popular}, schema={"item_id": pl.String}), how="cross")
                 .join(exclude.select("user_id", "item_id"), on=["user_id", "item_id"], how="anti")
                 .join(retrieved, on=["user_id", "item_id"], how="anti"))
        extra = extra.with_columns(
            retrieval_score=pl.Series(self.retrieval.pair_scores(extra["user_id"], extra["item_id"]), dtype=pl.Float64),
            retrieval_rank=pl.lit(None, pl.Int32))
        return pl.concat([retrieved, extra])

    def rank(self, con: duckdb.DuckDBPyConnection, candidates: pl.DataFrame, at: datetime,
             features: FeatureConfig) -> pl.DataFrame:
        """Candidates with their features and a `score`, sorted by user then rank (1 = best)."""
        enriched = with_features(con, candidates, at, features)
        score = self.ranker.score(enriched) if self.ranker is not None else enriched["retrieval_score"].to_numpy()
        return order_by_score(enriched.with_columns(score=pl.Series(score, dtype=pl.Float64)))


def with_features(con: duckdb.DuckDBPyConnection, candidates: pl.DataFrame, at: datetime,
                  features: FeatureConfig) -> pl.DataFrame:
    pairs = candidates.select("user_id", "item_id")
    feature_frame = user_item_features(con, pairs, at, features).drop("user_id", "item_id")
    return pl.concat([candidates, feature_frame], how="horizontal")


def order_by_score(frame: pl.DataFrame) -> pl.DataFrame:
    return frame.sort(["user_id", "score", "item_id"], descending=[False, True, False]).with_columns(
        rank=pl.int_range(1, pl.len() + 1, dtype=pl.Int32).over("user_id")
    )


def popular_items(con: duckdb.DuckDBPyConnection, at: datetime, features: FeatureConfig, n: int,
                  trending: bool = False) -> pl.DataFrame:
    """[item_id, score, rank]: the most popular items over the longest popularity window, or
    (trending=True, the fallback list) over the short trending window scaled by the trend."""
    popularity = item_popularity_at(con, at, features)
    if trending:
        short = features.popularity_labels[features.popularity_half_lives.index(features.trending_half_lives[0])]
        score = pl.col(f"pop_{short}") * pl.col("trending").sqrt()
    else:
        score = pl.col(f"pop_{features.popularity_labels[-1]}")
    return (
        popularity.with_columns(score=score)
        .sort(["score", "item_id"], descending=[True, False])
        .head(n)
        .with_columns(rank=pl.int_range(1, pl.len() + 1, dtype=pl.Int32))
        .select("item_id", "score", "rank")
    )

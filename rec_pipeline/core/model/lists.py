"""Ranked lists: what a model, or popularity, recommends to a set of users at a moment. The gate,
publishing, the replay and the demo all rank through these functions, so they measure the same lists."""

from __future__ import annotations

from datetime import datetime

import polars as pl

from rec_pipeline.core.model.config import RefreshConfig
from rec_pipeline.core.model.recommender import (
    Recommender,
    order_by_score,
    popular_items,
)


def sample_users(values: list[str], limit: int) -> list[str]:
    if len(values) <= limit:
        return values
    step = len(values) / limit
    return [values[int(i * step)] for i in range(limit)]


def model_lists(con, model: Recommender, users: list[str], seen: pl.DataFrame, at: datetime,
                 config: RefreshConfig, fallback: pl.DataFrame) -> pl.DataFrame:
    """[user_id, item_id, rank, score, ...]: the model's ranking; users it does not know get `fallback`."""
    ranked = model.rank(con, candidates_for(con, model, users, seen, at, config), at, config.features)
    unknown = fallback.filter(~pl.col("user_id").is_in(ranked["user_id"].unique().implode()))
    return pl.concat([ranked.select("user_id", "item_id", "rank", "score"),
                      unknown.select("user_id", "item_id", "rank", "score")])


def candidates_for(con, model: Recommender, users: list[str], seen: pl.DataFrame, at: datetime,
                   config: RefreshConfig) -> pl.DataFrame:
    """The candidates `model` ranks for `users`: retrieval's and the popular items of the moment."""
    popular = (popular_items(con, at, config.features, config.popular_candidates)["item_id"].to_list()
               if config.popular_candidates else None)
    return model.candidates(users, config.candidates, seen, popular)


def popular_lists(con, users: list[str], seen: pl.DataFrame, at: datetime, config: RefreshConfig,
                  trending: bool) -> pl.DataFrame:
    """Each user's most popular (or trending) items they have not touched, ranked."""
    return popular_lists_from(popular_pool(con, seen, at, config, trending), users, seen, config.k)


def popular_pool(con, seen: pl.DataFrame, at: datetime, config: RefreshConfig, trending: bool) -> pl.DataFrame:
    """The most popular (or trending) items, enough that every user keeps `k` after their `seen` ones."""
    longest_seen = seen.group_by("user_id").len()["len"].max() or 0
    return popular_items(con, at, config.features, config.k + longest_seen, trending=trending)


def popular_lists_from(pool: pl.DataFrame, users: list[str], seen: pl.DataFrame, k: int) -> pl.DataFrame:
    every = pl.DataFrame({"user_id": users}, schema={"user_id": pl.String}).join(
        pool.select("item_id", "score"), how="cross")
    return order_by_score(every.join(seen, on=["user_id", "item_id"], how="anti")).filter(pl.col("rank") <= k)

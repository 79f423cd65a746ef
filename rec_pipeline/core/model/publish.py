"""Publishing recommendations: every user's top K, explained, swapped into the warehouse's
`recommendations` table atomically (`serving.publish_serving` then copies it for readers)."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from datetime import datetime

import duckdb
import polars as pl

from rec_pipeline.core.model.config import RefreshConfig
from rec_pipeline.core.model.lists import (
    candidates_for,
    popular_lists_from,
    popular_pool,
)
from rec_pipeline.core.model.recommender import FALLBACK, Recommender, popular_items
from rec_pipeline.core.model.serving import TRENDING_REASON
from rec_pipeline.core.ops.warehouse import transaction

RECOMMENDATION_SCHEMA: dict[str, pl.DataType] = {
    "user_id": pl.String(),
    "item_id": pl.String(),
    "rank": pl.Int32(),
    "score": pl.Float64(),
    "model_version": pl.String(),
    "generated_at": pl.Datetime("us", "UTC"),
    "reason": pl.String(),
}


def replace_recommendations(con: duckdb.DuckDBPyConnection,
                            recommendations: pl.DataFrame | Iterable[pl.DataFrame]) -> int:
    """Swap the whole table in one transaction: readers see the old rows or the new, never a mix.
    Takes one frame or an iterable of chunks (each is written as it comes, so only one chunk needs
    to be in memory); a chunk that fails to convert rolls back every chunk before it."""
    chunks = [recommendations] if isinstance(recommendations, pl.DataFrame) else recommendations
    inserted = 0
    with transaction(con):
        con.execute("DELETE FROM recommendations")
        for chunk in chunks:
            frame = chunk.select(list(RECOMMENDATION_SCHEMA)).cast(RECOMMENDATION_SCHEMA)  # noqa: F841
            inserted += con.execute("INSERT INTO recommendations SELECT * FROM frame").fetchall()[0][0]
    return inserted


def publish(con: duckdb.DuckDBPyConnection, model: Recommender | None, version: str | None, at: datetime,
            config: RefreshConfig, now: datetime) -> int:
    """Top-K for every user the features know, from `model` (or the trending fallback for users it
    does not know, and for everyone before any model is promoted), swapped in atomically with the
    trending list; returns the rows written. Users are ranked `publish_chunk_users` at a time, so
    memory is bounded by a chunk, not by the user count. `publish_serving` then copies the tables."""
    users = con.sql("SELECT user_id FROM user_activity ORDER BY user_id").pl()["user_id"].to_list()
    excluded = _never_again(con, config.exclude_event_types)
    pool = popular_pool(con, excluded, at, config, trending=True)
    trending = popular_items(con, at, config.features, config.k, trending=True)  # noqa: F841 (read by DuckDB)
    trending = trending.with_columns(generated_at=pl.lit(now))

    def chunks() -> Iterator[pl.DataFrame]:
        for start in range(0, len(users), config.publish_chunk_users):
            chunk = pl.Series("user_id", users[start:start + config.publish_chunk_users], dtype=pl.String)
            seen = excluded.filter(pl.col("user_id").is_in(chunk.implode()))
            shown = _explained_lists(con, model, version, chunk.to_list(), seen, at, config)
            unknown = chunk.filter(~chunk.is_in(shown["user_id"].implode())).to_list()
            fallback = popular_lists_from(pool, unknown, seen, config.k).with_columns(
                model_version=pl.lit(FALLBACK), reason=pl.lit(TRENDING_REASON))
            yield pl.concat([shown, fallback.select(shown.columns)]).with_columns(generated_at=pl.lit(now))

    with transaction(con):
        con.execute("DELETE FROM trending_items")
        con.execute("INSERT INTO trending_items SELECT item_id, rank, score, generated_at FROM trending")
        return replace_recommendations(con, chunks())


def _never_again(con: duckdb.DuckDBPyConnection, event_types: tuple[str, ...]) -> pl.DataFrame:
    return con.sql(
        "SELECT DISTINCT user_id, item_id FROM events_validated WHERE list_contains($types, event_type)",
        params={"types": list(event_types)},
    ).pl()


def _explained_lists(con, model: Recommender | None, version: str | None, users: list[str], excluded: pl.DataFrame,
                     at: datetime, config: RefreshConfig) -> pl.DataFrame:
    """[user_id, item_id, rank, score, model_version, reason]: `model`'s top-K for the users it knows."""
    columns = {"user_id": pl.String, "item_id": pl.String, "rank": pl.Int32, "score": pl.Float64,
               "model_version": pl.String, "reason": pl.String}
    if model is None:
        return pl.DataFrame(schema=columns)
    ranked = model.rank(con, candidates_for(con, model, users, excluded, at, config), at, config.features)
    top = ranked.filter(pl.col("rank") <= config.k)
    # Path attribution: the same top reason as TreeSHAP for ~92% of rows at ~1/50 of the cost.
    reasons = (model.ranker.explain(top, method="path") if model.ranker is not None
               else ["similar to what you engage with"] * top.height)
    return top.select("user_id", "item_id", "rank", "score").with_columns(
        model_version=pl.lit(version), reason=pl.Series(reasons, dtype=pl.String)).cast(columns)

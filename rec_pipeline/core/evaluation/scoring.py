"""Scoring ranked lists on a slice of events: who had targets, which items they were, the metrics."""

from __future__ import annotations

import duckdb
import numpy as np
import polars as pl

from rec_pipeline.core.evaluation.metrics import PAD, RankingMetrics, evaluate


def slice_targets(con: duckdb.DuckDBPyConnection, events: pl.DataFrame) -> pl.DataFrame:
    """[user_id, item_id]: items each user touches in `events` that they had not touched before
    (the feature state holds everything learnt from so far)."""
    pairs = events.select("user_id", "item_id").unique()  # noqa: F841 (read by DuckDB)
    return con.sql(
        "SELECT p.user_id, p.item_id FROM pairs p ANTI JOIN user_item_strength s USING (user_id, item_id)"
        " ORDER BY p.user_id, p.item_id"
    ).pl()


def seen_items(con: duckdb.DuckDBPyConnection, user_ids: list[str]) -> pl.DataFrame:
    """[user_id, item_id] every pair the users have touched so far: excluded from their lists."""
    users = pl.DataFrame({"user_id": user_ids}, schema={"user_id": pl.String})  # noqa: F841
    return con.sql("SELECT user_id, item_id FROM user_item_strength SEMI JOIN users USING (user_id)").pl()


def score_lists(ranked: pl.DataFrame, targets: pl.DataFrame, n_items: int, k: int) -> RankingMetrics:
    """Recall@k, NDCG@k and coverage of `ranked` ([user_id, item_id, rank]) against `targets`,
    over the users that have targets."""
    users = targets["user_id"].unique().sort()
    catalogue = pl.concat([ranked["item_id"], targets["item_id"]]).unique().sort()
    index = {item: i for i, item in enumerate(catalogue.to_list())}
    row = {user: i for i, user in enumerate(users.to_list())}
    recommended = np.full((len(row), k), PAD, dtype=np.int64)
    top = ranked.filter(pl.col("rank") <= k, pl.col("user_id").is_in(users.implode()))
    recommended[[row[u] for u in top["user_id"]], top["rank"].to_numpy() - 1] = [index[i] for i in top["item_id"]]
    grouped = targets.group_by("user_id").agg(pl.col("item_id")).sort("user_id")
    target_sets = [np.array([index[i] for i in items], dtype=np.int64) for items in grouped["item_id"].to_list()]
    return evaluate(recommended, target_sets, max(n_items, len(catalogue)), k)

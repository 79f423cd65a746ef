"""The demo's test-then-train measurement: before a refresh learns from a batch, how well the
champion, the popularity floor and the simulator's oracle rank what users went on to do in it."""

from __future__ import annotations

from collections.abc import Mapping

import duckdb
import numpy as np
import polars as pl

from rec_pipeline.core.evaluation.scoring import score_lists, seen_items, slice_targets
from rec_pipeline.core.evaluation.metrics import top_k_excluding
from rec_pipeline.core.model.recommender import Recommender
from rec_pipeline.core.model.refresh import RefreshConfig, model_lists, popular_lists, sample_users
from rec_pipeline.core.evaluation.simulator import Simulator


def batch_ndcg(con: duckdb.DuckDBPyConnection, models: Mapping[str, Recommender | None], simulator: Simulator,
               batch: pl.DataFrame, config: RefreshConfig = RefreshConfig()) -> dict[str, float | None]:
    """NDCG@eval_k on `batch` (landed, not yet learnt from) of each of `models` (`<name>_ndcg`,
    None for a missing model), the popularity floor and the oracle, over the batch's users with new
    items; all of them rank the full catalogue."""
    targets = slice_targets(con, batch)
    users = sample_users(targets["user_id"].unique().sort().to_list(), config.eval_users)
    if not users:
        return {"users": 0, **{f"{name}_ndcg": None for name in (*models, "popularity", "oracle")}}
    targets = targets.filter(pl.col("user_id").is_in(users))
    seen = seen_items(con, users)
    at = batch["ts"].min()
    n_items = len(simulator.item_ids)
    floor = popular_lists(con, users, seen, at, config, trending=False)

    def ndcg(lists: pl.DataFrame) -> float:
        return score_lists(lists, targets, n_items, config.eval_k).ndcg

    scores = {f"{name}_ndcg": ndcg(model_lists(con, model, users, seen, at, config, floor)) if model else None
              for name, model in models.items()}
    return {"users": len(users), **scores, "popularity_ndcg": ndcg(floor),
            "oracle_ndcg": ndcg(oracle_lists(simulator, users, seen, at, config.eval_k))}


def oracle_lists(simulator: Simulator, users: list[str], seen: pl.DataFrame, at, k: int) -> pl.DataFrame:
    """Each user's k most relevant items by the simulator's ground truth, excluding what they touched."""
    item_ids = np.asarray(simulator.item_ids, dtype=object)
    position = {item: i for i, item in enumerate(item_ids)}
    row = {user: i for i, user in enumerate(users)}
    mask = np.zeros((len(users), len(item_ids)), dtype=bool)
    known = seen.filter(pl.col("item_id").is_in(list(position)))
    mask[[row[u] for u in known["user_id"]], [position[i] for i in known["item_id"]]] = True
    top = top_k_excluding(simulator.relevance_matrix(users, at), mask, k).ravel()
    lists = pl.DataFrame({
        "user_id": np.repeat(users, k).tolist(),
        "item_id": item_ids[np.maximum(top, 0)].tolist(),
        "rank": np.tile(np.arange(1, k + 1), len(users)).astype(np.int32),
    })
    return lists.filter(pl.Series(top >= 0))  # PAD: fewer than k items left for a user

"""Everything the replay, the demo and the drift benchmark compare is a `Policy`, and they compare
them with one function, `score_then_learn` (the protocol of `../shared/DESIGN.md`, "Evaluation
protocol").

A policy learns batches of events in time order and recommends top-K lists, in the spirit of
River's estimators: the same two verbs for the production online loop, a frozen model, full
retraining, the popularity baselines, iALS and the simulator's oracle, so a new model gets the
whole evaluation (and the contract test in `rec_pipeline_tests/test_policies.py`) for free::

    policy = CountPopularity()
    policy.learn(history)                      # a frame of events (EVENT_SCHEMA)
    policy.lists(["u1", "u2"], seen, at, k=10)  # [user_id, item_id, rank, score], best first

`lists` never returns an item of `seen` (each user's touched items) and at most `k` items per
user; `learn_seconds` is the time spent learning so far (what a baseline does at ranking time,
such as counting, is not learning).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Protocol, runtime_checkable

import numpy as np
import polars as pl

from rec_pipeline.core.evaluation.metrics import top_k_excluding
from rec_pipeline.core.evaluation.scoring import score_lists
from rec_pipeline.core.evaluation.simulator import Simulator
from rec_pipeline.core.ingest.event_files import write_events
from rec_pipeline.core.ingest.landing import land_trusted
from rec_pipeline.core.model.config import RefreshConfig
from rec_pipeline.core.model.lists import model_lists, popular_lists, popular_lists_from
from rec_pipeline.core.model.recommender import Recommender
from rec_pipeline.core.model.refresh import RefreshResult, refresh
from rec_pipeline.core.model.registry import ModelRegistry
from rec_pipeline.core.ops.warehouse import Warehouse

LIST_SCHEMA = {"user_id": pl.String, "item_id": pl.String, "rank": pl.Int32, "score": pl.Float64}


@runtime_checkable
class Policy(Protocol):
    learn_seconds: float

    def learn(self, batch: pl.DataFrame) -> None:
        """Take in a batch of events (later than every batch before it)."""

    def lists(self, users: list[str], seen: pl.DataFrame, at: datetime, k: int) -> pl.DataFrame:
        """[user_id, item_id, rank, score]: each user's top `k`, none of their `seen` items."""


# --- the evaluation loop ---------------------------------------------------------------------


def targets_and_seen(history: pl.DataFrame, batch: pl.DataFrame) -> tuple[pl.DataFrame, pl.DataFrame]:
    """([user_id, item_id] new items per active user, [user_id, item_id] what those users touched before)."""
    touched = history.select("user_id", "item_id").unique()
    targets = batch.select("user_id", "item_id").unique().join(touched, on=["user_id", "item_id"], how="anti")
    seen = touched.join(targets.select("user_id").unique(), on="user_id", how="semi")
    return targets.sort("user_id", "item_id"), seen


def score_then_learn(policies: Mapping[str, Policy], batches: Iterable[pl.DataFrame], k: int, n_items: int,
                    history: pl.DataFrame, after_batch: Callable[[int, list[dict]], None] | None = None) -> list[dict]:
    """For each batch: every policy ranks the full catalogue for the batch's users with a new item
    (targets and exclusions from `history` and the batches before, never from a policy's state),
    the lists are scored, then every policy learns the batch. Returns one row per batch and policy:
    batch, policy, users, recall, ndcg, coverage; `after_batch(number, rows)` sees each batch's rows
    once every policy has learnt it."""
    rows = []
    history = history.select("user_id", "item_id")
    for number, batch in enumerate(batches, start=1):
        targets, seen = targets_and_seen(history, batch)
        users = targets["user_id"].unique().sort().to_list()
        at = batch["ts"].min()
        scored = []
        for name, policy in policies.items():
            metrics = score_lists(policy.lists(users, seen, at, k), targets, n_items, k)
            scored.append({"batch": number, "policy": name, "users": metrics.users, "recall": metrics.recall,
                           "ndcg": metrics.ndcg, "coverage": metrics.coverage})
        for policy in policies.values():
            policy.learn(batch)
        history = pl.concat([history, batch.select("user_id", "item_id")])
        rows.extend(scored)
        if after_batch:
            after_batch(number, scored)
    return rows


# --- the production pipeline -----------------------------------------------------------------


@dataclass(frozen=True)
class PipelineHome:
    """Where a pipeline keeps its state: the warehouse, the model registry and the serving copy."""

    warehouse: Warehouse
    registry: ModelRegistry
    serving_path: Path
    imports_dir: Path

    @classmethod
    def scratch(cls, folder: Path) -> PipelineHome:
        """A new home in `folder` (the replay's and the benchmarks' throw-away pipelines)."""
        for sub in ("models", "imports"):
            (folder / sub).mkdir(parents=True, exist_ok=True)
        return cls(Warehouse(folder / "warehouse.duckdb"), ModelRegistry(folder / "models"),
                   folder / "serving.duckdb", folder / "imports")

    def validated_pairs(self) -> pl.DataFrame:
        """[user_id, item_id] of every validated event: what this pipeline has learnt, or will."""
        with self.warehouse.connect() as con:
            return con.sql("SELECT user_id, item_id FROM events_validated").pl()

    def champion(self) -> tuple[str, Recommender] | None:
        """The champion's version and model, or None before any promotion."""
        with self.warehouse.connect() as con:
            loaded = self.registry.load_champion(con)
        return (loaded[0].version, loaded[1]) if loaded else None

    def lists(self, model: Recommender | None, users: list[str], seen: pl.DataFrame, at: datetime, k: int,
              config: RefreshConfig) -> pl.DataFrame:
        """`model`'s top `k` on this home's features; users it does not know (everyone, without a
        model) get the gate's floor: the most popular items over the longest window."""
        with self.warehouse.connect() as con:
            floor = popular_lists(con, users, seen, at, config, trending=False)
            ranked = floor if model is None else model_lists(con, model, users, seen, at, config, floor)
        return ranked.filter(pl.col("rank") <= k).select(list(LIST_SCHEMA)).cast(LIST_SCHEMA)


class OnlinePipeline:
    """The production online loop: every batch is landed and learnt by a refresh (warm start,
    replay buffer, gate); lists come from the champion. By default a batch is landed as trusted
    events and refreshed in-process (the replay); the demo passes `learn_batch`, which lands and
    refreshes through the Dagster jobs. `config.from_scratch` makes it the full-retrain baseline."""

    def __init__(self, home: PipelineHome, config: RefreshConfig = RefreshConfig(),
                 learn_batch: Callable[[pl.DataFrame], RefreshResult | dict] | None = None):
        self.home, self.config = home, config
        self._learn_batch = learn_batch or self._land_and_refresh
        self.learn_seconds = 0.0
        self.learnt = 0
        self.last_refresh: RefreshResult | dict | None = None
        self.ranked_with: str | None = None  # the champion version of the last lists; None: the floor

    def learn(self, batch: pl.DataFrame) -> None:
        start = time.perf_counter()
        self.last_refresh = self._learn_batch(batch)
        self.learn_seconds += time.perf_counter() - start
        self.learnt += 1

    def lists(self, users: list[str], seen: pl.DataFrame, at: datetime, k: int) -> pl.DataFrame:
        self.ranked_with, model = self.home.champion() or (None, None)
        return self.home.lists(model, users, seen, at, k, self.config)


    def _land_and_refresh(self, batch: pl.DataFrame) -> RefreshResult:
        path = write_events(batch, self.home.imports_dir / f"batch-{self.learnt:05d}.parquet")
        land_trusted(self.home.warehouse, path, batch.height)
        return refresh(self.home.warehouse, self.home.registry, self.home.serving_path, self.config)


class FrozenModel:
    """A pipeline's champion as it stood when first asked for lists (after the warm-up), never
    refreshed again; it ranks on the pipeline's features. `learn_seconds` is what the pipeline had
    spent by then: the training of the model it froze."""

    def __init__(self, pipeline: OnlinePipeline):
        self.pipeline = pipeline
        self.model: Recommender | None = None
        self.frozen = False
        self.learn_seconds = 0.0

    def learn(self, batch: pl.DataFrame) -> None:
        """Nothing: the model is frozen (the pipeline it reads features from learns by itself)."""

    def lists(self, users: list[str], seen: pl.DataFrame, at: datetime, k: int) -> pl.DataFrame:
        if not self.frozen:
            _, self.model = self.pipeline.home.champion() or (None, None)
            self.frozen = True
            self.learn_seconds = self.pipeline.learn_seconds
        return self.pipeline.home.lists(self.model, users, seen, at, k, self.pipeline.config)


class PopularityFloor:
    """What the gate calls the floor: a pipeline's most popular items over its longest popularity
    window, from its own features."""

    def __init__(self, pipeline: OnlinePipeline):
        self.pipeline = pipeline
        self.learn_seconds = 0.0

    def learn(self, batch: pl.DataFrame) -> None:
        """Nothing: the pipeline's features learn the batch."""

    def lists(self, users: list[str], seen: pl.DataFrame, at: datetime, k: int) -> pl.DataFrame:
        return self.pipeline.home.lists(None, users, seen, at, k, self.pipeline.config)


# --- baselines --------------------------------------------------------------------------------


def counts_pool(events: pl.DataFrame, n: int) -> pl.DataFrame:
    """[item_id, score]: the `n` most interacted-with items (ties by item_id)."""
    return (events.group_by("item_id").len().rename({"len": "score"}).with_columns(pl.col("score").cast(pl.Float64))
            .sort(["score", "item_id"], descending=[True, False]).head(n))


class CountPopularity:
    """Items by interaction count over everything learnt, or (`window_events`) over the most
    recent `window_events` events learnt: recent popularity, the baseline to beat. Counting is
    part of ranking, so `learn_seconds` stays 0."""

    def __init__(self, window_events: int | None = None):
        self.window_events = window_events
        self.events = pl.DataFrame(schema={"item_id": pl.String})
        self.learn_seconds = 0.0

    def learn(self, batch: pl.DataFrame) -> None:
        self.events = pl.concat([self.events, batch.select("item_id")])
        if self.window_events is not None:
            self.events = self.events.tail(self.window_events)

    def lists(self, users: list[str], seen: pl.DataFrame, at: datetime, k: int) -> pl.DataFrame:
        longest = seen.group_by("user_id").len()["len"].max() or 0
        return popular_lists_from(counts_pool(self.events, k + longest), users, seen, k).select(list(LIST_SCHEMA)).cast(LIST_SCHEMA)


class IALS:
    """implicit's ALS (the `replay` extra), refit on everything learnt before it is asked for lists,
    confidence 1 + the user-item interaction count; general settings (64 factors, regularization
    0.05, 15 iterations), not tuned per dataset. Users it does not know get all-history popularity."""

    def __init__(self, factors: int = 64, regularization: float = 0.05, iterations: int = 15, seed: int = 0):
        self.settings = {"factors": factors, "regularization": regularization, "iterations": iterations,
                         "random_state": seed}
        self.history = pl.DataFrame(schema={"user_id": pl.String, "item_id": pl.String})
        self.popularity = CountPopularity()
        self.learn_seconds = 0.0
        self._fitted: tuple | None = None

    def learn(self, batch: pl.DataFrame) -> None:
        self.history = pl.concat([self.history, batch.select("user_id", "item_id")])
        self.popularity.learn(batch)
        self._fitted = None

    def lists(self, users: list[str], seen: pl.DataFrame, at: datetime, k: int) -> pl.DataFrame:
        model, matrix, user_ids, item_ids = self._fit()
        row = {user: i for i, user in enumerate(user_ids.to_list())}
        known = [u for u in users if u in row]
        ranked = self.popularity.lists([u for u in users if u not in row], seen, at, k)
        if not known:
            return ranked
        rows = np.array([row[u] for u in known])
        ids, scores = model.recommend(rows, matrix[rows], N=k, filter_already_liked_items=True)
        valid = ids >= 0
        found = pl.DataFrame({
            "user_id": np.repeat(known, ids.shape[1])[valid.ravel()],
            "item_id": item_ids.to_numpy()[ids[valid]],
            "rank": np.tile(np.arange(1, ids.shape[1] + 1, dtype=np.int32), len(known))[valid.ravel()],
            "score": scores[valid].astype(np.float64)}, schema=LIST_SCHEMA)
        return pl.concat([ranked, found])

    def _fit(self) -> tuple:
        if self._fitted is not None:
            return self._fitted
        from implicit.cpu.als import AlternatingLeastSquares
        from scipy.sparse import csr_matrix
        from threadpoolctl import threadpool_limits

        user_ids = self.history["user_id"].unique().sort()
        item_ids = self.history["item_id"].unique().sort()
        pairs = (self.history.group_by("user_id", "item_id").len()
                 .join(user_ids.to_frame().with_row_index("u"), on="user_id")
                 .join(item_ids.to_frame().with_row_index("i"), on="item_id"))
        matrix = csr_matrix(((1 + pairs["len"]).cast(pl.Float32).to_numpy(),
                             (pairs["u"].to_numpy(), pairs["i"].to_numpy())), shape=(len(user_ids), len(item_ids)))
        start = time.perf_counter()
        with threadpool_limits(1, "blas"):  # implicit parallelises itself; a BLAS pool under it thrashes
            model = AlternatingLeastSquares(**self.settings)
            model.fit(matrix, show_progress=False)
        self.learn_seconds += time.perf_counter() - start
        self._fitted = (model, matrix, user_ids, item_ids)
        return self._fitted


class Oracle:
    """The simulator's ground truth: each user's most relevant items at `at` (an upper bound)."""

    def __init__(self, simulator: Simulator):
        self.simulator = simulator
        self.learn_seconds = 0.0

    def learn(self, batch: pl.DataFrame) -> None:
        """Nothing: the oracle knows the world."""

    def lists(self, users: list[str], seen: pl.DataFrame, at: datetime, k: int) -> pl.DataFrame:
        if not users:
            return pl.DataFrame(schema=LIST_SCHEMA)
        item_ids = np.asarray(self.simulator.item_ids, dtype=object)
        position = {item: i for i, item in enumerate(item_ids)}
        row = {user: i for i, user in enumerate(users)}
        mask = np.zeros((len(users), len(item_ids)), dtype=bool)
        known = seen.filter(pl.col("item_id").is_in(list(position)) & pl.col("user_id").is_in(users))
        mask[[row[u] for u in known["user_id"]], [position[i] for i in known["item_id"]]] = True
        relevance = self.simulator.relevance_matrix(users, at)
        top = top_k_excluding(relevance, mask, k)
        lists = pl.DataFrame({
            "user_id": np.repeat(users, k).tolist(),
            "item_id": item_ids[np.maximum(top, 0)].ravel().tolist(),
            "rank": np.tile(np.arange(1, k + 1, dtype=np.int32), len(users)),
            "score": np.take_along_axis(relevance, np.maximum(top, 0), axis=1).ravel().astype(np.float64),
        }, schema=LIST_SCHEMA)
        return lists.filter(pl.Series(top.ravel() >= 0))  # PAD: fewer than k items left for a user

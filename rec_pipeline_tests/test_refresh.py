"""The online loop end to end on a small simulation: refreshes learn, the gate guards the champion,
and only the champion is ever published."""

import dataclasses
from datetime import datetime, timedelta, timezone

import duckdb
import polars as pl
import pytest
from polars.testing import assert_frame_equal

from rec_pipeline.core.evaluation.scoring import seen_items
from rec_pipeline.core.evaluation.simulator import Simulator, SimulatorConfig
from rec_pipeline.core.ingest.catalogue import upsert_items
from rec_pipeline.core.ingest.event_files import write_events
from rec_pipeline.core.ingest.landing import land_trusted
from rec_pipeline.core.model.config import RefreshConfig
from rec_pipeline.core.model.ranking import RankerConfig
from rec_pipeline.core.model.recommender import popular_items
from rec_pipeline.core.model.refresh import refresh, rollback
from rec_pipeline.core.model.registry import ModelRegistry
from rec_pipeline.settings import Settings

BATCH = 10_000
CONFIG = RefreshConfig(ranker=RankerConfig(rounds=30),
                       ranker_users=600, eval_users=600, candidates=50)
NOW = datetime(2026, 11, 1, tzinfo=timezone.utc)


@pytest.fixture(scope="module")
def loop(tmp_path_factory):
    settings = Settings(home=tmp_path_factory.mktemp("home"))
    settings.ensure_dirs()
    simulator = Simulator(SimulatorConfig(seed=3, n_users=600, n_items=300))
    events = simulator.events(3 * BATCH)
    with settings.warehouse().connect() as con:
        upsert_items(con, simulator.catalogue())
    return settings, ModelRegistry(settings.models_dir), events


def land_batch(settings, events, index):
    path = write_events(events.slice(index * BATCH, BATCH), settings.imports_dir / f"batch{index}.parquet")
    land_trusted(settings.warehouse(), path, BATCH)  # validation is the landing job's; here it is given


def run(settings, registry):
    return refresh(settings.warehouse(), registry, settings.serving_path, CONFIG)


def test_the_first_refresh_promotes_a_model_that_beats_popularity(loop):
    settings, registry, events = loop
    assert run(settings, registry).events == 0, "nothing landed yet: nothing to do"
    land_batch(settings, events, 0)
    result = run(settings, registry)
    assert result.events == BATCH and result.promoted, result.reason
    assert result.gate["challenger_ndcg"] > result.gate["floor_ndcg"]
    with duckdb.connect(str(settings.serving_path), read_only=True) as reader:
        versions = reader.sql("SELECT DISTINCT model_version FROM recommendations").pl()["model_version"].to_list()
        assert result.model_version in versions
        per_user = reader.sql("SELECT user_id, count(*) AS n, min(rank) AS best FROM recommendations GROUP BY ALL").pl()
        assert per_user["n"].max() <= CONFIG.k and per_user["best"].min() == 1
        assert reader.execute("SELECT count(*) FROM recommendations WHERE reason IS NULL").fetchone()[0] == 0


def test_a_refresh_consumes_only_new_batches_and_warm_starts(loop):
    settings, registry, events = loop
    land_batch(settings, events, 1)
    result = run(settings, registry)
    assert result.events == BATCH
    with settings.warehouse().connect() as con:
        parent = registry.get(con, result.model_version).parent
        assert parent is not None, "warm-started from the champion"
        assert con.execute("SELECT count(*) FROM refresh_batches").fetchone()[0] == 2


def test_purchased_and_rated_items_are_never_recommended_again(loop):
    settings, _, _ = loop
    with settings.warehouse().connect() as con:
        clashes = con.execute(
            "SELECT count(*) FROM recommendations r JOIN events e USING (user_id, item_id)"
            " WHERE e.event_type IN ('purchase', 'rating')").fetchone()[0]
    assert clashes == 0


def test_publishing_in_user_chunks_gives_the_same_table(loop):
    settings, registry, _ = loop
    with settings.warehouse().connect() as con:
        champion = registry.champion(con).version

    def published(chunk_users: int) -> pl.DataFrame:
        config = dataclasses.replace(CONFIG, publish_chunk_users=chunk_users)
        rows = rollback(settings.warehouse(), registry, settings.serving_path, champion, config, NOW)
        with duckdb.connect(str(settings.serving_path), read_only=True) as reader:
            table = reader.sql("SELECT * FROM recommendations ORDER BY user_id, rank").pl()
        assert table.height == rows
        return table

    whole, chunked = published(10_000), published(7)
    assert whole["user_id"].n_unique() > 7 * 3, "several chunks were needed"
    assert_frame_equal(chunked, whole)


def test_a_worse_challenger_is_rejected_and_the_published_table_is_unchanged(loop, monkeypatch):
    """A challenger whose retrieval learnt from shuffled interactions must not replace the champion."""
    settings, registry, events = loop
    from rec_pipeline.core.model import refresh as refresh_module

    real = refresh_module.interactions_from_events

    def shuffled(events_frame, weights):
        frame = real(events_frame, weights)
        return frame.with_columns(pl.col("item_id").shuffle(seed=7))

    with settings.warehouse().connect() as con:
        champion_before = registry.champion(con).version
        table_before = con.sql("SELECT * FROM recommendations ORDER BY user_id, rank").pl()
    monkeypatch.setattr(refresh_module, "interactions_from_events", shuffled)
    monkeypatch.setattr(refresh_module, "_train_ranker", lambda con, retrieval, base, train, config: None)
    land_batch(settings, events, 2)
    result = run(settings, registry)
    assert not result.promoted, result.reason
    with settings.warehouse().connect() as con:
        assert registry.champion(con).version == champion_before
        assert registry.get(con, result.model_version).status == "rejected"
        assert con.execute("SELECT promoted FROM evaluations ORDER BY evaluated_at DESC LIMIT 1").fetchall() == [(False,)]
        table_after = con.sql("SELECT * FROM recommendations ORDER BY user_id, rank").pl()
    assert result.recommendations == 0
    assert table_after.equals(table_before), "the published table is unchanged"


def test_candidates_add_popular_items_the_user_has_not_touched(loop):
    settings, registry, _ = loop
    with settings.warehouse().connect() as con:
        _, model = registry.load_champion(con)
        users = model.retrieval.user_ids[:5].tolist() + ["nobody"]
        seen = seen_items(con, users)
        popular = popular_items(con, NOW, CONFIG.features, 30)["item_id"].to_list()
        both = model.candidates(users, 10, seen, popular)
    retrieved = both.filter(pl.col("retrieval_rank").is_not_null())
    assert_frame_equal(retrieved, model.candidates(users, 10, seen))
    assert both.select("user_id", "item_id").is_unique().all()
    assert both.join(seen, on=["user_id", "item_id"]).is_empty(), "nothing the user touched"
    assert "nobody" not in both["user_id"], "retrieval does not know them: the fallback list serves them"
    for user in users[:5]:
        mine = both.filter(pl.col("user_id") == user)
        touched = set(seen.filter(pl.col("user_id") == user)["item_id"])
        assert set(mine["item_id"]) == set(retrieved.filter(pl.col("user_id") == user)["item_id"]) | (
            set(popular) - touched)
    added = both.filter(pl.col("retrieval_rank").is_null())
    assert added.height and added["retrieval_score"].is_not_null().all()


def test_rankers_learn_only_events_their_features_and_retrieval_had_not_seen(tmp_path, monkeypatch):
    import rec_pipeline.core.model.refresh as refresh_module

    settings = Settings(home=tmp_path / "home")
    settings.ensure_dirs()
    registry = ModelRegistry(settings.models_dir)
    seen_by_ranker = []
    train_ranker = refresh_module._train_ranker

    def spy(con, retrieval, base, train, config):
        known_until = con.execute("SELECT max(last_ts) FROM user_activity").fetchall()[0][0]
        seen_by_ranker.append((known_until, train["ts"].min(), set(retrieval.user_ids.tolist()), set(train["user_id"])))
        return train_ranker(con, retrieval, base, train, config)

    monkeypatch.setattr(refresh_module, "_train_ranker", spy)
    events = Simulator(SimulatorConfig(seed=8, n_users=800, n_items=200)).events(2 * BATCH)
    land_batch(settings, events, 0)
    first = run(settings, registry)
    assert seen_by_ranker == [], "no champion: nothing honest to label, so no ranker"
    with settings.warehouse().connect() as con:
        assert registry.load(con, first.model_version).ranker is None
    land_batch(settings, events, 1)
    second = run(settings, registry)
    (known_until, labels_from, learnt, labelled_users), = seen_by_ranker
    assert known_until <= labels_from, "the features had taken in no event the ranker is labelled with"
    first_seen_in_labels = labelled_users - set(events.filter(pl.col("ts") < labels_from)["user_id"])
    assert first_seen_in_labels and not first_seen_in_labels & learnt, "retrieval had not learnt the labels"
    with settings.warehouse().connect() as con:
        assert registry.load(con, second.model_version).ranker is not None


def test_a_refresh_that_fails_part_way_changes_nothing(tmp_path, monkeypatch):
    """Features are updated early in a refresh; a later failure must roll them back with the rest."""
    from rec_pipeline.core.model import refresh as refresh_module

    settings = Settings(home=tmp_path / "home")
    settings.ensure_dirs()
    events = Simulator(SimulatorConfig(seed=5, n_users=300, n_items=200)).events(BATCH)
    land_batch(settings, events, 0)

    def fail(*args, **kwargs):
        raise RuntimeError("crash while registering")

    monkeypatch.setattr(refresh_module, "_register", fail)
    with pytest.raises(RuntimeError, match="crash while registering"):
        run(settings, ModelRegistry(settings.models_dir))
    with settings.warehouse().connect() as con:
        for table in ("user_item_strength", "item_popularity", "refresh_batches", "model_registry", "recommendations"):
            assert con.execute(f"SELECT count(*) FROM {table}").fetchall() == [(0,)], table
    monkeypatch.undo()
    assert run(settings, ModelRegistry(settings.models_dir)).events == BATCH, "the next refresh redoes the step"


def test_a_batch_too_small_to_judge_is_consumed_without_promotion(tmp_path):
    settings = Settings(home=tmp_path / "home")
    settings.ensure_dirs()
    events = Simulator(SimulatorConfig(seed=6, n_users=50, n_items=40)).events(3)
    land_trusted(settings.warehouse(), write_events(events, settings.imports_dir / "tiny.parquet"), 3)
    result = run(settings, ModelRegistry(settings.models_dir))
    assert (result.events, result.promoted) == (3, False) and result.reason.startswith("Not promoted")
    assert run(settings, ModelRegistry(settings.models_dir)).events == 0, "consumed"


def test_idle_users_and_items_lose_their_embedding_rows(tmp_path):
    settings = Settings(home=tmp_path / "home")
    settings.ensure_dirs()
    registry = ModelRegistry(settings.models_dir)
    events = Simulator(SimulatorConfig(seed=7, n_users=400, n_items=200)).events(2 * BATCH)
    land_batch(settings, events, 0)
    run(settings, registry)
    land_batch(settings, events, 1)
    hour = dataclasses.replace(CONFIG, expire_after_days=1 / 24)
    result = refresh(settings.warehouse(), registry, settings.serving_path, hour)
    with settings.warehouse().connect() as con:
        retrieval = registry.load(con, result.model_version).retrieval
        users = con.sql("SELECT user_id, last_ts FROM user_activity").pl()
        trained_until = con.sql("SELECT max(window_end) FROM model_registry").fetchall()[0][0]
    idle = set(users.filter(pl.col("last_ts") < trained_until - timedelta(hours=1))["user_id"])
    assert idle and retrieval.train_info["expired_users"] > 0
    assert not idle & set(retrieval.user_ids.tolist())
    assert set(retrieval.user_ids.tolist()) <= set(users["user_id"]) - idle


@pytest.mark.parametrize("bad", [{"k": 0}, {"candidates": 10, "k": 20}, {"holdout_fraction": 1.0},
                                 {"publish_chunk_users": 0}, {"expire_after_days": 0},
                                 {"popular_candidates": -1}])
def test_a_bad_refresh_config_is_refused(bad):
    with pytest.raises(ValueError):
        RefreshConfig(**bad)

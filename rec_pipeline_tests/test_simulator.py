"""The behaviour simulator: determinism, the event contract, realistic dynamics and the oracle."""

from __future__ import annotations

import gzip
import io
import json
from datetime import timedelta
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from rec_pipeline.core.evaluation.simulator import (
    FILE_FORMATS,
    Simulator,
    SimulatorConfig,
)
from rec_pipeline.core.ingest.contract import CATALOGUE_SCHEMA, EVENT_SCHEMA

CONFIG = SimulatorConfig(seed=7, n_users=400, n_items=250, events_per_day=5_000, arrival_days=10)
N_EVENTS = 60_000  # about 12 simulated days


@pytest.fixture(scope="module")
def sim() -> Simulator:
    return Simulator(CONFIG)


@pytest.fixture(scope="module")
def events(sim: Simulator) -> pl.DataFrame:
    return sim.events(N_EVENTS)


def of_type(events: pl.DataFrame, event_type: str) -> pl.DataFrame:
    return events.filter(pl.col("event_type") == event_type)


# ---------------------------------------------------------------- determinism and contract


def test_same_seed_same_output_different_seed_differs(events: pl.DataFrame) -> None:
    again = Simulator(SimulatorConfig(**{**CONFIG.__dict__})).events(N_EVENTS)
    assert again.equals(events)
    other = Simulator(SimulatorConfig(**{**CONFIG.__dict__, "seed": 8})).events(N_EVENTS)
    assert not other.drop("event_id").equals(events.drop("event_id"))
    assert Simulator(CONFIG).catalogue().equals(Simulator(CONFIG).catalogue())


def test_schema_is_exactly_the_contract(events: pl.DataFrame) -> None:
    assert events.schema == pl.Schema(EVENT_SCHEMA)
    assert events.columns == list(EVENT_SCHEMA)


@pytest.mark.parametrize("n", [0, 1, 999, 4_321])
def test_exact_row_count(sim: Simulator, n: int) -> None:
    frame = sim.events(n)
    assert frame.height == n
    assert frame.schema == pl.Schema(EVENT_SCHEMA)


def test_sorted_unique_and_well_formed(events: pl.DataFrame, sim: Simulator) -> None:
    assert events["ts"].is_sorted()
    assert events["event_id"].n_unique() == events.height
    assert events["event_id"].head(2).to_list() == ["sim7-0", "sim7-1"]
    assert set(events["event_type"].unique()) == {"view", "click", "add_to_cart", "purchase", "rating"}
    assert events.select("user_id", "item_id", "event_type", "ts").null_count().row(0) == (0, 0, 0, 0)
    assert events["user_id"].str.contains(r"^u\d{6}$").all()
    assert events["item_id"].str.contains(r"^i\d{5}$").all()
    assert events["ts"].min() >= CONFIG.start
    # value: null for view/click, the item price for cart/purchase, a half-star rating for rating.
    assert of_type(events, "view")["value"].null_count() == of_type(events, "view").height
    assert of_type(events, "click")["value"].null_count() == of_type(events, "click").height
    prices = sim.catalogue().select("item_id", "price")
    for kind in ("add_to_cart", "purchase"):
        priced = of_type(events, kind).join(prices, on="item_id")
        assert (priced["value"] == priced["price"]).all() and (priced["value"] > 0).all()
    ratings = of_type(events, "rating")["value"]
    assert ratings.is_between(0.5, 5.0).all() and ((ratings * 2) % 1 == 0).all()
    # session_id: set except on (later) ratings; context: null or a small JSON object.
    assert of_type(events, "view")["session_id"].null_count() == 0
    assert of_type(events, "rating")["session_id"].null_count() == of_type(events, "rating").height
    contexts = events["context"].drop_nulls().unique().to_list()
    assert contexts and all(isinstance(json.loads(c), dict) for c in contexts)
    assert 0 < events["context"].null_count() < events.height


def test_catalogue_and_users(sim: Simulator) -> None:
    cat = sim.catalogue()
    assert cat.height == CONFIG.n_items and cat["item_id"].n_unique() == CONFIG.n_items
    assert cat.select(list(CATALOGUE_SCHEMA)).schema == pl.Schema(CATALOGUE_SCHEMA)
    assert cat.schema["price"] == pl.Float64 and cat.schema["arrived_at"] == pl.Datetime("us", "UTC")
    assert (cat["price"] > 0).all()
    assert (cat["categories"].list.len() == 1).all()
    assert 1 < cat["categories"].list.first().n_unique() <= CONFIG.n_categories
    assert cat["categories"].list.first().str.contains(r"^cat\d{2}$").all()
    assert 0 < (cat["arrived_at"] > CONFIG.start).sum() < CONFIG.n_items
    users = sim.users()
    assert users.height == CONFIG.n_users and 0 < (users["arrived_at"] > CONFIG.start).sum() < CONFIG.n_users


def test_events_per_day_sets_the_time_span(events: pl.DataFrame) -> None:
    span_days = (events["ts"].max() - events["ts"].min()).total_seconds() / 86_400
    assert span_days == pytest.approx(N_EVENTS / CONFIG.events_per_day, rel=0.3)


# ---------------------------------------------------------------- behaviour


def test_funnel_counts_shrink(events: pl.DataFrame) -> None:
    counts = dict(events["event_type"].value_counts().iter_rows())
    assert counts["view"] > counts["click"] > counts["add_to_cart"] > counts["purchase"] > counts["rating"] > 0
    assert counts["view"] > 0.5 * events.height


def test_every_purchase_follows_view_click_and_cart_in_its_session(events: pl.DataFrame) -> None:
    purchases = of_type(events, "purchase").select("session_id", "item_id", p_ts="ts")
    assert purchases.height > 100
    for step in ("view", "click", "add_to_cart"):
        prior = of_type(events, step).select("session_id", "item_id", s_ts="ts")
        joined = purchases.join(prior, on=["session_id", "item_id"], how="left")
        first = joined.group_by("session_id", "item_id", "p_ts").agg(pl.col("s_ts").min())
        assert first.height == purchases.height
        assert (first["s_ts"] < first["p_ts"]).fill_null(False).all(), step


def test_ratings_follow_a_purchase_of_the_same_item(events: pl.DataFrame) -> None:
    ratings = of_type(events, "rating").select("user_id", "item_id", r_ts="ts")
    bought = of_type(events, "purchase").group_by("user_id", "item_id").agg(p_ts=pl.col("ts").min())
    joined = ratings.join(bought, on=["user_id", "item_id"], how="left")
    assert ratings.height > 20
    assert (joined["p_ts"] < joined["r_ts"]).fill_null(False).all()


def test_popularity_is_skewed(events: pl.DataFrame) -> None:
    views = of_type(events, "view")["item_id"].value_counts(sort=True)["count"]
    top = views.head(CONFIG.n_items // 10).sum() / views.sum()
    assert top > 0.35  # top 10% of items get far more than 10% of views


def test_new_users_and_items_arrive_over_time(events: pl.DataFrame, sim: Simulator) -> None:
    first_seen = events.group_by("user_id").agg(pl.col("ts").min())
    assert (first_seen["ts"] > CONFIG.start + timedelta(days=3)).sum() > 10
    cat = sim.catalogue().select("item_id", "arrived_at")
    with_items = events.join(cat, on="item_id")
    assert (with_items["ts"] >= with_items["arrived_at"]).all()
    late_items = cat.filter(pl.col("arrived_at") > CONFIG.start + timedelta(days=2))["item_id"]
    assert events["item_id"].is_in(late_items.implode()).any()
    with_users = events.join(sim.users(), on="user_id")
    assert (with_users["ts"] >= with_users["arrived_at"]).all()


def test_sessions_belong_to_one_user_and_are_short(events: pl.DataFrame) -> None:
    sessions = events.drop_nulls("session_id").group_by("session_id").agg(
        pl.col("user_id").n_unique().alias("users"), (pl.col("ts").max() - pl.col("ts").min()).alias("length")
    )
    assert (sessions["users"] == 1).all()
    assert sessions["length"].max() < timedelta(hours=12)
    assert sessions.height > 1_000


# ---------------------------------------------------------------- the oracle


def test_relevance_range_and_arrival(sim: Simulator) -> None:
    cat = sim.catalogue()
    late = cat.sort("arrived_at").row(-1, named=True)
    users = sim.user_ids[:50]
    before = sim.relevance(users, [late["item_id"]] * 50, late["arrived_at"] - timedelta(seconds=1))
    after = sim.relevance(users, [late["item_id"]] * 50, late["arrived_at"] + timedelta(seconds=1))
    assert (before == 0).all() and (after > 0).all()
    at = CONFIG.start + timedelta(days=20)
    matrix = sim.relevance_matrix(sim.user_ids, at)
    assert matrix.shape == (CONFIG.n_users, CONFIG.n_items)
    assert matrix.min() >= 0.0 and matrix.max() <= 1.0 and matrix.std() > 0.1
    # Pairs agree with the matrix; per-pair times are accepted.
    u_idx, i_idx = np.arange(0, 400, 8), np.arange(0, 250, 5)
    pairs = sim.relevance([sim.user_ids[u] for u in u_idx], [sim.item_ids[i] for i in i_idx], at)
    np.testing.assert_allclose(pairs, matrix[u_idx, i_idx], rtol=1e-9, atol=1e-12)
    per_pair = sim.relevance(sim.user_ids[:2], sim.item_ids[:2], [at, at])
    np.testing.assert_allclose(per_pair, matrix[[0, 1], [0, 1]], rtol=1e-9, atol=1e-12)
    with pytest.raises(KeyError):
        sim.relevance(["nobody"], [sim.item_ids[0]], at)


def test_top_items(sim: Simulator) -> None:
    at = CONFIG.start
    user = sim.user_ids[3]
    top = sim.top_items(user, at, k=10)
    assert len(top) == 10 and len(set(top)) == 10
    rel = sim.relevance([user] * 10, top, at)
    assert (np.diff(rel) <= 0).all()
    best_possible = sim.relevance_matrix([user], at)[0].max()
    assert rel[0] == pytest.approx(best_possible)
    arrived = set(sim.catalogue().filter(pl.col("arrived_at") <= at)["item_id"])
    assert set(top) <= arrived
    rest = sim.top_items(user, at, k=10, exclude=top[:3])
    assert rest[:7] == top[3:] and not set(rest) & set(top[:3])


def test_tastes_drift(sim: Simulator) -> None:
    start, soon, later = CONFIG.start, CONFIG.start + timedelta(hours=1), CONFIG.start + timedelta(days=30)
    overlap_soon, overlap_later = [], []
    for user in sim.user_ids[:40]:
        base = set(sim.top_items(user, start, 10))
        overlap_soon.append(len(base & set(sim.top_items(user, soon, 10))) / 10)
        overlap_later.append(len(base & set(sim.top_items(user, later, 10))) / 10)
    assert np.mean(overlap_soon) > 0.9  # continuous in time
    assert np.mean(overlap_later) < 0.5  # but a month later, tastes have moved


def test_higher_true_relevance_is_purchased_more(events: pl.DataFrame, sim: Simulator) -> None:
    views = of_type(events, "view")
    bought = of_type(events, "purchase").select("session_id", "item_id").unique().with_columns(bought=pl.lit(1))
    views = views.join(bought, on=["session_id", "item_id"], how="left").with_columns(
        rel=pl.Series(sim.relevance(views["user_id"].to_list(), views["item_id"].to_list(), views["ts"]))
    )
    views = views.with_columns(bought=pl.col("bought").fill_null(0))
    lo, hi = views["rel"].quantile(0.2), views["rel"].quantile(0.8)
    rate_lo = views.filter(pl.col("rel") <= lo)["bought"].mean()
    rate_hi = views.filter(pl.col("rel") >= hi)["bought"].mean()
    assert rate_hi > 5 * rate_lo and rate_hi > 0.02
    # Ratings carry the signal too.
    ratings = of_type(events, "rating")
    rel = sim.relevance(ratings["user_id"].to_list(), ratings["item_id"].to_list(), ratings["ts"])
    assert np.corrcoef(rel, ratings["value"].to_numpy())[0, 1] > 0.3


# ---------------------------------------------------------------- chunks and files


def test_chunks_concatenate_to_the_full_frame(sim: Simulator, events: pl.DataFrame) -> None:
    n = 25_003
    chunks = list(sim.iter_event_chunks(n, chunk_size=4_000))
    assert [c.height for c in chunks] == [4_000] * 6 + [1_003]
    assert all(c.schema == pl.Schema(EVENT_SCHEMA) for c in chunks)
    assert pl.concat(chunks).equals(events.head(n))  # and events(n) is a prefix of events(m)
    assert sim.events(n).equals(events.head(n))


def read_any(path: Path) -> pl.DataFrame:
    name = path.name
    if name.endswith(".parquet"):
        return pl.read_parquet(path)
    raw = gzip.decompress(path.read_bytes()) if name.endswith(".gz") else path.read_bytes()
    text_schema = {**EVENT_SCHEMA, "ts": pl.String()}
    reader = pl.read_ndjson if ".jsonl" in name else pl.read_csv
    frame = reader(io.BytesIO(raw), schema=text_schema)
    return frame.with_columns(pl.col("ts").str.to_datetime("%Y-%m-%dT%H:%M:%S%.fZ", time_unit="us", time_zone="UTC"))


@pytest.mark.parametrize("fmt", FILE_FORMATS)
def test_write_event_files_round_trips(sim: Simulator, events: pl.DataFrame, tmp_path: Path, fmt: str) -> None:
    paths = sim.write_event_files(tmp_path / "landing", 2_500, events_per_file=1_000, fmt=fmt)
    assert [p.name for p in paths] == [f"events-s7-{k:05d}.{fmt}" for k in (1, 2, 3)]
    back = pl.concat([read_any(p) for p in paths])
    assert back.schema == pl.Schema(EVENT_SCHEMA)
    assert back.equals(events.head(2_500))
    assert sorted(p.name for p in (tmp_path / "landing").iterdir()) == [p.name for p in paths]  # no temp files


def test_write_event_files_rejects_unknown_format(sim: Simulator, tmp_path: Path) -> None:
    with pytest.raises(ValueError):
        sim.write_event_files(tmp_path, 10, fmt="xml")


def test_config_validation() -> None:
    with pytest.raises(ValueError):
        SimulatorConfig(p_click=1.5)
    with pytest.raises(ValueError):
        SimulatorConfig(n_items=0)
    with pytest.raises(ValueError):
        SimulatorConfig(start=CONFIG.start.replace(tzinfo=None))

"""Incremental time-decayed features: hand-computed values, incremental == all-at-once, decay on
read, trending, category affinity, touched-keys-only refreshes and output order."""

from __future__ import annotations

import math
from datetime import datetime, timedelta, timezone

import duckdb
import polars as pl
import pytest

from rec_pipeline.core.evaluation.simulator import Simulator, SimulatorConfig
from rec_pipeline.core.ingest.catalogue import upsert_items
from rec_pipeline.core.ingest.contract import EVENT_SCHEMA
from rec_pipeline.core.model.features import (
    FeatureConfig,
    FeatureConfigError,
    FeatureUpdate,
    item_popularity_at,
    reset_features,
    update_features,
    user_item_features,
)
from rec_pipeline.core.ops.warehouse import Warehouse

UTC = timezone.utc
T = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
DAY, HOUR = timedelta(days=1), timedelta(hours=1)
KEYS = {
    "user_item_strength": ["user_id", "item_id"],
    "item_popularity": ["item_id"],
    "user_activity": ["user_id"],
    "user_category_affinity": ["user_id", "category"],
}


def events(*rows: tuple) -> pl.DataFrame:
    """rows of (user_id, item_id, event_type, ts[, value[, session_id]])."""
    recs = []
    for k, row in enumerate(rows):
        user, item, etype, ts, *rest = row
        recs.append({"event_id": f"e{k}", "user_id": user, "item_id": item, "event_type": etype, "ts": ts,
                     "value": rest[0] if rest else None, "session_id": rest[1] if len(rest) > 1 else None,
                     "context": None})
    return pl.DataFrame(recs, schema=EVENT_SCHEMA)


def catalogue(con: duckdb.DuckDBPyConnection, cats: dict[str, list[str]]) -> None:
    upsert_items(con, pl.DataFrame({"item_id": list(cats), "title": list(cats), "categories": list(cats.values())}))


def state(con: duckdb.DuckDBPyConnection, table: str) -> pl.DataFrame:
    return con.sql(f"SELECT * FROM {table}").pl().sort(KEYS[table])


def assert_states_close(a: pl.DataFrame, b: pl.DataFrame) -> None:
    assert a.columns == b.columns and len(a) == len(b)
    for col in a.columns:
        if a[col].dtype == pl.Float64:
            # log-values: absolute tolerance on the log == relative tolerance on the value
            assert (a[col] - b[col]).abs().max() < 1e-9, col
        else:
            assert a[col].equals(b[col]), col


@pytest.fixture
def con(warehouse: Warehouse):
    with warehouse.connect() as connection:
        yield connection


@pytest.fixture(scope="module")
def sim() -> Simulator:
    return Simulator(SimulatorConfig(seed=3, n_users=300, n_items=120, events_per_day=4_000))


@pytest.fixture(scope="module")
def sim_events(sim: Simulator) -> pl.DataFrame:
    return sim.events(12_000)  # about 3 simulated days


# ---------------------------------------------------------------- hand-computed values


def test_two_views_a_half_life_apart(con: duckdb.DuckDBPyConnection) -> None:
    cfg = FeatureConfig()  # half-life 7 days, popularity 1h / 1d / 7d
    t1, t2 = T, T + 7 * DAY
    update = update_features(con, events(("u", "i", "view", t1), ("u", "i", "view", t2)), cfg)
    assert update == FeatureUpdate(n_events=2, user_item_strength=1, item_popularity=1, user_activity=1)

    f = user_item_features(con, pl.DataFrame({"user_id": ["u"], "item_id": ["i"]}), t2, cfg).row(0, named=True)
    assert f["ui_strength"] == pytest.approx(1 * 0.5 + 1, rel=1e-12)
    assert f["ui_n_events"] == 2 and f["ui_hours_since_last"] == 0.0 and f["ui_last_event_type"] == "view"
    assert f["item_pop_7d"] == pytest.approx(1.5, rel=1e-12)
    assert f["item_pop_1d"] == pytest.approx(1 + 2.0**-7, rel=1e-12)
    assert f["item_pop_1h"] == pytest.approx(1 + 2.0 ** (-7 * 24), rel=1e-12)
    assert f["item_age_hours"] == pytest.approx(7 * 24) and f["item_n_users"] == 1
    assert f["user_strength"] == pytest.approx(1.5, rel=1e-12) and f["user_n_items"] == 1
    assert f["user_age_hours"] == pytest.approx(7 * 24) and f["user_hours_since_last"] == 0.0
    # trending = (pop_1d/1 + 1) / (pop_7d/7 + 1)
    assert f["item_trending"] == pytest.approx((1 + 2.0**-7 + 1) / (1.5 / 7 + 1), rel=1e-12)
    assert f["user_cat_affinity"] == 0.0  # "i" is not in the catalogue: no category


def test_weights_ratings_and_ignored_types(con: duckdb.DuckDBPyConnection) -> None:
    cfg = FeatureConfig(event_weights={"view": 1.0, "purchase": 8.0, "rating": 5.0, "click": 0.0})
    new = events(
        ("u", "a", "purchase", T), ("u", "b", "rating", T, 2.5), ("u", "c", "rating", T, None),
        ("u", "d", "click", T), ("u", "e", "wishlist", T), ("u", "f", "rating", T, 0.0),
    )
    update = update_features(con, new, cfg)
    assert (update.n_events, update.n_ignored, update.user_item_strength) == (3, 3, 3)
    pairs = pl.DataFrame({"user_id": ["u"] * 4, "item_id": ["a", "b", "c", "d"]})
    f = user_item_features(con, pairs, T, cfg)
    assert f["ui_strength"].to_list() == pytest.approx([8.0, 2.5, 5.0, 0.0], rel=1e-12)
    assert f["ui_n_events"].to_list() == [1, 1, 1, 0]
    assert f["ui_hours_since_last"][3] is None and f["item_age_hours"][3] is None
    assert f["user_strength"][0] == pytest.approx(15.5, rel=1e-12)


def test_values_decay_when_read_later(con: duckdb.DuckDBPyConnection) -> None:
    cfg = FeatureConfig(half_life=2 * DAY)
    catalogue(con, {"i": ["c"]})
    update_features(con, events(("u", "i", "click", T), ("u", "i", "view", T + 5 * HOUR), ("v", "i", "view", T)), cfg)
    pairs = pl.DataFrame({"user_id": ["u"], "item_id": ["i"]})
    now = user_item_features(con, pairs, T + 5 * HOUR, cfg).row(0, named=True)
    for later, factor in ((T + 5 * HOUR + 2 * DAY, 0.5), (T + 5 * HOUR + 20 * DAY, 2.0**-10)):
        f = user_item_features(con, pairs, later, cfg).row(0, named=True)
        for col in ("ui_strength", "user_strength", "user_cat_affinity"):
            assert f[col] == pytest.approx(now[col] * factor, rel=1e-9)
        assert f["item_pop_1d"] == pytest.approx(now["item_pop_1d"] * factor**2, rel=1e-9)  # 1d = half of 2d
        assert f["user_cat_share"] == pytest.approx(now["user_cat_share"], rel=1e-12)  # both decay alike
        assert f["ui_hours_since_last"] == pytest.approx((later - T - 5 * HOUR) / HOUR)
    assert now["ui_strength"] == pytest.approx(2 * 2 ** (-5 / 48) + 1, rel=1e-12)


def test_numerically_safe_over_decades(con: duckdb.DuckDBPyConnection) -> None:
    ten_min = timedelta(minutes=10)
    cfg = FeatureConfig(popularity_half_lives=(ten_min, DAY), trending_half_lives=(ten_min, DAY))
    t_old, t_new = datetime(1995, 1, 1, tzinfo=UTC), datetime(2065, 1, 1, tzinfo=UTC)  # far either side of T0
    update_features(con, events(("u", "i", "view", t_old), ("u", "i", "click", t_new)), cfg)
    update_features(con, events(("u", "i", "view", t_new)), cfg)
    pair = pl.DataFrame({"user_id": ["u"], "item_id": ["i"]})
    f = user_item_features(con, pair, t_new + HOUR, cfg).row(0, named=True)
    assert f["item_pop_10m"] == pytest.approx(2 * 2.0**-6, rel=1e-8)
    assert f["ui_strength"] == pytest.approx(3 * 2 ** (-1 / 168), rel=1e-8)
    logs = con.sql("SELECT log_pop_10m, log_pop_1d FROM item_popularity").fetchall()[0]
    assert all(math.isfinite(x) for x in logs)


# ---------------------------------------------------------------- incremental == all at once


@pytest.mark.parametrize("split", ["time_ordered", "random"])
def test_incremental_equals_all_at_once(
    tmp_path, sim: Simulator, sim_events: pl.DataFrame, split: str
) -> None:
    cfg = FeatureConfig()
    if split == "time_ordered":
        parts = [sim_events[:5_000], sim_events[5_000:5_001], sim_events[5_001:]]
    else:  # decayed sums, counts, min/max and the arg-max are order-independent
        shuffled = sim_events.sample(fraction=1.0, shuffle=True, seed=1)
        parts = [shuffled[:4_000], shuffled[4_000:8_000], shuffled[8_000:]]
    results = []
    for name, batches in (("once", [sim_events]), ("incremental", parts)):
        with Warehouse(tmp_path / f"{name}.duckdb").connect() as c:
            upsert_items(c, sim.catalogue())
            for batch in batches:
                update_features(c, batch, cfg)
            results.append({table: state(c, table) for table in KEYS})
    for table in KEYS:
        assert len(results[0][table]) > 0
        assert_states_close(results[0][table], results[1][table])


# ---------------------------------------------------------------- popularity and trending


def test_trending_rises_when_recent_events_spike(con: duckdb.DuckDBPyConnection) -> None:
    cfg = FeatureConfig()
    start = T - 21 * DAY
    steady = [(f"u{k % 7}", item, "view", start + k * 6 * HOUR) for k in range(84) for item in ("a", "b")]
    update_features(con, events(*steady), cfg)
    before = item_popularity_at(con, T, cfg)
    assert before["trending"].to_list() == pytest.approx([before["trending"][0]] * 2)
    assert 0.8 < before["trending"][0] < 1.25  # steady rate: short and long rates agree

    update_features(con, events(*[(f"w{k}", "b", "click", T + k * timedelta(minutes=2)) for k in range(30)]), cfg)
    after = item_popularity_at(con, T + HOUR, cfg)
    a, b = (after.filter(pl.col("item_id") == i).row(0, named=True) for i in ("a", "b"))
    assert b["trending"] > 3 * a["trending"] and b["trending"] > 2
    assert b["pop_1h"] > a["pop_1h"] and b["pop_7d"] > a["pop_7d"]
    assert after.sort("trending", descending=True)["item_id"][0] == "b"
    # ... and fades back once the spike is old
    later = item_popularity_at(con, T + 30 * DAY, cfg).filter(pl.col("item_id") == "b")["trending"][0]
    assert later < b["trending"]


# ---------------------------------------------------------------- category affinity


def test_category_affinity_follows_item_categories(con: duckdb.DuckDBPyConnection) -> None:
    cfg = FeatureConfig()
    catalogue(con, {"i1": ["c1", "c2"], "i2": ["c2"], "i3": []})  # i4 is not in the catalogue
    update_features(con, events(
        ("u", "i1", "view", T), ("u", "i2", "click", T), ("u", "i3", "purchase", T), ("u", "i4", "view", T),
        ("v", "i2", "view", T),
    ), cfg)
    rows = state(con, "user_category_affinity").to_dicts()
    aff = {(r["user_id"], r["category"]): math.exp(r["log_strength"]) for r in rows}
    t0 = math.exp(math.log(2) * (T - cfg.epoch) / cfg.half_life)  # the epoch anchor
    assert {k: v / t0 for k, v in aff.items()} == pytest.approx({("u", "c1"): 1.0, ("u", "c2"): 3.0, ("v", "c2"): 1.0})

    pairs = pl.DataFrame({"user_id": ["u", "u", "u", "u", "v", "v"], "item_id": ["i1", "i2", "i3", "i4", "i1", "x"]})
    f = user_item_features(con, pairs, T, cfg)
    assert f["user_cat_affinity"].to_list() == pytest.approx([3.0, 3.0, 0.0, 0.0, 1.0, 0.0])  # max over categories
    assert f["user_cat_share"].to_list() == pytest.approx([3 / 12, 3 / 12, 0.0, 0.0, 1.0, 0.0])  # u: 1+2+8+1


# ---------------------------------------------------------------- O(new): only touched keys are written


def test_refresh_touches_only_the_keys_of_new_events(
    con: duckdb.DuckDBPyConnection, sim: Simulator, sim_events: pl.DataFrame
) -> None:
    upsert_items(con, sim.catalogue())
    update_features(con, sim_events[:10_000])
    before = {table: state(con, table) for table in KEYS}
    new = sim_events[10_000:10_006]
    update = update_features(con, new)

    cats = pl.DataFrame(sim.catalogue().select("item_id", "categories")).explode("categories")
    touched = {
        "user_item_strength": new.select("user_id", "item_id").unique(),
        "item_popularity": new.select("item_id").unique(),
        "user_activity": new.select("user_id").unique(),
        "user_category_affinity": new.join(cats, on="item_id")
        .select("user_id", pl.col("categories").alias("category")).unique(),
    }
    for table, keys in touched.items():
        assert getattr(update, table) == len(keys)  # rows written == distinct touched keys
        after = state(con, table)
        untouched_before = before[table].join(keys, on=KEYS[table], how="anti")
        untouched_after = after.join(keys, on=KEYS[table], how="anti")
        assert untouched_after.equals(untouched_before)  # bit-identical
        changed = after.join(before[table], on=after.columns, how="anti", nulls_equal=True)
        assert len(changed.join(keys, on=KEYS[table], how="anti")) == 0
        assert len(after) == len(before[table]) + len(keys.join(before[table], on=KEYS[table], how="anti"))


def test_empty_refresh_is_a_no_op(con: duckdb.DuckDBPyConnection) -> None:
    assert update_features(con, pl.DataFrame(schema=EVENT_SCHEMA)) == FeatureUpdate()
    assert con.sql("SELECT count(*) FROM feature_config").fetchall() == [(0,)]


# ---------------------------------------------------------------- readers


def test_output_order_matches_pairs_under_the_streaming_engine(
    con: duckdb.DuckDBPyConnection, sim: Simulator, sim_events: pl.DataFrame
) -> None:
    upsert_items(con, sim.catalogue())
    update_features(con, sim_events)
    at = sim_events["ts"].max()
    seen = sim_events.select("user_id", "item_id")
    pairs = pl.concat([
        seen.sample(100_000, with_replacement=True, seed=1),
        pl.DataFrame({"user_id": seen["user_id"].sample(50_000, with_replacement=True, seed=2),
                      "item_id": sim.catalogue()["item_id"].sample(50_000, with_replacement=True, seed=3)}),
        pl.DataFrame({"user_id": ["nobody"], "item_id": ["nothing"]}),
    ]).sample(fraction=1.0, shuffle=True, seed=4)
    with pl.Config(engine_affinity="streaming"):
        f = user_item_features(con, pairs, at)
    assert f["user_id"].equals(pairs["user_id"]) and f["item_id"].equals(pairs["item_id"])
    # every row carries its own pair's state, not a neighbour's
    n_by_pair = {(r["user_id"], r["item_id"]): r["n_events"] for r in state(con, "user_item_strength").to_dicts()}
    expected = [n_by_pair.get(k, 0) for k in zip(pairs["user_id"], pairs["item_id"])]
    assert f["ui_n_events"].to_list() == expected
    n_by_user = dict(state(con, "user_activity").select("user_id", "n_events").iter_rows())
    assert f["user_n_events"].to_list() == [n_by_user.get(u, 0) for u in pairs["user_id"]]
    assert f.filter(pl.col("user_id") == "nobody").row(0, named=True)["user_strength"] == 0.0


def test_config_mismatch_raises_and_reset_adopts_the_new_config(con: duckdb.DuckDBPyConnection) -> None:
    update_features(con, events(("u", "i", "view", T)))
    other = FeatureConfig(popularity_half_lives=(3 * HOUR, DAY, 7 * DAY))
    with pytest.raises(FeatureConfigError):
        update_features(con, events(("u", "i", "view", T)), other)
    with pytest.raises(FeatureConfigError):
        item_popularity_at(con, T, other)
    reset_features(con, other)
    assert con.sql("SELECT count(*) FROM user_item_strength").fetchall() == [(0,)]
    update_features(con, events(("u", "i", "view", T)), other)
    assert item_popularity_at(con, T, other).columns == ["item_id", "pop_3h", "pop_1d", "pop_7d", "trending"]
    assert item_popularity_at(con, T, other)["pop_3h"][0] == pytest.approx(1.0)

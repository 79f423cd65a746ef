"""Incremental, time-decayed ranking features (`../shared/DESIGN.md`, "Features (Polars)").

Every decayed quantity is a sum ``S_h(t) = sum_e w_e * 2^(-(t - ts_e)/h)`` over a key's events. It
is stored as a log-value anchored at a fixed epoch ``T0`` (``FeatureConfig.epoch``)::

    log_s = log sum_e w_e * exp(ln2 * (ts_e - T0) / h)        S_h(t) = exp(log_s - ln2 * (t - T0) / h)

so the stored value never changes with time, adding events is a log-sum-exp merge of the touched
keys only (a refresh costs O(new events): it reads and rewrites only the state rows of the keys that
occur in the new events), and the result is independent of how events are split into refreshes and
of their order. Numerics: ``exp`` is only ever taken of ``log_s - ln2 (t - T0)/h`` (a log of the
actual value, small) or of differences ``<= 0`` inside log-sum-exp, so nothing overflows however
far ``t`` is from ``T0``; the absolute error of ``log_s`` is about ``|t - T0|/h * 1e-16`` (≈1e-11
relative after 10 years with a 1-hour half-life).

Choices (documented here, configurable in :class:`FeatureConfig`):

* **Weights**: per event type (``DEFAULT_EVENT_WEIGHTS``); an event type missing from the weights, or
  with weight 0, is ignored entirely (no strength, count or recency). A ``rating`` event weighs
  ``weight["rating"] * value / rating_value_scale`` (5.0: a 5-star rating has the full weight, 2.5
  half of it); a null value gives the plain weight, a value <= 0 is ignored. Log-space sums are
  positive by construction, so a poor rating is a weak positive signal, never a negative one.
* **Interaction strength** (user-item, user activity, user-category affinity) uses ``half_life``.
  User activity is the decayed weighted sum over all of the user's events; the user-category
  affinity gives each of an item's categories the event's full weight. Categories are read from
  ``items`` when the events are merged; an item without categories (or absent from ``items``)
  counts under no category, and a later category change does not move past contributions.
* **Popularity**: one decayed sum per ``popularity_half_lives`` (default 1h, 1d, 7d), of event
  *counts* (each kept event counts 1) unless ``popularity_weighted``.
  ``trending = (pop_short / h_short + s) / (pop_long / h_long + s)`` with half-lives in days and
  ``s = trending_smoothing`` events/day: the ratio of two decayed event *rates*, ≈1 for a steady
  item, > 1 when recent events spike, < 1 when fading; ``s`` damps items with few events.
* **Reading at ``at``**: values are decayed to ``at``. The state holds every merged event, so ``at``
  should not precede the newest merged event (an earlier ``at`` extrapolates; it is not a
  point-in-time snapshot, and recencies become negative).
* **Category affinity of a pair**: the *max* over the item's categories of the user's decayed
  category strength (``user_cat_affinity``), and that max divided by the user's activity strength
  (``user_cat_share``, in [0, 1]; time-independent since both decay alike). 0 when the item has
  no category or the user never touched one of them.
* **Distinct counts** ``item_popularity.n_users`` and ``user_activity.n_items`` are exact: a pair
  is new iff it has no ``user_item_strength`` row yet. A user's session count is deliberately not
  kept: sessions interleave and straddle refreshes, so an exact count would need per-session state.
* **Config changes**: the state is only valid for the weights, half-lives and epoch it was built
  with. The first refresh records them in ``feature_config``; a refresh or read with a different
  config raises :class:`FeatureConfigError`; :func:`reset_features` empties the state for a new
  config (then replay the events: the only O(history) operation).

State tables are in ``sql/002_features.sql``; they have no primary key (as ``events``) and are
written delete-then-insert on the touched keys, in one transaction per refresh (the caller must not
hold an open transaction). DuckDB finds the touched rows with a hash join that scans the key
columns of each state table: proportional to the number of keys (not events), tens of ms at ~700k
user-item rows; everything merged and written is O(new events). Idempotence is the caller's job: pass each event once.
"""

from __future__ import annotations

import json
import math
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone

import duckdb
import polars as pl

from rec_pipeline.core.errors import FeatureConfigError
from rec_pipeline.core.ingest.contract import DEFAULT_EVENT_WEIGHTS, EVENT_SCHEMA
from rec_pipeline.core.ops.warehouse import transaction

UTC = timezone.utc
LN2 = math.log(2.0)
_EPOCH_1970 = datetime(1970, 1, 1, tzinfo=UTC)
_US_PER_HOUR = 3_600_000_000.0
_STATE_TABLES = ("user_item_strength", "item_popularity", "user_activity", "user_category_affinity")


def _label(h: timedelta) -> str:
    """1h, 1d, 7d, 30m, 90s: the largest unit dividing the half-life exactly."""
    us = h // timedelta(microseconds=1)
    for unit, size in (("d", 86_400_000_000), ("h", 3_600_000_000), ("m", 60_000_000), ("s", 1_000_000)):
        if us % size == 0:
            return f"{us // size}{unit}"
    return f"{us}us"


def _us(t: datetime) -> int:
    if t.tzinfo is None:
        raise ValueError("naive datetime: pass a timezone-aware one")
    return (t - _EPOCH_1970) // timedelta(microseconds=1)


@dataclass(frozen=True)
class FeatureConfig:
    event_weights: dict[str, float] = field(default_factory=lambda: dict(DEFAULT_EVENT_WEIGHTS))
    rating_value_scale: float | None = 5.0  # rating weight *= value / scale; None: constant weight
    half_life: timedelta = timedelta(days=7)  # user-item, user activity, user-category
    popularity_half_lives: tuple[timedelta, ...] = (timedelta(hours=1), timedelta(days=1), timedelta(days=7))
    popularity_weighted: bool = False  # False: popularity = decayed event counts
    trending_half_lives: tuple[timedelta, timedelta] = (timedelta(days=1), timedelta(days=7))  # short, long
    trending_smoothing: float = 1.0  # events/day added to both rates of the trending ratio
    epoch: datetime = datetime(2020, 1, 1, tzinfo=UTC)  # T0 of the log anchors

    def __post_init__(self) -> None:
        if any(w < 0 or not math.isfinite(w) for w in self.event_weights.values()):
            raise ValueError("event weights must be finite and >= 0")
        if self.rating_value_scale is not None and not self.rating_value_scale > 0:
            raise ValueError("rating_value_scale must be > 0 or None")
        hls = (self.half_life, *self.popularity_half_lives)
        if any(h <= timedelta(0) for h in hls) or not self.popularity_half_lives:
            raise ValueError("half-lives must be > 0 and there must be at least one popularity half-life")
        if len(set(self.popularity_labels)) != len(self.popularity_labels):
            raise ValueError("popularity half-lives must be distinct")
        if any(h not in self.popularity_half_lives for h in self.trending_half_lives):
            raise ValueError("trending_half_lives must be two of popularity_half_lives")
        if self.trending_smoothing < 0:
            raise ValueError("trending_smoothing must be >= 0")
        _us(self.epoch)

    @property
    def popularity_labels(self) -> tuple[str, ...]:
        return tuple(_label(h) for h in self.popularity_half_lives)

    def fingerprint(self) -> str:
        """What the stored state depends on (read-time settings such as trending are left out)."""
        return json.dumps(
            {
                "event_weights": {k: float(v) for k, v in sorted(self.event_weights.items())},
                "rating_value_scale": self.rating_value_scale,
                "half_life_us": self.half_life // timedelta(microseconds=1),
                "popularity_half_lives_us": sorted(h // timedelta(microseconds=1) for h in self.popularity_half_lives),
                "popularity_weighted": self.popularity_weighted,
                "epoch": self.epoch.astimezone(UTC).isoformat(),
            },
            sort_keys=True,
        )


@dataclass(frozen=True)
class FeatureUpdate:
    """Rows written per state table (each = number of distinct touched keys) and events used/ignored."""

    n_events: int = 0
    n_ignored: int = 0
    user_item_strength: int = 0
    item_popularity: int = 0
    user_activity: int = 0
    user_category_affinity: int = 0


# ---------------------------------------------------------------------------------------------- helpers


def decayed(log_col: str | pl.Expr, at: datetime, half_life: timedelta, epoch: datetime) -> pl.Expr:
    """The value at ``at`` of a stored log-anchored decayed sum (null log -> 0.0)."""
    expr = pl.col(log_col) if isinstance(log_col, str) else log_col
    shift = LN2 * (_us(at) - _us(epoch)) / (half_life // timedelta(microseconds=1))
    return (expr - shift).exp().fill_null(0.0)


def _lse_agg(col: str) -> pl.Expr:
    """log(sum(exp(col))) within a group, stable."""
    m = pl.col(col).max()
    return m + (pl.col(col) - m).exp().sum().log()


def _lse2(a: str, b: str) -> pl.Expr:
    """log(exp(a) + exp(b)) row-wise, stable; a null side counts as 0."""
    x, y = pl.col(a), pl.col(b)
    both = pl.max_horizontal(x, y) + (-(x - y).abs()).exp().log1p()
    return pl.when(x.is_null()).then(y).when(y.is_null()).then(x).otherwise(both)


@contextmanager
def _registered(con: duckdb.DuckDBPyConnection, frame: pl.DataFrame) -> Iterator[str]:
    name = f"_feat_{uuid.uuid4().hex[:12]}"
    con.register(name, frame)
    try:
        yield name
    finally:
        con.unregister(name)


def _query(con: duckdb.DuckDBPyConnection, sql: str) -> pl.DataFrame:
    return con.sql(sql).pl()


def _run(con: duckdb.DuckDBPyConnection, sql: str, params: list | None = None) -> list:
    """Execute a statement and consume its result (DuckDB 2 refuses new work on an unfinished one)."""
    return con.execute(sql, params).fetchall() if params is not None else con.execute(sql).fetchall()


def _stored_fingerprint(con: duckdb.DuckDBPyConnection) -> str | None:
    rows = _run(con, "SELECT fingerprint FROM feature_config WHERE id = 1")
    return rows[0][0] if rows else None


def _check_config(con: duckdb.DuckDBPyConnection, config: FeatureConfig) -> bool:
    """True if the state already records ``config``; raises if it records another one."""
    stored = _stored_fingerprint(con)
    if stored is not None and stored != config.fingerprint():
        raise FeatureConfigError(
            f"feature state was built with {stored}, not {config.fingerprint()}: "
            "call reset_features(con, config) and replay the events"
        )
    return stored is not None


def _pop_columns(config: FeatureConfig) -> list[str]:
    return [f"log_pop_{label}" for label in config.popularity_labels]


def _adopt_config(con: duckdb.DuckDBPyConnection, config: FeatureConfig) -> None:
    """Record ``config`` and add any popularity column it needs (inside the caller's transaction)."""
    have = {r[0] for r in _run(
        con, "SELECT column_name FROM information_schema.columns WHERE table_name = 'item_popularity'")}
    for col in _pop_columns(config):
        if col not in have:
            _run(con, f'ALTER TABLE item_popularity ADD COLUMN "{col}" DOUBLE')
    _run(
        con,
        "INSERT INTO feature_config VALUES (1, ?, ?) "
        "ON CONFLICT (id) DO UPDATE SET fingerprint = excluded.fingerprint, updated_at = excluded.updated_at",
        [config.fingerprint(), datetime.now(UTC)],
    )


def reset_features(con: duckdb.DuckDBPyConnection, config: FeatureConfig | None = None) -> None:
    """Empty every state table and record ``config``: the next refreshes rebuild from scratch."""
    config = config or FeatureConfig()
    with transaction(con):
        for table in _STATE_TABLES:
            _run(con, f"DELETE FROM {table}")
        _adopt_config(con, config)


# ---------------------------------------------------------------------------------------------- update


def _prepare(new_events: pl.DataFrame, config: FeatureConfig) -> tuple[pl.DataFrame, int]:
    """Events with a positive weight, with their log weight and time since the epoch (µs, float)."""
    missing = [c for c in ("user_id", "item_id", "event_type", "ts") if c not in new_events.columns]
    if missing:
        raise ValueError(f"new_events lacks {missing}")
    value = pl.col("value") if "value" in new_events.columns else pl.lit(None).alias("value")
    ev = new_events.select(pl.col("user_id", "item_id", "event_type", "ts"), value).cast(
        {c: EVENT_SCHEMA[c] for c in ("user_id", "item_id", "event_type", "ts", "value")}
    )
    if ev.select(pl.any_horizontal(pl.col("user_id", "item_id", "event_type", "ts").is_null()).any()).item():
        raise ValueError("new_events has nulls in user_id, item_id, event_type or ts")
    w = pl.col("event_type").replace_strict(config.event_weights, default=0.0, return_dtype=pl.Float64)
    if config.rating_value_scale is not None:
        w = pl.when((pl.col("event_type") == "rating") & pl.col("value").is_not_null()).then(
            w * pl.col("value") / config.rating_value_scale).otherwise(w)
    ev = ev.with_columns(w.alias("w")).filter(pl.col("w") > 0)
    return ev.with_columns(
        pl.col("w").log().alias("lw"),
        (pl.col("ts").dt.epoch("us") - _us(config.epoch)).cast(pl.Float64).alias("t_us"),
    ), len(new_events) - len(ev)


def _fetch(con: duckdb.DuckDBPyConnection, table: str, keys: pl.DataFrame) -> pl.DataFrame:
    on = " AND ".join(f"s.{k} = k.{k}" for k in keys.columns)
    with _registered(con, keys) as k:
        return _query(con, f"SELECT s.* FROM {table} s JOIN {k} k ON {on}")


def _write(con: duckdb.DuckDBPyConnection, table: str, keys: list[str], rows: pl.DataFrame) -> int:
    on = " AND ".join(f"{table}.{k} = r.{k}" for k in keys)
    rows = rows.sort(keys)  # deterministic physical layout
    with _registered(con, rows) as r:
        _run(con, f"DELETE FROM {table} USING {r} r WHERE {on}")
        _run(con, f"INSERT INTO {table} BY NAME SELECT * FROM {r}")
    return len(rows)


def _merge_times() -> list[pl.Expr]:
    """first/last ts and counts of batch (`*_new`) and old state columns."""
    return [
        (pl.col("n_events_new") + pl.col("n_events").fill_null(0)).alias("n_events"),
        pl.min_horizontal("first_ts_new", "first_ts").alias("first_ts"),
        pl.max_horizontal("last_ts_new", "last_ts").alias("last_ts"),
    ]


def _item_aggregates(ev: pl.DataFrame, config: FeatureConfig, times: list[pl.Expr]) -> pl.DataFrame:
    """Per item of prepared events: new_<label> (log popularity per half-life) and `times`."""
    pop_terms = []
    for label, h in zip(config.popularity_labels, config.popularity_half_lives):
        lw = pl.col("lw") if config.popularity_weighted else pl.lit(0.0)
        pop_terms.append((lw + LN2 * pl.col("t_us") / (h // timedelta(microseconds=1))).alias(f"p_{label}"))
    return ev.with_columns(pop_terms).group_by("item_id").agg(
        *[_lse_agg(f"p_{label}").alias(f"new_{label}") for label in config.popularity_labels], *times)


def forget_users(con: duckdb.DuckDBPyConnection, user_ids: list[str], items: list[str],
                 remaining_events: pl.DataFrame, config: FeatureConfig | None = None) -> int:
    """Remove `user_ids` from the feature state: their own rows go, and the popularity rows of
    `items` (what they touched) are rebuilt from `remaining_events`, every merged event of those
    items without theirs (a decayed sum cannot be un-merged exactly). Returns the rows removed."""
    config = config or FeatureConfig()
    users = pl.DataFrame({"user_id": user_ids}, schema={"user_id": pl.String})
    touched = pl.DataFrame({"item_id": items}, schema={"item_id": pl.String})
    ev, _ = _prepare(remaining_events, config)
    times = [pl.len().alias("n_events"), pl.col("ts").min().alias("first_ts"), pl.col("ts").max().alias("last_ts"),
             pl.col("user_id").n_unique().alias("n_users")]
    rebuilt = _item_aggregates(ev, config, times).rename(
        {f"new_{lb}": f"log_pop_{lb}" for lb in config.popularity_labels})
    removed = 0
    with transaction(con), _registered(con, users) as u, _registered(con, touched) as t:
        for table in ("user_item_strength", "user_activity", "user_category_affinity"):
            removed += _run(con, f"DELETE FROM {table} WHERE user_id IN (SELECT user_id FROM {u})")[0][0]
        _run(con, f"DELETE FROM item_popularity WHERE item_id IN (SELECT item_id FROM {t})")
        if not rebuilt.is_empty():
            _write(con, "item_popularity", ["item_id"], rebuilt)
    return removed


def update_features(
    con: duckdb.DuckDBPyConnection, new_events: pl.DataFrame, config: FeatureConfig | None = None
) -> FeatureUpdate:
    """Merge ``new_events`` (EVENT_SCHEMA) into the feature state; touches only their keys."""
    config = config or FeatureConfig()
    ev, n_ignored = _prepare(new_events, config)
    if ev.is_empty():
        return FeatureUpdate(n_ignored=n_ignored)
    h_us = config.half_life // timedelta(microseconds=1)
    ev = ev.with_columns((pl.col("lw") + LN2 * pl.col("t_us") / h_us).alias("term"))
    times = [pl.len().alias("n_events_new"), pl.col("ts").min().alias("first_ts_new"),
             pl.col("ts").max().alias("last_ts_new")]
    # Batch aggregates (order-independent expressions only; group_by output order is irrelevant).
    b_ui = ev.group_by("user_id", "item_id").agg(
        _lse_agg("term").alias("log_new"), *times,
        pl.col("event_type").sort_by("ts", "event_type").last().alias("last_type_new"),
    )
    with transaction(con):
        if not _check_config(con, config):
            _adopt_config(con, config)
        written_pairs, new_pairs = _merge_user_items(con, b_ui)
        return FeatureUpdate(
            n_events=len(ev),
            n_ignored=n_ignored,
            user_item_strength=written_pairs,
            item_popularity=_merge_items(con, _item_aggregates(ev, config, times), new_pairs, config),
            user_activity=_merge_users(con, ev.group_by("user_id").agg(_lse_agg("term").alias("log_new"), *times),
                                       new_pairs),
            user_category_affinity=_merge_user_categories(con, b_ui),
        )


def _merge_user_items(con: duckdb.DuckDBPyConnection, b_ui: pl.DataFrame) -> tuple[int, pl.DataFrame]:
    """Merge the batch's user-item sums; returns (rows written, the pairs seen for the first time)."""
    old_ui = _fetch(con, "user_item_strength", b_ui.select("user_id", "item_id"))
    ui = b_ui.join(old_ui, on=["user_id", "item_id"], how="left")
    ui = ui.with_columns(pl.col("n_events").is_null().alias("is_new_pair"))
    same_ts = pl.col("last_ts_new") == pl.col("last_ts")
    newer = (pl.col("last_ts").is_null() | (pl.col("last_ts_new") > pl.col("last_ts"))
             | (same_ts & (pl.col("last_type_new") > pl.col("last_event_type"))))
    ui = ui.with_columns(
        _lse2("log_new", "log_strength").alias("log_strength"), *_merge_times(),
        pl.when(newer).then("last_type_new").otherwise("last_event_type").alias("last_event_type"),
    )
    new_pairs = ui.filter("is_new_pair").select("user_id", "item_id")
    ui = ui.select("user_id", "item_id", "log_strength", "n_events", "first_ts", "last_ts", "last_event_type")
    return _write(con, "user_item_strength", ["user_id", "item_id"], ui), new_pairs


def _merge_items(con: duckdb.DuckDBPyConnection, b_item: pl.DataFrame, new_pairs: pl.DataFrame,
                 config: FeatureConfig) -> int:
    """Merge the batch's item popularity per half-life; a new pair is a new distinct user."""
    old_item = _fetch(con, "item_popularity", b_item.select("item_id"))
    item = b_item.join(old_item, on="item_id", how="left").join(
        new_pairs.group_by("item_id").agg(pl.len().alias("n_users_new")), on="item_id", how="left")
    item = item.select(
        "item_id",
        *[_lse2(f"new_{lb}", f"log_pop_{lb}").alias(f"log_pop_{lb}") for lb in config.popularity_labels],
        *_merge_times(),
        (pl.col("n_users").fill_null(0) + pl.col("n_users_new").fill_null(0)).alias("n_users"),
    )
    return _write(con, "item_popularity", ["item_id"], item)


def _merge_users(con: duckdb.DuckDBPyConnection, b_user: pl.DataFrame, new_pairs: pl.DataFrame) -> int:
    """Merge the batch's user activity; a new pair is a new distinct item."""
    old_user = _fetch(con, "user_activity", b_user.select("user_id"))
    user = b_user.join(old_user, on="user_id", how="left").join(
        new_pairs.group_by("user_id").agg(pl.len().alias("n_items_new")), on="user_id", how="left")
    user = user.select(
        "user_id", _lse2("log_new", "log_strength").alias("log_strength"), *_merge_times(),
        (pl.col("n_items").fill_null(0) + pl.col("n_items_new").fill_null(0)).alias("n_items"),
    )
    return _write(con, "user_activity", ["user_id"], user)


def _merge_user_categories(con: duckdb.DuckDBPyConnection, b_ui: pl.DataFrame) -> int:
    """Merge the user-category affinities: LSE is associative, so the batch's user-item sums are
    summed per category of the item (as the catalogue has it now)."""
    with _registered(con, b_ui.select("item_id").unique()) as k:
        cats = _query(
            con,
            f"SELECT DISTINCT item_id, category FROM (SELECT i.item_id, unnest(i.categories) AS category "
            f"FROM items i JOIN {k} k ON i.item_id = k.item_id) WHERE category IS NOT NULL",
        )
    b_cat = b_ui.join(cats, on="item_id", how="inner").group_by("user_id", "category").agg(
        _lse_agg("log_new").alias("log_new"))
    if b_cat.is_empty():
        return 0
    old_cat = _fetch(con, "user_category_affinity", b_cat.select("user_id", "category"))
    cat = b_cat.join(old_cat, on=["user_id", "category"], how="left").select(
        "user_id", "category", _lse2("log_new", "log_strength").alias("log_strength"))
    return _write(con, "user_category_affinity", ["user_id", "category"], cat)


# ---------------------------------------------------------------------------------------------- readers


def _popularity_exprs(config: FeatureConfig, at: datetime, prefix: str) -> list[pl.Expr]:
    """pop_<label> decayed to ``at`` and trending (from columns log_pop_<label>)."""
    exprs = [decayed(f"log_pop_{lb}", at, h, config.epoch).alias(f"{prefix}pop_{lb}")
             for lb, h in zip(config.popularity_labels, config.popularity_half_lives)]
    (hs, hl), s = config.trending_half_lives, config.trending_smoothing
    rate = lambda h: decayed(f"log_pop_{_label(h)}", at, h, config.epoch) / (h / timedelta(days=1))  # noqa: E731
    trending = (rate(hs) + s) / (rate(hl) + s)
    if s == 0:
        trending = pl.when(rate(hl) > 0).then(trending)
    return [*exprs, trending.alias(f"{prefix}trending")]


def _hours_since(col: str, at: datetime) -> pl.Expr:
    return (_us(at) - pl.col(col).dt.epoch("us")) / _US_PER_HOUR


def user_item_features(
    con: duckdb.DuckDBPyConnection, pairs: pl.DataFrame, at: datetime, config: FeatureConfig | None = None
) -> pl.DataFrame:
    """Features of each (user_id, item_id) row of ``pairs`` as of ``at``, in the order of ``pairs``.

    Columns: user_id, item_id; ui_strength (decayed weighted interactions, 0 if none), ui_n_events,
    ui_hours_since_last (null if none), ui_last_event_type; item_pop_<label> per popularity
    half-life, item_trending, item_n_events, item_n_users, item_age_hours (since its first event),
    item_hours_since_last; user_strength (decayed activity), user_n_events, user_n_items,
    user_hours_since_last, user_age_hours; user_cat_affinity (max over the item's categories),
    user_cat_share (that over user_strength). Counts are 0 and hours null for unseen keys.
    """
    config = config or FeatureConfig()
    _check_config(con, config)
    h = config.half_life
    idx = pairs.select(pl.col("user_id").cast(pl.String), pl.col("item_id").cast(pl.String)).with_row_index("_row")
    pop_cols = ", ".join(f'ip."{c}"' for c in _pop_columns(config))
    with _registered(con, idx) as p:
        raw = _query(con, f"""
            WITH cat AS (
                SELECT p._row, max(a.log_strength) AS log_cat
                FROM {p} p
                JOIN (SELECT item_id, unnest(categories) AS category FROM items) ic ON ic.item_id = p.item_id
                JOIN user_category_affinity a ON a.user_id = p.user_id AND a.category = ic.category
                GROUP BY p._row
            )
            SELECT p._row,
                   s.log_strength AS ui_log, s.n_events AS ui_n_events, s.last_ts AS ui_last_ts,
                   s.last_event_type AS ui_last_event_type,
                   {pop_cols}, ip.n_events AS item_n_events, ip.n_users AS item_n_users,
                   ip.first_ts AS item_first_ts, ip.last_ts AS item_last_ts,
                   ua.log_strength AS user_log, ua.n_events AS user_n_events, ua.n_items AS user_n_items,
                   ua.first_ts AS user_first_ts, ua.last_ts AS user_last_ts,
                   cat.log_cat
            FROM {p} p
            LEFT JOIN user_item_strength s ON s.user_id = p.user_id AND s.item_id = p.item_id
            LEFT JOIN item_popularity ip ON ip.item_id = p.item_id
            LEFT JOIN user_activity ua ON ua.user_id = p.user_id
            LEFT JOIN cat ON cat._row = p._row
        """)
    counts = ["ui_n_events", "item_n_events", "item_n_users", "user_n_events", "user_n_items"]
    feats = (
        raw.lazy()
        .sort("_row")  # DuckDB joins do not keep order, nor does Polars' streaming engine: sort explicitly
        .select(
            decayed("ui_log", at, h, config.epoch).alias("ui_strength"),
            pl.col("ui_n_events"),
            _hours_since("ui_last_ts", at).alias("ui_hours_since_last"),
            pl.col("ui_last_event_type"),
            *_popularity_exprs(config, at, "item_"),
            pl.col("item_n_events", "item_n_users"),
            _hours_since("item_first_ts", at).alias("item_age_hours"),
            _hours_since("item_last_ts", at).alias("item_hours_since_last"),
            decayed("user_log", at, h, config.epoch).alias("user_strength"),
            pl.col("user_n_events", "user_n_items"),
            _hours_since("user_last_ts", at).alias("user_hours_since_last"),
            _hours_since("user_first_ts", at).alias("user_age_hours"),
            decayed("log_cat", at, h, config.epoch).alias("user_cat_affinity"),
            (pl.col("log_cat") - pl.col("user_log")).exp().fill_null(0.0).alias("user_cat_share"),
        )
        .with_columns(pl.col(c).fill_null(0).cast(pl.Int64) for c in counts)
        .collect()
    )
    if len(feats) != len(idx):  # one output row per requested row, by construction of the left joins
        raise RuntimeError("feature state has duplicate keys")
    return pl.concat([idx.select("user_id", "item_id"), feats], how="horizontal")


def item_popularity_at(
    con: duckdb.DuckDBPyConnection, at: datetime, config: FeatureConfig | None = None
) -> pl.DataFrame:
    """Every item with state: item_id, pop_<label> per popularity half-life, trending (as of ``at``),
    sorted by item_id (sort by trending or a pop_ column for the fallback list)."""
    config = config or FeatureConfig()
    _check_config(con, config)
    cols = ", ".join(["item_id", *[f'"{c}"' for c in _pop_columns(config)]])
    raw = _query(con, f"SELECT {cols} FROM item_popularity")
    return raw.lazy().select("item_id", *_popularity_exprs(config, at, "")).sort("item_id").collect()

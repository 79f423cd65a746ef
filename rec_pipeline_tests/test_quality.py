"""Tests of the batch quality checks (rec_pipeline.core.ingest.quality).

Batches are built with Polars expressions (cheap); the GX import and suite build (~4 s) are paid once
per test session through the module-level cache.
"""

from __future__ import annotations

import json
import time
from datetime import datetime, timedelta, timezone

import polars as pl
import pytest

from rec_pipeline.core.ingest import quality
from rec_pipeline.core.ingest.contract import EVENT_SCHEMA, EventContract
from rec_pipeline.core.ingest.quality import (
    CHECK_SPECS,
    BatchProfile,
    CheckOutcome,
    QualityThresholds,
    profile_batch,
    validate_batch,
)

NOW = datetime(2025, 6, 1, 12, tzinfo=timezone.utc)
TYPES = ["view", "click", "add_to_cart", "purchase", "rating"]


def make_batch(n: int = 200) -> pl.DataFrame:
    """A clean batch: every event type, 97 users, 37 items, ratings 4.0, purchases 19.99."""
    i = pl.col("i")
    event_type = (i % 5).replace_strict(list(range(5)), TYPES)
    return (
        pl.select(i=pl.int_range(n))
        .select(
            event_id=pl.format("e{}", i),
            user_id=pl.format("u{}", i % 97),
            item_id=pl.format("i{}", i % 37),
            event_type=event_type,
            ts=pl.lit(NOW) - pl.duration(minutes=i),
            value=pl.when(event_type == "rating").then(4.0).when(event_type == "purchase").then(19.99),
            session_id=pl.lit(None, pl.String),
            context=pl.lit(None, pl.String),
        )
        .cast(EVENT_SCHEMA)
    )


def plant(batch: pl.DataFrame, column: str, rows, value) -> pl.DataFrame:
    """Overwrite `column` in the given row positions with `value` (or an expression)."""
    value = value if isinstance(value, pl.Expr) else pl.lit(value, dtype=EVENT_SCHEMA[column])
    hit = pl.int_range(pl.len()).is_in(list(rows))
    return batch.with_columns(pl.when(hit).then(value).otherwise(pl.col(column)).alias(column))


def recent_like(batch: pl.DataFrame, k: int = 3) -> list[BatchProfile]:
    return [profile_batch(batch)] * k


def run(batch: pl.DataFrame, recent=None, **kwargs) -> dict[str, CheckOutcome]:
    recent = recent_like(make_batch()) if recent is None else recent
    return {o.name: o for o in validate_batch(batch, recent, now=NOW, **kwargs)}


def failed(outcomes: dict[str, CheckOutcome]) -> set[str]:
    return {name for name, o in outcomes.items() if not o.passed}


def test_clean_batch_passes_every_check_in_spec_order():
    outcomes = validate_batch(make_batch(), recent_like(make_batch()), now=NOW)
    assert [o.name for o in outcomes] == [s.name for s in CHECK_SPECS]
    assert [o.severity for o in outcomes] == [s.severity for s in CHECK_SPECS]
    assert [o.name for o in outcomes if not o.passed] == []
    json.dumps([o.metadata for o in outcomes])


def test_null_user_id_above_threshold_fails():
    o = run(plant(make_batch(), "user_id", range(20), None))["user_id_not_null"]
    assert not o.passed and o.severity == "ERROR"
    assert o.metadata["unexpected_count"] == 20
    assert o.metadata["unexpected_percent"] == pytest.approx(10.0)
    assert o.metadata["column"] == "user_id"
    assert o.metadata["expectation_type"] == "expect_column_values_to_not_be_null"


def test_few_null_user_ids_stay_within_the_bad_row_budget():
    outcomes = run(plant(make_batch(), "user_id", range(5), None))
    assert outcomes["user_id_not_null"].passed
    assert outcomes["user_id_not_null"].metadata["unexpected_count"] == 5
    assert failed(outcomes) == set()


def test_unknown_event_types_fail():
    o = run(plant(make_batch(), "event_type", range(30), "teleport"))["event_type_known"]
    assert not o.passed
    assert o.metadata["unexpected_count"] == 30
    assert o.metadata["partial_unexpected_list"] == ["teleport"] * 10


def test_duplicate_event_ids_fail_and_count_every_copy():
    batch = plant(make_batch(), "event_id", range(15), pl.format("e{}", pl.int_range(pl.len()) + 100))
    o = run(batch)["event_id_unique"]
    assert not o.passed
    assert o.metadata["unexpected_count"] == 30


def test_far_future_and_far_past_ts_fail():
    batch = plant(make_batch(), "ts", range(10), datetime(2999, 1, 1, tzinfo=timezone.utc))
    batch = plant(batch, "ts", range(10, 20), datetime(1970, 1, 1, tzinfo=timezone.utc))
    o = run(batch)["ts_in_range"]
    assert not o.passed
    assert o.metadata["unexpected_count"] == 20
    partial = o.metadata["partial_unexpected_list"]
    assert len(partial) == 10 and all(isinstance(v, str) for v in partial)
    assert partial[0].startswith("2999-01-01")


def test_ts_bounds_are_compared_exactly_in_utc():
    contract = EventContract()
    latest = contract.latest_ts(NOW)
    batch = plant(make_batch(), "ts", [0], latest)
    batch = plant(batch, "ts", [1], contract.earliest_ts)
    batch = plant(batch, "ts", [2], latest + timedelta(seconds=1))
    batch = plant(batch, "ts", [3], contract.earliest_ts - timedelta(seconds=1))
    o = run(batch)["ts_in_range"]
    assert o.passed  # 2 bad rows of 200 are within the budget
    assert o.metadata["unexpected_count"] == 2
    assert o.metadata["partial_unexpected_list"] == [
        "2025-06-02 12:00:01+00:00",
        "1989-12-31 23:59:59+00:00",
    ]


def test_negative_and_absurd_values_fail():
    batch = plant(make_batch(), "value", range(10), -1.0)
    batch = plant(batch, "value", range(10, 20), 1e12)
    o = run(batch)["value_in_range"]
    assert not o.passed
    assert o.metadata["unexpected_count"] == 20
    assert sorted(o.metadata["partial_unexpected_list"]) == [-1.0] * 10


def test_rating_out_of_scale_fails_only_the_rating_check():
    rating_rows = range(4, 200, 5)  # every fifth row is a rating
    outcomes = run(plant(make_batch(), "value", list(rating_rows)[:10], 7.0))
    assert failed(outcomes) == {"rating_in_range"}
    o = outcomes["rating_in_range"]
    assert o.metadata["unexpected_count"] == 10
    assert o.metadata["element_count"] == 40  # the row condition keeps only rating events
    assert o.metadata["partial_unexpected_list"] == [7.0] * 10


def test_empty_batch_fails_row_count_and_warns_on_volume():
    outcomes = run(make_batch(0))
    assert failed(outcomes) == {"batch_not_empty", "volume_vs_recent"}
    assert outcomes["batch_not_empty"].metadata["observed_value"] == 0
    assert outcomes["volume_vs_recent"].severity == "WARN"
    assert "reason" in outcomes["event_type_mix"].metadata


def test_extra_column_fails_the_schema_check():
    outcomes = run(make_batch().with_columns(extra=pl.lit(1)))
    assert failed(outcomes) == {"columns_match_schema"}
    assert "extra" in outcomes["columns_match_schema"].metadata["observed_value"]


def test_volume_spike_and_drop_vs_recent_warn():
    spike = run(make_batch(), recent=recent_like(make_batch(10)))
    assert failed(spike) == {"volume_vs_recent"}
    assert spike["volume_vs_recent"].metadata["ratio"] == pytest.approx(20.0)
    assert spike["volume_vs_recent"].metadata["recent_median_rows"] == 10
    drop = run(make_batch(), recent=recent_like(make_batch(5000)))
    assert failed(drop) == {"volume_vs_recent"}
    assert drop["volume_vs_recent"].metadata["ratio"] == pytest.approx(0.04)


def test_too_few_recent_batches_pass_with_a_reason():
    outcomes = run(make_batch(), recent=recent_like(make_batch(5), k=2))
    volume = outcomes["volume_vs_recent"]
    assert volume.passed and "fewer than 3" in volume.metadata["reason"]
    assert "reason" in outcomes["event_type_mix"].metadata
    assert run(make_batch(), recent=[])["volume_vs_recent"].passed


def test_event_type_mix_shift_warns():
    views_only = [BatchProfile(rows=200, event_type_counts={"view": 200})] * 3
    outcomes = run(make_batch(), recent=views_only)
    assert failed(outcomes) == {"event_type_mix"}
    mix = outcomes["event_type_mix"]
    assert mix.severity == "WARN"
    assert mix.metadata["distance"] == pytest.approx(0.8)
    assert mix.metadata["largest_shifts"][0] == "view: 1.000 -> 0.200"


def test_one_user_flooding_the_batch_fails_without_naming_the_user():
    outcomes = run(plant(make_batch(), "user_id", range(120), "bot"))
    assert failed(outcomes) == {"user_flooding"}
    o = outcomes["user_flooding"]
    assert o.severity == "ERROR"
    assert (o.metadata["top_count"], o.metadata["share"]) == (120, 0.6) and "top_id" not in o.metadata


def test_one_item_flooding_the_batch_fails_and_names_the_item():
    outcomes = run(plant(make_batch(), "item_id", range(150), "i-hot"))
    assert failed(outcomes) == {"item_flooding"}
    assert (outcomes["item_flooding"].metadata["top_id"], outcomes["item_flooding"].metadata["top_count"]) == (
        "i-hot", 150)


def test_no_check_reports_a_value_of_a_column_that_can_name_a_user():
    """Dagster's event log keeps check metadata for good: a user id (or an event id, session or
    context embedding one) is never listed, only counted."""
    user = "alice@example.com"
    batch = plant(make_batch(), "user_id", range(150), user)
    batch = plant(batch, "event_id", range(20), f"{user}-1")
    batch = plant(batch, "session_id", range(200), f"{user}/s")
    batch = plant(batch, "context", range(200), f'{{"who": "{user}"}}')
    batch = plant(batch, "user_id", range(150, 165), None)
    outcomes = run(batch)
    assert failed(outcomes) == {"user_flooding", "event_id_unique", "user_id_not_null"}
    assert outcomes["event_id_unique"].metadata["unexpected_count"] == 20
    assert user not in json.dumps([o.metadata for o in outcomes.values()])
    assert "partial_unexpected_list" in outcomes["event_type_known"].metadata, "other columns still list values"


def test_small_batches_are_not_judged_for_flooding():
    small = plant(make_batch(100), "user_id", range(100), "solo")
    outcomes = run(small, recent=recent_like(make_batch(100)))
    assert outcomes["user_flooding"].passed
    assert "reason" in outcomes["user_flooding"].metadata


def test_thresholds_and_contract_are_honoured():
    five_nulls = plant(make_batch(), "user_id", range(5), None)
    strict = run(five_nulls, thresholds=QualityThresholds(max_bad_fraction=0.0))
    assert failed(strict) == {"user_id_not_null"}
    cheap = run(make_batch(), contract=EventContract(value_max=10.0))
    assert failed(cheap) == {"value_in_range"}
    assert cheap["value_in_range"].metadata["unexpected_count"] == 40  # the purchases at 19.99


def test_profile_batch_counts_rows_and_event_types():
    batch = plant(make_batch(10), "event_type", [0], None)
    assert profile_batch(batch) == BatchProfile(
        rows=10, event_type_counts={"view": 1, "click": 2, "add_to_cart": 2, "purchase": 2, "rating": 2}
    )


def test_context_is_built_once_and_reused(monkeypatch):
    monkeypatch.setattr(quality, "_cached_suite", None)
    batch, recent = make_batch(10_000), recent_like(make_batch(10_000))

    def timed_run() -> tuple[float, quality.GXSuite]:
        start = time.perf_counter()
        assert all(o.passed for o in validate_batch(batch, recent, now=NOW))
        elapsed = time.perf_counter() - start
        return elapsed, quality.gx_suite(EventContract(), QualityThresholds().max_bad_fraction)

    (t1, first), (t2, second), (t3, third) = timed_run(), timed_run(), timed_run()
    assert first is second is third
    print(f"validate_batch 10k rows: {t1:.3f}s with suite build, then {t2:.3f}s, {t3:.3f}s")

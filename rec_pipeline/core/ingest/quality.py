"""Data-quality checks for one landed batch of behaviour events (`../shared/DESIGN.md`, "Validation").

Two kinds of check, one `CheckOutcome` per `CHECK_SPECS` entry, in that order:

* Row- and table-level rules of the `EventContract`, run as a Great Expectations 1.x suite built in
  code. GX has no Polars engine, so the batch goes through `DataFrame.to_pandas()` (numpy-backed:
  Arrow-backed pandas validates 2-3x slower in GX).
* Batch-level anomaly checks computed with Polars against profiles of recent batches.

Severity policy (the Dagster layer makes every check blocking):

* ERROR holds the batch back from training. It is used where training on the batch would teach the
  models something false: broken rows beyond `max_bad_fraction`, an empty batch, one user or item
  making up an implausible share of it (bots, replay loops, a tracker stuck on a default id).
* WARN is visible but does not block. It is used where legitimate traffic also trips the check:
  volume swings (backfills, quiet nights, a marketing push) and shifts in the event-type mix
  (sales days shift views towards purchases).

Row-level expectations use `mostly = 1 - max_bad_fraction`: `batch` holds every parsed row, the
quarantined ones included, so a file with a few bad rows still lands its good rows, while a file in
which more than `max_bad_fraction` of the rows break one rule is held back.

The metadata names no user: Dagster's event log keeps it for good (a user who is forgotten could not
be removed from it), so values of `USER_ID_CARRIERS` are never reported, only counts and shares.
"""

from __future__ import annotations

import os
import statistics
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal

import polars as pl

from rec_pipeline.core.ingest.contract import EVENT_COLUMNS, EventContract

Metadata = dict[str, int | float | str | list | None]
# Columns whose values can name a user: the id itself, a source's own event id (which may embed it),
# and the free text of sessions and contexts.
USER_ID_CARRIERS = ("user_id", "event_id", "session_id", "context")


@dataclass(frozen=True)
class CheckSpec:
    name: str
    severity: Literal["ERROR", "WARN"]
    description: str


@dataclass(frozen=True)
class CheckOutcome:
    name: str
    passed: bool
    severity: str
    description: str
    metadata: Metadata


@dataclass(frozen=True)
class QualityThresholds:
    """Limits of the checks.

    `flood_max_user_share` is 0.5, not 0.2: in the MovieLens-100K replay (20 batches of 2,500
    events) one user rates in a burst and makes up 29.5% of a batch, which is real behaviour, not a
    bot. Half of a batch of at least `flood_min_rows` events from one user or one item is not
    plausible organic traffic. Smaller replay batches need the checks relaxed (with 100 batches of
    500 events the top user reaches 77%).
    """

    max_bad_fraction: float = 0.05
    volume_ratio_max: float = 10.0
    volume_ratio_min: float = 0.1
    min_recent_batches: int = 3
    mix_max_distance: float = 0.5
    flood_min_rows: int = 200
    flood_max_user_share: float = 0.5
    flood_max_item_share: float = 0.5


@dataclass(frozen=True)
class BatchProfile:
    """What later batches are compared against; cheap to keep for many recent batches."""

    rows: int
    event_type_counts: dict[str, int]


_GX_SPECS: tuple[CheckSpec, ...] = (
    CheckSpec("columns_match_schema", "ERROR", "The batch has exactly the event contract's columns."),
    CheckSpec("batch_not_empty", "ERROR", "The batch holds at least one row."),
    CheckSpec("user_id_not_null", "ERROR", "user_id is present."),
    CheckSpec("item_id_not_null", "ERROR", "item_id is present."),
    CheckSpec("event_type_not_null", "ERROR", "event_type is present."),
    CheckSpec("ts_not_null", "ERROR", "ts is present."),
    CheckSpec("event_type_known", "ERROR", "event_type is one of the contract's event types."),
    CheckSpec("event_id_unique", "ERROR", "event_id is unique within the batch."),
    CheckSpec("ts_in_range", "ERROR", "ts lies between the contract's earliest_ts and latest_ts(now)."),
    CheckSpec("value_in_range", "ERROR", "value lies between 0 and the contract's value_max."),
    CheckSpec("rating_in_range", "ERROR", "Rating events' values lie between rating_min and rating_max."),
)
_ANOMALY_SPECS: tuple[CheckSpec, ...] = (
    CheckSpec("volume_vs_recent", "WARN", "Row count within a factor of the median recent batch size."),
    CheckSpec("event_type_mix", "WARN", "Event-type mix close (total variation) to recent batches."),
    CheckSpec("user_flooding", "ERROR", "No single user makes up an implausible share of the batch."),
    CheckSpec("item_flooding", "ERROR", "No single item makes up an implausible share of the batch."),
)
CHECK_SPECS: tuple[CheckSpec, ...] = _GX_SPECS + _ANOMALY_SPECS
_SPECS_BY_NAME = {spec.name: spec for spec in CHECK_SPECS}
_PARTIAL_LIMIT = 10


def profile_batch(batch: pl.DataFrame) -> BatchProfile:
    """Row count and counts per non-null event type (unknown types included)."""
    counts = batch.get_column("event_type").drop_nulls().value_counts()
    return BatchProfile(rows=batch.height, event_type_counts=dict(counts.iter_rows()))


def validate_batch(
    batch: pl.DataFrame,
    recent: Sequence[BatchProfile],
    contract: EventContract = EventContract(),
    thresholds: QualityThresholds = QualityThresholds(),
    now: datetime | None = None,
) -> list[CheckOutcome]:
    """Run every check on `batch` (all parsed rows, quarantined ones included).

    `recent` are profiles of earlier accepted batches, used as the baseline of the anomaly checks.
    Returns one outcome per `CHECK_SPECS` entry, in that order.
    """
    suite = gx_suite(contract, thresholds.max_bad_fraction)
    outcomes = suite.validate(batch, contract.latest_ts(now))
    outcomes += [
        _volume_vs_recent(batch.height, recent, thresholds),
        _event_type_mix(profile_batch(batch), recent, thresholds),
        _flooding("user_flooding", batch, "user_id", thresholds.flood_max_user_share, thresholds),
        _flooding("item_flooding", batch, "item_id", thresholds.flood_max_item_share, thresholds),
    ]
    return outcomes


# ---------------------------------------------------------------------------------------------
# Great Expectations


class GXSuite:
    """An ephemeral GX context holding the contract's suite; built once per process, then reused.

    Batches are validated with `Batch.validate(suite)`, not `ValidationDefinition.run`: the latter
    stores every result in the context's validation-results store, which grows without bound in a
    long-lived process; `Batch.validate` stores nothing and costs the same. Not thread-safe.
    The upper ts bound moves with the clock, so it is a suite parameter (`$PARAMETER`) set per run.
    """

    def __init__(self, contract: EventContract, mostly: float):
        os.environ["GX_ANALYTICS_ENABLED"] = "false"  # must be set before the import
        import great_expectations as gx  # ~3 s import, paid only when a batch is first validated
        from great_expectations.data_context.types.base import ProgressBarsConfig

        self.contract = contract
        self.mostly = mostly
        context = gx.get_context(mode="ephemeral")
        context.variables.progress_bars = ProgressBarsConfig(globally=False, metric_calculations=False)
        self._batch_definition = (
            context.data_sources.add_pandas("events_source")
            .add_dataframe_asset("events")
            .add_batch_definition_whole_dataframe("batch")
        )
        expectations = []
        for name, expectation in _expectations(contract, mostly).items():
            expectation.meta = {"check": name}
            expectations.append(expectation)
        self._suite = context.suites.add(gx.ExpectationSuite(name="events", expectations=expectations))

    def validate(self, batch: pl.DataFrame, ts_max: datetime) -> list[CheckOutcome]:
        """One outcome per GX check, in `CHECK_SPECS` order (GX reorders its results by column)."""
        gx_batch = self._batch_definition.get_batch(batch_parameters={"dataframe": batch.to_pandas()})
        result = gx_batch.validate(
            self._suite, result_format="SUMMARY", expectation_parameters={"ts_max": ts_max}
        )
        by_name = {r.expectation_config.meta["check"]: r for r in result.results}
        return [_gx_outcome(spec.name, by_name[spec.name]) for spec in _GX_SPECS]


_cached_suite: GXSuite | None = None


def gx_suite(contract: EventContract, max_bad_fraction: float) -> GXSuite:
    """The process-wide GX suite, rebuilt only when the contract or the bad-row budget changes.

    Call it early (e.g. in a Dagster resource's setup) to pay the GX import before the first batch.
    """
    global _cached_suite
    mostly = 1.0 - max_bad_fraction
    if _cached_suite is None or (_cached_suite.contract, _cached_suite.mostly) != (contract, mostly):
        _cached_suite = GXSuite(contract, mostly)
    return _cached_suite


def _expectations(contract: EventContract, mostly: float) -> dict[str, Any]:
    import great_expectations.expectations as gxe
    from great_expectations.expectations.row_conditions import Column

    not_null = {
        f"{column}_not_null": gxe.ExpectColumnValuesToNotBeNull(column=column, mostly=mostly)
        for column in ("user_id", "item_id", "event_type", "ts")
    }
    return {
        "columns_match_schema": gxe.ExpectTableColumnsToMatchSet(
            column_set=list(EVENT_COLUMNS), exact_match=True
        ),
        "batch_not_empty": gxe.ExpectTableRowCountToBeBetween(min_value=1),
        **not_null,
        "event_type_known": gxe.ExpectColumnValuesToBeInSet(
            column="event_type", value_set=list(contract.event_types), mostly=mostly
        ),
        "event_id_unique": gxe.ExpectColumnValuesToBeUnique(column="event_id", mostly=mostly),
        "ts_in_range": gxe.ExpectColumnValuesToBeBetween(
            column="ts",
            min_value=contract.earliest_ts,
            max_value={"$PARAMETER": "ts_max"},
            mostly=mostly,
        ),
        "value_in_range": gxe.ExpectColumnValuesToBeBetween(
            column="value", min_value=0, max_value=contract.value_max, mostly=mostly
        ),
        "rating_in_range": gxe.ExpectColumnValuesToBeBetween(
            column="value",
            min_value=contract.rating_min,
            max_value=contract.rating_max,
            row_condition=Column("event_type") == "rating",
            mostly=mostly,
        ),
    }


def _gx_outcome(name: str, result: Any) -> CheckOutcome:
    """Map one GX ExpectationValidationResult to a JSON-serializable outcome.

    Null cells are not counted by the between/in-set/unique rules (the not-null rules count them),
    and `unexpected_percent` is relative to the non-null cells. A duplicated event_id counts every
    copy as unexpected. Unexpected values are listed only for columns that cannot name a user.
    """
    config, summary = result.expectation_config, result.result or {}
    column = config.kwargs.get("column")
    metadata: Metadata = {
        "expectation_type": config.type,
        "column": column,
        "mostly": config.kwargs.get("mostly"),
        "element_count": summary.get("element_count"),
        "unexpected_count": summary.get("unexpected_count"),
        "unexpected_percent": summary.get("unexpected_percent"),
    }
    if column not in USER_ID_CARRIERS:
        metadata["partial_unexpected_list"] = _jsonable(summary.get("partial_unexpected_list", [])[:_PARTIAL_LIMIT])
    if "observed_value" in summary:
        metadata["observed_value"] = _jsonable(summary["observed_value"])
    if errors := _exception_messages(result.exception_info or {}):
        metadata["exception"] = "; ".join(errors)
    return _outcome(name, bool(result.success), metadata)


def _exception_messages(info: dict) -> list[str]:
    """GX reports either one flat exception record or one record per failed metric."""
    records = [info] if "raised_exception" in info else list(info.values())
    failed = [r for r in records if isinstance(r, dict) and r.get("raised_exception")]
    return [str(r.get("exception_message")) for r in failed]


def _jsonable(value: Any) -> Any:
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if value is None or value != value:  # NaN and NaT are the values unequal to themselves
        return None
    if isinstance(value, (bool, int, float, str)):
        return value
    return str(value)


# ---------------------------------------------------------------------------------------------
# Batch-level anomaly checks (Polars)


def _outcome(name: str, passed: bool, metadata: Metadata) -> CheckOutcome:
    spec = _SPECS_BY_NAME[name]
    return CheckOutcome(name, passed, spec.severity, spec.description, metadata)


def _volume_vs_recent(
    rows: int, recent: Sequence[BatchProfile], t: QualityThresholds
) -> CheckOutcome:
    metadata: Metadata = {"rows": rows, "recent_batches": len(recent)}
    median = statistics.median(p.rows for p in recent) if len(recent) >= t.min_recent_batches else 0
    if not median:
        metadata["reason"] = f"no baseline: fewer than {t.min_recent_batches} non-empty recent batches"
        return _outcome("volume_vs_recent", True, metadata)
    ratio = rows / median
    metadata |= {
        "recent_median_rows": float(median),
        "ratio": ratio,
        "ratio_min": t.volume_ratio_min,
        "ratio_max": t.volume_ratio_max,
    }
    return _outcome("volume_vs_recent", t.volume_ratio_min <= ratio <= t.volume_ratio_max, metadata)


def _event_type_mix(
    profile: BatchProfile, recent: Sequence[BatchProfile], t: QualityThresholds
) -> CheckOutcome:
    """Total-variation distance (half the L1 distance, in [0, 1]) to the pooled recent batches."""
    pooled = sum((Counter(p.event_type_counts) for p in recent), Counter())
    metadata: Metadata = {"recent_batches": len(recent), "max_distance": t.mix_max_distance}
    if len(recent) < t.min_recent_batches or not pooled or not profile.event_type_counts:
        metadata["reason"] = f"no baseline: empty batch, or fewer than {t.min_recent_batches} recent"
        return _outcome("event_type_mix", True, metadata)
    batch_share = _shares(profile.event_type_counts)
    recent_share = _shares(pooled)
    types = batch_share.keys() | recent_share.keys()
    before = {k: recent_share.get(k, 0.0) for k in types}
    after = {k: batch_share.get(k, 0.0) for k in types}
    distance = sum(abs(after[k] - before[k]) for k in types) / 2
    largest = sorted(types, key=lambda k: -abs(after[k] - before[k]))[:5]
    metadata |= {
        "distance": distance,
        "largest_shifts": [f"{k}: {before[k]:.3f} -> {after[k]:.3f}" for k in largest],
    }
    return _outcome("event_type_mix", distance <= t.mix_max_distance, metadata)


def _shares(counts: dict[str, int]) -> dict[str, float]:
    total = sum(counts.values())
    return {k: v / total for k, v in counts.items()}


def _flooding(
    name: str, batch: pl.DataFrame, column: str, max_share: float, t: QualityThresholds
) -> CheckOutcome:
    """Largest single id's share of all rows; small batches are skipped (one user is 100% of 1 row).
    The top id is named only when it cannot be a user's (an item's)."""
    metadata: Metadata = {"rows": batch.height, "max_share": max_share}
    counts = batch.get_column(column).drop_nulls().value_counts(sort=True)
    if batch.height < t.flood_min_rows or counts.is_empty():
        metadata["reason"] = f"fewer than {t.flood_min_rows} rows, or no {column} at all"
        return _outcome(name, True, metadata)
    top_id, top_count = counts.row(0)
    share = top_count / batch.height
    metadata |= {"top_count": top_count, "share": share}
    if column not in USER_ID_CARRIERS:
        metadata["top_id"] = top_id
    return _outcome(name, share <= max_share, metadata)

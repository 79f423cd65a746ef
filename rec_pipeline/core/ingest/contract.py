"""The behaviour-event contract (`../shared/DESIGN.md`, "Data contract") and the item catalogue schema.

Every source (files, the simulator, MovieLens) produces frames with exactly these schemas, so the
landing code, the quality suite and the features read one shape.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone

import polars as pl

DEFAULT_EVENT_WEIGHTS: dict[str, float] = {
    "view": 1.0,
    "click": 2.0,
    "add_to_cart": 4.0,
    "purchase": 8.0,
    "rating": 5.0,
}

EVENT_SCHEMA: dict[str, pl.DataType] = {
    "event_id": pl.String(),
    "user_id": pl.String(),
    "item_id": pl.String(),
    "event_type": pl.String(),
    "ts": pl.Datetime("us", "UTC"),
    "value": pl.Float64(),
    "session_id": pl.String(),
    "context": pl.String(),
}
EVENT_COLUMNS: tuple[str, ...] = tuple(EVENT_SCHEMA)
# The fields no event can do without: a CSV header must name them all, or it is not taken for one.
REQUIRED_COLUMNS: tuple[str, ...] = ("user_id", "item_id", "event_type", "ts")
# The fields that name something: text that is blank, holds a NUL or was a NaN number names nothing.
ID_COLUMNS: tuple[str, ...] = ("event_id", "user_id", "item_id", "session_id")

CATALOGUE_SCHEMA: dict[str, pl.DataType] = {
    "item_id": pl.String(),
    "title": pl.String(),
    "categories": pl.List(pl.String()),
}


@dataclass(frozen=True)
class EventContract:
    """The rules a landed event obeys; every bound is configurable, with the defaults of `../shared/DESIGN.md`."""

    event_weights: dict[str, float] = field(default_factory=lambda: dict(DEFAULT_EVENT_WEIGHTS))
    earliest_ts: datetime = datetime(1990, 1, 1, tzinfo=timezone.utc)
    max_future: timedelta = timedelta(days=1)
    rating_min: float = 0.5
    rating_max: float = 5.0
    value_max: float = 1e9
    max_id_length: int = 256
    max_text_length: int = 4096

    @property
    def event_types(self) -> tuple[str, ...]:
        return tuple(self.event_weights)

    def latest_ts(self, now: datetime | None = None) -> datetime:
        return (now or datetime.now(timezone.utc)) + self.max_future

"""A landed batch's quality: read its rows back, record its check outcomes, hold it back or release it.

A batch whose blocking (ERROR) checks fail gets `quality_status = 'failed'`: its events stay in
`events` for inspection but are absent from `events_validated`, which is all that downstream steps
read. An operator may `release` it (learn from it after all) or `drop` it (never learn from it).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import datetime, timezone

import duckdb
import polars as pl

from rec_pipeline.core.errors import InputError, NotFoundError
from rec_pipeline.core.ingest.contract import EVENT_COLUMNS, EVENT_SCHEMA
from rec_pipeline.core.ingest.quality import BatchProfile, CheckOutcome
from rec_pipeline.core.ops.warehouse import transaction

_FIELDS = ", ".join(EVENT_COLUMNS)


def batch_rows(con: duckdb.DuckDBPyConnection, batch_id: str) -> pl.DataFrame:
    """Every row read for the batch that was not a duplicate: landed and quarantined alike."""
    frame = con.sql(
        f"SELECT {_FIELDS} FROM events WHERE batch_id = $b"
        f" UNION ALL SELECT {_FIELDS} FROM events_rejected WHERE batch_id = $b",
        params={"b": batch_id},
    ).pl()
    return frame.cast(EVENT_SCHEMA)


def recent_profiles(con: duckdb.DuckDBPyConnection, batch_id: str, limit: int = 10) -> list[BatchProfile]:
    """Profiles of the latest landed batches before this one that passed or were released."""
    rows = con.execute(
        """
        WITH recent AS (
            SELECT batch_id, rows_landed + rows_rejected AS rows_read FROM ingested_files
            WHERE status = 'landed' AND quality_status IN ('passed', 'released') AND batch_id <> $b
              AND landed_at <= (SELECT coalesce(max(landed_at), now()) FROM ingested_files WHERE batch_id = $b)
            ORDER BY landed_at DESC LIMIT $limit
        )
        SELECT r.batch_id, any_value(r.rows_read),
               map_from_entries(list((e.event_type, e.n)) FILTER (WHERE e.event_type IS NOT NULL))
        FROM recent r
        LEFT JOIN (SELECT batch_id, event_type, count(*) AS n FROM events GROUP BY ALL) e USING (batch_id)
        GROUP BY r.batch_id
        """,
        {"b": batch_id, "limit": limit},
    ).fetchall()
    # A batch whose rows were all rejected has no event-type mix (NULL): an empty one.
    return [BatchProfile(rows=rows_read, event_type_counts=dict(mix or {})) for _, rows_read, mix in rows]


def record_checks(
    con: duckdb.DuckDBPyConnection, batch_id: str, outcomes: Sequence[CheckOutcome], now: datetime | None = None
) -> str:
    """Store each outcome and set the batch's quality status; returns that status."""
    now = now or datetime.now(timezone.utc)
    blocked = any(not o.passed and o.severity == "ERROR" for o in outcomes)
    status = "failed" if blocked else "passed"
    with transaction(con):
        con.execute("DELETE FROM batch_checks WHERE batch_id = ?", [batch_id])
        con.executemany(
            "INSERT INTO batch_checks VALUES (?, ?, ?, ?, ?, ?, ?)",
            [[batch_id, o.name, o.passed, o.severity, o.description, json.dumps(o.metadata, default=str), now]
             for o in outcomes],
        )
        con.execute(
            "UPDATE ingested_files SET quality_status = ? WHERE batch_id = ? AND quality_status NOT IN ('released', 'dropped')",
            [status, batch_id],
        )
    return status


def set_operator_decision(con: duckdb.DuckDBPyConnection, batch_id: str, decision: str) -> None:
    """`release` a held-back batch to training, or `drop` any batch from it."""
    if decision not in ("released", "dropped"):
        raise InputError(f"decision must be 'released' or 'dropped', not {decision!r}")
    updated = con.execute(
        "UPDATE ingested_files SET quality_status = ? WHERE batch_id = ? AND status = 'landed'",
        [decision, batch_id],
    ).fetchone()[0]
    if updated == 0:
        raise NotFoundError(f"no landed batch {batch_id}")


def batch_overview(con: duckdb.DuckDBPyConnection, limit: int) -> list[dict]:
    """The latest `limit` batches, newest first, with their counts, quality status and failed checks."""
    rows = con.execute("SELECT * FROM batch_overview ORDER BY landed_at DESC LIMIT ?", [limit])
    names = [column[0] for column in rows.description]
    return [dict(zip(names, row)) for row in rows.fetchall()]

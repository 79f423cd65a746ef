"""What is in the warehouse, in numbers: the answer of `rec-pipeline status`."""

import duckdb


def warehouse_status(con: duckdb.DuckDBPyConnection) -> dict:
    row = con.execute(
        """
        SELECT (SELECT count(*) FROM events),
               (SELECT count(*) FROM events_rejected),
               (SELECT count(DISTINCT user_id) FROM events),
               (SELECT count(*) FROM (SELECT item_id FROM events UNION SELECT item_id FROM items)),
               (SELECT count(*) FROM ingested_files WHERE status = 'landed'),
               (SELECT count(*) FROM ingested_files WHERE status = 'landed' AND quality_status = 'failed'),
               (SELECT count(*) FROM ingested_files WHERE status = 'landed' AND quality_status = 'pending'),
               (SELECT count(*) FROM ingested_files WHERE status = 'failed'),
               (SELECT count(*) FROM events_validated),
               (SELECT max(landed_at) FROM ingested_files WHERE status = 'landed'),
               (SELECT max(ts) FROM events)
        """
    ).fetchone()
    names = ("events", "rejected", "users", "items", "batches", "batches_held_back", "batches_pending", "files_failed",
             "events_validated", "last_landed_at", "latest_event_ts")
    status = dict(zip(names, row))
    for key in ("last_landed_at", "latest_event_ts"):
        status[key] = status[key].isoformat() if status[key] else None
    return status

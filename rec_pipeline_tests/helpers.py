"""Helpers several test modules share."""

import time
from datetime import datetime, timezone
from pathlib import Path

import dagster as dg
import polars as pl

from rec_pipeline.core.ingest.event_files import write_events
from rec_pipeline.defs.resources import WAREHOUSE_POOL


def big_events_file(path: Path, rows: int) -> Path:
    """`rows` valid view events as Parquet: big enough that landing it takes a while."""
    index = pl.int_range(rows, eager=True)
    frame = pl.DataFrame({"event_id": "big-" + index.cast(pl.String), "user_id": "u" + (index % 5_003).cast(pl.String),
                          "item_id": "i" + (index % 997).cast(pl.String)})
    return write_events(frame.with_columns(event_type=pl.lit("view"), ts=pl.lit(datetime(2026, 1, 1, tzinfo=timezone.utc)),
                                           value=pl.lit(None, pl.Float64), session_id=pl.lit(None, pl.String),
                                           context=pl.lit(None, pl.String)), path)


def wait_until_the_warehouse_is_held(dagster_home: Path) -> str:
    """The id of the run holding the `warehouse` pool's slot, once one does."""
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        with dg.DagsterInstance.from_config(str(dagster_home)) as instance:
            storage = instance.event_log_storage
            if WAREHOUSE_POOL in storage.get_concurrency_keys():
                holders = storage.get_concurrency_info(WAREHOUSE_POOL).active_run_ids
                if holders:
                    return next(iter(holders))
        time.sleep(0.2)
    raise TimeoutError("no run took the warehouse slot")



"""The item catalogue: titles and categories from the simulator or MovieLens."""

from datetime import datetime, timezone

import duckdb
import polars as pl

from rec_pipeline.core.ingest.contract import CATALOGUE_SCHEMA


def upsert_items(con: duckdb.DuckDBPyConnection, items: pl.DataFrame, now: datetime | None = None) -> int:
    """Insert new items and update known ones; returns the number of rows written."""
    catalogue = items.select(list(CATALOGUE_SCHEMA)).cast(CATALOGUE_SCHEMA)  # noqa: F841 (read by DuckDB)
    return con.execute(
        """INSERT INTO items SELECT item_id, title, categories, $now FROM catalogue
           ON CONFLICT (item_id) DO UPDATE SET title = excluded.title, categories = excluded.categories,
                                               updated_at = excluded.updated_at""",
        {"now": now or datetime.now(timezone.utc)},
    ).fetchone()[0]

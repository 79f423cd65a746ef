"""Publishing recommendations: an atomic swap in the warehouse, then a read-only serving copy.

Readers never open the warehouse (DuckDB lets no other process open a file while one writes it).
They open `serving.duckdb`, which is written aside and renamed over the old file: a reader that has
the old file open keeps reading it, and a new reader gets the complete new one.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

import duckdb
import polars as pl

from rec_pipeline.core.ops.warehouse import transaction

RECOMMENDATION_SCHEMA: dict[str, pl.DataType] = {
    "user_id": pl.String(),
    "item_id": pl.String(),
    "rank": pl.Int32(),
    "score": pl.Float64(),
    "model_version": pl.String(),
    "generated_at": pl.Datetime("us", "UTC"),
    "reason": pl.String(),
}

# What the serving copy holds, as (table, query on the warehouse).
SERVING_TABLES = (
    ("recommendations", "SELECT * FROM recommendations"),
    ("items", "SELECT * FROM items"),
    ("trending_items", "SELECT * FROM trending_items"),
    ("model_registry", "SELECT version, kind, parent, trained_at, window_start, window_end, metrics, status"
                       " FROM model_registry"),
)
# Unqualified, so that it resolves in whichever database it is called from: the serving file.
SERVING_MACRO = (
    "CREATE MACRO serving_copy.recommendations_for(uid) AS TABLE "
    "SELECT * FROM recommendations WHERE user_id = uid ORDER BY rank"
)


def replace_recommendations(con: duckdb.DuckDBPyConnection,
                            recommendations: pl.DataFrame | Iterable[pl.DataFrame]) -> int:
    """Swap the whole table in one transaction: readers see the old rows or the new, never a mix.
    Takes one frame or an iterable of chunks (each is written as it comes, so only one chunk needs
    to be in memory); a chunk that fails to convert rolls back every chunk before it."""
    chunks = [recommendations] if isinstance(recommendations, pl.DataFrame) else recommendations
    inserted = 0
    with transaction(con):
        con.execute("DELETE FROM recommendations")
        for chunk in chunks:
            frame = chunk.select(list(RECOMMENDATION_SCHEMA)).cast(RECOMMENDATION_SCHEMA)  # noqa: F841
            inserted += con.execute("INSERT INTO recommendations SELECT * FROM frame").fetchall()[0][0]
    return inserted


def publish_serving(con: duckdb.DuckDBPyConnection, serving_path: Path) -> Path:
    """Copy the serving tables into a new DuckDB file beside `serving_path`, then rename it over."""
    serving_path = Path(serving_path)
    for stale in serving_path.parent.glob(f".{serving_path.name}.*.tmp"):  # left by a killed publisher
        stale.unlink(missing_ok=True)
    staging = serving_path.with_name(f".{serving_path.name}.{os.getpid()}.tmp")
    con.execute("ATTACH ? AS serving_copy", [str(staging)])
    try:
        for table, query in SERVING_TABLES:
            con.execute(f"CREATE TABLE serving_copy.{table} AS {query}")
        con.execute(SERVING_MACRO)
    finally:
        con.execute("DETACH serving_copy")
    os.replace(staging, serving_path)
    return serving_path

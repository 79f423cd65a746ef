"""The serving database (`serving.duckdb`): what it holds, how it is published, and the question
apps ask of it.

Readers never open the warehouse (DuckDB lets no other process open a file while one writes it).
They open `serving.duckdb`, which is written aside and renamed over the old file: a reader that has
the old file open keeps reading it, and a new reader gets the complete new one. Its schema is
defined here and nowhere else: the tables it copies from the warehouse and the
`recommendations_for(user_id)` macro.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass
from pathlib import Path

import duckdb
import polars as pl

from rec_pipeline.core.errors import NotFoundError

# What the serving copy holds, as (table, query on the warehouse).
SERVING_TABLES = (
    ("recommendations", "SELECT * FROM recommendations"),
    ("items", "SELECT * FROM items"),
    ("trending_items", "SELECT * FROM trending_items"),
    ("model_registry", "SELECT version, kind, parent, trained_at, window_start, window_end, metrics, status"
                       " FROM model_registry"),
)
# One user's list: SELECT * FROM recommendations_for('u000123'). Unqualified table name, so that it
# resolves in the database it is called from: the serving file.
RECOMMENDATIONS_FOR = ("CREATE MACRO {database}.recommendations_for(uid) AS TABLE "
                       "SELECT * FROM recommendations WHERE user_id = uid ORDER BY rank")
TRENDING_REASON = "trending now"


@dataclass(frozen=True)
class Recommendation:
    item_id: str
    rank: int
    score: float
    model_version: str
    reason: str | None
    fallback: bool  # the trending list, shown to a user the published lists do not know

    def as_dict(self) -> dict:
        return asdict(self)


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
        con.execute(RECOMMENDATIONS_FOR.format(database="serving_copy"))
    finally:
        con.execute("DETACH serving_copy")
    os.replace(staging, serving_path)
    return serving_path


def recommendations_for(serving_path: Path, stored_user_id: str, k: int) -> list[Recommendation]:
    """The user's published top `k` (`stored_user_id`: the pseudonym when ids are pseudonymized),
    or the trending list marked `fallback` when the user has none."""
    with _open(serving_path) as con:
        rows = con.execute("SELECT item_id, rank, score, model_version, reason FROM recommendations_for(?)"
                           " WHERE rank <= ?", [stored_user_id, k]).fetchall()
        if rows:
            return [Recommendation(*row, fallback=False) for row in rows]
        trending = con.execute("SELECT item_id, rank, score FROM trending_items WHERE rank <= ? ORDER BY rank",
                               [k]).fetchall()
    return [Recommendation(item, rank, score, "fallback", TRENDING_REASON, fallback=True)
            for item, rank, score in trending]


def preview(serving_path: Path, per_user: int = 3, rows: int = 15) -> pl.DataFrame:
    """The top `per_user` items of the first lists: what a run shows of what it published. Lists are
    numbered, not named: Dagster's event log keeps what it is shown forever, and a user's id must
    be erasable (`rec-pipeline forget`)."""
    with _open(serving_path) as con:
        return con.sql("SELECT dense_rank() OVER (ORDER BY user_id) AS list, item_id, rank,"
                       " round(score, 4) AS score, model_version, reason FROM recommendations"
                       " WHERE rank <= $per_user ORDER BY list, rank LIMIT $rows",
                       params={"per_user": per_user, "rows": rows}).pl()


def _open(serving_path: Path) -> duckdb.DuckDBPyConnection:
    if not Path(serving_path).exists():
        raise NotFoundError(f"nothing published yet at {serving_path}: run `rec-pipeline refresh`")
    return duckdb.connect(str(serving_path), read_only=True)

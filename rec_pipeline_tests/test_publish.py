"""Publishing: the warehouse table swaps atomically and serving.duckdb readers are never blocked and
never see a partial table, while the pipeline republishes."""

import multiprocessing
import time
from datetime import datetime, timezone

import duckdb
import polars as pl
import pytest

from rec_pipeline.core.model.publish import replace_recommendations
from rec_pipeline.core.model.serving import publish_serving

USERS, K = 500, 20


def recommendations(version: str) -> pl.DataFrame:
    return pl.DataFrame({
        "user_id": [f"u{u}" for u in range(USERS) for _ in range(K)],
        "item_id": [f"i{(u + r) % 97}" for u in range(USERS) for r in range(K)],
        "rank": [r + 1 for _ in range(USERS) for r in range(K)],
        "score": [1.0 / (r + 1) for _ in range(USERS) for r in range(K)],
        "model_version": version,
        "generated_at": datetime(2026, 1, 1, tzinfo=timezone.utc),
        "reason": "popular in your categories",
    })


def test_swap_replaces_the_whole_table(warehouse):
    with warehouse.connect() as con:
        assert replace_recommendations(con, recommendations("m-1")) == USERS * K
        assert replace_recommendations(con, recommendations("m-2").head(30)) == 30
        assert con.execute("SELECT DISTINCT model_version FROM recommendations").fetchall() == [("m-2",)]


def test_a_failed_swap_leaves_the_old_table(warehouse):
    with warehouse.connect() as con:
        replace_recommendations(con, recommendations("m-1"))
        broken = recommendations("m-2").with_columns(pl.lit(None, pl.String).alias("item_id"))
        with pytest.raises(duckdb.ConstraintException):
            replace_recommendations(con, broken)
        assert con.execute("SELECT count(*), min(model_version) FROM recommendations").fetchone() == (USERS * K, "m-1")


def test_chunks_are_written_as_one_swap(warehouse):
    fresh = recommendations("m-2")
    with warehouse.connect() as con:
        replace_recommendations(con, recommendations("m-1"))
        assert replace_recommendations(con, (fresh.slice(i, 3000) for i in range(0, fresh.height, 3000))) == USERS * K
        assert con.execute("SELECT count(*), min(model_version) FROM recommendations").fetchone() == (USERS * K, "m-2")


def test_a_chunk_failing_midway_rolls_back_the_chunks_before_it(warehouse):
    def chunks():
        yield recommendations("m-2").head(100)
        raise RuntimeError("scoring failed")

    with warehouse.connect() as con:
        replace_recommendations(con, recommendations("m-1"))
        with pytest.raises(RuntimeError, match="scoring failed"):
            replace_recommendations(con, chunks())
        assert con.execute("SELECT count(*), min(model_version) FROM recommendations").fetchone() == (USERS * K, "m-1")


def test_serving_copy_answers_the_macro(warehouse, tmp_path):
    serving = tmp_path / "serving.duckdb"
    with warehouse.connect() as con:
        replace_recommendations(con, recommendations("m-1"))
        publish_serving(con, serving)
    with duckdb.connect(str(serving), read_only=True) as reader:
        rows = reader.sql("SELECT item_id, rank FROM recommendations_for('u3')").fetchall()
    assert [rank for _, rank in rows] == list(range(1, K + 1))
    assert not list(tmp_path.glob(".serving*")), "no staging file left behind"


def _read_loop(path: str, seconds: float, results) -> None:
    deadline = time.monotonic() + seconds
    seen = []
    while time.monotonic() < deadline:
        try:
            with duckdb.connect(path, read_only=True) as reader:
                seen.append(reader.execute(
                    "SELECT count(*), count(DISTINCT model_version) FROM recommendations").fetchone())
        except Exception as error:  # any failure is what the test looks for
            seen.append(("error", repr(error)))
    results.put(seen)


def test_readers_are_never_blocked_and_never_see_a_partial_table(warehouse, tmp_path):
    serving = tmp_path / "serving.duckdb"
    with warehouse.connect() as con:
        replace_recommendations(con, recommendations("m-0"))
        publish_serving(con, serving)
        results = multiprocessing.get_context("spawn").Queue()
        reader = multiprocessing.get_context("spawn").Process(target=_read_loop, args=(str(serving), 6.0, results))
        reader.start()
        for n in range(1, 30):  # the pipeline keeps writing its warehouse and republishing
            replace_recommendations(con, recommendations(f"m-{n}"))
            publish_serving(con, serving)
        seen = results.get(timeout=60)
        reader.join(timeout=30)
    assert len(seen) > 10, "the reader kept reading"
    assert all(row == (USERS * K, 1) for row in seen), [row for row in seen if row != (USERS * K, 1)][:3]

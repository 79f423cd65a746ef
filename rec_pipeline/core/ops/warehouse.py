"""The pipeline-owned DuckDB file: short-lived connections, lock retries, versioned migrations.

DuckDB allows one writing process per file and, while it writes, even read-only openers in other
processes fail. Connections are therefore opened per step and closed quickly, and opening retries
with backoff for a bounded time when another process holds the lock.
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timezone
from importlib.resources import files
from importlib.resources.abc import Traversable
from pathlib import Path

import duckdb

from rec_pipeline.core.errors import WarehouseLockedError

# The repository's top-level sql/ folder, shipped in the package as rec_pipeline/sql (a link to it
# in a checkout, a copy in a wheel).
SQL_DIR: Traversable = files("rec_pipeline") / "sql"
_MIGRATION_NAME = re.compile(r"^(\d{3})_[a-z0-9_]+\.sql$")


def migration_files(sql_dir: Traversable = SQL_DIR) -> list[tuple[int, Traversable]]:
    """The numbered `NNN_name.sql` files in order; anything else ending in .sql is an error."""
    migrations = []
    for path in sorted((p for p in sql_dir.iterdir() if p.name.endswith(".sql")), key=lambda p: p.name):
        match = _MIGRATION_NAME.match(path.name)
        if not match:
            raise ValueError(f"{path}: migration files are named NNN_lower_snake.sql")
        migrations.append((int(match.group(1)), path))
    if not migrations:
        raise FileNotFoundError(f"no migrations in {sql_dir}: the rec_pipeline package is incomplete")
    versions = [version for version, _ in migrations]
    if versions != list(range(1, len(versions) + 1)):
        raise ValueError(f"{sql_dir}: migration versions must run 1..N without gaps, got {versions}")
    return migrations


def apply_migrations(con: duckdb.DuckDBPyConnection, sql_dir: Traversable = SQL_DIR) -> list[int]:
    """Apply each migration not yet recorded in `schema_migrations`, each in its own transaction."""
    con.execute(
        "CREATE TABLE IF NOT EXISTS schema_migrations "
        "(version INTEGER PRIMARY KEY, name VARCHAR NOT NULL, applied_at TIMESTAMPTZ NOT NULL)"
    )
    applied = {row[0] for row in con.execute("SELECT version FROM schema_migrations").fetchall()}
    newly_applied = []
    for version, path in migration_files(sql_dir):
        if version in applied:
            continue
        con.execute("BEGIN TRANSACTION")
        try:
            con.execute(path.read_text())
            con.execute(
                "INSERT INTO schema_migrations VALUES (?, ?, ?)",
                [version, path.name, datetime.now(timezone.utc)],
            )
            con.execute("COMMIT")
        except Exception:
            con.execute("ROLLBACK")
            raise
        newly_applied.append(version)
    return newly_applied


_OPEN_TRANSACTIONS: set[int] = set()


@contextmanager
def transaction(con: duckdb.DuckDBPyConnection) -> Iterator[None]:
    """A transaction on `con`, or a part of the one already open there (DuckDB cannot nest them and
    aborts the open one on a second BEGIN): then the outermost block commits or rolls back."""
    if id(con) in _OPEN_TRANSACTIONS:
        yield
        return
    con.execute("BEGIN TRANSACTION")
    _OPEN_TRANSACTIONS.add(id(con))
    try:
        yield
        con.execute("COMMIT")
    except BaseException:
        con.execute("ROLLBACK")
        raise
    finally:
        _OPEN_TRANSACTIONS.discard(id(con))


def _is_lock_error(error: duckdb.Error) -> bool:
    return "lock" in str(error).lower()


class Warehouse:
    """Opens the warehouse file; the first read-write connection of a process brings the schema up
    to date. `memory_limit` caps the memory of the DuckDB instance each connection opens."""

    def __init__(
        self, path: Path, lock_timeout_s: float = 120.0, memory_limit: str = "1GB", sql_dir: Traversable = SQL_DIR
    ):
        self.path = Path(path)
        self.lock_timeout_s = lock_timeout_s
        self.memory_limit = memory_limit
        self.sql_dir = sql_dir
        self._migrated = False

    @contextmanager
    def connect(self, read_only: bool = False) -> Iterator[duckdb.DuckDBPyConnection]:
        if read_only and not self.path.exists():
            raise FileNotFoundError(f"no warehouse at {self.path}: land some events first")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        con = self._open(read_only)
        try:
            con.execute("SET TimeZone = 'UTC'")
            # Bounded memory: beyond the limit DuckDB spills temp tables next to the file.
            con.execute("SET memory_limit = ?", [self.memory_limit])
            # Landing numbers records by their position in a fresh temp table.
            con.execute("SET preserve_insertion_order = true")
            if not read_only and not self._migrated:
                apply_migrations(con, self.sql_dir)
                self._migrated = True
            yield con
        finally:
            con.close()

    def _open(self, read_only: bool) -> duckdb.DuckDBPyConnection:
        deadline = time.monotonic() + self.lock_timeout_s
        delay = 0.05
        while True:
            try:
                return duckdb.connect(str(self.path), read_only=read_only)
            except (duckdb.IOException, duckdb.ConnectionException) as error:
                if not _is_lock_error(error):
                    raise
                if time.monotonic() + delay > deadline:
                    raise WarehouseLockedError(
                        f"{self.path} stayed locked for {self.lock_timeout_s:.0f}s: {error}"
                    ) from error
                time.sleep(delay)
                delay = min(delay * 2, 2.0)

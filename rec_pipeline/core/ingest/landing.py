"""Land one event file into the warehouse as one batch, in one transaction, exactly once.

For every file: rows read = landed + duplicates + rejected, checked before commit and enforced by a
CHECK constraint on `ingested_files`. A file whose bytes were landed before (same sha256) changes
nothing. A file that cannot be read at all is recorded as failed with its reason, and nothing of it
is written. An event_id already landed with other contents is a conflict, not a duplicate: the row
is quarantined saying so. A file that changes while it is landed (a writer still at it) is refused.
"""

from __future__ import annotations

import gzip
import hashlib
import tempfile
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Literal

import duckdb
import polars as pl

from rec_pipeline.core.errors import InputError
from rec_pipeline.core.ingest.contract import EventContract
from rec_pipeline.core.ingest.landing_folder import FileState
from rec_pipeline.core.ingest.normalize import (
    CONTENT_EVENT_ID,
    contract_parameters,
    normalize_sql,
)
from rec_pipeline.core.ingest.sources import (
    REJECTS_TABLE,
    UnreadableFileError,
    UnsupportedFormatError,
    detect_format,
    drop_reader_tables,
    format_suffix,
    record_source,
)
from rec_pipeline.core.ops.pseudonymization import Pseudonymizer
from rec_pipeline.core.ops.warehouse import Warehouse, transaction

# Errors that mean "this file cannot be read"; anything else is a bug and propagates.
UNREADABLE_FILE_ERRORS = (
    duckdb.IOException,
    duckdb.InvalidInputException,
    duckdb.ConversionException,
    UnreadableFileError,
    UnicodeDecodeError,
    EOFError,
    gzip.BadGzipFile,
    zlib.error,
    OSError,
)

_EVENT_FIELDS = "event_id, user_id, item_id, event_type, ts, value, session_id, context"
# A staged record without a number is numbered by its position (see _stage_rows).
_ROW_NUMBER = "coalesce(source_row, rowid + 1)"


@dataclass(frozen=True)
class LandingReport:
    batch_id: str
    path: str
    status: Literal["landed", "already_landed", "failed"]
    read: int = 0
    landed: int = 0
    duplicates: int = 0
    rejected: int = 0
    reason: str | None = None

    def as_dict(self) -> dict:
        return asdict(self)


class AccountingError(AssertionError):
    """read != landed + duplicates + rejected: the batch is rolled back."""


class FileChangedError(InputError):
    """The file's size, mtime or inode moved while it was landed: a writer is still at it, and what
    was read is not a whole file. Nothing of it lands; it is recorded as failed (so that the command
    line's "see ingested_files" finds it), and raised rather than reported so that the caller
    neither archives nor retries a file that is still being written."""


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(8 * 1024 * 1024):
            digest.update(block)
    return digest.hexdigest()


def batch_id_for(sha256: str) -> str:
    return f"b-{sha256[:16]}"


def land_file(
    warehouse: Warehouse,
    path: Path,
    contract: EventContract = EventContract(),
    now: datetime | None = None,
    pseudonymizer: Pseudonymizer | None = None,
) -> LandingReport:
    """Land `path` (see the module docstring); with `pseudonymizer`, user ids are replaced by their
    pseudonyms before anything is written (`core.pseudonymization`). Raises `FileChangedError` when
    the file changes before the landing commits."""
    path = Path(path).absolute()
    state = _file_state(path)
    sha256 = file_sha256(path)
    batch_id = batch_id_for(sha256)
    now = now or datetime.now(timezone.utc)
    with warehouse.connect() as con:
        previous = _previous_landing(con, batch_id)
        if previous is not None:
            return previous
        try:
            _stage_rows(con, path, contract, now)
            if pseudonymizer is not None:
                _pseudonymize_staged(con, pseudonymizer)
            counts = _land_in_transaction(con, path, batch_id, sha256, state, now)
        except (FileChangedError, *UNREADABLE_FILE_ERRORS) as error:
            # A file cut short because it is still being written is not unreadable: it changed.
            failure = _change_of(path, state) or error
            reason = _one_line(failure)
            _record_failure(con, path, batch_id, sha256, reason, now, state.size)
            if isinstance(failure, FileChangedError):
                raise failure
            return LandingReport(batch_id, str(path), "failed", reason=reason)
    return LandingReport(batch_id, str(path), "landed", *counts)


def land_trusted(warehouse: Warehouse, path: Path, rows: int,
                 pseudonymizer: Pseudonymizer | None = None) -> LandingReport:
    """Land a file known to hold `rows` good events (a replayed historical log, a benchmark's
    simulated events) and mark its batch passed without running the quality suite, which is the
    landing job's part. Raises when not every row lands."""
    report = land_file(warehouse, path, pseudonymizer=pseudonymizer)
    if report.status != "landed" or report.landed != rows:
        raise RuntimeError(f"landed {report.landed} of {rows} events from {Path(path).name}: {report.as_dict()}")
    with warehouse.connect() as con:
        con.execute("UPDATE ingested_files SET quality_status = 'passed' WHERE batch_id = ?", [report.batch_id])
    return report


def _file_state(path: Path) -> FileState:
    stat = path.stat()
    return FileState(stat.st_size, stat.st_mtime_ns, stat.st_ino)


def _change_of(path: Path, before: FileState) -> FileChangedError | None:
    """The error to raise when the file is not as it was when landing began (None if it is):
    what was read may then be a part of it, and its sha256 no longer names its content."""
    try:
        if _file_state(path) == before:
            return None
    except FileNotFoundError:
        pass
    return FileChangedError(
        f"{path.name} changed while it was being landed (its size or mtime moved, or it was replaced): a writer"
        " may still be at it. Nothing of it landed; land it again once it is complete"
    )


def _previous_landing(con: duckdb.DuckDBPyConnection, batch_id: str) -> LandingReport | None:
    rows = con.execute(
        "SELECT path, rows_read, rows_landed + rows_duplicate, rows_rejected FROM ingested_files"
        " WHERE batch_id = ? AND status = 'landed'",
        [batch_id],
    ).fetchall()
    if not rows:
        return None
    path, read, already_there, rejected = rows[0]
    return LandingReport(batch_id, path, "already_landed", read, 0, already_there, rejected)


def _land_in_transaction(
    con: duckdb.DuckDBPyConnection,
    path: Path,
    batch_id: str,
    sha256: str,
    state: FileState,
    now: datetime,
) -> tuple[int, int, int, int]:
    """Everything the file writes, committed only if the counts agree and the file is still as it
    was when landing began (checked last, so a change at any moment before commit is seen)."""
    with transaction(con):
        ids = _event_id_counts(con)
        if _quarantine_conflicts(con, ids):
            ids = _event_id_counts(con)
        rejected = _insert_rejects(con, batch_id, path)
        landed = _insert_new_events(con, batch_id, ids)
        read = con.execute("SELECT count(*) FROM batch_rows WHERE NOT skip").fetchone()[0]
        duplicates = read - landed - rejected
        if duplicates < 0:
            raise AccountingError(f"{path}: read {read} < landed {landed} + rejected {rejected}")
        con.execute("DELETE FROM ingested_files WHERE batch_id = ?", [batch_id])
        con.execute(
            "INSERT INTO ingested_files (batch_id, sha256, path, file_format, size_bytes, status,"
            " rows_read, rows_landed, rows_duplicate, rows_rejected, landed_at)"
            " VALUES (?, ?, ?, ?, ?, 'landed', ?, ?, ?, ?, ?)",
            [batch_id, sha256, str(path), detect_format(path), state.size,
             read, landed, duplicates, rejected, now],
        )
        con.execute("DROP TABLE batch_rows")
        if change := _change_of(path, state):
            raise change
    return read, landed, duplicates, rejected


def _stage_rows(con: duckdb.DuckDBPyConnection, path: Path, contract: EventContract, now: datetime) -> None:
    """Read and normalize the file into temp table `batch_rows` in one pass (DuckDB spills it to
    disk beyond its memory limit); nothing in the warehouse changes."""
    parameters = contract_parameters(contract, now)
    con.execute("DROP TABLE IF EXISTS batch_rows")
    drop_reader_tables(con)
    with _plain_named(path) as readable:
        source = record_source(readable)
        con.execute(f"CREATE TEMP TABLE batch_rows AS {normalize_sql(source.records)}", parameters | source.parameters)
    if source.rejected is None:
        return
    if con.execute(f"SELECT count(*) FROM {REJECTS_TABLE}").fetchone()[0] == 0:
        return  # every record's number is its position: see _ROW_NUMBER
    _number_around_rejected_records(con, source.rejected)
    con.execute(f"INSERT INTO batch_rows {normalize_sql(source.rejected)}", parameters)


def _pseudonymize_staged(con: duckdb.DuckDBPyConnection, pseudonymizer: Pseudonymizer) -> None:
    """Every staged user_id replaced by its pseudonym, content ids recomputed from it, the raw text
    of rejected rows dropped: no raw id goes further than this temp table."""
    raw_ids = [user for (user,) in con.execute("SELECT DISTINCT user_id FROM batch_rows WHERE user_id IS NOT NULL")
               .fetchall()]
    pseudonyms = pl.DataFrame({"raw_id": raw_ids, "pseudonym": [pseudonymizer(user) for user in raw_ids]},  # noqa: F841
                              schema={"raw_id": pl.String, "pseudonym": pl.String})
    con.execute("UPDATE batch_rows SET user_id = p.pseudonym FROM pseudonyms p WHERE batch_rows.user_id = p.raw_id")
    con.execute(f"UPDATE batch_rows SET event_id = {CONTENT_EVENT_ID} WHERE content_id")
    con.execute("UPDATE batch_rows SET raw = NULL")


@contextmanager
def _plain_named(path: Path) -> Iterator[Path]:
    """DuckDB's readers expand `*?[]{}` in a path as a glob: read such a file through a plain link."""
    if not any(char in str(path) for char in "*?[]{}"):
        yield path
        return
    with tempfile.TemporaryDirectory() as folder:
        link = Path(folder) / f"input{format_suffix(path)}"
        link.symlink_to(path)
        yield link


def _number_around_rejected_records(con: duckdb.DuckDBPyConnection, rejected_sql: str) -> None:
    """The reader's accepted records are numbered by their position (a fresh table's rowids follow
    the file order); each rejected record before one shifts its number by one (an ASOF join)."""
    con.execute(f"""
        UPDATE batch_rows SET source_row = numbered.source_row
        FROM (
            SELECT b.rowid AS position, b.rowid + 1 + coalesce(g.rejected_so_far, 0) AS source_row
            FROM batch_rows b ASOF LEFT JOIN (
                -- adjacent rejected records share `accepted_before`: keep the count after the last
                SELECT accepted_before, max(rejected_so_far) AS rejected_so_far
                FROM (SELECT source_row - row_number() OVER (ORDER BY source_row) AS accepted_before,
                             row_number() OVER (ORDER BY source_row) AS rejected_so_far
                      FROM ({rejected_sql}))
                GROUP BY accepted_before
            ) g ON b.rowid + 1 > g.accepted_before
        ) numbered
        WHERE batch_rows.rowid = numbered.position""")


def _insert_rejects(con: duckdb.DuckDBPyConnection, batch_id: str, path: Path) -> int:
    return con.execute(
        f"""INSERT INTO events_rejected
            SELECT $batch_id, $path, {_ROW_NUMBER}, raw, reason, {_EVENT_FIELDS}
            FROM batch_rows WHERE reason IS NOT NULL AND NOT skip""",
        {"batch_id": batch_id, "path": str(path)},
    ).fetchone()[0]


def _event_id_counts(con: duckdb.DuckDBPyConnection) -> tuple[int, int, int]:
    """Of the staged rows that keep the contract: event ids in all, distinct, and already landed."""
    return con.execute(
        """SELECT count(b.event_id), count(DISTINCT b.event_id), count(DISTINCT e.event_id)
           FROM batch_rows b LEFT JOIN (SELECT DISTINCT event_id FROM events) e USING (event_id)
           WHERE b.reason IS NULL"""
    ).fetchone()


def _quarantine_conflicts(con: duckdb.DuckDBPyConnection, ids: tuple[int, int, int]) -> int:
    """A row whose event_id already landed with other contents (in an earlier batch, or earlier in
    this file) is a conflict, not a duplicate: it is quarantined with a reason naming where the
    landed one is, so the first version stays and the other is kept for inspection. Contents are
    compared as normalized (UTC instants, lower-case event types, pseudonyms), so the same event
    re-sent in another format is still a plain duplicate. Each query runs only when `ids` (from
    `_event_id_counts`) says it can find something: a file of new, distinct ids pays nothing.
    Returns the number of rows quarantined."""
    valid, distinct, known = ids
    quarantined = 0
    if known:
        quarantined += con.execute(_CONFLICTS_WITH_EARLIER_BATCHES).fetchone()[0]
    if valid > distinct:
        quarantined += con.execute(_CONFLICTS_WITHIN_THE_FILE).fetchone()[0]
    return quarantined


def _content(alias: str = "") -> str:
    """An event's contents: what two rows with one event_id must agree on to be duplicates."""
    fields = ("user_id", "item_id", "event_type", "ts", "value", "session_id", "context")
    return "row(" + ", ".join(alias + field for field in fields) + ")"


def _conflict(event_id: str, landed_where: str) -> str:
    return f"'event_id ' || {event_id} || ' already landed with other contents ' || {landed_where}"


_CONFLICTS_WITH_EARLIER_BATCHES = f"""
UPDATE batch_rows AS b SET reason = {_conflict("b.event_id", "'in batch ' || e.batch_id")}
FROM events e
WHERE e.event_id = b.event_id AND b.reason IS NULL AND {_content("b.")} IS DISTINCT FROM {_content("e.")}"""
_CONFLICTS_WITHIN_THE_FILE = f"""
UPDATE batch_rows
SET reason = {_conflict("batch_rows.event_id", "'at row ' || earliest.source_row || ' of this file'")}
FROM (
    SELECT rowid AS position, first_value({_ROW_NUMBER}) OVER same_id AS source_row,
           {_content()} IS DISTINCT FROM first_value({_content()}) OVER same_id AS differs
    FROM batch_rows WHERE reason IS NULL
    WINDOW same_id AS (PARTITION BY event_id ORDER BY {_ROW_NUMBER})
) earliest
WHERE batch_rows.rowid = earliest.position AND earliest.differs"""


def _insert_new_events(con: duckdb.DuckDBPyConnection, batch_id: str, ids: tuple[int, int, int]) -> int:
    """First occurrence of each event_id in the file, and only if the warehouse lacks it.

    The number inserted is checked against `ids` (`_event_id_counts`, made beforehand, independently
    of the insert). Files rarely repeat an event_id, so the costlier first-occurrence filter runs
    only when one does.
    """
    valid, distinct, known = ids
    first_only = f"QUALIFY row_number() OVER (PARTITION BY event_id ORDER BY {_ROW_NUMBER}) = 1" if valid > distinct else ""
    landed = con.execute(
        f"""INSERT INTO events
            SELECT {_EVENT_FIELDS}, $batch_id, {_ROW_NUMBER}
            FROM batch_rows b
            WHERE reason IS NULL
              AND NOT EXISTS (SELECT 1 FROM events e WHERE e.event_id = b.event_id)
            {first_only}""",
        {"batch_id": batch_id},
    ).fetchone()[0]
    if landed != distinct - known:
        raise AccountingError(f"inserted {landed} events, expected {distinct - known} new event ids")
    return landed


def _record_failure(
    con: duckdb.DuckDBPyConnection, path: Path, batch_id: str, sha256: str, reason: str, now: datetime, size: int
) -> None:
    con.execute("DELETE FROM ingested_files WHERE batch_id = ?", [batch_id])
    con.execute(
        "INSERT INTO ingested_files (batch_id, sha256, path, file_format, size_bytes, status, reason,"
        " quality_status, landed_at) VALUES (?, ?, ?, ?, ?, 'failed', ?, 'failed', ?)",
        [batch_id, sha256, str(path), _format_or_none(path), size, reason, now],
    )


def _format_or_none(path: Path) -> str | None:
    try:
        return detect_format(path)
    except UnsupportedFormatError:
        return None


def _one_line(error: BaseException) -> str:
    first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    return f"{type(error).__name__}: {first}"[:500]

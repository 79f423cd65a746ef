"""The right to be forgotten: `rec-pipeline forget USER_ID` removes a user from everything the
pipeline holds (see `forget`)."""

from __future__ import annotations

import json
import secrets
import shutil
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path

import duckdb

from rec_pipeline.core.errors import ArtifactError, InputError
from rec_pipeline.core.ingest.contract import EventContract
from rec_pipeline.core.ingest.landing import UNREADABLE_FILE_ERRORS
from rec_pipeline.core.ingest.normalize import contract_parameters, normalize_sql
from rec_pipeline.core.ingest.sources import (
    WHITESPACE,
    UnsupportedFormatError,
    detect_format,
    record_source,
)
from rec_pipeline.core.model.features import FeatureConfig, forget_users
from rec_pipeline.core.model.recommender import Recommender
from rec_pipeline.core.model.registry import ModelRegistry
from rec_pipeline.core.model.serving import publish_serving
from rec_pipeline.core.ops.pseudonymization import Pseudonymizer, verify_key
from rec_pipeline.core.ops.warehouse import Warehouse, transaction

# What landing trims from every id (sources.WHITESPACE, in SQL there).
_ID_WHITESPACE = " \t\n\r"
# The first `"user_id": value` pair of a line that is not JSON (a truncated or malformed JSON line):
# the value is a JSON string (escapes and all) or number, decoded by DuckDB's JSON functions.
_USER_ID_PAIR = r'"user_id"\s*:\s*("(?:[^"\\]|\\.)*"|-?[0-9][0-9.eE+-]*)'
# The user a quarantined row (or a row read from a file) names, over its `user_id` and `raw`
# columns: the parsed user_id; when there is none, the user_id field of the raw text, as JSON (a
# line, or the fields of a CSV or Parquet row) or recovered from a line that is not JSON. Text
# naming no user_id field (a malformed CSV record, a JSON array) names no one. Binds $ids, $pair.
_NAMES_THE_USER = f"""list_contains($ids, coalesce(user_id, nullif(trim(CASE
    WHEN json_valid(raw) THEN json_extract_string(raw, '$.user_id')
    WHEN json_valid(regexp_extract(raw, $pair, 1)) THEN json_extract_string(regexp_extract(raw, $pair, 1), '$')
END, {WHITESPACE}), '')))"""
_AUDITED = ("events", "rejected_rows", "feature_rows", "items_rebuilt", "recommendations", "check_mentions",
            "artifacts_rewritten", "artifacts_deleted", "files_deleted", "files_unreadable")


@dataclass(frozen=True)
class ForgetReport:
    request_id: str
    events: int
    rejected_rows: int
    feature_rows: int
    items_rebuilt: int
    recommendations: int
    check_mentions: int
    artifacts_rewritten: int
    artifacts_deleted: int  # failed their checksum: neither trusted nor rewritten, so deleted
    files_deleted: int  # imported or archived input files holding a row of the user
    files_unreadable: int  # input files that could not be read, so could not be checked: left in place

    def as_dict(self) -> dict:
        return asdict(self)


def forget(warehouse: Warehouse, registry: ModelRegistry, serving_path: Path, user_id: str,
           pseudonymizer: Pseudonymizer | None, features: FeatureConfig = FeatureConfig(),
           now: datetime | None = None, input_folders: Sequence[Path] = ()) -> ForgetReport:
    """Remove everything held about `user_id` (and its pseudonym, when pseudonymization is on), in
    one warehouse transaction: events, rejected rows, feature state (the popularity of the items
    they touched is rebuilt without them), recommendations, mentions in quality-check metadata, and
    their embedding row in every model artifact (rewritten aside, checksums updated; an artifact
    failing its checksum is deleted). Then the serving database is republished, an audit row
    without the id is written, and every file in `input_folders` (the imports and the archive)
    holding a row of the user is deleted: a file is the record of what was received, so it is not
    edited; what landed from it stays in the warehouse.

    Refuses a blank id (it would name the rows naming no one) and a key that is not the
    warehouse's (`verify_key`: the pseudonym would find nothing). Not covered: files still waiting
    in the landing folder, input files that cannot be read (counted), and bytes of deleted rows that
    DuckDB has not yet compacted out of its file (a CHECKPOINT runs at the end).
    """
    ids = _stored_ids(user_id, pseudonymizer)
    now = now or datetime.now(timezone.utc)
    with warehouse.connect() as con:
        verify_key(con, pseudonymizer, now)
    holding, unreadable = _input_files_naming(input_folders, ids)  # read before the warehouse is held
    with warehouse.connect() as con:
        with transaction(con):
            counts = _forget_in_warehouse(con, ids, features)
            replaced, corrupt = _drop_embedding_rows(con, registry, ids)
            counts |= {"artifacts_rewritten": len(replaced), "artifacts_deleted": len(corrupt),
                       "files_deleted": len(holding), "files_unreadable": len(unreadable)}
            request_id = f"f-{secrets.token_hex(8)}"
            con.execute(f"INSERT INTO forget_audit (request_id, forgotten_at, {', '.join(_AUDITED)})"
                        f" VALUES (?, ?{', ?' * len(_AUDITED)})", [request_id, now, *(counts[c] for c in _AUDITED)])
        for folder in replaced + corrupt:  # committed: no row points at the old ones any more
            shutil.rmtree(folder, ignore_errors=True)
        for path in holding:
            path.unlink(missing_ok=True)
        publish_serving(con, serving_path)
        con.execute("CHECKPOINT")
    return ForgetReport(request_id, **counts)


def _stored_ids(user_id: str, pseudonymizer: Pseudonymizer | None) -> list[str]:
    """The ids the user may be stored under: as landing stores it (trimmed) and, with a key, its
    pseudonym; a blank id is refused."""
    user_id = user_id.strip(_ID_WHITESPACE)
    if not user_id:
        raise InputError("forget needs a user id: a blank one names no user, only rows that name none")
    return sorted({user_id, pseudonymizer(user_id)} if pseudonymizer else {user_id})


def _forget_in_warehouse(con: duckdb.DuckDBPyConnection, ids: list[str], features: FeatureConfig) -> dict[str, int]:
    """The user's rows out of every table; the popularity of what they touched rebuilt without them."""
    items = [i for (i,) in con.execute("SELECT DISTINCT item_id FROM events WHERE list_contains(?, user_id)",
                                       [ids]).fetchall()]
    counts = {
        "events": _delete(con, "events", ids),
        "rejected_rows": con.execute(f"DELETE FROM events_rejected WHERE {_NAMES_THE_USER}",
                                     {"ids": ids, "pair": _USER_ID_PAIR}).fetchall()[0][0],
        "recommendations": _delete(con, "recommendations", ids),
        "check_mentions": _scrub_check_metadata(con, ids),
    }
    remaining = con.sql("SELECT * EXCLUDE (source_row) FROM events_validated SEMI JOIN refresh_batches"
                        " USING (batch_id) WHERE list_contains($items, item_id)", params={"items": items}).pl()
    counts["feature_rows"] = forget_users(con, ids, items, remaining, features)
    counts["items_rebuilt"] = len(items)
    return counts


def _delete(con: duckdb.DuckDBPyConnection, table: str, ids: list[str]) -> int:
    return con.execute(f"DELETE FROM {table} WHERE list_contains(?, user_id)", [ids]).fetchall()[0][0]


def _scrub_check_metadata(con: duckdb.DuckDBPyConnection, ids: list[str]) -> int:
    """Checks recorded before their metadata stopped naming users may list one: it becomes
    "[forgotten]"."""
    scrubbed = 0
    for user in ids:
        quoted = json.dumps(user)
        scrubbed += con.execute(
            "UPDATE batch_checks SET metadata = replace(metadata::VARCHAR, ?, '\"[forgotten]\"')::JSON"
            " WHERE contains(metadata::VARCHAR, ?)", [quoted, quoted]).fetchall()[0][0]
    return scrubbed


def _drop_embedding_rows(con: duckdb.DuckDBPyConnection, registry: ModelRegistry,
                         ids: list[str]) -> tuple[list[Path], list[Path]]:
    """Every registered model with a row for the user gets a new artifact without it (its registry
    row is repointed in the caller's transaction). An artifact that fails its checksum can be
    neither trusted nor rewritten, and may hold the user: it is to be deleted (its row stays, and
    loading it fails in one line). Returns the old folders and the corrupt ones, to delete after
    commit."""
    replaced, corrupt = [], []
    for model in registry.versions(con):
        folder = Path(model.artifact_path)
        if not folder.is_dir():  # pruned by housekeeping: nothing left to scrub
            continue
        try:
            recommender = registry.load(con, model.version)
        except ArtifactError:
            if folder.resolve().is_relative_to(registry.models_dir):  # never delete outside the models folder
                corrupt.append(folder)
            continue
        if recommender.retrieval.known(ids).any():
            scrubbed = Recommender(recommender.retrieval.without_users(ids), recommender.ranker)
            replaced.append(registry.replace_artifact(con, model.version, scrubbed.save))
    return replaced, corrupt


def _input_files_naming(folders: Sequence[Path], ids: list[str]) -> tuple[list[Path], list[Path]]:
    """The event files in `folders` holding a row that names the user (by the rule quarantined rows
    are matched with), and those that could not be read. Other files are not the pipeline's."""
    holding, unreadable = [], []
    for path in sorted(p for folder in folders if folder.is_dir() for p in folder.iterdir()):
        if path.is_symlink() or not path.is_file() or not _is_event_file(path):
            continue
        try:
            if _names_the_user(path, ids):
                holding.append(path)
        except UNREADABLE_FILE_ERRORS:
            unreadable.append(path)
    return holding, unreadable


def _is_event_file(path: Path) -> bool:
    try:
        detect_format(path)
    except UnsupportedFormatError:
        return False
    return True


def _names_the_user(path: Path, ids: list[str]) -> bool:
    """Whether a row of the file, read as landing reads it, names the user."""
    source = record_source(path)
    parameters = contract_parameters(EventContract()) | {"ids": ids, "pair": _USER_ID_PAIR}
    with duckdb.connect() as scratch:
        if scratch.execute(_any_naming(source.records), parameters | source.parameters).fetchall()[0][0]:
            return True
        if source.rejected is None:
            return False
        # The records the reader could not parse, kept aside by it while it read the ones above.
        return scratch.execute(_any_naming(source.rejected), parameters).fetchall()[0][0]


def _any_naming(records_sql: str) -> str:
    return f"SELECT EXISTS (SELECT 1 FROM ({normalize_sql(records_sql)}) WHERE {_NAMES_THE_USER})"

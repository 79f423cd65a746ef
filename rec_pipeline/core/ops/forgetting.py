"""The right to be forgotten: `rec-pipeline forget USER_ID` removes a user from everything the
pipeline holds (see `forget`)."""

from __future__ import annotations

import json
import re
import secrets
import shutil
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path

import duckdb

from rec_pipeline.core.model.features import FeatureConfig, forget_users
from rec_pipeline.core.model.recommender import Recommender
from rec_pipeline.core.model.registry import ModelRegistry
from rec_pipeline.core.model.serving import publish_serving
from rec_pipeline.core.ops.pseudonymization import Pseudonymizer
from rec_pipeline.core.ops.warehouse import Warehouse, transaction


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

    def as_dict(self) -> dict:
        return asdict(self)


def forget(warehouse: Warehouse, registry: ModelRegistry, serving_path: Path, user_id: str,
           pseudonymizer: Pseudonymizer | None, features: FeatureConfig = FeatureConfig(),
           now: datetime | None = None) -> ForgetReport:
    """Remove everything held about `user_id` (and its pseudonym, when pseudonymization is on), in
    one warehouse transaction: events, rejected rows, feature state (the popularity of the items
    they touched is rebuilt without them), recommendations, mentions in quality-check metadata, and
    their embedding row in every model artifact (rewritten aside, checksums updated). Then the
    serving database is republished and an audit row without the id is written.

    Not covered: archived input files (pruned after `REC_PIPELINE_RETENTION_DAYS`), and bytes of
    deleted rows that DuckDB has not yet compacted out of its file (a CHECKPOINT runs at the end).
    """
    ids = sorted({user_id, pseudonymizer(user_id)} if pseudonymizer else {user_id})
    now = now or datetime.now(timezone.utc)
    with warehouse.connect() as con:
        with transaction(con):
            items = [i for (i,) in con.execute("SELECT DISTINCT item_id FROM events WHERE list_contains(?, user_id)",
                                               [ids]).fetchall()]
            counts = {
                "events": _delete(con, "events", ids),
                "rejected_rows": _delete_rejected(con, ids),
                "recommendations": _delete(con, "recommendations", ids),
                "check_mentions": _scrub_check_metadata(con, ids),
            }
            remaining = con.sql("SELECT * EXCLUDE (source_row) FROM events_validated SEMI JOIN refresh_batches"
                                " USING (batch_id) WHERE list_contains($items, item_id)", params={"items": items}).pl()
            counts["feature_rows"] = forget_users(con, ids, items, remaining, features)
            counts["items_rebuilt"] = len(items)
            replaced = _drop_embedding_rows(con, registry, ids)
            report = ForgetReport(request_id=f"f-{secrets.token_hex(8)}", artifacts_rewritten=len(replaced), **counts)
            con.execute("INSERT INTO forget_audit VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                        [report.request_id, now, report.events, report.rejected_rows, report.feature_rows,
                         report.items_rebuilt, report.recommendations, report.check_mentions,
                         report.artifacts_rewritten])
        for folder in replaced:  # committed: the rows point at the rewritten artifacts
            shutil.rmtree(folder, ignore_errors=True)
        publish_serving(con, serving_path)
        con.execute("CHECKPOINT")
    return report


def _delete(con: duckdb.DuckDBPyConnection, table: str, ids: list[str]) -> int:
    return con.execute(f"DELETE FROM {table} WHERE list_contains(?, user_id)", [ids]).fetchall()[0][0]


def _delete_rejected(con: duckdb.DuckDBPyConnection, ids: list[str]) -> int:
    """The user's quarantined rows: by their parsed user_id, and the unparseable ones (no user_id)
    whose raw text names them as a whole token (another broken row naming them goes too)."""
    token = "(^|[^0-9A-Za-z_])(" + "|".join(re.escape(i) for i in ids) + ")([^0-9A-Za-z_]|$)"
    return con.execute("DELETE FROM events_rejected WHERE list_contains(?, user_id)"
                       " OR (user_id IS NULL AND regexp_matches(raw, ?))", [ids, token]).fetchall()[0][0]


def _scrub_check_metadata(con: duckdb.DuckDBPyConnection, ids: list[str]) -> int:
    """Quality checks may list unexpected values: a listed id becomes "[forgotten]"."""
    scrubbed = 0
    for user in ids:
        quoted = json.dumps(user)
        scrubbed += con.execute(
            "UPDATE batch_checks SET metadata = replace(metadata::VARCHAR, ?, '\"[forgotten]\"')::JSON"
            " WHERE contains(metadata::VARCHAR, ?)", [quoted, quoted]).fetchall()[0][0]
    return scrubbed


def _drop_embedding_rows(con: duckdb.DuckDBPyConnection, registry: ModelRegistry, ids: list[str]) -> list[Path]:
    """Every registered model with a row for the user gets a new artifact without it (its registry
    row is repointed in the caller's transaction); returns the old folders, to delete after commit."""
    replaced = []
    for model in registry.versions(con):
        if not Path(model.artifact_path).is_dir():  # pruned by housekeeping: nothing left to scrub
            continue
        recommender = registry.load(con, model.version)
        if recommender.retrieval.known(ids).any():
            scrubbed = Recommender(recommender.retrieval.without_users(ids), recommender.ranker)
            replaced.append(registry.replace_artifact(con, model.version, scrubbed.save))
    return replaced

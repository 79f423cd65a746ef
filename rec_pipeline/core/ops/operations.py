"""Running unattended: failed runs and their alerts, how fresh the recommendations are, and the
housekeeping that keeps the home folder and the warehouse file from growing without bound."""

from __future__ import annotations

import json
import shutil
import urllib.error
import urllib.request
from dataclasses import asdict, dataclass
from datetime import datetime, timedelta
from pathlib import Path

import duckdb

from rec_pipeline.core.model.registry import ModelRegistry
from rec_pipeline.core.ops.warehouse import transaction

ALERT_TIMEOUT_S = 5.0


def post_alert(url: str | None, payload: dict) -> str:
    """POST `payload` as JSON; returns 'sent', 'not configured', or why it failed (never raises:
    an unreachable webhook must not stop the failure from being recorded)."""
    if not url:
        return "not configured"
    request = urllib.request.Request(url, data=json.dumps(payload).encode(), method="POST",
                                     headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=ALERT_TIMEOUT_S):
            return "sent"
    except (urllib.error.URLError, OSError, ValueError) as error:
        return f"failed: {error}"[:500]


def record_failure(con: duckdb.DuckDBPyConnection, run_id: str, job_name: str, message: str,
                   failed_at: datetime, alert_status: str) -> None:
    """One row per failed run (a second report of the same run is ignored)."""
    con.execute("INSERT INTO run_failures VALUES (?, ?, ?, ?, ?) ON CONFLICT DO NOTHING",
                [run_id, job_name, failed_at, message[:2000], alert_status])


def health(con: duckdb.DuckDBPyConnection, now: datetime) -> dict:
    """The age of the published recommendations, the last failed run, the last batch held back by
    its checks, the last file that could not be read and the last gate decision: why the published
    lists did (not) change."""
    generated = con.execute("SELECT max(generated_at) FROM recommendations").fetchall()[0][0]
    return {
        "recommendations_generated_at": generated.isoformat() if generated else None,
        "recommendations_age_s": round((now - generated).total_seconds(), 1) if generated else None,
        "last_failure": _latest(con, "SELECT run_id, job_name, failed_at, message FROM run_failures"
                                     " ORDER BY failed_at DESC LIMIT 1"),
        "last_held_back": _latest(con, "SELECT batch_id, path, landed_at, failed_checks FROM batch_overview"
                                       " WHERE status = 'landed' AND quality_status = 'failed'"
                                       " ORDER BY landed_at DESC LIMIT 1"),
        "last_unreadable_file": _latest(con, "SELECT batch_id, path, landed_at, reason FROM ingested_files"
                                             " WHERE status = 'failed' ORDER BY landed_at DESC LIMIT 1"),
        "last_gate_decision": _latest(con, "SELECT challenger, evaluated_at, promoted, reason FROM evaluations"
                                           " ORDER BY evaluated_at DESC LIMIT 1"),
    }


def _latest(con: duckdb.DuckDBPyConnection, sql: str) -> dict | None:
    """The one row of `sql` as a JSON-ready dict, or None."""
    cursor = con.execute(sql)
    rows = cursor.fetchall()
    if not rows:
        return None
    names = [column[0] for column in cursor.description]
    return {name: value.isoformat() if isinstance(value, datetime) else value for name, value in zip(names, rows[0])}


@dataclass(frozen=True)
class HousekeepingReport:
    archived_files_removed: int
    artifacts_removed: int
    bytes_freed: int

    def as_dict(self) -> dict:
        return asdict(self)


def housekeeping(con: duckdb.DuckDBPyConnection, archive_dir: Path, registry: ModelRegistry,
                 retention: timedelta, now: datetime) -> HousekeepingReport:
    """Delete archived event files and the artifacts of rejected or retired models older than
    `retention`, and unregistered artifact folders as old (the champion's and recent ones stay;
    registry rows and metrics stay), then
    CHECKPOINT the warehouse so its write-ahead log is folded in."""
    cutoff = now - retention
    old_files = [p for p in archive_dir.glob("*") if p.is_file() and p.stat().st_mtime < cutoff.timestamp()]
    freed = sum(p.stat().st_size for p in old_files)
    for path in old_files:
        path.unlink()
    folders = _unused_artifacts(con, registry, cutoff)
    for folder in folders:
        freed += sum(f.stat().st_size for f in folder.rglob("*") if f.is_file())
        shutil.rmtree(folder)
    report = HousekeepingReport(len(old_files), len(folders), freed)
    with transaction(con):
        con.execute("INSERT INTO housekeeping_runs VALUES (?, ?, ?, ?)",
                    [now, report.archived_files_removed, report.artifacts_removed, report.bytes_freed])
    con.execute("CHECKPOINT")
    return report


def _unused_artifacts(con: duckdb.DuckDBPyConnection, registry: ModelRegistry, cutoff: datetime) -> list[Path]:
    """Folders of old rejected or retired versions, and old folders no registry row points at (left
    by a refresh or a `forget` that crashed after writing an artifact and before committing)."""
    rows = con.execute("SELECT artifact_path FROM model_registry WHERE status IN ('rejected', 'retired')"
                       " AND trained_at < ?", [cutoff]).fetchall()
    unused = [folder for (path,) in rows if (folder := Path(path)).is_dir()]
    registered = {Path(path).name for (path,) in con.execute("SELECT artifact_path FROM model_registry").fetchall()}
    orphans = [folder for folder in registry.models_dir.glob("*") if folder.is_dir()
               and folder.name not in registered and folder.stat().st_mtime < cutoff.timestamp()]
    return unused + orphans

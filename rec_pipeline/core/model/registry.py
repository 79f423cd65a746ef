"""The model registry: versions, their status and their artifacts, with checksums.

An artifact is a folder under the models directory. Its checksum is a sha256 over the names and
bytes of its files; a version whose files no longer match is never loaded.
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import duckdb

from rec_pipeline.core.errors import ArtifactError, NotFoundError
from rec_pipeline.core.model.recommender import Recommender
from rec_pipeline.core.ops.warehouse import transaction


@dataclass(frozen=True)
class ModelVersion:
    version: str
    kind: str
    parent: str | None
    trained_at: datetime
    window_start: datetime | None
    window_end: datetime | None
    metrics: dict
    status: str
    artifact_path: str
    checksum: str


_COLUMNS = ", ".join(ModelVersion.__dataclass_fields__)


def new_version(now: datetime | None = None) -> str:
    stamp = (now or datetime.now(timezone.utc)).strftime("%Y%m%dT%H%M%S")
    return f"m-{stamp}-{secrets.token_hex(3)}"


def artifact_checksum(folder: Path) -> str:
    digest = hashlib.sha256()
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        digest.update(path.relative_to(folder).as_posix().encode() + b"\0")
        digest.update(hashlib.sha256(path.read_bytes()).digest())
    return digest.hexdigest()


class ModelRegistry:
    """Registry rows live in the warehouse; artifacts live under `models_dir`."""

    def __init__(self, models_dir: Path):
        self.models_dir = Path(models_dir).resolve()

    def artifact_dir(self, version: str) -> Path:
        return self.models_dir / version

    def write_artifact(self, version: str, save: Callable[[Path], object]) -> Path:
        """Call `save(folder)` on a temporary folder beside the artifact's, make its files durable,
        then rename it into place: a crash leaves either no artifact folder or a complete one, never
        a partial one that a registry row could point at (rows are written after this returns)."""
        final = self.artifact_dir(version)
        staging = self.models_dir / f".staging-{version}"
        shutil.rmtree(staging, ignore_errors=True)
        save(staging)
        for path in sorted(staging.rglob("*"), reverse=True):  # files before the folders holding them
            _fsync(path)
        _fsync(staging)
        staging.rename(final)
        _fsync(self.models_dir)
        return final

    def replace_artifact(self, con: duckdb.DuckDBPyConnection, version: str, save: Callable[[Path], object]) -> Path:
        """Write a new artifact for `version` into a new folder and point its row (path, checksum)
        at it; returns the old folder, which the caller deletes once its transaction has committed
        (a rollback leaves the row on the old, untouched folder and the new one unregistered)."""
        old = Path(self.get(con, version).artifact_path)
        folder = self.write_artifact(f"{version}.{secrets.token_hex(4)}", save)
        con.execute("UPDATE model_registry SET artifact_path = ?, checksum = ? WHERE version = ?",
                    [str(folder), artifact_checksum(folder), version])
        return old

    def register(
        self,
        con: duckdb.DuckDBPyConnection,
        version: str,
        kind: str,
        parent: str | None,
        window: tuple[datetime | None, datetime | None],
        metrics: dict,
        now: datetime | None = None,
    ) -> ModelVersion:
        folder = self._inside_models_dir(self.artifact_dir(version))
        con.execute(
            f"INSERT INTO model_registry ({_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, 'challenger', ?, ?)",
            [version, kind, parent, now or datetime.now(timezone.utc), window[0], window[1],
             json.dumps(metrics), str(folder), artifact_checksum(folder)],
        )
        return self.get(con, version)

    def get(self, con: duckdb.DuckDBPyConnection, version: str) -> ModelVersion:
        rows = con.execute(f"SELECT {_COLUMNS} FROM model_registry WHERE version = ?", [version]).fetchall()
        if not rows:
            raise NotFoundError(f"no model version {version}")
        return _model_version(rows[0])

    def champion(self, con: duckdb.DuckDBPyConnection) -> ModelVersion | None:
        rows = con.execute(f"SELECT {_COLUMNS} FROM model_registry WHERE status = 'champion'").fetchall()
        return _model_version(rows[0]) if rows else None

    def versions(self, con: duckdb.DuckDBPyConnection) -> list[ModelVersion]:
        rows = con.execute(f"SELECT {_COLUMNS} FROM model_registry ORDER BY trained_at DESC, version DESC")
        return [_model_version(row) for row in rows.fetchall()]

    def verified_artifact(self, con: duckdb.DuckDBPyConnection, version: str) -> Path:
        """The artifact folder, only if it lies under the models folder and matches its checksum."""
        model = self.get(con, version)
        folder = self._inside_models_dir(Path(model.artifact_path))
        if artifact_checksum(folder) != model.checksum:
            raise ArtifactError(f"{version}: the files in {folder} do not match the registered checksum")
        return folder

    def load(self, con: duckdb.DuckDBPyConnection, version: str) -> Recommender:
        """The model of `version`, from its verified artifact."""
        return Recommender.load(self.verified_artifact(con, version))

    def load_champion(self, con: duckdb.DuckDBPyConnection) -> tuple[ModelVersion, Recommender] | None:
        """The champion's registry row and model, or None before any promotion."""
        row = self.champion(con)
        return (row, self.load(con, row.version)) if row else None

    def make_champion(self, con: duckdb.DuckDBPyConnection, version: str, promoted_by: str, reason: str,
                      now: datetime | None = None) -> None:
        """Promote (or roll back to) `version`; the previous champion is retired; `champion_history`
        records who did it and why. One transaction."""
        self.get(con, version)
        previous = self.champion(con)
        with transaction(con):
            con.execute("UPDATE model_registry SET status = 'retired' WHERE status = 'champion'")
            con.execute("UPDATE model_registry SET status = 'champion' WHERE version = ?", [version])
            con.execute("INSERT INTO champion_history VALUES (?, ?, ?, ?, ?)",
                        [version, now or datetime.now(timezone.utc), promoted_by,
                         previous.version if previous else None, reason])

    def gate_verdict(self, con: duckdb.DuckDBPyConnection, version: str) -> tuple[bool, str] | None:
        """(promoted, reason) of the gate's decision on `version`, or None if it never judged it."""
        rows = con.execute("SELECT promoted, reason FROM evaluations WHERE challenger = ?"
                           " ORDER BY evaluated_at DESC LIMIT 1", [version]).fetchall()
        return (bool(rows[0][0]), rows[0][1]) if rows else None

    def champion_history(self, con: duckdb.DuckDBPyConnection, version: str) -> list[dict]:
        """When `version` became champion, by whom, replacing which version, and why (oldest first)."""
        cursor = con.execute("SELECT since, promoted_by, previous, reason FROM champion_history WHERE version = ?"
                             " ORDER BY since", [version])
        return [{"since": since.isoformat(), "promoted_by": by, "previous": previous, "reason": reason}
                for since, by, previous, reason in cursor.fetchall()]

    def reject(self, con: duckdb.DuckDBPyConnection, version: str) -> None:
        con.execute("UPDATE model_registry SET status = 'rejected' WHERE version = ?", [version])

    def _inside_models_dir(self, folder: Path) -> Path:
        resolved = folder.resolve()
        if not resolved.is_relative_to(self.models_dir) or not resolved.is_dir():
            raise ArtifactError(f"{folder} is not an artifact folder under {self.models_dir}")
        return resolved


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _model_version(row: tuple) -> ModelVersion:
    values = dict(zip(ModelVersion.__dataclass_fields__, row))
    values["metrics"] = json.loads(values["metrics"]) if values["metrics"] else {}
    return ModelVersion(**values)

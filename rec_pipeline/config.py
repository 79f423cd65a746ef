"""Where rec_pipeline keeps its files, from the environment, with working defaults."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from rec_pipeline.core.ops.warehouse import Warehouse

DEFAULT_HOME = "rec_pipeline_home"
DEFAULT_MEMORY_LIMIT = "1GB"


@dataclass(frozen=True)
class Settings:
    """All paths derive from one folder, `REC_PIPELINE_HOME` (default: ./rec_pipeline_home). The
    operating settings (README, "Configuration") come from the environment too."""

    home: Path
    memory_limit: str = DEFAULT_MEMORY_LIMIT  # DuckDB's cap while a step has the warehouse open
    automation: bool = True  # the landing sensor, refresh automation and housekeeping start running
    refresh_interval_s: int = 120  # refresh automation runs at most this often
    freshness_warn_minutes: float = 30.0  # recommendations older than this warn ...
    freshness_fail_minutes: float = 120.0  # ... and fail their freshness policy
    alert_webhook: str | None = None  # failed runs are POSTed here as JSON when set
    retention_days: float = 30.0  # archived files and unused model artifacts older than this are pruned

    def __post_init__(self) -> None:
        if self.refresh_interval_s < 1 or self.retention_days <= 0:
            raise ValueError("refresh_interval_s must be >= 1 and retention_days > 0")
        if not 0 < self.freshness_warn_minutes < self.freshness_fail_minutes:
            raise ValueError("freshness windows: 0 < warn minutes < fail minutes required")

    @classmethod
    def from_env(cls) -> Settings:
        env = os.environ
        return cls(
            home=Path(env.get("REC_PIPELINE_HOME", DEFAULT_HOME)).absolute(),
            memory_limit=env.get("REC_PIPELINE_MEMORY_LIMIT", DEFAULT_MEMORY_LIMIT),
            automation=_switch(env.get("REC_PIPELINE_AUTOMATION", "on"), "REC_PIPELINE_AUTOMATION"),
            refresh_interval_s=int(env.get("REC_PIPELINE_REFRESH_INTERVAL_S", "120")),
            freshness_warn_minutes=float(env.get("REC_PIPELINE_FRESHNESS_WARN_MINUTES", "30")),
            freshness_fail_minutes=float(env.get("REC_PIPELINE_FRESHNESS_FAIL_MINUTES", "120")),
            alert_webhook=env.get("REC_PIPELINE_ALERT_WEBHOOK") or None,
            retention_days=float(env.get("REC_PIPELINE_RETENTION_DAYS", "30")),
        )

    def warehouse(self) -> Warehouse:
        return Warehouse(self.warehouse_path, memory_limit=self.memory_limit)

    @property
    def warehouse_path(self) -> Path:
        return self.home / "warehouse.duckdb"

    @property
    def serving_path(self) -> Path:
        return self.home / "serving.duckdb"

    @property
    def landing_dir(self) -> Path:
        return self.home / "landing"

    @property
    def archive_dir(self) -> Path:
        return self.home / "archive"

    @property
    def imports_dir(self) -> Path:
        """Files landed by the CLI (simulated batches, MovieLens conversions); kept as landed."""
        return self.home / "imports"

    @property
    def models_dir(self) -> Path:
        return self.home / "models"

    def ensure_dirs(self) -> None:
        for folder in (self.home, self.landing_dir, self.archive_dir, self.imports_dir, self.models_dir):
            folder.mkdir(parents=True, exist_ok=True)


def _switch(value: str, name: str) -> bool:
    if value.lower() in ("on", "true", "1", "yes"):
        return True
    if value.lower() in ("off", "false", "0", "no"):
        return False
    raise ValueError(f"{name} must be on or off, got {value!r}")

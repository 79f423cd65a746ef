"""Where rec_pipeline keeps its files, from the environment, with working defaults."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from rec_pipeline.core.warehouse import Warehouse

DEFAULT_HOME = "rec_pipeline_home"
DEFAULT_MEMORY_LIMIT = "1GB"


@dataclass(frozen=True)
class Settings:
    """All paths derive from one folder, `REC_PIPELINE_HOME` (default: ./rec_pipeline_home);
    `REC_PIPELINE_MEMORY_LIMIT` caps DuckDB's memory while it has the warehouse open (default 1GB)."""

    home: Path
    memory_limit: str = DEFAULT_MEMORY_LIMIT

    @classmethod
    def from_env(cls) -> Settings:
        return cls(
            home=Path(os.environ.get("REC_PIPELINE_HOME", DEFAULT_HOME)).absolute(),
            memory_limit=os.environ.get("REC_PIPELINE_MEMORY_LIMIT", DEFAULT_MEMORY_LIMIT),
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

"""Where rec_pipeline keeps its files, from the environment, with working defaults."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

DEFAULT_HOME = "rec_pipeline_home"


@dataclass(frozen=True)
class Settings:
    """All paths derive from one folder, `REC_PIPELINE_HOME` (default: ./rec_pipeline_home)."""

    home: Path

    @classmethod
    def from_env(cls) -> Settings:
        return cls(home=Path(os.environ.get("REC_PIPELINE_HOME", DEFAULT_HOME)).absolute())

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
    def models_dir(self) -> Path:
        return self.home / "models"

    def ensure_dirs(self) -> None:
        for folder in (self.home, self.landing_dir, self.archive_dir, self.models_dir):
            folder.mkdir(parents=True, exist_ok=True)

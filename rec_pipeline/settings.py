"""Every setting of rec_pipeline, read once from the environment (README, "Configuration").

`Settings.from_env()` is called once per process by an entry point: the command line when it
starts, the code location inside its `@dg.definitions` function. Everything else receives the
values it needs as arguments; the core never reads the environment. Variables are named
`REC_PIPELINE_<FIELD>`. A `.env` file in the working directory is loaded into the environment
first, by `dagster dev` for the code location and by the command line for itself (the environment
wins over it), so both see the same settings.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

from pydantic import (
    AfterValidator,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, SettingsConfigDict

from rec_pipeline.core.errors import InputError
from rec_pipeline.core.ops.pseudonymization import Pseudonymizer
from rec_pipeline.core.ops.warehouse import Warehouse

ENV_PREFIX = "REC_PIPELINE_"

AbsolutePath = Annotated[Path, AfterValidator(lambda path: path.expanduser().absolute())]


class Settings(BaseSettings):
    """All paths derive from one folder, `home`; the rest are operating settings."""

    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, extra="ignore", frozen=True, validate_by_name=True)

    home: AbsolutePath = Field(Path("rec_pipeline_home"), description="holds the warehouse, serving copy and files")
    memory_limit: str = Field("1GB", description="DuckDB's cap while a step has the warehouse open")
    automation: bool = Field(True, description="sensors and schedules start running (on/off)")
    refresh_interval_s: int = Field(120, ge=1, description="refresh automation runs at most this often")
    freshness_warn_minutes: float = Field(30.0, gt=0, description="recommendations older than this warn")
    freshness_fail_minutes: float = Field(120.0, gt=0, description="... and fail their freshness policy")
    alert_webhook: SecretStr | None = Field(None, description="failed runs are POSTed here as JSON")
    retention_days: float = Field(30.0, gt=0, description="archived files and unused artifacts older are pruned")
    pseudonymize_key: SecretStr | None = Field(None, description="HMAC key for user ids (>= 32 bytes)")
    pseudonymize_key_file: Path | None = Field(None, description="a file holding that key, instead of it")
    debug: bool = Field(False, description="the command line prints full tracebacks and library logs")
    dagster_home: Path | None = Field(None, validation_alias="DAGSTER_HOME",
                                      description="the Dagster instance shared with the UI; unset: ephemeral")

    @model_validator(mode="after")
    def _consistent(self) -> Settings:
        if not self.freshness_warn_minutes < self.freshness_fail_minutes:
            raise ValueError("freshness windows: warn minutes < fail minutes required")
        if self.pseudonymize_key and self.pseudonymize_key_file:
            raise ValueError(f"set {ENV_PREFIX}PSEUDONYMIZE_KEY or {ENV_PREFIX}PSEUDONYMIZE_KEY_FILE, not both")
        return self

    @field_validator("pseudonymize_key")
    @classmethod
    def _long_enough(cls, key: SecretStr | None) -> SecretStr | None:
        if key is not None:
            Pseudonymizer(key.get_secret_value().encode())  # refuses a key that is too short
        return key

    @classmethod
    def from_env(cls) -> Settings:
        """The settings of this process; a bad value raises `InputError` naming the variable."""
        try:
            return cls()
        except ValidationError as error:
            raise InputError("bad setting: " + "; ".join(_describe(problem) for problem in error.errors())) from None

    def warehouse(self) -> Warehouse:
        return Warehouse(self.warehouse_path, memory_limit=self.memory_limit)

    def pseudonymizer(self) -> Pseudonymizer | None:
        """The configured pseudonymizer, or None when pseudonymization is off."""
        if self.pseudonymize_key_file is not None:
            if not self.pseudonymize_key_file.is_file():
                raise InputError(f"{ENV_PREFIX}PSEUDONYMIZE_KEY_FILE names {self.pseudonymize_key_file},"
                                 " which is not a file")
            return Pseudonymizer(self.pseudonymize_key_file.read_bytes().strip())
        if self.pseudonymize_key is not None:
            return Pseudonymizer(self.pseudonymize_key.get_secret_value().encode())
        return None

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
        """Files landed by the command line (simulated batches, MovieLens conversions); kept as landed."""
        return self.home / "imports"

    @property
    def models_dir(self) -> Path:
        return self.home / "models"

    @property
    def logs_dir(self) -> Path:
        """Tracebacks of unexpected errors and logs of failed in-process runs."""
        return self.home / "logs"

    def ensure_dirs(self) -> None:
        for folder in (self.home, self.landing_dir, self.archive_dir, self.imports_dir, self.models_dir):
            folder.mkdir(parents=True, exist_ok=True)


def _describe(problem: dict) -> str:
    """One pydantic error as `VARIABLE: what is wrong (got 'value')`."""
    location = [str(part) for part in problem.get("loc", ()) if part]
    name = "DAGSTER_HOME" if location == ["DAGSTER_HOME"] else (
        f"{ENV_PREFIX}{location[0].upper()}" if location else "settings")
    message = problem["msg"].removeprefix("Value error, ")
    given = problem.get("input")
    return f"{name}: {message}" + (f" (got {given!r})" if location and isinstance(given, str) else "")

"""The one resource every step uses: the pipeline's settings, and a way to report expected failures."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import dagster as dg

from rec_pipeline.core.errors import RecPipelineError, WarehouseLockedError
from rec_pipeline.core.ops.warehouse import Warehouse
from rec_pipeline.settings import ENV_PREFIX, Settings

# Every step that opens the warehouse file joins this pool; dagster.yaml gives pools one slot,
# because DuckDB allows one writing process per file.
WAREHOUSE_POOL = "warehouse"
SECRETS = ("alert_webhook", "pseudonymize_key")


class PipelineResource(dg.ConfigurableResource):
    """Every field of `rec_pipeline.settings.Settings`, as the code location read them; secrets are
    `dg.EnvVar`s, so the UI shows which variable holds them and never the value."""

    home: str
    memory_limit: str
    automation: bool
    refresh_interval_s: int
    freshness_warn_minutes: float
    freshness_fail_minutes: float
    alert_webhook: str | None
    retention_days: float
    pseudonymize_key: str | None
    pseudonymize_key_file: str | None
    debug: bool
    dagster_home: str | None

    @classmethod
    def from_settings(cls, settings: Settings) -> PipelineResource:
        values = settings.model_dump(mode="json", exclude=set(SECRETS))
        secrets = {name: dg.EnvVar(f"{ENV_PREFIX}{name.upper()}") if getattr(settings, name) else None
                   for name in SECRETS}
        return cls(**values, **secrets)

    @property
    def settings(self) -> Settings:
        return Settings.model_validate({name: getattr(self, name) for name in Settings.model_fields})

    def warehouse(self) -> Warehouse:
        return self.settings.warehouse()


@contextmanager
def reported_as_failure() -> Iterator[None]:
    """An expected failure (bad input, missing version, corrupt artifact, ...) ends the step with its
    one-line message as the failure's description; only a locked warehouse is worth a retry."""
    try:
        yield
    except RecPipelineError as error:
        raise dg.Failure(description=str(error), allow_retries=isinstance(error, WarehouseLockedError)) from error

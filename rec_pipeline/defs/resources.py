from pathlib import Path

import dagster as dg

from rec_pipeline.config import DEFAULT_MEMORY_LIMIT, Settings
from rec_pipeline.core.ops.warehouse import Warehouse

# Every step that opens the warehouse file joins this pool; dagster.yaml gives pools one slot,
# because DuckDB allows one writing process per file.
WAREHOUSE_POOL = "warehouse"


class PipelineResource(dg.ConfigurableResource):
    """The pipeline's home folder and its DuckDB warehouse (`REC_PIPELINE_HOME`)."""

    home: str
    memory_limit: str = DEFAULT_MEMORY_LIMIT
    alert_webhook: str | None = None
    retention_days: float = 30.0

    @property
    def settings(self) -> Settings:
        return Settings(home=Path(self.home), memory_limit=self.memory_limit, alert_webhook=self.alert_webhook,
                        retention_days=self.retention_days)

    def warehouse(self) -> Warehouse:
        return self.settings.warehouse()


@dg.definitions
def resources() -> dg.Definitions:
    settings = Settings.from_env()
    return dg.Definitions(
        resources={"pipeline": PipelineResource(home=str(settings.home), memory_limit=settings.memory_limit,
                                                alert_webhook=settings.alert_webhook,
                                                retention_days=settings.retention_days)}
    )

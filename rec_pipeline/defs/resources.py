from pathlib import Path

import dagster as dg

from rec_pipeline.config import Settings
from rec_pipeline.core.warehouse import Warehouse

# Every step that opens the warehouse file joins this pool; dagster.yaml gives pools one slot,
# because DuckDB allows one writing process per file.
WAREHOUSE_POOL = "warehouse"


class PipelineResource(dg.ConfigurableResource):
    """The pipeline's home folder and its DuckDB warehouse (`REC_PIPELINE_HOME`)."""

    home: str

    @property
    def settings(self) -> Settings:
        return Settings(home=Path(self.home))

    def warehouse(self) -> Warehouse:
        return Warehouse(self.settings.warehouse_path)


@dg.definitions
def resources() -> dg.Definitions:
    return dg.Definitions(resources={"pipeline": PipelineResource(home=str(Settings.from_env().home))})

from pathlib import Path

import dagster as dg
import polars as pl
from pydantic import Field

from rec_pipeline.core.ingest import batches, quality
from rec_pipeline.core.ingest.landing import LandingReport, land_file
from rec_pipeline.core.ingest.landing_folder import archive_file
from rec_pipeline.core.ops.pseudonymization import verify_key
from rec_pipeline.defs.ingest.partitions import event_batches
from rec_pipeline.defs.metadata import markdown_table
from rec_pipeline.defs.resources import (
    WAREHOUSE_POOL,
    PipelineResource,
    reported_as_failure,
)
from rec_pipeline.settings import Settings

SEVERITY = {"ERROR": dg.AssetCheckSeverity.ERROR, "WARN": dg.AssetCheckSeverity.WARN}


class BatchFileConfig(dg.Config):
    path: str = Field(
        default="",
        description="File to land; empty means `<landing folder>/<partition key>`.",
    )


@dg.asset(
    partitions_def=event_batches,
    pool=WAREHOUSE_POOL,
    kinds={"duckdb", "polars"},
    group_name="ingest",
    owners=["team:data-platform"],
    tags={"layer": "landing"},
    check_specs=[
        dg.AssetCheckSpec(spec.name, asset="event_batch", description=spec.description, blocking=True)
        for spec in quality.CHECK_SPECS
    ],
    retry_policy=dg.RetryPolicy(max_retries=2, delay=5, backoff=dg.Backoff.EXPONENTIAL),
)
def event_batch(context: dg.AssetExecutionContext, config: BatchFileConfig, pipeline: PipelineResource):
    """One file of behaviour events landed into `events` (bad rows into `events_rejected`) and
    validated; a batch failing an ERROR check is held back from training."""
    settings = pipeline.settings
    path = Path(config.path) if config.path else settings.landing_dir / context.partition_key
    _refuse_unsafe_input(path)
    if not config.path and path.resolve().parent != settings.landing_dir.resolve():
        raise dg.Failure(description=f"partition {context.partition_key!r} names a file outside the landing folder",
                         allow_retries=False)
    warehouse = settings.warehouse()
    with reported_as_failure():
        pseudonymizer = settings.pseudonymizer()
        with warehouse.connect() as con:  # the wrong key, or none, would split known users in two
            verify_key(con, pseudonymizer)
        report = land_file(warehouse, path, pseudonymizer=pseudonymizer)
    if report.status == "failed":
        _archive_if_landing(path, settings, report.batch_id)
        raise dg.Failure(
            description=f"{path.name} could not be read: {report.reason}",
            metadata=report.as_dict(),
            allow_retries=False,
        )
    # Validation runs with the warehouse closed, so other steps and readers are not locked out.
    with warehouse.connect() as con:
        rows = batches.batch_rows(con, report.batch_id)
        recent = batches.recent_profiles(con, report.batch_id)
    outcomes = quality.validate_batch(rows, recent)
    with warehouse.connect() as con:
        quality_status = batches.record_checks(con, report.batch_id, outcomes)
    # Archived last: a retry after a crash above finds the file and re-validates the landed batch.
    _archive_if_landing(path, settings, report.batch_id)
    return dg.MaterializeResult(
        metadata=_landing_metadata(report, quality_status, rows),
        check_results=[_check_result(outcome) for outcome in outcomes],
    )


def _refuse_unsafe_input(path: Path) -> None:
    if path.is_symlink() or not path.is_file():
        raise dg.Failure(
            description=f"{path} is not a regular file (symlinks are not followed; a landed file is "
            "archived, see ingested_files)",
            allow_retries=False,
        )


def _archive_if_landing(path: Path, settings: Settings, batch_id: str) -> None:
    if path.parent == settings.landing_dir and path.exists():
        archive_file(path, settings.archive_dir, batch_id)


def _landing_metadata(report: LandingReport, quality_status: str, rows: pl.DataFrame) -> dict:
    """Counts, the schema and a preview without the columns that can name a user: Dagster's event
    log keeps metadata for good, where `forget` cannot reach it."""
    return {
        "batch_id": report.batch_id,
        "landing_status": report.status,
        "quality_status": quality_status,
        "source_path": dg.MetadataValue.path(report.path),
        "rows_read": report.read,
        "rows_landed": report.landed,
        "rows_duplicate": report.duplicates,
        "rows_rejected": report.rejected,
        "dagster/row_count": report.landed,
        "dagster/column_schema": dg.TableSchema(
            columns=[dg.TableColumn(name, str(dtype)) for name, dtype in rows.schema.items()]
        ),
        "preview": dg.MetadataValue.md(markdown_table(rows.head(10).drop(quality.USER_ID_CARRIERS))),
    }


def _check_result(outcome: quality.CheckOutcome) -> dg.AssetCheckResult:
    return dg.AssetCheckResult(
        check_name=outcome.name,
        passed=outcome.passed,
        severity=SEVERITY[outcome.severity],
        description=outcome.description,
        metadata={key: _metadata_value(value) for key, value in outcome.metadata.items()},
    )


def _metadata_value(value):
    if isinstance(value, (list, dict)):
        return dg.MetadataValue.json(value)
    return "" if value is None else value

"""Run the landing job in-process, as the CLI does: the same job, resources and checks as the sensor's runs."""

import os
import re
from dataclasses import dataclass
from pathlib import Path

import dagster as dg

from rec_pipeline.core.ingest.landing import LandingReport, batch_id_for, file_sha256
from rec_pipeline.defs.ingest.partitions import event_batches

_UNSAFE = re.compile(r"[^A-Za-z0-9._-]")


@dataclass(frozen=True)
class BatchRun:
    report: LandingReport
    quality_status: str  # "passed", "failed" (held back), or "unreadable" when the file did not land


def dagster_instance() -> dg.DagsterInstance:
    """The instance the UI uses when DAGSTER_HOME is set (shared run history), else an ephemeral one."""
    return dg.DagsterInstance.get() if os.environ.get("DAGSTER_HOME") else dg.DagsterInstance.ephemeral()


def partition_key_for(path: Path) -> str:
    return _UNSAFE.sub("_", path.name)


def land_through_dagster(
    definitions: dg.Definitions, instance: dg.DagsterInstance, path: Path
) -> BatchRun:
    key = partition_key_for(path)
    instance.add_dynamic_partitions(event_batches.name, [key])
    result = definitions.resolve_job_def("land_events_job").execute_in_process(
        partition_key=key,
        run_config={
            "ops": {"event_batch": {"config": {"path": str(path.absolute())}}},
            "loggers": {"console": {"config": {"log_level": "CRITICAL"}}},
        },
        instance=instance,
        raise_on_error=False,
    )
    materializations = result.asset_materializations_for_node("event_batch")
    if materializations:
        metadata = {key: entry.value for key, entry in materializations[-1].metadata.items()}
        return BatchRun(_report_from_metadata(metadata), metadata["quality_status"])
    report = LandingReport(
        batch_id=batch_id_for(file_sha256(path)) if path.is_file() else "",
        path=str(path),
        status="failed",
        reason=_failure_reason(result),
    )
    return BatchRun(report, "unreadable")


def _report_from_metadata(value: dict) -> LandingReport:
    return LandingReport(
        batch_id=value["batch_id"],
        path=str(value["source_path"]),
        status=value["landing_status"],
        read=value["rows_read"],
        landed=value["rows_landed"],
        duplicates=value["rows_duplicate"],
        rejected=value["rows_rejected"],
    )


def _failure_reason(result: dg.ExecuteInProcessResult) -> str:
    for event in result.all_events:
        if event.is_step_failure and event.step_failure_data and event.step_failure_data.error:
            error = event.step_failure_data.error
            return (error.message or "").strip().splitlines()[0] if error.message else error.cls_name
    return "the landing run failed"

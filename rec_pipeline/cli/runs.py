"""The command line's runs: the same jobs, resources and checks the sensors and the UI run, executed
in-process on the Dagster instance the UI uses (DAGSTER_HOME) or an ephemeral one."""

from __future__ import annotations

import hashlib
import re
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import dagster as dg
from filelock import FileLock
from sqlalchemy.exc import IntegrityError

from rec_pipeline.core.errors import RecPipelineError
from rec_pipeline.core.ingest.landing import LandingReport, batch_id_for, file_sha256
from rec_pipeline.defs.ingest.partitions import event_batches
from rec_pipeline.defs.operations.stale_runs import wait_for_the_warehouse
from rec_pipeline.settings import Settings

_UNSAFE = re.compile(r"[^A-Za-z0-9._-]")
QUIET = {"loggers": {"console": {"config": {"log_level": "CRITICAL"}}}}


class RunFailedError(RecPipelineError):
    """A run the command started failed; the message names the run and where its log is."""


@dataclass(frozen=True)
class BatchRun:
    report: LandingReport
    quality_status: str  # "passed", "failed" (held back), or "unreadable" when the file did not land


@contextmanager
def dagster_instance(settings: Settings) -> Iterator[dg.DagsterInstance]:
    """The instance the UI uses when DAGSTER_HOME is set (shared run history), else an ephemeral one.
    Opening a new DAGSTER_HOME creates its storage: two commands started at once would both try, so
    the first one does it under a lock while the other waits."""
    if settings.dagster_home is None:
        with dg.DagsterInstance.ephemeral() as instance:
            yield instance
        return
    with FileLock(settings.dagster_home / ".rec_pipeline.init.lock"):
        instance = dg.DagsterInstance.from_config(str(settings.dagster_home))
    with instance:
        yield instance


def partition_key_for(path: Path) -> str:
    """The file's name and a digest of its full path: two files with the same name in different
    folders are different batches."""
    digest = hashlib.sha256(str(path.absolute()).encode()).hexdigest()[:8]
    return f"{_UNSAFE.sub('_', path.name)}-{digest}"


def add_partition(instance: dg.DagsterInstance, key: str) -> None:
    """Add a partition of `event_batches`; one that exists (another command added it) is fine."""
    if instance.has_dynamic_partition(event_batches.name, key):
        return
    try:
        instance.add_dynamic_partitions(event_batches.name, [key])
    except IntegrityError:  # added between the check and the insert
        if not instance.has_dynamic_partition(event_batches.name, key):
            raise


def land_through_dagster(definitions: dg.Definitions, instance: dg.DagsterInstance, path: Path) -> BatchRun:
    key = partition_key_for(path)
    add_partition(instance, key)
    wait_for_the_warehouse(instance, _say)
    result = definitions.resolve_job_def("land_events_job").execute_in_process(
        partition_key=key,
        run_config={"ops": {"event_batch": {"config": {"path": str(path.absolute())}}}, **QUIET},
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


def run_refresh(definitions: dg.Definitions, instance: dg.DagsterInstance, settings: Settings) -> dict:
    """One refresh through `refresh_job`: what it decided and published; `RunFailedError` if it failed."""
    wait_for_the_warehouse(instance, _say)
    result = definitions.resolve_job_def("refresh_job").execute_in_process(
        instance=instance, raise_on_error=False, run_config=QUIET)
    if not result.success:
        raise RunFailedError(f"the refresh run {result.run_id} failed: {_failure_reason(result)}; "
                             f"{_where_the_log_is(result, instance, settings)}")
    return _refresh_outcome(result.asset_materializations_for_node("model_refresh"))


def _say(line: str) -> None:
    print(f"rec-pipeline: {line}", file=sys.stderr, flush=True)


def _where_the_log_is(result: dg.ExecuteInProcessResult, instance: dg.DagsterInstance, settings: Settings) -> str:
    if not instance.is_ephemeral:
        return f"its log is in the Dagster UI and in the instance at {settings.dagster_home}"
    settings.logs_dir.mkdir(parents=True, exist_ok=True)
    log = settings.logs_dir / f"run-{result.run_id}.log"
    log.write_text("\n".join(_describe(event) for event in result.all_events) + "\n")
    return f"its log is in {log}"


def _describe(event: dg.DagsterEvent) -> str:
    line = f"{event.event_type_value} {event.step_key or ''} {event.message or ''}".strip()
    if event.is_step_failure and event.step_failure_data and event.step_failure_data.error:
        line += "\n" + event.step_failure_data.error.to_string()
    return line


def _refresh_outcome(materializations) -> dict:
    values = {m.asset_key.to_user_string(): {k: v.value for k, v in m.metadata.items()} for m in materializations}
    challenger = values.get("challenger_model", {})
    return {
        "model_version": challenger.get("model_version"),
        "promoted": bool(challenger.get("promoted", False)),
        "reason": challenger.get("reason", "no new validated events"),
        "recommendations": int(values.get("recommendations", {}).get("dagster/row_count", 0)),
        "gate": {k.removeprefix("gate/"): v for k, v in challenger.items() if k.startswith("gate/")},
    }


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
    return "the run failed"


"""What runs without anyone clicking: refresh automation, run-failure alerts and housekeeping. All
of it starts running unless REC_PIPELINE_AUTOMATION=off."""

from datetime import datetime, timedelta, timezone

import dagster as dg

from rec_pipeline.core.model.registry import ModelRegistry
from rec_pipeline.core.ops.operations import housekeeping, post_alert, record_failure
from rec_pipeline.defs.resources import WAREHOUSE_POOL, PipelineResource


def build_refresh_automation(status: dg.DefaultSensorStatus, interval_s: int) -> dg.AutomationConditionSensorDefinition:
    return dg.AutomationConditionSensorDefinition(
        "refresh_automation",
        target=dg.AssetSelection.groups("online_model"),
        default_status=status,
        minimum_interval_seconds=interval_s,
        description="Requests a refresh once new batches have passed their checks (REC_PIPELINE_REFRESH_INTERVAL_S "
        "apart at most).",
    )


def build_failure_alerts(status: dg.DefaultSensorStatus) -> dg.SensorDefinition:
    @dg.run_failure_sensor(default_status=status, minimum_interval_seconds=10,
                           description="Records every failed run in the warehouse's run_failures table and posts it "
                           "to REC_PIPELINE_ALERT_WEBHOOK when set.")
    def failure_alerts(context: dg.RunFailureSensorContext, pipeline: PipelineResource) -> None:
        run = context.dagster_run
        message = context.failure_event.message or "the run failed"
        failed_at = datetime.now(timezone.utc)
        alert = post_alert(pipeline.alert_webhook, {
            "pipeline": "rec_pipeline", "run_id": run.run_id, "job": run.job_name, "message": message,
            "failed_at": failed_at.isoformat()})
        with pipeline.warehouse().connect() as con:
            record_failure(con, run.run_id, run.job_name, message, failed_at, alert)

    return failure_alerts


@dg.op(pool=WAREHOUSE_POOL)
def prune_and_checkpoint(context: dg.OpExecutionContext, pipeline: PipelineResource) -> None:
    """Prune archived files and unused model artifacts past the retention, then CHECKPOINT."""
    settings = pipeline.settings
    with settings.warehouse().connect() as con:
        report = housekeeping(con, settings.archive_dir, ModelRegistry(settings.models_dir),
                              timedelta(days=settings.retention_days), datetime.now(timezone.utc))
    context.log.info(f"housekeeping: {report.as_dict()}")


@dg.job(description="Keeps the home folder and the warehouse from growing without bound.")
def housekeeping_job():
    prune_and_checkpoint()


def build_nightly_housekeeping(status: dg.DefaultScheduleStatus) -> dg.ScheduleDefinition:
    return dg.ScheduleDefinition(name="nightly_housekeeping", job=housekeeping_job, cron_schedule="17 3 * * *",
                                 default_status=status)

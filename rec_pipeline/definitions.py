"""The Dagster code location: every definition of `rec_pipeline/defs/`, composed for the settings of
this process (read once, here), with the policies that hold for the whole graph applied once."""

from __future__ import annotations

from datetime import timedelta

import dagster as dg

from rec_pipeline.defs.ingest.assets import event_batch
from rec_pipeline.defs.ingest.jobs import land_events_job
from rec_pipeline.defs.ingest.sensors import build_landing_sensor
from rec_pipeline.defs.operations.automation import (
    build_failure_alerts,
    build_nightly_housekeeping,
    build_refresh_automation,
    housekeeping_job,
)
from rec_pipeline.defs.operations.stale_runs import build_stale_run_sensor
from rec_pipeline.defs.refresh.assets import model_refresh, refresh_job
from rec_pipeline.defs.resources import PipelineResource
from rec_pipeline.settings import Settings


@dg.definitions
def defs() -> dg.Definitions:
    return build_definitions(Settings.from_env())


def build_definitions(settings: Settings) -> dg.Definitions:
    """The same Definitions for the UI, the daemon and the command line's in-process runs."""
    sensors = dg.DefaultSensorStatus.RUNNING if settings.automation else dg.DefaultSensorStatus.STOPPED
    schedules = dg.DefaultScheduleStatus.RUNNING if settings.automation else dg.DefaultScheduleStatus.STOPPED
    freshness = dg.FreshnessPolicy.time_window(fail_window=timedelta(minutes=settings.freshness_fail_minutes),
                                               warn_window=timedelta(minutes=settings.freshness_warn_minutes))
    def fresh(spec: dg.AssetSpec) -> dg.AssetSpec:
        return spec.replace_attributes(freshness_policy=freshness) if spec.key.path == ["recommendations"] else spec

    return dg.Definitions(
        assets=[event_batch, *dg.map_asset_specs(fresh, [model_refresh])],
        jobs=[land_events_job, refresh_job, housekeeping_job],
        sensors=[build_landing_sensor(sensors), build_refresh_automation(sensors, settings.refresh_interval_s),
                 build_failure_alerts(sensors), build_stale_run_sensor(sensors)],
        schedules=[build_nightly_housekeeping(schedules)],
        resources={"pipeline": PipelineResource.from_settings(settings)},
    )

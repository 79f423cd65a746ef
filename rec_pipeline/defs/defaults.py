"""Whether sensors and schedules start running: REC_PIPELINE_AUTOMATION (on by default)."""

import dagster as dg

from rec_pipeline.config import Settings

SETTINGS = Settings.from_env()
SENSOR_STATUS = dg.DefaultSensorStatus.RUNNING if SETTINGS.automation else dg.DefaultSensorStatus.STOPPED
SCHEDULE_STATUS = dg.DefaultScheduleStatus.RUNNING if SETTINGS.automation else dg.DefaultScheduleStatus.STOPPED

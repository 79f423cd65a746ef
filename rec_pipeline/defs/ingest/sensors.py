import json
import time

import dagster as dg

from rec_pipeline.core.ingest.landing_folder import FileState, scan_landing_folder
from rec_pipeline.defs.ingest.jobs import land_events_job
from rec_pipeline.defs.ingest.partitions import event_batches
from rec_pipeline.defs.resources import PipelineResource


def build_landing_sensor(status: dg.DefaultSensorStatus) -> dg.SensorDefinition:
    @dg.sensor(
        job=land_events_job,
        minimum_interval_seconds=5,
        default_status=status,
        description="Turns each new, completely written file in $REC_PIPELINE_HOME/landing into a batch.",
    )
    def landing_sensor(context: dg.SensorEvaluationContext, pipeline: PipelineResource) -> dg.SensorResult:
        settings = pipeline.settings
        cursor = json.loads(context.cursor) if context.cursor else {"seen": {}, "refused": []}
        previous = {name: FileState(*state) for name, state in cursor["seen"].items()}
        settings.ensure_dirs()  # so that there is a landing folder to drop files into
        scan = scan_landing_folder(settings.landing_dir, previous, now_ns=time.time_ns())
        for name, reason in scan.refused.items():
            if name not in cursor["refused"]:
                context.log.warning(f"landing/{name} is not landed: {reason}")
        keys = [name for name in scan.ready if not context.instance.has_dynamic_partition(event_batches.name, name)]
        runs = [
            dg.RunRequest(
                run_key=f"{name}@{state.run_key}",
                partition_key=name,
                run_config={"ops": {"event_batch": {"config": {"path": str(settings.landing_dir / name)}}}},
            )
            for name, state in scan.ready.items()
        ]
        seen = {name: [s.size, s.mtime_ns, s.inode] for name, s in (scan.waiting | scan.ready).items()}
        return dg.SensorResult(
            run_requests=runs,
            dynamic_partitions_requests=[event_batches.build_add_request(keys)] if keys else [],
            cursor=json.dumps({"seen": seen, "refused": sorted(scan.refused)}),
        )

    return landing_sensor

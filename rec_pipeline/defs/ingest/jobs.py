import dagster as dg

land_events_job = dg.define_asset_job(
    "land_events_job",
    selection=dg.AssetSelection.assets("event_batch"),
    description="Land one event file (a partition of event_batches) and validate it.",
    # dagster.yaml retries runs that crash; a batch held back by its checks would fail again.
    tags={"dagster/retry_on_asset_or_op_failure": "false"},
)

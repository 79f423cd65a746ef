from datetime import timedelta

import dagster as dg
import polars as pl

from rec_pipeline.config import Settings
from rec_pipeline.core.model.refresh import RefreshResult, refresh
from rec_pipeline.core.model.registry import ModelRegistry
from rec_pipeline.defs.defaults import SETTINGS
from rec_pipeline.defs.resources import WAREHOUSE_POOL, PipelineResource

REFRESH_ASSETS = {
    "features": "Incremental, time-decayed user, item and user-item features (Polars), in the warehouse.",
    "challenger_model": "The model trained by the latest refresh: retrieval warm-started from the champion, "
    "ranker continued; registered in model_registry whatever the gate decides.",
    "champion_model": "The model serving recommendations: the challenger when the evaluation gate promoted it.",
    "recommendations": "Top-K items per user from the champion (trending fallback before any promotion), "
    "swapped in atomically.",
    "serving_snapshot": "serving.duckdb, rewritten aside and renamed over: what apps and analysts read.",
}
SERVING = {"recommendations", "serving_snapshot"}


# Refresh after new batches landed, unless a refresh is running; the automation sensor's interval
# spaces refreshes out, and a refresh learns every batch validated by then (only those), so waiting
# batches coalesce. A batch held back by its checks (its landing run fails) starts none
# (test_dagster_automation.py). Neither landing runs in flight nor "all deps' blocking checks
# passed" hold it back: under a steady stream of files one of them always did, and the refresh
# starved (benchmarks/soak.py found it). Not `eager()`: its "no dependency partition missing" would
# wait forever on the partition of a file that never landed.
AFTER_NEW_BATCHES = (
    dg.AutomationCondition.any_deps_updated().since_last_handled()
    & ~dg.AutomationCondition.in_progress()
).with_label("after new batches")


def _spec(name: str, text: str, settings: Settings) -> dg.AssetSpec:
    freshness = (dg.FreshnessPolicy.time_window(fail_window=timedelta(minutes=settings.freshness_fail_minutes),
                                                warn_window=timedelta(minutes=settings.freshness_warn_minutes))
                 if name == "recommendations" else None)
    return dg.AssetSpec(name, description=text, deps=["event_batch"], group_name="online_model",
                        kinds={"duckdb", "polars"} | ({"tensorflow", "lightgbm"} if "model" in name else set()),
                        owners=["team:ml-platform"], tags={"layer": "serving" if name in SERVING else "model"},
                        skippable=True, automation_condition=AFTER_NEW_BATCHES, freshness_policy=freshness)


@dg.multi_asset(
    specs=[_spec(name, text, SETTINGS) for name, text in REFRESH_ASSETS.items()],
    check_specs=[dg.AssetCheckSpec("evaluation_gate", asset="challenger_model",
                                   description="Challenger beats the popularity floor and is within tolerance "
                                   "of the champion on the newest events neither learnt from.")],
    pool=WAREHOUSE_POOL,
    # Subsettable only so that every output is optional: a refresh with no new events materializes
    # nothing (and evaluates no gate). A real subset is refused below: the steps share one transaction.
    can_subset=True,
)
def model_refresh(context: dg.AssetExecutionContext, pipeline: PipelineResource):
    """One micro-batch refresh: features, challenger, gate, champion, recommendations, serving copy.
    Only the champion is ever published, so a rejected challenger never reaches the recommendations."""
    if {key.to_user_string() for key in context.selected_asset_keys} != set(REFRESH_ASSETS):
        raise dg.Failure(f"a refresh materializes {', '.join(REFRESH_ASSETS)} together, in one transaction: "
                         "select all of them (or run refresh_job)")
    settings = pipeline.settings
    result = refresh(pipeline.warehouse(), ModelRegistry(settings.models_dir), settings.serving_path)
    if result.events == 0:
        context.log.info("no new validated events: nothing to refresh")
        return
    yield from _materializations(result, settings.serving_path)
    yield dg.AssetCheckResult(
        check_name="evaluation_gate", asset_key="challenger_model", passed=result.promoted,
        severity=dg.AssetCheckSeverity.WARN, description=result.reason,
        metadata={key: float(value) for key, value in result.gate.items()},
    )


def _materializations(result: RefreshResult, serving_path):
    """Champion and recommendations materialize only when they changed: a rejected challenger leaves
    both as they were, and the asset graph shows that. The serving copy is rewritten every refresh
    (it carries the registry, with the rejected challenger in it)."""
    numbers = {f"gate/{key}": float(value) for key, value in result.gate.items()}
    seconds = {f"seconds/{stage}": value for stage, value in result.stage_seconds.items()}
    yield dg.MaterializeResult(asset_key="features", metadata={"events": result.events, **seconds})
    yield dg.MaterializeResult(asset_key="challenger_model", metadata={
        "model_version": result.model_version, "promoted": result.promoted, "reason": result.reason, **numbers})
    if result.recommendations:
        yield dg.MaterializeResult(asset_key="champion_model", metadata={"model_version": result.champion or "none"})
        yield dg.MaterializeResult(asset_key="recommendations", metadata={
            "dagster/row_count": result.recommendations, "preview": dg.MetadataValue.md(_preview(serving_path))})
    yield dg.MaterializeResult(asset_key="serving_snapshot", metadata={"path": dg.MetadataValue.path(str(serving_path))})


def _preview(serving_path) -> str:
    import duckdb

    with duckdb.connect(str(serving_path), read_only=True) as con:
        sample = con.sql("SELECT user_id, item_id, rank, round(score, 4) AS score, model_version, reason"
                         " FROM recommendations WHERE rank <= 3 ORDER BY user_id, rank LIMIT 15").pl()
    with pl.Config(tbl_formatting="MARKDOWN", tbl_hide_column_data_types=True, tbl_hide_dataframe_shape=True):
        return str(sample)


refresh_job = dg.define_asset_job(
    "refresh_job",
    selection=dg.AssetSelection.assets(*REFRESH_ASSETS),
    description="One micro-batch refresh of the models and the recommendations.",
)

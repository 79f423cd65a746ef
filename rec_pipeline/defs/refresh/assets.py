from dataclasses import replace
from pathlib import Path

import dagster as dg
from pydantic import Field

from rec_pipeline.core.model.config import RefreshConfig
from rec_pipeline.core.model.refresh import RefreshResult, refresh
from rec_pipeline.core.model.registry import ModelRegistry
from rec_pipeline.core.model.serving import preview
from rec_pipeline.defs.metadata import markdown_table
from rec_pipeline.defs.resources import (
    WAREHOUSE_POOL,
    PipelineResource,
    reported_as_failure,
)

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
DEFAULT = RefreshConfig()


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


class RefreshRunConfig(dg.Config):
    """What a refresh may change per run (the launchpad); every default is `RefreshConfig`'s."""

    candidates: int = Field(DEFAULT.candidates, description="retrieval candidates the ranker orders per user")
    popular_candidates: int = Field(DEFAULT.popular_candidates, description="plus the most popular items now")
    k: int = Field(DEFAULT.k, description="recommendations published per user")
    holdout_fraction: float = Field(DEFAULT.holdout_fraction, description="newest share of events: the gate's slice")
    replay_events: int = Field(DEFAULT.replay_events, description="recent history mixed into retrieval training")
    ranker_users: int = Field(DEFAULT.ranker_users, description="users sampled to train the ranker")
    eval_users: int = Field(DEFAULT.eval_users, description="users sampled for the gate")
    expire_after_days: float | None = Field(DEFAULT.expire_after_days,
                                            description="idle users and items lose their embedding rows")
    gate_tolerance: float = Field(DEFAULT.gate.tolerance, description="how far below the champion a challenger may be")
    gate_min_users: int = Field(DEFAULT.gate.min_users, description="fewer evaluated users: not promoted")
    gate_require_above_floor: bool = Field(DEFAULT.gate.require_above_floor,
                                           description="the challenger must beat the popularity floor")

    def to_refresh_config(self) -> RefreshConfig:
        gate = replace(DEFAULT.gate, tolerance=self.gate_tolerance, min_users=self.gate_min_users,
                       require_above_floor=self.gate_require_above_floor)
        values = self.model_dump(exclude={"gate_tolerance", "gate_min_users", "gate_require_above_floor"})
        return replace(DEFAULT, gate=gate, **values)


def _spec(name: str, text: str) -> dg.AssetSpec:
    return dg.AssetSpec(name, description=text, deps=["event_batch"], group_name="online_model",
                        kinds={"duckdb", "polars"} | ({"tensorflow", "lightgbm"} if "model" in name else set()),
                        owners=["team:ml-platform"], tags={"layer": "serving" if name in SERVING else "model"},
                        skippable=True, automation_condition=AFTER_NEW_BATCHES)


@dg.multi_asset(
    specs=[_spec(name, text) for name, text in REFRESH_ASSETS.items()],
    check_specs=[dg.AssetCheckSpec("evaluation_gate", asset="challenger_model",
                                   description="Challenger beats the popularity floor and is within tolerance "
                                   "of the champion on the newest events neither learnt from.")],
    pool=WAREHOUSE_POOL,
    # Subsettable only so that every output is optional: a refresh with no new events materializes
    # nothing (and evaluates no gate). A real subset is refused below: the steps share one transaction.
    can_subset=True,
)
def model_refresh(context: dg.AssetExecutionContext, config: RefreshRunConfig, pipeline: PipelineResource):
    """One micro-batch refresh: features, challenger, gate, champion, recommendations, serving copy.
    Only the champion is ever published, so a rejected challenger never reaches the recommendations."""
    if {key.to_user_string() for key in context.selected_asset_keys} != set(REFRESH_ASSETS):
        raise dg.Failure(f"a refresh materializes {', '.join(REFRESH_ASSETS)} together, in one transaction: "
                         "select all of them (or run refresh_job)")
    settings = pipeline.settings
    with reported_as_failure():
        result = refresh(settings.warehouse(), ModelRegistry(settings.models_dir), settings.serving_path,
                         config.to_refresh_config())
    if result.events == 0:
        context.log.info("no new validated events: nothing to refresh")
        return
    yield from _materializations(result, settings.serving_path)
    yield dg.AssetCheckResult(
        check_name="evaluation_gate", asset_key="challenger_model", passed=result.promoted,
        severity=dg.AssetCheckSeverity.WARN, description=result.reason,
        metadata={key: float(value) for key, value in result.gate.items()},
    )


def _materializations(result: RefreshResult, serving_path: Path):
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
            "dagster/row_count": result.recommendations, "preview": dg.MetadataValue.md(markdown_table(preview(serving_path)))})
    yield dg.MaterializeResult(asset_key="serving_snapshot", metadata={"path": dg.MetadataValue.path(str(serving_path))})


refresh_job = dg.define_asset_job(
    "refresh_job",
    selection=dg.AssetSelection.assets(*REFRESH_ASSETS),
    description="One micro-batch refresh of the models and the recommendations.",
)

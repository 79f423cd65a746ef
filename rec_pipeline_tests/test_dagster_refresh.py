"""The refresh job through Dagster: what the asset graph shows after a promotion and a rejection."""

import dagster as dg
import pytest

from rec_pipeline.cli.runs import land_through_dagster
from rec_pipeline.core.evaluation.simulator import Simulator, SimulatorConfig
from rec_pipeline.core.ingest.event_files import write_events
from rec_pipeline.core.model import refresh as refresh_module
from rec_pipeline.core.model.gate import GateDecision

BATCH = 4_000


@pytest.fixture
def events():
    return Simulator(SimulatorConfig(seed=11, n_users=300, n_items=150)).events(2 * BATCH)


def run_refresh(definitions, instance) -> dg.ExecuteInProcessResult:
    return definitions.resolve_job_def("refresh_job").execute_in_process(instance=instance)


def materialized(result: dg.ExecuteInProcessResult) -> set[str]:
    return {m.asset_key.to_user_string() for m in result.asset_materializations_for_node("model_refresh")}


def test_a_rejected_challenger_leaves_champion_and_recommendations_unmaterialized(
        definitions, home, tmp_path, events, monkeypatch):
    with dg.instance_for_test() as instance:
        for index in range(2):
            path = write_events(events.slice(index * BATCH, BATCH), tmp_path / f"batch{index}.parquet")
            assert land_through_dagster(definitions, instance, path).quality_status == "passed"
            if index == 0:
                first = run_refresh(definitions, instance)
                assert materialized(first) == {"features", "challenger_model", "champion_model", "recommendations",
                                               "serving_snapshot"}
        monkeypatch.setattr(refresh_module, "decide", lambda *args: GateDecision(False, "Not promoted: forced", {}))
        second = run_refresh(definitions, instance)
    assert second.success
    assert materialized(second) == {"features", "challenger_model", "serving_snapshot"}
    [check] = second.get_asset_check_evaluations()
    assert (check.check_name, check.passed) == ("evaluation_gate", False)
    assert check.description == "Not promoted: forced"


def test_a_refresh_with_nothing_new_succeeds_and_materializes_nothing(definitions, home):
    with dg.instance_for_test() as instance:
        result = run_refresh(definitions, instance)
    assert result.success and materialized(result) == set()
    assert result.get_asset_check_evaluations() == []


def test_a_partial_selection_is_refused_with_the_reason(definitions, home):
    with dg.instance_for_test() as instance:
        result = dg.materialize([definitions.get_assets_def("features")], selection=["features"], instance=instance,
                                resources=definitions.resources, raise_on_error=False)
    assert not result.success
    [failure] = [e for e in result.all_events if e.is_step_failure]
    assert "together" in failure.step_failure_data.error.message

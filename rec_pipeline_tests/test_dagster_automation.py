"""Automation without clicks: which evaluations request a refresh, what a failed run leaves behind,
and the switch that turns it all off."""

import dagster as dg
import polars as pl
import pytest

from rec_pipeline.cli.runs import land_through_dagster
from rec_pipeline.core.errors import InputError
from rec_pipeline.core.evaluation.simulator import Simulator, SimulatorConfig
from rec_pipeline.core.ingest.event_files import write_events
from rec_pipeline.core.ops.warehouse import Warehouse
from rec_pipeline.definitions import defs

REFRESH_KEYS = {"features", "challenger_model", "champion_model", "recommendations", "serving_snapshot"}


@pytest.fixture
def events() -> pl.DataFrame:
    return Simulator(SimulatorConfig(seed=12, n_users=200, n_items=100)).events(3_000)


def requested(result) -> set[str]:
    return {name for name in REFRESH_KEYS | {"event_batch"} if result.get_num_requested(dg.AssetKey(name))}


def test_a_refresh_is_requested_after_validated_batches_only(definitions, home, tmp_path, events):
    good = [write_events(events.slice(i * 1_000, 1_000), tmp_path / f"good{i}.parquet") for i in range(2)]
    bad = write_events(events.slice(2_000, 1_000).with_columns(user_id=pl.lit(None, pl.String)), tmp_path / "bad.parquet")
    with dg.instance_for_test() as instance:
        def evaluate(cursor):
            return dg.evaluate_automation_conditions(defs=definitions, instance=instance, cursor=cursor)

        idle = evaluate(None)
        assert idle.total_requested == 0, "nothing landed yet"
        assert land_through_dagster(definitions, instance, good[0]).quality_status == "passed"
        after_good = evaluate(idle.cursor)
        assert requested(after_good) == REFRESH_KEYS
        assert evaluate(after_good.cursor).total_requested == 0, "handled: not requested again"
        assert land_through_dagster(definitions, instance, bad).quality_status == "failed"
        after_bad = evaluate(after_good.cursor)
        assert after_bad.total_requested == 0, "a held-back batch does not start a refresh"
        assert land_through_dagster(definitions, instance, good[1]).quality_status == "passed"
        assert requested(evaluate(after_bad.cursor)) == REFRESH_KEYS, "an old failed batch does not block later ones"


def default_statuses(monkeypatch, automation: str | None) -> dict[str, str]:
    """Each sensor's and schedule's default status, as the code location loads them."""
    if automation is None:
        monkeypatch.delenv("REC_PIPELINE_AUTOMATION", raising=False)
    else:
        monkeypatch.setenv("REC_PIPELINE_AUTOMATION", automation)
    repo = defs().get_repository_def()
    return {d.name: d.default_status.value for d in [*repo.sensor_defs, *repo.schedule_defs]}


def test_automation_runs_by_default_and_one_setting_switches_it_off(home, monkeypatch):
    names = {"landing_sensor", "refresh_automation", "failure_alerts", "stale_warehouse_holders", "nightly_housekeeping"}
    on, off = default_statuses(monkeypatch, None), default_statuses(monkeypatch, "off")
    assert set(on) == set(off) == names
    assert set(on.values()) == {"RUNNING"} and set(off.values()) == {"STOPPED"}
    with pytest.raises(InputError, match="REC_PIPELINE_AUTOMATION"):
        default_statuses(monkeypatch, "maybe")


def test_a_failed_run_is_recorded_and_posted_to_the_webhook(home, tmp_path, webhook, monkeypatch):
    url, received = webhook
    monkeypatch.setenv("REC_PIPELINE_ALERT_WEBHOOK", url)
    definitions = defs()
    failure_alerts = definitions.get_repository_def().get_sensor_def("failure_alerts")
    broken = tmp_path / "broken.jsonl.gz"
    broken.write_bytes(b"\x1f\x8b\x08\x00garbage")
    with dg.instance_for_test() as instance:
        assert land_through_dagster(definitions, instance, broken).quality_status == "unreadable"
        [run] = instance.get_runs(filters=dg.RunsFilter(statuses=[dg.DagsterRunStatus.FAILURE]))
        [failure] = instance.all_logs(run.run_id, of_type=dg.DagsterEventType.RUN_FAILURE)
        context = dg.build_run_status_sensor_context(
            sensor_name="failure_alerts", dagster_event=failure.dagster_event, dagster_instance=instance,
            dagster_run=run).for_run_failure()
        failure_alerts(context, pipeline=definitions.resources["pipeline"])
    assert [(body["run_id"], body["job"]) for body in received] == [(run.run_id, "land_events_job")]
    with Warehouse(home / "warehouse.duckdb").connect() as con:
        recorded = con.execute("SELECT run_id, job_name, alert_status FROM run_failures").fetchall()
    assert recorded == [(run.run_id, "land_events_job", "sent")]


def test_recommendations_carry_the_freshness_policy_and_every_asset_its_kinds(definitions):
    graph = definitions.get_repository_def().asset_graph
    policy = graph.get(dg.AssetKey("recommendations")).freshness_policy
    assert (policy.warn_window.to_timedelta().total_seconds(), policy.fail_window.to_timedelta().total_seconds()) \
        == (30 * 60, 120 * 60)
    for key in graph.get_all_asset_keys():
        node = graph.get(key)
        assert node.kinds and node.owners and node.description, key

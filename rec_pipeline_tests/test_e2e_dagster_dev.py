"""End to end through the real processes: `dagster dev -w workspace.yaml` (webserver, daemon, code
server, one process per run) on a free port with its own DAGSTER_HOME and REC_PIPELINE_HOME. Files
dropped into the landing folder must become published recommendations without any click; a bad
file must be held back with its failed check; the refresh job must run when launched through
GraphQL; and the processes must stop when asked."""

import contextlib
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import dagster as dg
import polars as pl
import pytest

from rec_pipeline.core.evaluation.simulator import Simulator, SimulatorConfig
from rec_pipeline_tests.dagster_dev import DagsterDev, wait_for
from rec_pipeline_tests.helpers import big_events_file, wait_until_the_warehouse_is_held

pytestmark = pytest.mark.slow

EXPECTED_ASSETS = {"event_batch", "features", "challenger_model", "champion_model", "recommendations",
                   "serving_snapshot"}
EXPECTED_AUTOMATION = {"landing_sensor", "refresh_automation", "failure_alerts", "stale_warehouse_holders",
                       "nightly_housekeeping"}
STARTUP_S, PIPELINE_S = 180, 420


@pytest.fixture(scope="module")
def dev(tmp_path_factory):
    server = DagsterDev(tmp_path_factory.mktemp("e2e"), {"REC_PIPELINE_REFRESH_INTERVAL_S": "5",
                                                          "REC_PIPELINE_AUTOMATION": "on"})
    try:
        yield server.start(STARTUP_S)
    except BaseException:
        print(server.log.read_text()[-5000:])
        raise
    finally:
        if server.process.poll() is None:
            server.stop()


def instance(server: DagsterDev) -> dg.DagsterInstance:
    return dg.DagsterInstance.from_config(str(server.dagster_home))


def finished_runs(server: DagsterDev, partition: str) -> list:
    with instance(server) as inst:
        runs = inst.get_runs(filters=dg.RunsFilter(tags={"dagster/partition": partition}))
    return [run for run in runs if run.is_finished]


def finished_statuses(server: DagsterDev, at_least: int) -> list | None:
    """Every run's status once all runs have finished and there are `at_least` of them."""
    with instance(server) as inst:
        runs = inst.get_runs()
    return [run.status for run in runs] if len(runs) >= at_least and all(r.is_finished for r in runs) else None


def test_the_code_location_loads_with_its_assets_checks_sensors_and_schedules(dev):
    nodes = dev.query("{ assetNodes { assetKey { path } assetChecksOrError { ... on AssetChecks { checks { name } } } } }")
    assets = {"/".join(node["assetKey"]["path"]): node for node in nodes["assetNodes"]}
    assert set(assets) == EXPECTED_ASSETS
    checks = {check["name"] for node in assets.values() for check in node["assetChecksOrError"]["checks"]}
    assert {"user_id_not_null", "event_type_known", "evaluation_gate"} <= checks
    repos = dev.query("{ repositoriesOrError { ... on RepositoryConnection { nodes { sensors { name "
                      "sensorState { status } } schedules { name scheduleState { status } } } } } }")
    [repo] = repos["repositoriesOrError"]["nodes"]
    states = {s["name"]: s["sensorState"]["status"] for s in repo["sensors"]}
    states |= {s["name"]: s["scheduleState"]["status"] for s in repo["schedules"]}
    assert set(states) == EXPECTED_AUTOMATION and set(states.values()) == {"RUNNING"}


def test_dropped_files_become_published_recommendations_without_a_click(dev):
    events = Simulator(SimulatorConfig(seed=21, n_users=300, n_items=150)).events(6_000)
    for index in range(2):
        dev.drop(events.slice(index * 3_000, 3_000), f"batch-{index}.parquet")
    users = set(events["user_id"].unique())
    published = wait_for("recommendations for the dropped events' users",
                         lambda: dev.serving_users() if len(dev.serving_users() & users) > 0.9 * len(users) else None,
                         PIPELINE_S)
    assert published <= users, "every published user comes from the dropped events"
    assert not list((dev.pipeline_home / "landing").iterdir()), "landed files are archived"
    # two landing runs and at least one refresh, queued on the one-slot pool, none failed on the lock
    statuses = wait_for("the runs to finish", lambda: finished_statuses(dev, at_least=3), PIPELINE_S)
    assert set(statuses) == {dg.DagsterRunStatus.SUCCESS}, statuses


def test_the_refresh_job_launched_through_graphql_succeeds(dev):
    launched = dev.query(
        "mutation { launchRun(executionParams: { selector: { repositoryLocationName: \"rec_pipeline\", "
        "repositoryName: \"__repository__\", jobName: \"refresh_job\" } }) { __typename "
        "... on LaunchRunSuccess { run { runId } } ... on PythonError { message } } }")["launchRun"]
    assert launched["__typename"] == "LaunchRunSuccess", launched
    run_id = launched["run"]["runId"]

    def status():
        value = dev.query("query($id: ID!) { runOrError(runId: $id) { ... on Run { status } } }",
                          {"id": run_id})["runOrError"]["status"]
        return value if value in ("SUCCESS", "FAILURE", "CANCELED") else None

    assert wait_for("the refresh run to finish", status, PIPELINE_S) == "SUCCESS"


def test_a_bad_file_is_held_back_with_its_failed_check(dev):
    bad = Simulator(SimulatorConfig(seed=22, n_users=100, n_items=50)).events(500).with_columns(
        user_id=pl.lit(None, pl.String))
    dev.drop(bad, "bad-batch.parquet")
    [run] = wait_for("the bad file's landing run", lambda: finished_runs(dev, "bad-batch.parquet"), PIPELINE_S)
    with instance(dev) as inst:
        records = inst.get_records_for_run(run.run_id, of_type=dg.DagsterEventType.ASSET_CHECK_EVALUATION).records
    outcomes = {r.event_log_entry.dagster_event.event_specific_data.check_name:
                r.event_log_entry.dagster_event.event_specific_data.passed for r in records}
    assert outcomes["user_id_not_null"] is False
    env = os.environ | {"REC_PIPELINE_HOME": str(dev.pipeline_home)}
    batches = subprocess.run([str(Path(sys.executable).parent / "rec-pipeline"), "batches", "--json"], env=env,
                             capture_output=True, text=True, check=True)
    [held] = [b for b in json.loads(batches.stdout) if b["path"].endswith("bad-batch.parquet")]
    assert held["quality_status"] == "failed" and "user_id_not_null" in held["failed_checks"]


def test_a_run_worker_killed_while_it_holds_the_warehouse_does_not_block_later_runs(dev, tmp_path):
    big = big_events_file(tmp_path / "big.parquet", 1_500_000)
    os.replace(big, dev.pipeline_home / "landing" / "big.parquet")
    holder = wait_until_the_warehouse_is_held(dev.dagster_home)
    with instance(dev) as inst:
        pids = {int(e.dagster_event.event_specific_data.metadata["pid"].value)
                for e in inst.all_logs(holder, of_type=dg.DagsterEventType.ENGINE_EVENT)
                if "pid" in getattr(e.dagster_event.event_specific_data, "metadata", {})}
    assert pids, "the run worker logged its process"
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    small = Simulator(SimulatorConfig(seed=23, n_users=50, n_items=30)).events(300)
    dev.drop(small, "after-the-kill.parquet")
    [after] = wait_for("the next file's landing run", lambda: finished_runs(dev, "after-the-kill.parquet"), PIPELINE_S)
    assert after.status == dg.DagsterRunStatus.SUCCESS
    with instance(dev) as inst:
        assert inst.get_run_by_id(holder).status == dg.DagsterRunStatus.FAILURE


def test_dagster_dev_stops_cleanly(dev):
    assert dev.stop() == 0

    # the webserver, daemon and code server finish shortly after dagster dev itself
    wait_for("every process of dagster dev to exit", lambda: not dev.group_alive(), 60, every_s=1)

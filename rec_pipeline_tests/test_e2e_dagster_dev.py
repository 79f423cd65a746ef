"""End to end through the real processes: `dagster dev -w workspace.yaml` (webserver, daemon, code
server, one process per run) on a free port with its own DAGSTER_HOME and REC_PIPELINE_HOME. Files
dropped into the landing folder must become published recommendations without any click; a bad
file must be held back with its failed check; the refresh job must run when launched through
GraphQL; and the processes must stop when asked."""

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import dagster as dg
import duckdb
import polars as pl
import pytest

from rec_pipeline.core.event_files import write_events
from rec_pipeline.core.simulator import Simulator, SimulatorConfig

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]
DAGSTER = Path(sys.executable).parent / "dagster"
EXPECTED_ASSETS = {"event_batch", "features", "challenger_model", "champion_model", "recommendations",
                   "serving_snapshot"}
EXPECTED_AUTOMATION = {"landing_sensor", "refresh_automation", "failure_alerts", "nightly_housekeeping"}
STARTUP_S, PIPELINE_S = 180, 420


class DagsterDev:
    def __init__(self, port: int, dagster_home: Path, pipeline_home: Path, log: Path):
        self.url = f"http://127.0.0.1:{port}/graphql"
        self.dagster_home, self.pipeline_home, self.log = dagster_home, pipeline_home, log
        self.process: subprocess.Popen | None = None

    def start(self, port: int) -> None:
        env = os.environ | {"DAGSTER_HOME": str(self.dagster_home), "REC_PIPELINE_HOME": str(self.pipeline_home),
                            "REC_PIPELINE_REFRESH_INTERVAL_S": "5", "REC_PIPELINE_AUTOMATION": "on"}
        with self.log.open("wb") as out:
            self.process = subprocess.Popen(
                [str(DAGSTER), "dev", "-w", "workspace.yaml", "-h", "127.0.0.1", "-p", str(port)],
                cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)

    def query(self, text: str, variables: dict | None = None) -> dict:
        body = json.dumps({"query": text, "variables": variables or {}}).encode()
        request = urllib.request.Request(self.url, data=body, headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=30) as response:
            answer = json.loads(response.read())
        assert "errors" not in answer, answer["errors"]
        return answer["data"]

    def stop(self) -> int:
        os.killpg(self.process.pid, signal.SIGINT)  # what Ctrl-C sends: dagster dev shuts its children down
        try:
            return self.process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            raise


def wait_for(what: str, probe, timeout_s: float, every_s: float = 2.0):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            value = probe()
        except (urllib.error.URLError, ConnectionError, duckdb.IOException):
            value = None
        if value:
            return value
        time.sleep(every_s)
    raise AssertionError(f"timed out after {timeout_s:.0f} s waiting for {what}")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def dev(tmp_path_factory):
    base = tmp_path_factory.mktemp("e2e")
    dagster_home, pipeline_home = base / "dagster_home", base / "home"
    dagster_home.mkdir()
    shutil.copy(ROOT / "dagster.yaml", dagster_home / "dagster.yaml")  # the repo's pools and run limits
    port = free_port()
    server = DagsterDev(port, dagster_home, pipeline_home, base / "dagster_dev.log")
    server.start(port)
    try:
        wait_for("the code location to load", lambda: location_loaded(server), STARTUP_S)
        yield server
    except BaseException:
        print(server.log.read_text()[-5000:])
        raise
    finally:
        if server.process.poll() is None:
            server.stop()


def location_loaded(server: DagsterDev) -> bool:
    entries = server.query("{ workspaceOrError { ... on Workspace { locationEntries { name loadStatus "
                           "locationOrLoadError { __typename ... on PythonError { message } } } } } }")
    [entry] = entries["workspaceOrError"]["locationEntries"]
    location = entry["locationOrLoadError"]  # None while loading, then the location or its load error
    assert location is None or location["__typename"] != "PythonError", location
    return entry["loadStatus"] == "LOADED" and location is not None


def drop(server: DagsterDev, frame: pl.DataFrame, name: str) -> None:
    """Write aside, then rename into the landing folder, as an upstream system should."""
    landing = server.pipeline_home / "landing"
    landing.mkdir(parents=True, exist_ok=True)
    staged = write_events(frame, server.pipeline_home / f".staging-{name}")
    os.replace(staged, landing / name)


def serving_users(server: DagsterDev) -> set[str]:
    path = server.pipeline_home / "serving.duckdb"
    if not path.exists():
        return set()
    with duckdb.connect(str(path), read_only=True) as con:
        return {row[0] for row in con.sql("SELECT DISTINCT user_id FROM recommendations").fetchall()}


def instance(server: DagsterDev) -> dg.DagsterInstance:
    return dg.DagsterInstance.from_config(str(server.dagster_home))


def finished_runs(server: DagsterDev, partition: str) -> list:
    with instance(server) as inst:
        runs = inst.get_runs(filters=dg.RunsFilter(tags={"dagster/partition": partition}))
    return [run for run in runs if run.is_finished]


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
        drop(dev, events.slice(index * 3_000, 3_000), f"batch-{index}.parquet")
    users = set(events["user_id"].unique())
    published = wait_for("recommendations for the dropped events' users",
                         lambda: serving_users(dev) if len(serving_users(dev) & users) > 0.9 * len(users) else None,
                         PIPELINE_S)
    assert published <= users, "every published user comes from the dropped events"
    assert not list((dev.pipeline_home / "landing").iterdir()), "landed files are archived"


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
    drop(dev, bad, "bad-batch.parquet")
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


def test_dagster_dev_stops_cleanly(dev):
    assert dev.stop() == 0

    def group_gone() -> bool:  # the webserver, daemon and code server finish shortly after dagster dev
        return not subprocess.run(["pgrep", "-g", str(dev.process.pid)], capture_output=True, text=True).stdout
    wait_for("every process of dagster dev to exit", group_gone, 60, every_s=1)

"""Defects found by hostile testing (issue 15): what must never stop the pipeline for good."""

import json
import signal
import subprocess
import sys
from datetime import datetime, timezone
from pathlib import Path

import dagster as dg
import pytest

from rec_pipeline.cli.runs import land_through_dagster
from rec_pipeline.core.ingest.batches import set_operator_decision
from rec_pipeline.core.ops.warehouse import Warehouse
from rec_pipeline_tests.helpers import big_events_file, wait_until_the_warehouse_is_held


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def good_rows(n: int, prefix: str) -> list[dict]:
    return [{"event_id": f"{prefix}{i}", "user_id": f"u{i % 37}", "item_id": f"i{i % 23}",
             "event_type": ["view", "click", "purchase"][i % 3], "ts": 1767225600 + i} for i in range(n)]


@pytest.mark.parametrize("empty_batch_fate", ["passed", "held back, then released"])
def test_a_batch_with_no_landed_event_does_not_break_later_validation(definitions, home, tmp_path, empty_batch_fate):
    only_rejected = [{"event_id": "x1", "user_id": "u" * 300, "item_id": "i1", "event_type": "view", "ts": 1767225600}]
    if empty_batch_fate != "passed":  # more rows, all with a missing user: held back by user_id_not_null
        only_rejected = [row | {"event_id": f"x{i}", "user_id": None} for i, row in enumerate(only_rejected * 30)]
    with dg.instance_for_test() as instance:
        first = land_through_dagster(definitions, instance, write_jsonl(tmp_path / "a.jsonl", good_rows(1_000, "a")))
        empty = land_through_dagster(definitions, instance, write_jsonl(tmp_path / "b.jsonl", only_rejected))
        assert (first.quality_status, empty.report.landed) == ("passed", 0)
        if empty_batch_fate != "passed":
            assert empty.quality_status == "failed"
            with Warehouse(home / "warehouse.duckdb").connect() as con:
                set_operator_decision(con, empty.report.batch_id, "released")
        later = land_through_dagster(definitions, instance, write_jsonl(tmp_path / "c.jsonl", good_rows(1_000, "c")))
    assert (later.report.landed, later.quality_status) == (1_000, "passed")
    with Warehouse(home / "warehouse.duckdb").connect() as con:
        assert con.execute("SELECT count(*) FROM ingested_files WHERE quality_status = 'pending'").fetchone()[0] == 0


def test_status_tells_an_unreadable_file_from_a_held_back_batch(definitions, home, tmp_path):
    from rec_pipeline.core.ops.operations import health

    broken = tmp_path / "broken.jsonl.gz"
    broken.write_bytes(b"\x1f\x8b\x08\x00garbage")
    with dg.instance_for_test() as instance:
        assert land_through_dagster(definitions, instance, broken).quality_status == "unreadable"
    with Warehouse(home / "warehouse.duckdb").connect() as con:
        report = health(con, datetime.now(timezone.utc))
    assert report["last_held_back"] is None
    assert report["last_unreadable_file"]["path"].endswith("broken.jsonl.gz")
    assert report["last_unreadable_file"]["reason"].startswith(("BadGzipFile", "EOFError", "IOException", "InvalidInput"))


def test_rollback_to_a_version_the_gate_rejected_needs_force_and_history_stays_truthful(home, monkeypatch):
    from typer.testing import CliRunner

    from rec_pipeline.cli import app
    from rec_pipeline.core.evaluation.simulator import Simulator, SimulatorConfig
    from rec_pipeline.core.ingest.event_files import write_events
    from rec_pipeline.core.ingest.landing import land_trusted
    from rec_pipeline.core.model.config import RefreshConfig
    from rec_pipeline.core.model.gate import GatePolicy
    from rec_pipeline.core.model.refresh import refresh
    from rec_pipeline.core.model.registry import ModelRegistry
    from rec_pipeline.settings import Settings

    settings = Settings.from_env()
    settings.ensure_dirs()
    registry = ModelRegistry(settings.models_dir)
    events = Simulator(SimulatorConfig(seed=3, n_users=200, n_items=100)).events(6_000)
    reject_all = RefreshConfig(gate=GatePolicy(min_users=10**9), ranker_users=200, eval_users=200)
    results = []
    for k, config in enumerate((RefreshConfig(gate=GatePolicy(require_above_floor=False), ranker_users=200,
                                              eval_users=200), reject_all)):
        part = events.slice(k * 3_000, 3_000)
        land_trusted(settings.warehouse(), write_events(part, settings.imports_dir / f"p{k}.parquet"), part.height)
        results.append(refresh(settings.warehouse(), registry, settings.serving_path, config))
    promoted, rejected = results
    assert promoted.promoted and not rejected.promoted

    def cli(*args):
        return CliRunner().invoke(app, list(args))

    refused = cli("rollback", rejected.model_version)
    assert refused.exit_code == 1 and "was rejected by the gate" in refused.stderr and "--force" in refused.stderr
    assert cli("rollback", "--force", rejected.model_version).exit_code == 0
    assert cli("rollback", promoted.model_version).exit_code == 0
    listed = {m["version"]: m for m in json.loads(cli("models", "--json").stdout)}
    forced = listed[rejected.model_version]
    assert (forced["status"], forced["gate"]) == ("retired", "rejected"), "it was champion; the gate's verdict stays"
    assert [h["promoted_by"] for h in forced["champion_history"]] == ["forced rollback"]
    assert [h["promoted_by"] for h in listed[promoted.model_version]["champion_history"]] == ["gate", "rollback"]
    assert listed[promoted.model_version]["champion_history"][1]["previous"] == rejected.model_version


def test_run_after_forget_goes_on_with_new_events_and_never_brings_the_forgotten_back(home):
    from typer.testing import CliRunner

    from rec_pipeline.cli import app

    def cli(*args):
        result = CliRunner().invoke(app, list(args))
        assert result.exit_code == 0, result.output
        return result

    cli("run", "--events", "2000", "--events-per-file", "1000")
    with Warehouse(home / "warehouse.duckdb").connect() as con:
        user, theirs = con.execute("SELECT user_id, list(event_id) FROM events GROUP BY user_id"
                                   " ORDER BY count(*) DESC LIMIT 1").fetchone()
    assert json.loads(cli("forget", user, "--json").stdout)["events"] == len(theirs)
    second = json.loads(cli("run", "--events", "1000", "--json").stdout)
    assert (second["landed"], second["duplicates"]) == (1000, 0)
    with Warehouse(home / "warehouse.duckdb").connect() as con:
        back = con.execute("SELECT count(*) FROM events WHERE list_contains(?, event_id)", [theirs]).fetchone()[0]
        ids = [row[0] for row in con.execute("SELECT event_id FROM events WHERE batch_id = ?",
                                             [second["batches"][0]["batch_id"]]).fetchall()]
    assert back == 0, "the forgotten user's events were not generated again"
    assert min(int(i.split("-")[1]) for i in ids) == 2000, "the stream went on where it stopped"


@pytest.fixture
def shared_instance(tmp_path, monkeypatch):
    """A persistent DAGSTER_HOME with the repository's dagster.yaml (one warehouse slot), as the UI uses."""
    import shutil

    dagster_home = tmp_path / "dagster_home"
    dagster_home.mkdir()
    shutil.copy(Path(__file__).resolve().parents[1] / "dagster.yaml", dagster_home)
    monkeypatch.setenv("DAGSTER_HOME", str(dagster_home))
    return dagster_home


def ingest(*args: str, **popen) -> subprocess.Popen:
    return subprocess.Popen([str(Path(sys.executable).with_name("rec-pipeline")), "ingest", *args], text=True,
                            stdout=subprocess.PIPE, **popen)


@pytest.mark.slow
def test_a_waiting_ingest_says_for_whom_and_a_killed_one_does_not_keep_the_next_waiting(home, shared_instance,
                                                                                      tmp_path):
    holding = ingest(str(big_events_file(tmp_path / "big.parquet", 1_000_000)), stderr=subprocess.DEVNULL)
    holder = wait_until_the_warehouse_is_held(shared_instance)
    waiting = ingest(str(write_jsonl(tmp_path / "small.jsonl", good_rows(100, "w"))), stderr=subprocess.PIPE)
    said = waiting.stderr.readline()
    assert said.startswith("rec-pipeline: waiting for the warehouse: run ") and holder in said
    waiting.send_signal(signal.SIGINT)
    assert waiting.wait(timeout=30) != 0, "Ctrl-C ends the wait"

    holding.send_signal(signal.SIGKILL)
    holding.wait()
    after = ingest(str(write_jsonl(tmp_path / "after.jsonl", good_rows(1_000, "s"))), "--json", stderr=subprocess.PIPE)
    out, err = after.communicate(timeout=300)
    assert after.returncode == 0, err
    assert json.loads(out)["landed"] == 1_000
    with dg.DagsterInstance.from_config(str(shared_instance)) as instance:
        assert instance.get_run_by_id(holder).status == dg.DagsterRunStatus.FAILURE
        [failure] = instance.all_logs(holder, of_type=dg.DagsterEventType.RUN_FAILURE)
        assert "its process is gone" in failure.dagster_event.message


@pytest.mark.slow
def test_two_ingests_at_once_on_a_new_instance_both_land_files_of_the_same_name(home, shared_instance, tmp_path):
    for entry in shared_instance.iterdir():  # a new instance: only its dagster.yaml, no storage yet
        assert entry.name == "dagster.yaml"
    files = []
    for folder, prefix in (("one", "a"), ("two", "b")):
        (tmp_path / folder).mkdir()
        files.append(write_jsonl(tmp_path / folder / "events.jsonl", good_rows(500, prefix)))
    started = [ingest(str(path), "--json", stderr=subprocess.PIPE) for path in files]
    results = [process.communicate(timeout=600) for process in started]
    assert [process.returncode for process in started] == [0, 0], [err for _, err in results]
    assert [json.loads(out)["landed"] for out, _ in results] == [500, 500]
    with dg.DagsterInstance.from_config(str(shared_instance)) as instance:
        keys = instance.get_dynamic_partitions("event_batches")
    assert len(keys) == 2 and all(key.startswith("events.jsonl-") for key in keys)

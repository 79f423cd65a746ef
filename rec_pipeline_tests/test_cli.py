"""`rec-pipeline` end to end, in-process: the JSON contracts, the main job, one-line errors."""

import json
import os
import pty
import select
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from rec_pipeline.cli import app

runner = CliRunner()


@pytest.fixture(autouse=True)
def home(tmp_path, monkeypatch):
    monkeypatch.setenv("REC_PIPELINE_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("DAGSTER_HOME", raising=False)
    return tmp_path / "home"


def invoke(*args: str):
    return runner.invoke(app, list(args))


def test_simulate_then_ingest_then_status(tmp_path):
    out = tmp_path / "events"
    result = invoke("simulate", "--out", str(out), "--events", "2500", "--seed", "3", "--events-per-file", "1000")
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in out.iterdir()) == [f"events-s3-0000{i}.jsonl" for i in (1, 2, 3)]

    landed = invoke("ingest", str(out), "--json")
    assert landed.exit_code == 0, landed.output
    summary = json.loads(landed.stdout)
    assert {k: summary[k] for k in ("files", "read", "landed", "duplicates", "rejected")} == {
        "files": 3, "read": 2500, "landed": 2500, "duplicates": 0, "rejected": 0}
    assert all(isinstance(summary[k], int) for k in ("files", "read", "landed", "duplicates", "rejected"))

    again = json.loads(invoke("ingest", str(out), "--json").stdout)
    assert (again["landed"], again["duplicates"], again["read"]) == (0, 2500, 2500)

    status = json.loads(invoke("status", "--json").stdout)
    assert status["events"] == 2500 and status["rejected"] == 0
    assert status["users"] > 10 and status["items"] > 10


def test_main_job_continues_the_simulated_stream():
    first = invoke("run", "--events", "3000", "--events-per-file", "1500", "--json")
    assert first.exit_code == 0, first.output
    assert json.loads(first.stdout)["landed"] == 3000
    second = json.loads(invoke("run", "--events", "1000", "--json").stdout)
    assert (second["landed"], second["duplicates"]) == (1000, 0), "the next run adds new events"
    status = json.loads(invoke("status", "--json").stdout)
    assert status["events"] == 4000 and status["items"] >= 500, "the catalogue is loaded too"


def test_unreadable_input_exits_non_zero_with_one_line(tmp_path):
    missing = invoke("ingest", str(tmp_path / "nope.jsonl"))
    assert missing.exit_code == 1
    assert missing.stderr.strip().count("\n") == 0 and "no such file" in missing.stderr

    wrong_type = tmp_path / "events.txt"
    wrong_type.write_text("x")
    unsupported = invoke("ingest", str(wrong_type))
    assert unsupported.exit_code == 1 and "unsupported file type" in unsupported.stderr

    broken = tmp_path / "broken.csv.gz"
    broken.write_bytes(b"\x1f\x8b\x08\x00broken")
    failed = invoke("ingest", str(broken), "--json")
    assert failed.exit_code == 1
    assert json.loads(failed.stdout)["failed"] == 1
    assert "could not be read" in failed.stderr


def test_bad_usage_is_refused():
    assert invoke("simulate", "--events", "10").exit_code == 2, "--out is required"
    assert invoke("simulate", "--out", "x", "--events", "0").exit_code == 2
    assert invoke("ingest").exit_code == 2


def test_release_and_drop_need_a_known_batch(tmp_path):
    invoke("run", "--events", "500")
    unknown = invoke("release", "b-0000")
    assert unknown.exit_code == 1 and "no landed batch" in unknown.stderr
    batch = json.loads(invoke("batches", "--json").stdout)[0]["batch_id"]
    assert invoke("drop", batch).exit_code == 0
    assert json.loads(invoke("status", "--json").stdout)["events_validated"] == 0


def test_refresh_recommend_models_and_rollback(home):
    assert invoke("run", "--events", "12000", "--events-per-file", "6000").exit_code == 0
    first = invoke("refresh", "--json")
    assert first.exit_code == 0, first.output
    outcome = json.loads(first.stdout)
    assert isinstance(outcome["model_version"], str) and isinstance(outcome["promoted"], bool)
    assert isinstance(outcome["recommendations"], int) and "floor_ndcg" in outcome["gate"]
    status = json.loads(invoke("status", "--json").stdout)
    assert 0 <= status["recommendations_age_s"] < 600 and status["last_failure"] is None

    listed = json.loads(invoke("models", "--json").stdout)
    assert [m["version"] for m in listed] == [outcome["model_version"]]

    unknown = json.loads(invoke("recommend", "nobody-at-all", "-k", "3", "--json").stdout)
    assert len(unknown) == 3 and all(item["fallback"] for item in unknown)
    assert [item["rank"] for item in unknown] == [1, 2, 3]

    assert invoke("rollback", "m-does-not-exist").exit_code == 1
    if outcome["promoted"]:
        import duckdb

        with duckdb.connect(str(home / "serving.duckdb"), read_only=True) as con:
            user = con.execute("SELECT min(user_id) FROM recommendations WHERE model_version = ?",
                               [outcome["model_version"]]).fetchall()[0][0]
        mine = json.loads(invoke("recommend", user, "--json").stdout)
        assert mine and not any(item["fallback"] for item in mine)
        assert {item["model_version"] for item in mine} == {outcome["model_version"]}
        assert invoke("rollback", outcome["model_version"]).exit_code == 0
        again = json.loads(invoke("models", "--json").stdout)
        assert again[0]["status"] == "champion"


def test_demo_measures_each_batch_before_learning_from_it():
    result = invoke("demo", "--batches", "2", "--events-per-batch", "4000", "--json")
    assert result.exit_code == 0, result.output
    rows = json.loads(result.stdout)
    assert [row["batch"] for row in rows] == [1, 2]
    assert all(row["landed"] == 4000 for row in rows)
    assert rows[0]["champion_ndcg"] is None, "no champion before the first refresh"
    assert all(0 < row["oracle_ndcg"] <= 1 for row in rows)
    assert all(isinstance(row["model_version"], str) for row in rows)


def test_a_bug_prints_one_line_and_where_the_traceback_is(home, monkeypatch):
    from rec_pipeline.core.ops import status as status_module

    def broken(con):
        raise RuntimeError("boom\nsecond line")

    monkeypatch.setattr(status_module, "warehouse_status", broken)
    result = invoke("status")
    assert result.exit_code == 2
    line = result.stderr.strip()
    assert "\n" not in line and "unexpected RuntimeError: boom" in line and "--debug prints it" in line
    log = Path(line.split("traceback in ")[1].split(";")[0])
    assert log.parent == home / "logs" and 'raise RuntimeError("boom' in log.read_text()
    debug = invoke("--debug", "status")
    assert debug.exit_code == 2 and "Traceback (most recent call last)" in debug.stderr


def test_an_expected_failure_is_one_line_also_under_debug_it_shows_where(home):
    quiet = invoke("release", "b-missing")
    assert quiet.exit_code == 1 and quiet.stderr == "rec-pipeline: no landed batch b-missing\n"
    loud = invoke("--debug", "release", "b-missing")
    assert loud.exit_code == 1 and "Traceback" in loud.stderr and "set_operator_decision" in loud.stderr


def test_a_bad_setting_is_one_line_naming_the_variable(monkeypatch):
    monkeypatch.setenv("REC_PIPELINE_REFRESH_INTERVAL_S", "often")
    result = invoke("status")
    assert result.exit_code == 1
    assert result.stderr.startswith("rec-pipeline: bad setting: REC_PIPELINE_REFRESH_INTERVAL_S: Input should be")


def test_a_failed_refresh_names_its_run_and_where_its_log_is(home, monkeypatch, tmp_path):
    assert invoke("run", "--events", "6000", "--events-per-file", "3000").exit_code == 0
    assert invoke("refresh").exit_code == 0
    models = json.loads(invoke("models", "--json").stdout)
    [champion] = [m for m in models if m["status"] == "champion"]
    ranker_or_retrieval = next((home / "models" / champion["version"]).rglob("*.json"))
    ranker_or_retrieval.write_text(ranker_or_retrieval.read_text() + " ")  # the checksum no longer matches
    assert invoke("run", "--events", "3000").exit_code == 0

    ephemeral = invoke("refresh")
    assert ephemeral.exit_code == 1
    message = ephemeral.stderr.strip()
    assert "\n" not in message and "the refresh run" in message and "do not match the registered checksum" in message
    log = Path(message.split("its log is in ")[1])
    assert log.parent == home / "logs" and "ArtifactError" in log.read_text()

    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path / "dagster_home"))
    (tmp_path / "dagster_home").mkdir()
    persistent = invoke("refresh")
    run_id = persistent.stderr.split("the refresh run ")[1].split(" ")[0]
    assert f"in the instance at {tmp_path / 'dagster_home'}" in persistent.stderr
    import dagster as dg

    with dg.DagsterInstance.from_config(str(tmp_path / "dagster_home")) as instance:
        assert instance.get_run_by_id(run_id).status == dg.DagsterRunStatus.FAILURE


def command(*args: str, stderr=subprocess.PIPE, env: dict | None = None) -> subprocess.CompletedProcess:
    executable = Path(sys.executable).with_name("rec-pipeline")
    return subprocess.run([str(executable), *args], stdout=subprocess.PIPE, stderr=stderr, text=True, timeout=900,
                          env=os.environ | (env or {}))


@pytest.mark.slow
def test_the_demo_prints_its_lines_and_nothing_on_stderr():
    demo = command("demo", "--batches", "2", "--events-per-batch", "2000")
    assert demo.returncode == 0
    assert demo.stderr == "", "no TensorFlow start-up logs, no warnings, no progress bar when piped"
    lines = demo.stdout.splitlines()
    assert [line.split(":")[0] for line in lines[:2]] == ["batch   1", "batch   2"]
    assert "NDCG@10 before learning it" in lines[0] and lines[2].startswith("Query the results")


def on_a_terminal(*args: str) -> tuple[subprocess.CompletedProcess, bytes]:
    """Run a command with standard error on a pseudo-terminal; returns what the terminal showed."""
    primary, secondary = pty.openpty()
    with os.fdopen(primary, "rb", buffering=0) as terminal:
        done = command(*args, stderr=secondary, env={"COLUMNS": "100"})
        os.close(secondary)
        shown = b""
        while select.select([terminal], [], [], 0.5)[0]:
            try:
                chunk = terminal.read(65536)
            except OSError:  # the other end is closed: everything was read
                break
            if not chunk:
                break
            shown += chunk
    return done, shown


def test_a_long_command_shows_a_progress_bar_on_a_terminal_only():
    done, shown = on_a_terminal("run", "--events", "3000", "--events-per-file", "1000")
    assert done.returncode == 0 and b"landing sim-s0-e" in shown
    as_json, shown = on_a_terminal("run", "--events", "3000", "--events-per-file", "1000", "--json")
    assert as_json.returncode == 0 and json.loads(as_json.stdout)["landed"] == 3000 and shown == b""
    piped = command("run", "--events", "3000", "--events-per-file", "1000")
    assert piped.returncode == 0 and piped.stderr == ""

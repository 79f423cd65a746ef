"""`rec-pipeline` end to end, in-process: the JSON contracts, the main job, one-line errors."""

import json

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

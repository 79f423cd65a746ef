"""The Dagster layer: the code location loads, the landing job lands and gates, the sensor waits for
complete files and refuses what it must not read."""

import json
import os
import re
import time
from pathlib import Path

import dagster as dg
import polars as pl

from rec_pipeline.cli.runs import land_through_dagster
from rec_pipeline.core.ops.warehouse import Warehouse
from rec_pipeline.definitions import defs


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def good_rows(n: int, prefix: str = "e") -> list[dict]:
    return [
        {"event_id": f"{prefix}{i}", "user_id": f"u{i % 37}", "item_id": f"i{i % 23}",
         "event_type": ["view", "click", "purchase"][i % 3], "ts": 1767225600 + i, "value": 9.5 if i % 3 == 2 else None}
        for i in range(n)
    ]


def test_code_location_has_the_ingest_and_refresh_graph(definitions):
    repo = definitions.get_repository_def()
    assert {key.to_user_string() for key in repo.asset_graph.get_all_asset_keys()} == {
        "event_batch", "features", "challenger_model", "champion_model", "recommendations", "serving_snapshot"}
    check_names = {key.name for key in repo.asset_graph.asset_check_keys}
    assert {"user_id_not_null", "event_type_known", "event_id_unique", "user_flooding", "evaluation_gate"} <= check_names
    assert repo.has_sensor_def("landing_sensor")
    assert definitions.resolve_job_def("land_events_job").partitions_def.name == "event_batches"
    assert definitions.resolve_job_def("refresh_job") is not None


def test_landing_job_lands_validates_and_reports(definitions, home, tmp_path):
    path = write_jsonl(tmp_path / "good.jsonl", good_rows(300) + [{"user_id": "", "item_id": "x"}])
    with dg.instance_for_test() as instance:
        run = land_through_dagster(definitions, instance, path)
        assert (run.report.read, run.report.landed, run.report.rejected, run.quality_status) == (301, 300, 1, "passed")
        records = instance.fetch_materializations(dg.AssetKey("event_batch"), limit=1).records
        metadata = records[0].asset_materialization.metadata
        assert metadata["rows_read"].value == 301 and metadata["dagster/row_count"].value == 300
        assert [c.name for c in metadata["dagster/column_schema"].value.columns][:3] == ["event_id", "user_id", "item_id"]
        assert "| item_id" in metadata["preview"].value and "user_id" not in metadata["preview"].value
    with Warehouse(home / "warehouse.duckdb").connect() as con:
        assert con.execute("SELECT count(*) FROM events_validated").fetchone()[0] == 300
        assert con.execute("SELECT count(*) FROM batch_checks WHERE passed").fetchone()[0] > 10


def test_a_bad_batch_fails_its_blocking_checks_and_is_held_back(definitions, home, tmp_path):
    rows = good_rows(100) + [{"event_id": f"bad{i}", "item_id": "i1", "event_type": "view", "ts": 1767225600} for i in range(40)]
    path = write_jsonl(tmp_path / "bad.jsonl", rows)
    with dg.instance_for_test() as instance:
        run = land_through_dagster(definitions, instance, path)
        assert run.quality_status == "failed"
        assert (run.report.landed, run.report.rejected) == (100, 40)
        evaluations = instance.event_log_storage.get_latest_asset_check_execution_by_key(
            [dg.AssetCheckKey(dg.AssetKey("event_batch"), "user_id_not_null")]
        )
        evaluation = next(iter(evaluations.values())).event.dagster_event.event_specific_data
        assert evaluation.passed is False
    with Warehouse(home / "warehouse.duckdb").connect() as con:
        assert con.execute("SELECT count(*) FROM events").fetchone()[0] == 100, "kept for inspection"
        assert con.execute("SELECT count(*) FROM events_validated").fetchone()[0] == 0, "held back"
        failed = con.execute("SELECT failed_checks FROM batch_overview").fetchone()[0]
        assert "user_id_not_null" in failed


def test_an_unreadable_file_fails_its_run_and_the_next_file_still_lands(definitions, home, tmp_path):
    broken = tmp_path / "broken.jsonl.gz"
    broken.write_bytes(b"\x1f\x8b\x08\x00garbage")
    with dg.instance_for_test() as instance:
        failed = land_through_dagster(definitions, instance, broken)
        landed = land_through_dagster(definitions, instance, write_jsonl(tmp_path / "ok.jsonl", good_rows(10)))
    assert failed.report.status == "failed" and "could not be read" in failed.report.reason
    assert landed.report.landed == 10
    with Warehouse(home / "warehouse.duckdb").connect() as con:
        assert con.execute("SELECT status, reason IS NOT NULL FROM ingested_files WHERE path LIKE '%broken%'").fetchone() == ("failed", True)


def _tick(instance, cursor=None):
    definitions = defs()
    context = dg.build_sensor_context(instance=instance, cursor=cursor, resources=definitions.resources)
    return definitions.get_repository_def().get_sensor_def("landing_sensor")(context)


def _age(path: Path, seconds: float) -> None:
    past = time.time() - seconds
    os.utime(path, (past, past))


def test_sensor_requests_a_run_only_for_settled_files(home):
    landing = home / "landing"
    settled = write_jsonl(landing / "a.jsonl", good_rows(3))
    _age(settled, 60)
    (landing / ".hidden.jsonl").write_text("{}")
    (landing / "b.jsonl.tmp").write_text("{}")
    with dg.instance_for_test() as instance:
        first = _tick(instance)
        assert first.run_requests == [], "a file seen once may still be being written"
        second = _tick(instance, first.cursor)
        assert [r.partition_key for r in second.run_requests] == ["a.jsonl"]
        assert second.run_requests[0].run_config["ops"]["event_batch"]["config"]["path"] == str(settled)
        assert second.dynamic_partitions_requests[0].partition_keys == ["a.jsonl"]

        growing = write_jsonl(landing / "growing.jsonl", good_rows(3))
        third = _tick(instance, second.cursor)
        with growing.open("a") as handle:
            handle.write(json.dumps(good_rows(1, "late")[0]) + "\n")
        fourth = _tick(instance, third.cursor)
        assert "growing.jsonl" not in [r.partition_key for r in fourth.run_requests], "still being written"


def test_sensor_never_follows_symlinks_or_reads_odd_names(home, tmp_path):
    landing = home / "landing"
    secret = write_jsonl(tmp_path / "outside.jsonl", good_rows(2))
    (landing / "link.jsonl").symlink_to(secret)
    odd = write_jsonl(landing / "we ird;name.jsonl", good_rows(2))
    notes = landing / "notes.txt"
    notes.write_text("hello")
    (landing / "subfolder").mkdir()
    for path in (odd, notes):
        _age(path, 60)
    with dg.instance_for_test() as instance:
        cursor = _tick(instance).cursor
        result = _tick(instance, cursor)
    assert result.run_requests == []
    refused = json.loads(result.cursor)["refused"]
    assert refused == sorted(["link.jsonl", "we ird;name.jsonl", "notes.txt", "subfolder"])


def test_landing_sensor_run_lands_and_archives_the_file(definitions, home):
    landing = home / "landing"
    path = write_jsonl(landing / "drop.jsonl", good_rows(20))
    _age(path, 60)
    with dg.instance_for_test() as instance:
        cursor = _tick(instance).cursor
        result = _tick(instance, cursor)
        instance.add_dynamic_partitions("event_batches", ["drop.jsonl"])
        request = result.run_requests[0]
        outcome = definitions.resolve_job_def("land_events_job").execute_in_process(
            partition_key=request.partition_key, run_config=request.run_config, instance=instance
        )
    assert outcome.success
    assert not path.exists()
    assert [p.name.split("-", 2)[-1] for p in (home / "archive").iterdir()] == ["drop.jsonl"]
    with Warehouse(home / "warehouse.duckdb").connect() as con:
        assert pl.DataFrame(con.sql("SELECT count(*) AS n FROM events").pl())["n"][0] == 20


def test_dg_check_defs_accepts_the_code_location(home):
    import subprocess
    import sys

    dg_cli = Path(sys.executable).parent / "dg"
    result = subprocess.run([str(dg_cli), "check", "defs"], capture_output=True, text=True, timeout=300,
                            cwd=Path(__file__).resolve().parents[1])
    assert result.returncode == 0, result.stderr[-2000:]
    assert "All definitions loaded successfully" in result.stdout + result.stderr


def test_the_asset_refuses_a_symlink_even_when_a_run_names_it(definitions, home, tmp_path):
    outside = write_jsonl(tmp_path / "outside.jsonl", good_rows(2))
    link = home / "landing" / "link.jsonl"
    link.symlink_to(outside)
    with dg.instance_for_test() as instance:
        run = land_through_dagster(definitions, instance, link)
    assert run.report.status == "failed" and "not a regular file" in run.report.reason
    with Warehouse(home / "warehouse.duckdb").connect() as con:
        assert con.execute("SELECT count(*) FROM events").fetchone()[0] == 0


def test_a_partition_naming_a_file_outside_the_landing_folder_is_refused(definitions, home, tmp_path):
    write_jsonl(home / "outside.jsonl", good_rows(2))
    with dg.instance_for_test() as instance:
        instance.add_dynamic_partitions("event_batches", ["../outside.jsonl"])
        result = definitions.resolve_job_def("land_events_job").execute_in_process(
            partition_key="../outside.jsonl", instance=instance, raise_on_error=False)
    assert not result.success
    failure = next(e for e in result.all_events if e.is_step_failure)
    assert "outside the landing folder" in str(failure.event_specific_data.error)
    with Warehouse(home / "warehouse.duckdb").connect() as con:
        assert con.execute("SELECT count(*) FROM events").fetchone()[0] == 0


def test_a_crash_after_landing_is_retried_and_the_batch_validated(definitions, home, monkeypatch):
    """Validation failing once (e.g. a lock timeout) must not leave the batch pending for good."""
    from rec_pipeline.core.ingest import quality

    real_validate, calls = quality.validate_batch, []

    def flaky_validate(*args, **kwargs):
        calls.append(1)
        if len(calls) == 1:
            raise RuntimeError("transient failure")
        return real_validate(*args, **kwargs)

    monkeypatch.setattr(quality, "validate_batch", flaky_validate)
    path = write_jsonl(home / "landing" / "retry.jsonl", good_rows(30))
    with dg.instance_for_test() as instance:
        instance.add_dynamic_partitions("event_batches", ["retry.jsonl"])
        result = definitions.resolve_job_def("land_events_job").execute_in_process(
            partition_key="retry.jsonl", instance=instance, raise_on_error=False,
            run_config={"ops": {"event_batch": {"config": {"path": str(path)}}}},
        )
    assert len(calls) == 2, "the step was retried"
    assert result.success and not path.exists(), "archived after the retry validated it"
    with Warehouse(home / "warehouse.duckdb").connect() as con:
        assert con.execute("SELECT quality_status FROM ingested_files").fetchall() == [("passed",)]


def test_with_a_key_no_raw_user_id_reaches_the_warehouse_or_dagsters_event_log(home, tmp_path, monkeypatch):
    from rec_pipeline.settings import Settings

    monkeypatch.setenv("REC_PIPELINE_PSEUDONYMIZE_KEY", "a-test-key-that-is-long-enough-32b")
    definitions = defs()
    rows = [row | {"user_id": f"person-{i % 7}@example.com"} for i, row in enumerate(good_rows(50))]
    path = write_jsonl(tmp_path / "people.jsonl", rows + [{"user_id": "person-9@example.com", "item_id": "x"}])
    with dg.instance_for_test() as instance:
        run = land_through_dagster(definitions, instance, path)
        assert (run.report.landed, run.report.rejected) == (50, 1)
        run_id = instance.get_runs(limit=1)[0].run_id
        logged = " ".join(dg.serialize_value(record) for record in instance.all_logs(run_id))
    leaks = [m.start() for m in re.finditer("example.com", logged)]
    assert not leaks, [logged[max(0, i - 300):i + 50] for i in leaks[:2]]
    assert "| user_id" not in logged, "the preview of the landed rows shows no user column"
    with Warehouse(home / "warehouse.duckdb").connect() as con:
        stored = " ".join(str(row) for table in ("events", "events_rejected", "batch_checks")
                          for row in con.execute(f"SELECT * FROM {table}").fetchall())
    assert "example.com" not in stored and Settings.from_env().pseudonymizer()("person-1@example.com") in stored


def _retries(instance: dg.DagsterInstance) -> int:
    run_id = instance.get_runs(limit=1)[0].run_id
    return len(instance.all_logs(run_id, of_type=dg.DagsterEventType.STEP_UP_FOR_RETRY))


def test_a_parquet_file_with_a_repeated_column_fails_once_and_is_recorded_with_its_reason(definitions, home, tmp_path):
    """It raised KeyError: retried twice, reported as "Exceeded max_retries of 2", and missing from
    ingested_files although the command line said to look there."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = tmp_path / "repeated.parquet"
    names = ["user_id", "user_id", "item_id", "event_type", "ts"]
    pq.write_table(pa.Table.from_arrays([pa.array([name]) for name in names], names=names), path)
    with dg.instance_for_test() as instance:
        run = land_through_dagster(definitions, instance, path)
        assert _retries(instance) == 0
    assert run.report.status == "failed" and "repeated column names" in run.report.reason
    with Warehouse(home / "warehouse.duckdb").connect() as con:
        [(status, reason)] = con.execute("SELECT status, reason FROM ingested_files").fetchall()
    assert status == "failed" and "repeated column names (case is ignored): ['user_id']" in reason


def test_a_file_still_being_written_is_refused_without_retries_left_in_place_and_lands_when_complete(
        definitions, home, monkeypatch):
    """A CLI ingest of a file a writer is still appending to landed its half-written last line as a
    reject, without a word; the rest of the file never landed."""
    from contextlib import contextmanager

    from rec_pipeline.core.ingest import landing

    rows = good_rows(30)
    path = write_jsonl(home / "landing" / "growing.jsonl", rows[:20])
    real_transaction, appended = landing.transaction, []

    @contextmanager
    def writer_appends_before_the_commit(con):
        if not appended:
            with path.open("a") as handle:
                appended.append(handle.write("".join(json.dumps(row) + "\n" for row in rows[20:])))
        with real_transaction(con):
            yield

    monkeypatch.setattr(landing, "transaction", writer_appends_before_the_commit)
    with dg.instance_for_test() as instance:
        refused = land_through_dagster(definitions, instance, path)
        assert _retries(instance) == 0
        assert path.exists(), "not archived: the writer is still at it"
        monkeypatch.setattr(landing, "transaction", real_transaction)
        landed = land_through_dagster(definitions, instance, path)
    assert refused.report.status == "failed" and "changed while it was being landed" in refused.report.reason
    assert (landed.report.read, landed.report.landed, landed.report.rejected) == (30, 30, 0)
    with Warehouse(home / "warehouse.duckdb").connect() as con:
        assert sorted(con.execute("SELECT status FROM ingested_files").fetchall()) == [("failed",), ("landed",)]

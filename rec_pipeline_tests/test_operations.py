"""Operating unattended: failure records and webhook alerts, the recommendations' age, housekeeping."""

import os
from datetime import datetime, timedelta, timezone

from rec_pipeline.core.model.registry import ModelRegistry
from rec_pipeline.core.ops.operations import (
    health,
    housekeeping,
    post_alert,
    record_failure,
)

NOW = datetime(2026, 11, 1, 12, tzinfo=timezone.utc)


def test_an_alert_is_posted_as_json(webhook):
    url, received = webhook
    assert post_alert(url, {"run_id": "r1", "message": "boom"}) == "sent"
    assert received == [{"run_id": "r1", "message": "boom"}]


def test_an_unreachable_or_missing_webhook_is_reported_not_raised():
    assert post_alert(None, {}) == "not configured"
    assert post_alert("http://127.0.0.1:9/nothing-listens", {}).startswith("failed:")


def test_failures_are_recorded_once_and_reported_by_health(warehouse):
    with warehouse.connect() as con:
        assert health(con, NOW) == {"recommendations_generated_at": None, "recommendations_age_s": None,
                                    "last_failure": None, "last_held_back": None, "last_unreadable_file": None,
                                    "last_gate_decision": None}
        record_failure(con, "r1", "refresh_job", "old", NOW - timedelta(hours=2), "sent")
        record_failure(con, "r2", "land_events_job", "disk full", NOW - timedelta(hours=1), "not configured")
        record_failure(con, "r2", "land_events_job", "reported twice", NOW, "sent")
        con.execute("INSERT INTO recommendations VALUES ('u', 'i', 1, 1.0, 'm', ?, 'why')", [NOW - timedelta(minutes=5)])
        report = health(con, NOW)
        assert con.execute("SELECT count(*) FROM run_failures").fetchall() == [(2,)]
    assert report["recommendations_age_s"] == 300.0
    assert report["last_failure"]["run_id"] == "r2" and report["last_failure"]["message"] == "disk full"


def test_housekeeping_prunes_only_old_archives_and_unused_artifacts(warehouse, tmp_path):
    archive = tmp_path / "archive"
    archive.mkdir()
    old_file, new_file = archive / "b1-old.jsonl", archive / "b2-new.jsonl"
    for path, age in ((old_file, timedelta(days=40)), (new_file, timedelta(days=1))):
        path.write_text("x" * 100)
        os.utime(path, ((NOW - age).timestamp(),) * 2)
    registry = ModelRegistry(tmp_path / "models")
    with warehouse.connect() as con:
        for version, age, status in (("m-old-rejected", 40, "rejected"), ("m-old-champion", 40, "champion"),
                                     ("m-new-retired", 1, "retired")):
            folder = registry.artifact_dir(version)
            folder.mkdir(parents=True)
            (folder / "weights.npz").write_bytes(b"w" * 50)
            registry.register(con, version, "retrieval+ranker", None, (None, None), {}, NOW - timedelta(days=age))
            con.execute("UPDATE model_registry SET status = ? WHERE version = ?", [status, version])
        for orphan, age in ((".staging-m-crashed", 40), ("m-crashed-before-its-row", 40), (".staging-m-now", 0)):
            (registry.models_dir / orphan).mkdir()
            (registry.models_dir / orphan / "weights.npz").write_bytes(b"w" * 10)
            os.utime(registry.models_dir / orphan, ((NOW - timedelta(days=age)).timestamp(),) * 2)
        report = housekeeping(con, archive, registry, timedelta(days=30), NOW)
        logged = con.execute("SELECT archived_files_removed, artifacts_removed, bytes_freed FROM housekeeping_runs").fetchall()
        versions = con.execute("SELECT count(*) FROM model_registry").fetchall()[0][0]
    assert (report.archived_files_removed, report.artifacts_removed, report.bytes_freed) == (1, 3, 170)
    assert logged == [(1, 3, 170)]
    assert sorted(p.name for p in registry.models_dir.iterdir()) == [".staging-m-now", "m-new-retired", "m-old-champion"]
    assert not old_file.exists() and new_file.exists()
    assert not registry.artifact_dir("m-old-rejected").exists()
    assert registry.artifact_dir("m-old-champion").exists() and registry.artifact_dir("m-new-retired").exists()
    assert versions == 3, "registry rows and their metrics stay"

"""Poisoned or broken batches, through the Dagster jobs as the sensors run them: each is stopped by a
data check or rejected by the evaluation gate, the champion and the published recommendations stay
as they were, and the reason shows in Dagster (a failed asset check with its description) and in
`rec-pipeline status`."""

import json
from pathlib import Path

import dagster as dg
import polars as pl
import pytest

from rec_pipeline.cli.runs import land_through_dagster
from rec_pipeline.core.evaluation.simulator import Simulator, SimulatorConfig
from rec_pipeline.core.ingest.catalogue import upsert_items
from rec_pipeline.core.ingest.event_files import write_events
from rec_pipeline.core.ingest.landing import land_trusted
from rec_pipeline.core.model.refresh import refresh
from rec_pipeline.core.model.registry import ModelRegistry
from rec_pipeline.core.ops.operations import health
from rec_pipeline.settings import Settings

pytestmark = pytest.mark.slow

BATCH = 3_000


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory):
    """A home with a promoted champion (two clean batches), the Definitions on it and fresh events."""
    home = tmp_path_factory.mktemp("home")
    settings = Settings(home=home)
    settings.ensure_dirs()
    simulator = Simulator(SimulatorConfig(seed=5, n_users=400, n_items=150))
    events = simulator.events(4 * BATCH)
    with settings.warehouse().connect() as con:
        upsert_items(con, simulator.catalogue())
    registry = ModelRegistry(settings.models_dir)
    for k in range(2):
        part = events.slice(k * BATCH, BATCH)
        land_trusted(settings.warehouse(), write_events(part, settings.imports_dir / f"clean-{k}.parquet"), BATCH)
        refresh(settings.warehouse(), registry, settings.serving_path)
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("REC_PIPELINE_HOME", str(home))
        from rec_pipeline.definitions import build_definitions

        yield settings, build_definitions(Settings.from_env()), events.slice(2 * BATCH)


def published(settings: Settings) -> tuple[str, pl.DataFrame]:
    with settings.warehouse().connect() as con:
        champion = ModelRegistry(settings.models_dir).champion(con).version
        return champion, con.sql("SELECT * FROM recommendations ORDER BY user_id, rank").pl()


def status(settings: Settings) -> dict:
    from datetime import datetime, timezone

    with settings.warehouse().connect() as con:
        return health(con, datetime.now(timezone.utc))


def land_and_refresh(pipeline, path: Path):
    """Land `path` and refresh, both through Dagster; (landing run, refresh result)."""
    settings, definitions, _ = pipeline
    with dg.instance_for_test() as instance:
        landing = land_through_dagster(definitions, instance, path)
        checks = {e.check_name: e for e in _check_evaluations(instance)}
        refreshed = definitions.resolve_job_def("refresh_job").execute_in_process(instance=instance)
    assert refreshed.success
    return landing, checks, refreshed


def _check_evaluations(instance) -> list:
    records = instance.get_records_for_run(instance.get_runs(limit=1)[0].run_id,
                                           of_type=dg.DagsterEventType.ASSET_CHECK_EVALUATION).records
    return [record.event_log_entry.dagster_event.event_specific_data for record in records]


def assert_held_back(pipeline, path: Path, failing_check: str) -> None:
    settings = pipeline[0]
    before = published(settings)
    landing, checks, refreshed = land_and_refresh(pipeline, path)
    assert landing.quality_status == "failed", landing
    assert checks[failing_check].passed is False, "the reason is a failed check in the Dagster UI"
    assert refreshed.get_asset_check_evaluations() == [], "nothing new to learn: no challenger"
    champion, table = published(settings)
    assert champion == before[0] and table.equals(before[1])
    held_back = status(settings)["last_held_back"]
    assert held_back["batch_id"] == landing.report.batch_id and failing_check in held_back["failed_checks"]


def test_a_bot_flood_on_one_item_is_held_back(pipeline, tmp_path):
    _, _, fresh = pipeline
    clean = fresh.head(1_000)
    flood = pl.concat([clean.head(1)] * 1_600).with_row_index("n").with_columns(  # 8 bots, 200 clicks each
        user_id=pl.format("bot-{}", pl.col("n") % 8), item_id=pl.lit(clean["item_id"][0]), event_type=pl.lit("click"),
        event_id=pl.format("flood-{}", "n"), ts=pl.col("ts") + pl.duration(seconds=pl.col("n"))).drop("n")
    assert_held_back(pipeline, write_events(pl.concat([clean, flood]), tmp_path / "flood.parquet"), "item_flooding")


@pytest.mark.parametrize("drift, failing_check", [
    ({"rename": {"user_id": "uid"}}, "user_id_not_null"),
    ({"drop": "item_id"}, "item_id_not_null"),
    ({"retype": "ts"}, "ts_not_null"),
])
def test_a_batch_whose_schema_drifted_is_held_back(pipeline, tmp_path, drift, failing_check):
    _, _, fresh = pipeline
    rows = fresh.slice(1_000, 500).with_columns(pl.col("ts").dt.strftime("%Y-%m-%dT%H:%M:%S%.fZ")).to_dicts()
    for row in rows:
        for old, new in drift.get("rename", {}).items():
            row[new] = row.pop(old)
        row.pop(drift.get("drop", ""), None)
        if drift.get("retype"):
            row[drift["retype"]] = True
    path = tmp_path / "drifted.jsonl"
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    assert_held_back(pipeline, path, failing_check)


def test_a_batch_repeating_an_older_one_adds_nothing(pipeline, tmp_path):
    settings = pipeline[0]
    before = published(settings)
    old = pl.read_parquet(settings.imports_dir / "clean-0.parquet")
    reordered = write_events(old.reverse(), tmp_path / "resent.parquet")  # same events, other bytes
    landing, _, refreshed = land_and_refresh(pipeline, reordered)
    assert (landing.report.landed, landing.report.duplicates) == (0, BATCH)
    assert refreshed.get_asset_check_evaluations() == [], "nothing new to learn"
    assert published(settings)[0] == before[0] and published(settings)[1].equals(before[1])


def test_a_batch_of_shuffled_behaviour_is_rejected_by_the_gate(pipeline, tmp_path):
    settings, _, fresh = pipeline
    before = published(settings)
    batch = fresh.slice(1_500, BATCH)
    shuffled = batch.with_columns(pl.col("item_id").shuffle(seed=3))  # who did what is noise now
    landing, checks, refreshed = land_and_refresh(pipeline, write_events(shuffled, tmp_path / "shuffled.parquet"))
    assert landing.quality_status == "passed", "the data checks cannot see it: every row is well formed"
    [gate] = refreshed.get_asset_check_evaluations()
    assert (gate.check_name, gate.passed) == ("evaluation_gate", False) and gate.description.startswith("Not promoted")
    champion, table = published(settings)
    assert champion == before[0] and table.equals(before[1])
    decision = status(settings)["last_gate_decision"]
    assert decision["promoted"] is False and decision["reason"] == gate.description

"""Privacy: pseudonymized user ids at landing, and `forget`, proven by searching every table, the
serving database and every model artifact for the id and its pseudonym."""

import json
import re
from pathlib import Path

import duckdb
import numpy as np
import polars as pl
import pytest
from typer.testing import CliRunner

from rec_pipeline.cli import app
from rec_pipeline.core.errors import InputError
from rec_pipeline.core.evaluation.simulator import Simulator, SimulatorConfig
from rec_pipeline.core.ingest.catalogue import upsert_items
from rec_pipeline.core.ingest.event_files import write_events
from rec_pipeline.core.ingest.landing import land_file, land_trusted
from rec_pipeline.core.model.config import RefreshConfig
from rec_pipeline.core.model.features import FeatureConfig, update_features
from rec_pipeline.core.model.recommender import Recommender
from rec_pipeline.core.model.refresh import refresh
from rec_pipeline.core.model.registry import ModelRegistry
from rec_pipeline.core.ops.forgetting import forget
from rec_pipeline.core.ops.pseudonymization import (
    PseudonymizationKeyError,
    Pseudonymizer,
)
from rec_pipeline.core.ops.warehouse import Warehouse
from rec_pipeline.settings import Settings

KEY = b"k" * 32
KEY_ENV, KEY_FILE_ENV = "REC_PIPELINE_PSEUDONYMIZE_KEY", "REC_PIPELINE_PSEUDONYMIZE_KEY_FILE"
CONFIG = RefreshConfig(ranker_users=300, eval_users=300)


def configured(monkeypatch, **variables: str) -> Pseudonymizer | None:
    """The pseudonymizer the settings give with exactly these key variables set."""
    for name in (KEY_ENV, KEY_FILE_ENV):
        monkeypatch.delenv(name, raising=False)
    for name, value in variables.items():
        monkeypatch.setenv(name, value)
    return Settings.from_env().pseudonymizer()


def test_pseudonyms_are_keyed_stable_and_the_key_is_checked(tmp_path, monkeypatch):
    one, other = Pseudonymizer(KEY), Pseudonymizer(b"o" * 32)
    assert one("alice") == one("alice") != other("alice") and len(one("alice")) == 32
    assert "alice" not in one("alice") and KEY.decode() not in repr(one)
    with pytest.raises(PseudonymizationKeyError, match="at least 32 bytes"):
        Pseudonymizer(b"short")
    key_file = tmp_path / "key"
    key_file.write_bytes(KEY + b"\n")
    assert configured(monkeypatch, **{KEY_FILE_ENV: str(key_file)})("alice") == one("alice")
    assert configured(monkeypatch, **{KEY_ENV: KEY.decode()})("alice") == one("alice")
    assert configured(monkeypatch) is None
    with pytest.raises(InputError, match="not both"):
        configured(monkeypatch, **{KEY_ENV: KEY.decode(), KEY_FILE_ENV: str(key_file)})
    with pytest.raises(InputError, match="not a file"):
        configured(monkeypatch, **{KEY_FILE_ENV: str(tmp_path / "missing")})
    with pytest.raises(InputError, match="REC_PIPELINE_PSEUDONYMIZE_KEY: the pseudonymization key must be at least"):
        configured(monkeypatch, **{KEY_ENV: "short"})


def mentions(con: duckdb.DuckDBPyConnection, ids: list[str]) -> dict[str, int]:
    """{table.column: rows} where any id appears as a whole token, over every column of every table."""
    pattern = "(^|[^0-9A-Za-z_])(" + "|".join(re.escape(i) for i in ids) + ")([^0-9A-Za-z_]|$)"
    found = {}
    columns = con.execute("SELECT table_name, column_name FROM duckdb_columns() WHERE NOT internal"
                          " AND database_name = current_database() AND schema_name = 'main'").fetchall()
    for table, column in columns:
        hits = con.execute(f'SELECT count(*) FROM "{table}" WHERE regexp_matches("{column}"::VARCHAR, ?)',
                           [pattern]).fetchall()[0][0]
        if hits:
            found[f"{table}.{column}"] = hits
    return found


def artifact_mentions(models_dir: Path, ids: list[str]) -> list[str]:
    """Artifact files holding an id as UTF-8 or as numpy's UTF-32, and models whose vocabulary has it."""
    encodings = [i.encode() for i in ids] + [i.encode("utf-32-le") for i in ids]
    files = [str(p) for p in models_dir.rglob("*") if p.is_file() and any(e in p.read_bytes() for e in encodings)]
    known = [str(folder) for folder in models_dir.iterdir()
             if (folder / "retrieval").is_dir() and Recommender.load(folder).retrieval.known(ids).any()]
    return files + known


def test_landing_pseudonymizes_user_ids_before_anything_is_written(warehouse, write_file, now):
    lines = [{"user_id": "alice@example.com", "item_id": "i1", "event_type": "view", "ts": "2024-05-01T10:00:00Z"},
             {"user_id": "alice@example.com", "item_id": "i2", "event_type": "no-such-type", "ts": "2024-05-01T10:01:00Z"}]
    path = write_file("a.jsonl", "\n".join(json.dumps(line) for line in lines) + "\n")
    report = land_file(warehouse, path, now=now, pseudonymizer=Pseudonymizer(KEY))
    assert (report.landed, report.rejected) == (1, 1)
    with warehouse.connect() as con:
        assert mentions(con, ["alice@example.com", "alice"]) == {}
        assert con.execute("SELECT DISTINCT user_id FROM events").fetchall() == [(Pseudonymizer(KEY)("alice@example.com"),)]
        assert con.execute("SELECT user_id, raw FROM events_rejected").fetchall() == [
            (Pseudonymizer(KEY)("alice@example.com"), None)]
        hashed_id = con.execute("SELECT event_id FROM events").fetchall()[0][0]
    plain = Warehouse(warehouse.path.with_name("plain.duckdb"))
    land_file(plain, path, now=now)
    with plain.connect() as con:
        assert con.execute("SELECT event_id FROM events").fetchall()[0][0] != hashed_id, \
            "a content id is computed from the pseudonym, not from the raw id"


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """A home that landed simulated events pseudonymized, refreshed twice and published."""
    settings = Settings(home=tmp_path_factory.mktemp("home"))
    settings.ensure_dirs()
    simulator = Simulator(SimulatorConfig(seed=11, n_users=300, n_items=150))
    events = simulator.events(12_000)
    registry = ModelRegistry(settings.models_dir)
    with settings.warehouse().connect() as con:
        upsert_items(con, simulator.catalogue())
    for number, part in enumerate((events.head(6_000), events.tail(6_000))):
        path = write_events(part, settings.imports_dir / f"part{number}.parquet")
        land_trusted(settings.warehouse(), path, part.height, Pseudonymizer(KEY))
        refresh(settings.warehouse(), registry, settings.serving_path, CONFIG)
    return settings, registry, events


def raw_ids(events: pl.DataFrame) -> list[str]:
    return events["user_id"].unique().sort().to_list()


def test_raw_user_ids_appear_nowhere_downstream(served):
    settings, _, events = served
    ids = raw_ids(events)
    with settings.warehouse().connect() as con:
        assert mentions(con, ids) == {}
        assert con.execute("SELECT count(*) FROM recommendations").fetchall()[0][0] > 0
    with duckdb.connect(str(settings.serving_path), read_only=True) as serving:
        assert mentions(serving, ids) == {}
    assert artifact_mentions(settings.models_dir, ids) == []


def test_recommend_takes_the_raw_id_and_hashes_it(served, monkeypatch):
    settings, _, events = served
    monkeypatch.setenv("REC_PIPELINE_HOME", str(settings.home))
    user = raw_ids(events)[0]
    monkeypatch.delenv(KEY_ENV, raising=False)
    unkeyed = json.loads(CliRunner().invoke(app, ["recommend", user, "--json"]).stdout)
    monkeypatch.setenv(KEY_ENV, KEY.decode())
    keyed = json.loads(CliRunner().invoke(app, ["recommend", user, "--json"]).stdout)
    assert all(row["fallback"] for row in unkeyed), "without the key the raw id is unknown"
    assert keyed and not any(row["fallback"] for row in keyed)


def test_forget_removes_every_trace_of_the_user(served, monkeypatch, tmp_path):
    settings, registry, events = served
    user = raw_ids(events)[1]
    pseudonym = Pseudonymizer(KEY)(user)
    with settings.warehouse().connect() as con:
        before = mentions(con, [pseudonym])
        touched = [i for (i,) in con.execute("SELECT DISTINCT item_id FROM events WHERE user_id = ?", [pseudonym]).fetchall()]
        models_knowing = sum(registry.load(con, m.version).retrieval.known([pseudonym])[0]
                             for m in registry.versions(con))
    assert {"events.user_id", "user_activity.user_id", "recommendations.user_id"} <= set(before) and models_knowing

    monkeypatch.setenv("REC_PIPELINE_HOME", str(settings.home))
    monkeypatch.setenv(KEY_ENV, KEY.decode())
    result = CliRunner().invoke(app, ["forget", user, "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["events"] == before["events.user_id"] and report["artifacts_rewritten"] == models_knowing
    assert report["recommendations"] > 0 and report["items_rebuilt"] == len(touched)

    with settings.warehouse().connect() as con:
        assert mentions(con, [user, pseudonym]) == {}
        audit = con.execute("SELECT * FROM forget_audit").fetchall()
        assert len(audit) == 1 and audit[0][0] == report["request_id"]
        for model in registry.versions(con):  # every artifact verifies and still loads
            registry.load(con, model.version)
        assert_popularity_as_if_never_seen(con, pseudonym, touched, Warehouse(tmp_path / "fresh.duckdb"))
    with duckdb.connect(str(settings.serving_path), read_only=True) as serving:
        assert mentions(serving, [user, pseudonym]) == {}
        assert serving.execute("SELECT count(*) FROM recommendations").fetchall()[0][0] > 0, "others keep theirs"
    assert artifact_mentions(settings.models_dir, [user, pseudonym]) == []


def assert_popularity_as_if_never_seen(con, pseudonym: str, touched: list[str], fresh: Warehouse) -> None:
    """The touched items' popularity equals a state built from the same events without the user's."""
    consumed = con.sql("SELECT * EXCLUDE (source_row) FROM events_validated SEMI JOIN refresh_batches USING (batch_id)"
                       " ORDER BY ts, event_id").pl()
    assert not (consumed["user_id"] == pseudonym).any()
    query = "SELECT * FROM item_popularity WHERE list_contains(?, item_id) ORDER BY item_id"
    with fresh.connect() as rebuilt:
        update_features(rebuilt, consumed, FeatureConfig())
        expected = rebuilt.sql(query, params=[touched]).pl()
    ours = con.sql(query, params=[touched]).pl()
    assert ours.height == expected.height == len(touched)
    assert ours.select("item_id", "n_events", "n_users", "first_ts", "last_ts").equals(
        expected.select("item_id", "n_events", "n_users", "first_ts", "last_ts"))
    for column in (c for c in ours.columns if c.startswith("log_pop_")):
        assert np.allclose(ours[column].to_numpy(), expected[column].to_numpy(), rtol=1e-9)


def test_forget_also_removes_unparseable_rejected_lines_that_name_the_user(tmp_path, write_file, now):
    settings = Settings(home=tmp_path / "home")
    settings.ensure_dirs()
    lines = ['{"user_id": "carol", "item_id": "i1", "event_type": "view", "ts": "2024-05-01T10:00:00Z"}',
             '{"user_id": "carol", "item_id": ', '{"user_id": "caroline", "item_id": ', '{"user_id": "dave", "it']
    report = land_file(settings.warehouse(), write_file("a.jsonl", "\n".join(lines) + "\n"), now=now)
    assert (report.landed, report.rejected) == (1, 3)
    removed = forget(settings.warehouse(), ModelRegistry(settings.models_dir), settings.serving_path, "carol", None)
    assert (removed.events, removed.rejected_rows) == (1, 1)
    with settings.warehouse().connect() as con:
        assert mentions(con, ["carol"]) == {}
        assert sorted(raw for (raw,) in con.execute("SELECT raw FROM events_rejected").fetchall()) == [
            lines[2], lines[3]], "other users' broken lines stay"


def test_a_forget_that_fails_part_way_changes_nothing(served, monkeypatch):
    import rec_pipeline.core.ops.forgetting as forgetting

    settings, registry, events = served
    user = raw_ids(events)[2]
    pseudonym = Pseudonymizer(KEY)(user)
    with settings.warehouse().connect() as con:
        before = mentions(con, [pseudonym])
        paths = sorted(m.artifact_path for m in registry.versions(con))

    def crash(*args):
        raise RuntimeError("crash while rewriting artifacts")

    monkeypatch.setattr(forgetting, "_drop_embedding_rows", crash)
    with pytest.raises(RuntimeError, match="crash while rewriting"):
        forget(settings.warehouse(), registry, settings.serving_path, user, Pseudonymizer(KEY))
    with settings.warehouse().connect() as con:
        assert mentions(con, [pseudonym]) == before
        assert sorted(m.artifact_path for m in registry.versions(con)) == paths
        for model in registry.versions(con):
            registry.verified_artifact(con, model.version)

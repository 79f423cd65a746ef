"""Privacy: pseudonymized user ids at landing, and `forget`, proven by searching every table, the
serving database, every model artifact, the input files and Dagster's event log for the id and its
pseudonym."""

import gzip
import json
import re
import shutil
from pathlib import Path

import dagster as dg
import duckdb
import numpy as np
import polars as pl
import pytest
from typer.testing import CliRunner

from rec_pipeline.cli import app
from rec_pipeline.cli.runs import land_through_dagster
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
    discard_imports,
    verify_key,
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
        with settings.warehouse().connect() as con:  # as the landing asset does: records the key's check value
            verify_key(con, Pseudonymizer(KEY))
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


def cli(monkeypatch, home: Path, *args: str, key: bytes | None = None):
    """`rec-pipeline ARGS` on `home`, with exactly this pseudonymization key (or none)."""
    monkeypatch.setenv("REC_PIPELINE_HOME", str(home))
    monkeypatch.delenv(KEY_FILE_ENV, raising=False)
    if key is None:
        monkeypatch.delenv(KEY_ENV, raising=False)
    else:
        monkeypatch.setenv(KEY_ENV, key.decode())
    return CliRunner().invoke(app, list(args))


def one_line_refusal(result, says: str) -> bool:
    return result.exit_code == 1 and result.stderr.strip().count("\n") == 0 and says in result.stderr


# --- forget names the user by their parsed id, never by a blank one ------------------------------------

BROKEN_LINES = [
    '{"user_id": "\\u30e6\\u30fc\\u30b6", "item_id": ',  # ユーザ, escaped, cut short
    '{"user_id": "say\\"hi", "item_id": "i1"',  # say"hi, no closing brace
    '{"user_id": "ユーザ", "item_id": "i1", "event_type": "teleport", "ts": "2024-05-01T10:00:00Z"}',
    '{"user_id": "dave", "it',
    '{"user_id": 4711, "item_id": ',
    '["erin", "i2"]',
    'not JSON, and no user_id field: ユーザ',
]


@pytest.fixture
def broken_home(tmp_path, write_file, now) -> Settings:
    """A home whose only landed file holds broken lines of several users, and one line naming none."""
    settings = Settings(home=tmp_path / "home")
    settings.ensure_dirs()
    report = land_file(settings.warehouse(), write_file("broken.jsonl", "\n".join(BROKEN_LINES) + "\n"), now=now)
    assert (report.landed, report.rejected) == (0, len(BROKEN_LINES))
    return settings


def rejected_raw(settings: Settings) -> list[str]:
    with settings.warehouse().connect() as con:
        return sorted(raw for (raw,) in con.execute("SELECT raw FROM events_rejected").fetchall())


def forget_in(settings: Settings, user: str):
    return forget(settings.warehouse(), ModelRegistry(settings.models_dir), settings.serving_path, user, None)


def test_forget_refuses_a_blank_user_id_and_removes_no_one_elses_broken_lines(broken_home, monkeypatch):
    for blank in ("", "  \t"):
        with pytest.raises(InputError, match="blank"):
            forget_in(broken_home, blank)
        assert one_line_refusal(cli(monkeypatch, broken_home.home, "forget", blank), "needs a user id")
    assert rejected_raw(broken_home) == sorted(BROKEN_LINES)


def test_forget_matches_the_parsed_id_of_broken_lines_even_when_escaped(broken_home):
    assert forget_in(broken_home, "ユーザ").rejected_rows == 2
    assert forget_in(broken_home, 'say"hi').rejected_rows == 1
    assert forget_in(broken_home, " 4711 ").rejected_rows == 1, "the id is trimmed as landing trims it"
    assert rejected_raw(broken_home) == sorted(BROKEN_LINES[i] for i in (3, 5, 6)), \
        "other users' lines stay, and so does a line naming no user_id field"


# --- no user id reaches Dagster's event log; forget reaches the input files -------------------------

def test_dagsters_event_log_names_no_user_after_a_landing(definitions, home, tmp_path):
    """A flooding user whose id is in event ids (some duplicated by broken rows), sessions and
    contexts: the preview, the GX check results and user_flooding report counts, never the id
    (Dagster's event log keeps them for good)."""
    user = "zed@example.org"
    rows = [{"event_id": f"{user}-{i}", "user_id": user if i < 300 else f"u{i}", "item_id": f"i{i % 20}",
             "event_type": "view", "ts": 1767225600 + i, "session_id": f"{user}/s1", "context": {"who": user}}
            for i in range(400)]
    rows += [row | {"event_type": "teleport"} for row in rows[:30]]
    path = tmp_path / "flood.jsonl"
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    with dg.instance_for_test() as instance:
        run = land_through_dagster(definitions, instance, path)
        run_id = instance.get_runs(limit=1)[0].run_id
        logged = " ".join(dg.serialize_value(record) for record in instance.all_logs(run_id))
    assert run.quality_status == "failed" and "| item_id" in logged
    leaks = [m.start() for m in re.finditer(re.escape(user), logged)]
    assert not leaks, [logged[max(0, i - 200):i + 50] for i in leaks[:2]]
    with Warehouse(home / "warehouse.duckdb").connect() as con:
        checks = {name: (passed, metadata) for name, passed, metadata
                  in con.execute("SELECT check_name, passed, metadata FROM batch_checks").fetchall()}
    assert {name for name, (passed, _) in checks.items() if not passed} >= {"user_flooding", "event_id_unique"}
    assert json.loads(checks["user_flooding"][1])["top_count"] == 330, "its 300 events and 30 broken rows"
    assert user not in " ".join(metadata for _, metadata in checks.values())
    assert json.loads(checks["item_flooding"][1])["top_id"].startswith("i"), "item ids name no one"


def test_forget_deletes_every_imported_or_archived_file_holding_the_user(tmp_path, now):
    settings = Settings(home=tmp_path / "home")
    settings.ensure_dirs()
    imports, archive = settings.imports_dir, settings.archive_dir

    def events(*users: str) -> pl.DataFrame:
        return pl.DataFrame({"event_id": [f"e-{u}" for u in users], "user_id": list(users)}).with_columns(
            item_id=pl.lit("i1"), event_type=pl.lit("view"), ts=pl.lit("2024-05-01T10:00:00Z"))

    holding = [imports / "sim.jsonl", imports / "ml.parquet", archive / "b-1-a.csv.gz", archive / "b-2-b.jsonl"]
    events("alice", "bob").write_ndjson(holding[0])
    events("bob", "alice").write_parquet(holding[1])
    with gzip.open(holding[2], "wb") as csv_gz:
        events("alice").write_csv(csv_gz)
    holding[3].write_text('{"user_id": "bob", "item_id": "i1"}\n{"user_id": "\\u0061lice", "item_id": \n')
    kept = [imports / "others.parquet", archive / "b-3-unreadable.jsonl.gz", archive / "notes.txt"]
    events("bob", "alicea").write_parquet(kept[0])
    kept[1].write_bytes(b"\x1f\x8b\x08\x00garbage alice")
    kept[2].write_text("alice")
    land_file(settings.warehouse(), holding[0], now=now)

    report = forget(settings.warehouse(), ModelRegistry(settings.models_dir), settings.serving_path, "alice", None,
                    input_folders=[imports, archive])
    assert (report.events, report.files_deleted, report.files_unreadable) == (1, len(holding), 1)
    assert not any(path.exists() for path in holding) and all(path.exists() for path in kept)
    with settings.warehouse().connect() as con:
        audited = con.execute("SELECT files_deleted, files_unreadable FROM forget_audit WHERE request_id = ?",
                              [report.request_id]).fetchone()
    assert audited == (len(holding), 1), "the audit row counts the files too"


def test_with_a_key_the_command_lines_import_files_are_deleted_after_landing(tmp_path):
    files = [tmp_path / "sim-s0-e0000000000.jsonl", tmp_path / "movielens-ml-100k.parquet"]
    for path in files:
        path.write_text("raw ids")
    assert discard_imports(files, None) == [] and all(path.exists() for path in files), "no key: kept, as landed"
    assert discard_imports(files, Pseudonymizer(KEY)) == files and not any(path.exists() for path in files)


# --- a corrupt artifact neither blocks forget nor crashes rollback -------------------------------------

@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Settings:
    """A home without pseudonymization, one refresh in: a champion."""
    settings = Settings(home=tmp_path_factory.mktemp("plain"))
    settings.ensure_dirs()
    simulator = Simulator(SimulatorConfig(seed=12, n_users=200, n_items=100))
    events = simulator.events(5_000)
    with settings.warehouse().connect() as con:
        upsert_items(con, simulator.catalogue())
    land_trusted(settings.warehouse(), write_events(events, settings.imports_dir / "events.parquet"), events.height)
    assert refresh(settings.warehouse(), ModelRegistry(settings.models_dir), settings.serving_path, CONFIG).promoted
    return settings


@pytest.fixture
def corrupt_retired(trained):
    """A retired version whose artifact no longer matches its checksum (bytes flipped in one file)."""
    registry, version = ModelRegistry(trained.models_dir), "m-20000101T000000-c0ffee"
    with trained.warehouse().connect() as con:
        champion = registry.champion(con)
        folder = registry.write_artifact(version, lambda staging: shutil.copytree(champion.artifact_path, staging))
        con.execute("INSERT INTO model_registry SELECT * REPLACE (? AS version, 'retired' AS status,"
                    " ? AS artifact_path) FROM model_registry WHERE version = ?",
                    [version, str(folder), champion.version])
    victim = max(folder.rglob("*.*"), key=lambda p: (p.name == "ranker.txt", p.stat().st_size))
    data = bytearray(victim.read_bytes())
    data[len(data) // 2] ^= 0xFF
    victim.write_bytes(bytes(data))
    yield version, folder
    with trained.warehouse().connect() as con:
        con.execute("DELETE FROM model_registry WHERE version = ?", [version])
    shutil.rmtree(folder, ignore_errors=True)


def test_rollback_to_a_corrupt_artifact_is_refused_in_one_line(trained, corrupt_retired, monkeypatch):
    version, _ = corrupt_retired
    with trained.warehouse().connect() as con:
        champion = ModelRegistry(trained.models_dir).champion(con).version
    result = cli(monkeypatch, trained.home, "rollback", version)
    assert one_line_refusal(result, "do not match the registered checksum"), result.stderr
    with trained.warehouse().connect() as con:
        assert ModelRegistry(trained.models_dir).champion(con).version == champion


def test_forget_deletes_a_corrupt_artifact_and_still_forgets_the_user_everywhere_else(trained, corrupt_retired,
                                                                                      monkeypatch):
    _, folder = corrupt_retired
    with trained.warehouse().connect() as con:
        user = con.execute("SELECT user_id FROM recommendations ORDER BY user_id LIMIT 1").fetchall()[0][0]
    result = cli(monkeypatch, trained.home, "forget", user, "--json")
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["artifacts_deleted"] == 1 and report["artifacts_rewritten"] == 1 and report["events"] > 0
    assert not folder.exists()
    with trained.warehouse().connect() as con:
        assert mentions(con, [user]) == {}
    assert artifact_mentions(trained.models_dir, [user]) == []


# --- the key: its check value, and refusing a wrong one or none ------------------------------------------

def recorded_check_value(con: duckdb.DuckDBPyConnection) -> str:
    (value,), = con.execute("SELECT check_value FROM pseudonymization_key").fetchall()
    return value


def test_the_warehouse_keeps_a_check_value_of_its_key_never_the_key(served):
    settings, _, _ = served
    with settings.warehouse().connect() as con:
        assert recorded_check_value(con) == Pseudonymizer(KEY).check_value()
        assert mentions(con, [KEY.decode()]) == {}
    assert Pseudonymizer(KEY).check_value() != Pseudonymizer(b"o" * 32).check_value()


def test_forget_without_the_key_or_with_another_on_a_pseudonymized_warehouse_is_refused(served, monkeypatch):
    settings, _, events = served
    user = raw_ids(events)[3]
    with settings.warehouse().connect() as con:
        before = mentions(con, [Pseudonymizer(KEY)(user)])
    assert one_line_refusal(cli(monkeypatch, settings.home, "forget", user), "no key is set")
    assert one_line_refusal(cli(monkeypatch, settings.home, "forget", user, key=b"o" * 32), "not the one")
    with settings.warehouse().connect() as con:
        assert mentions(con, [Pseudonymizer(KEY)(user)]) == before and before


def test_a_warehouse_holding_raw_ids_refuses_a_key(trained, monkeypatch):
    assert one_line_refusal(cli(monkeypatch, trained.home, "forget", "u000001", key=KEY), "landed without a")
    with trained.warehouse().connect() as con:
        assert con.execute("SELECT count(*) FROM pseudonymization_key").fetchall() == [(0,)]


def test_landing_refuses_a_key_other_than_the_warehouses_or_none(home, tmp_path, monkeypatch):
    from rec_pipeline.definitions import build_definitions

    def land_with(key: bytes | None, name: str):
        monkeypatch.delenv(KEY_ENV, raising=False)
        if key is not None:
            monkeypatch.setenv(KEY_ENV, key.decode())
        path = tmp_path / name
        path.write_text(json.dumps({"user_id": "alice", "item_id": "i1", "event_type": "view",
                                    "ts": 1767225600, "event_id": name}) + "\n")
        with dg.instance_for_test() as instance:
            return land_through_dagster(build_definitions(Settings.from_env()), instance, path).report

    assert land_with(KEY, "first.jsonl").landed == 1
    assert "not the one" in land_with(b"o" * 32, "second.jsonl").reason
    assert "no key is set" in land_with(None, "third.jsonl").reason
    with Warehouse(home / "warehouse.duckdb").connect() as con:
        assert con.execute("SELECT count(*) FROM ingested_files").fetchall() == [(1,)], "nothing else landed"


def test_a_warehouse_pseudonymized_before_check_values_adopts_its_key_at_first_keyed_use(warehouse, write_file, now):
    line = json.dumps({"user_id": "alice", "item_id": "i1", "event_type": "view", "ts": "2024-05-01T10:00:00Z"})
    land_file(warehouse, write_file("a.jsonl", line + "\n"), now=now, pseudonymizer=Pseudonymizer(KEY))
    with warehouse.connect() as con:
        verify_key(con, Pseudonymizer(KEY))
        assert recorded_check_value(con) == Pseudonymizer(KEY).check_value()
        with pytest.raises(PseudonymizationKeyError, match="not the one"):
            verify_key(con, Pseudonymizer(b"o" * 32))

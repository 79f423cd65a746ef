"""Settings: read once from the environment, defaults that work, a clear error naming the variable
for a value that cannot, and every setting reaching the code that uses it."""

import os
import time
from datetime import timedelta

import dagster as dg
import pytest

from rec_pipeline.cli import session
from rec_pipeline.cli.runs import dagster_instance
from rec_pipeline.core.errors import InputError
from rec_pipeline.core.model import tensorflow_logs
from rec_pipeline.core.ops.pseudonymization import Pseudonymizer
from rec_pipeline.definitions import build_definitions
from rec_pipeline.defs.resources import PipelineResource
from rec_pipeline.settings import Settings

KEY = "a-pseudonymization-key-of-32-bytes!"


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch):
    for name in [n for n in os.environ if n.startswith("REC_PIPELINE_")] + ["DAGSTER_HOME"]:
        monkeypatch.delenv(name, raising=False)


def test_defaults_without_any_environment(monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    settings = Settings.from_env()
    assert settings.home == tmp_path / "rec_pipeline_home"
    assert settings.automation and settings.alert_webhook is None and settings.pseudonymizer() is None
    assert settings.freshness_warn_minutes < settings.freshness_fail_minutes
    assert settings.dagster_home is None and not settings.debug


@pytest.mark.parametrize(("name", "value", "message"), [
    ("REC_PIPELINE_AUTOMATION", "sometimes", "REC_PIPELINE_AUTOMATION: Input should be a valid boolean"),
    ("REC_PIPELINE_FRESHNESS_WARN_MINUTES", "500", "warn minutes < fail minutes"),
    ("REC_PIPELINE_REFRESH_INTERVAL_S", "0", "REC_PIPELINE_REFRESH_INTERVAL_S: Input should be greater than or equal to 1"),
    ("REC_PIPELINE_REFRESH_INTERVAL_S", "soon", "REC_PIPELINE_REFRESH_INTERVAL_S: Input should be a valid integer"),
    ("REC_PIPELINE_RETENTION_DAYS", "-1", "REC_PIPELINE_RETENTION_DAYS: Input should be greater than 0 .got '-1'."),
    ("REC_PIPELINE_PSEUDONYMIZE_KEY", "short", "REC_PIPELINE_PSEUDONYMIZE_KEY: the pseudonymization key must be"),
])
def test_a_bad_setting_is_refused_naming_it(monkeypatch, name, value, message):
    monkeypatch.setenv(name, value)
    with pytest.raises(InputError, match=message) as refused:
        Settings.from_env()
    assert "\n" not in str(refused.value)


def test_the_resource_carries_every_setting_and_shows_secrets_as_variables(monkeypatch, tmp_path):
    monkeypatch.setenv("REC_PIPELINE_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("REC_PIPELINE_ALERT_WEBHOOK", "http://127.0.0.1:9/alerts")
    monkeypatch.setenv("REC_PIPELINE_PSEUDONYMIZE_KEY", KEY)
    settings = Settings.from_env()
    resource = PipelineResource.from_settings(settings)
    assert set(PipelineResource.model_fields) == set(Settings.model_fields)
    assert resource.pseudonymize_key == dg.EnvVar("REC_PIPELINE_PSEUDONYMIZE_KEY")
    assert resource.alert_webhook == dg.EnvVar("REC_PIPELINE_ALERT_WEBHOOK")
    with dg.build_resources({"pipeline": resource}) as built:
        assert built.pipeline.settings == settings


def test_every_setting_reaches_the_code_that_uses_it(monkeypatch, tmp_path):
    values = {"HOME": str(tmp_path / "home"), "MEMORY_LIMIT": "123MiB", "AUTOMATION": "off",
              "REFRESH_INTERVAL_S": "45", "FRESHNESS_WARN_MINUTES": "7", "FRESHNESS_FAIL_MINUTES": "9",
              "ALERT_WEBHOOK": "http://127.0.0.1:9/alerts", "RETENTION_DAYS": "1", "PSEUDONYMIZE_KEY": KEY,
              "DEBUG": "1"}
    for name, value in values.items():
        monkeypatch.setenv(f"REC_PIPELINE_{name}", value)
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path / "dagster_home"))
    (tmp_path / "dagster_home").mkdir()
    settings = session.start(debug=False)
    definitions = build_definitions(settings)
    repo = definitions.get_repository_def()
    with dg.build_resources(definitions.resources) as built:
        used = built.pipeline.settings

    def memory_limit():
        with used.warehouse().connect() as con:
            return con.execute("SELECT current_setting('memory_limit')").fetchone()[0]

    def housekeeping_prunes_an_archive_two_days_old():
        old = used.archive_dir / "b-1-old.jsonl"
        old.parent.mkdir(parents=True, exist_ok=True)
        old.write_text("{}")
        os.utime(old, (time.time() - 2 * 86400,) * 2)
        assert definitions.resolve_job_def("housekeeping_job").execute_in_process().success
        return not old.exists()

    def freshness():
        policy = repo.asset_graph.get(dg.AssetKey("recommendations")).freshness_policy
        return policy.warn_window.to_timedelta(), policy.fail_window.to_timedelta()

    def instance_root():
        with dagster_instance(settings) as instance:
            return None if instance.is_ephemeral else instance.root_directory

    probes = {
        "home": (lambda: used.warehouse_path, tmp_path / "home" / "warehouse.duckdb"),
        "memory_limit": (memory_limit, "123.0 MiB"),
        "automation": (lambda: {d.default_status.value for d in [*repo.sensor_defs, *repo.schedule_defs]},
                       {"STOPPED"}),
        "refresh_interval_s": (lambda: repo.get_sensor_def("refresh_automation").minimum_interval_seconds, 45),
        "freshness_warn_minutes": (lambda: freshness()[0], timedelta(minutes=7)),
        "freshness_fail_minutes": (lambda: freshness()[1], timedelta(minutes=9)),
        "alert_webhook": (lambda: built.pipeline.alert_webhook, values["ALERT_WEBHOOK"]),
        "retention_days": (housekeeping_prunes_an_archive_two_days_old, True),
        "pseudonymize_key": (lambda: used.pseudonymizer()("u1"), Pseudonymizer(KEY.encode())("u1")),
        "pseudonymize_key_file": (lambda: _key_file_pseudonymizer(monkeypatch, tmp_path)("u1"),
                                  Pseudonymizer(KEY.encode())("u1")),
        "debug": (lambda: tensorflow_logs.SHOW, True),
        "dagster_home": (instance_root, str(tmp_path / "dagster_home")),
    }
    assert set(probes) == set(Settings.model_fields), "every setting has a probe"
    try:
        for name, (probe, expected) in probes.items():
            assert probe() == expected, name
    finally:
        tensorflow_logs.SHOW = False


def _key_file_pseudonymizer(monkeypatch, tmp_path) -> Pseudonymizer:
    key_file = tmp_path / "key"
    key_file.write_text(KEY + "\n")
    monkeypatch.delenv("REC_PIPELINE_PSEUDONYMIZE_KEY")
    monkeypatch.setenv("REC_PIPELINE_PSEUDONYMIZE_KEY_FILE", str(key_file))
    with dg.build_resources(build_definitions(Settings.from_env()).resources) as built:
        return built.pipeline.settings.pseudonymizer()

"""Settings from the environment: defaults that work, and a clear error for a value that cannot."""

import pytest

from rec_pipeline.config import Settings


def test_defaults_without_any_environment(monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    for name in ("REC_PIPELINE_HOME", "REC_PIPELINE_AUTOMATION", "REC_PIPELINE_ALERT_WEBHOOK"):
        monkeypatch.delenv(name, raising=False)
    settings = Settings.from_env()
    assert settings.home == tmp_path / "rec_pipeline_home"
    assert settings.automation and settings.alert_webhook is None
    assert settings.freshness_warn_minutes < settings.freshness_fail_minutes


@pytest.mark.parametrize(("name", "value", "message"), [
    ("REC_PIPELINE_AUTOMATION", "sometimes", "on or off"),
    ("REC_PIPELINE_FRESHNESS_WARN_MINUTES", "500", "warn minutes < fail minutes"),
    ("REC_PIPELINE_REFRESH_INTERVAL_S", "0", "refresh_interval_s"),
    ("REC_PIPELINE_RETENTION_DAYS", "-1", "retention_days"),
])
def test_a_bad_setting_is_refused_naming_it(monkeypatch, name, value, message):
    monkeypatch.setenv(name, value)
    with pytest.raises(ValueError, match=message):
        Settings.from_env()

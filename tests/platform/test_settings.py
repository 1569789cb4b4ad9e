"""Settings: environment parsing, secret files, and the production guard."""

from __future__ import annotations

from pathlib import Path

import pytest

from steward.settings import DEFAULT_SECRET_KEY, ConfigError, Settings


def _settings(**values: object) -> Settings:
    return Settings(_env_file=None, **values)  # type: ignore[call-arg]


def test_environment_variables_are_read(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CORS_ORIGINS", "https://a.example, https://b.example")
    monkeypatch.setenv("DB_POOL_SIZE", "7")
    monkeypatch.setenv("LOG_LEVEL", "debug")
    settings = Settings(_env_file=None)  # type: ignore[call-arg]
    assert settings.cors_origins == ["https://a.example", "https://b.example"]
    assert settings.db_pool_size == 7
    assert settings.log_level == "DEBUG"


def test_dotenv_file_is_read(tmp_path: Path) -> None:
    env_file = tmp_path / ".env"
    env_file.write_text("MAX_BODY_BYTES=4096\nENVIRONMENT=staging\n")
    settings = Settings(_env_file=env_file)  # type: ignore[call-arg]
    assert settings.max_body_bytes == 4096
    assert settings.environment == "staging"
    assert settings.json_logs


def test_secret_files_are_read(tmp_path: Path) -> None:
    (tmp_path / "secret").write_text("k" * 40 + "\n")
    settings = _settings(secret_key_file=tmp_path / "secret")
    assert settings.secret_key.get_secret_value() == "k" * 40
    assert "k" * 40 not in repr(settings)


def test_dev_accepts_defaults() -> None:
    _settings(environment="dev").check_production()


PROD_OK = {
    "environment": "prod",
    "secret_key": "x" * 48,
    "database_url": "postgresql://db/steward",
    "redis_url": "redis://cache:6379/0",
}


def test_prod_accepts_complete_settings() -> None:
    _settings(**PROD_OK).check_production()


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        ({"secret_key": DEFAULT_SECRET_KEY}, "SECRET_KEY is the built-in default"),
        ({"secret_key": "short"}, "SECRET_KEY is shorter"),
        ({"database_url": None}, "DATABASE_URL must be set"),
        ({"redis_url": None}, "REDIS_URL must be set"),
        ({"api_key": "tiny"}, "API_KEY is shorter"),
        ({"password_hash_memory_kib": 1024}, "PASSWORD_HASH_MEMORY_KIB >= 19456"),
        ({"password_hash_time_cost": 1}, "PASSWORD_HASH_TIME_COST >= 2"),
    ],
)
def test_prod_refuses_unsafe_settings_with_one_line(change: dict[str, object], reason: str) -> None:
    with pytest.raises(ConfigError) as caught:
        _settings(**{**PROD_OK, **change}).check_production()
    message = str(caught.value)
    assert reason in message
    assert "\n" not in message


def test_invalid_values_are_rejected() -> None:
    with pytest.raises(ValueError, match="port"):
        _settings(port=70000)


def test_gc_thresholds_are_read_and_checked(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GC_THRESHOLDS", "[1000, 20, 50]")
    assert Settings(_env_file=None).gc_thresholds == (1000, 20, 50)  # type: ignore[call-arg]
    with pytest.raises(ValueError, match="gc_thresholds"):
        _settings(gc_thresholds=(0, 10, 100))  # 0 would switch the collector off

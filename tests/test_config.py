"""Configuration: the guide's variable names, clear errors, secrets kept secret."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from nexpo_workflows.client import connection_options
from nexpo_workflows.config import ConfigError, Settings, load_settings
from nexpo_workflows.providers import enabled_provider_names

SECRET = "sk-temporal-very-secret-value"


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for variable in ("ENABLE_TEMPORAL", "TEMPORAL_SERVER_URL", "TEMPORAL_NAMESPACE"):
        monkeypatch.delenv(variable, raising=False)
    monkeypatch.chdir(tmp_path)  # no stray .env


def test_defaults_follow_the_guide() -> None:
    settings = load_settings()
    assert settings.enable_temporal is False
    assert settings.temporal_server_url == "localhost:7233"
    assert settings.temporal_namespace == "default"
    assert settings.temporal_task_queue == "main-task-queue"
    assert enabled_provider_names(settings) == ["sqlite"]  # the embedded default


def test_sqlite_is_off_by_default_once_another_provider_is_on() -> None:
    assert enabled_provider_names(Settings(_env_file=None, enable_postgres=True)) == ["postgres"]
    both = Settings(_env_file=None, enable_postgres=True, enable_sqlite=True)
    assert enabled_provider_names(both) == ["postgres", "sqlite"]


def test_environment_and_dotenv_are_read(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    (tmp_path / ".env").write_text("TEMPORAL_TASK_QUEUE=from-dotenv\nENABLE_TEMPORAL=true\n")
    monkeypatch.setenv("TEMPORAL_NAMESPACE", "from-env")
    settings = load_settings()
    assert settings.temporal_task_queue == "from-dotenv"
    assert settings.enable_temporal is True
    assert settings.temporal_namespace == "from-env"


@pytest.mark.parametrize(
    ("variable", "value", "expected"),
    [
        ("ENABLE_TEMPORAL", "maybe", "ENABLE_TEMPORAL: Input should be a valid boolean"),
        ("TEMPORAL_SERVER_URL", "no-port", "TEMPORAL_SERVER_URL must be host:port"),
        ("TEMPORAL_GRACEFUL_SHUTDOWN_SECONDS", "-1", "TEMPORAL_GRACEFUL_SHUTDOWN_SECONDS: Input"),
        ("METRICS_BIND_ADDRESS", "9464", "METRICS_BIND_ADDRESS: Value error, a metrics bind"),
        ("TEMPORAL_TLS_CLIENT_CERT", "/no/such.pem", "no readable file at /no/such.pem"),
        ("TEMPORAL_MAX_CONCURRENT_ACTIVITIES", "0", "TEMPORAL_MAX_CONCURRENT_ACTIVITIES"),
        ("PASSWORD_HASH_MEMORY_KIB", "4096", "PASSWORD_HASH_MEMORY_KIB: Input should be greater"),
        # Cheaper than OWASP's table allows for two passes (19 MiB).
        ("PASSWORD_HASH_MEMORY_KIB", "12288", "PASSWORD_HASH_MEMORY_KIB must be at least 19456"),
        ("PASSWORD_HASH_QUEUE_LIMIT", "-1", "PASSWORD_HASH_QUEUE_LIMIT: Input should be greater"),
        # A URL may hold a password: named, never echoed.
        ("POSTGRES_URL", "s3cret@db:5432", "POSTGRES_URL: Value error, not a database URL"),
        ("MONGODB_URL", "localhost", "MONGODB_URL: Value error, not a database URL"),
    ],
)
def test_a_wrong_value_names_the_variable(
    monkeypatch: pytest.MonkeyPatch, variable: str, value: str, expected: str
) -> None:
    monkeypatch.setenv(variable, value)
    with pytest.raises(ConfigError) as caught:
        load_settings()
    assert expected in str(caught.value)
    if variable in ("POSTGRES_URL", "MONGODB_URL"):
        assert value not in str(caught.value)


def test_cli_reports_a_wrong_value_in_one_message_without_traceback(cli: list[str]) -> None:
    result = subprocess.run(
        [*cli, "health"],
        env={"PATH": "/usr/bin:/bin", "ENABLE_TEMPORAL": "sometimes"},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    assert "ENABLE_TEMPORAL" in result.stderr
    assert "Traceback" not in result.stderr + result.stdout


def test_an_api_key_is_never_printed(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TEMPORAL_CLOUD_API_KEY", SECRET)
    monkeypatch.setenv("TEMPORAL_CLOUD_NAMESPACE", "acme.a1b2c")
    settings = load_settings()
    assert SECRET not in repr(settings)
    assert SECRET not in str(settings.model_dump())
    assert SECRET not in repr(connection_options(settings))
    monkeypatch.setenv("TEMPORAL_CONNECT_TIMEOUT_SECONDS", "-1")
    with pytest.raises(ConfigError) as caught:
        load_settings()
    assert SECRET not in str(caught.value)


def test_cloud_endpoint_and_namespace_are_derived_from_the_cloud_namespace() -> None:
    settings = Settings(
        _env_file=None, temporal_cloud_namespace="acme.a1b2c", temporal_cloud_api_key=SECRET
    )
    options = connection_options(settings)
    assert options.target == "acme.a1b2c.tmprl.cloud:7233"
    assert options.namespace == "acme.a1b2c"
    assert options.api_key == SECRET
    assert options.tls is True


def test_an_explicit_address_wins_over_the_derived_cloud_endpoint() -> None:
    settings = Settings(
        _env_file=None,
        temporal_cloud_namespace="acme.a1b2c",
        temporal_cloud_api_key=SECRET,
        temporal_server_url="us-east-1.aws.api.temporal.io:7233",
    )
    options = connection_options(settings)
    assert options.target == "us-east-1.aws.api.temporal.io:7233"
    assert options.namespace == "acme.a1b2c"


def test_a_local_server_uses_no_tls() -> None:
    options = connection_options(Settings(_env_file=None))
    assert options == connection_options(Settings(_env_file=None, temporal_tls=None))
    assert options.tls is False
    assert options.api_key is None


def test_client_certificate_and_key_must_come_together(tmp_path: Path) -> None:
    cert = tmp_path / "client.pem"
    cert.write_text("x")
    with pytest.raises(ConfigError, match="TEMPORAL_TLS_CLIENT_KEY must be set together"):
        load_settings(_env_file=None, temporal_tls_client_cert=cert)

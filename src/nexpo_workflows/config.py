"""Configuration read from the environment and an optional ``.env`` file.

Variable names follow the Nexpo Temporal guide (``ENABLE_TEMPORAL``,
``TEMPORAL_SERVER_URL``, ...). Every value is validated at start-up so a wrong
one is reported once, by name, before anything connects.
"""

from __future__ import annotations

from datetime import timedelta
from functools import cached_property
from pathlib import Path
from typing import Annotated, Literal, get_args

from pydantic import Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict, SettingsError

from nexpo_workflows.codec import parse_key_ring
from nexpo_workflows.sync.models import CaptureMode, DatasetConfig

DEFAULT_TEMPORAL_SERVER_URL = "localhost:7233"
TEMPORAL_CLOUD_PORT = 7233
# OWASP's Password Storage Cheat Sheet: the least Argon2id memory (KiB) for a number of passes,
# all equally strong; five passes or more need 7 MiB.
OWASP_ARGON2ID_MEMORY_KIB = {1: 46 * 1024, 2: 19 * 1024, 3: 12 * 1024, 4: 9 * 1024, 5: 7 * 1024}


class ConfigError(Exception):
    """A configuration value is missing or wrong; the message names the variable."""


def _check_host_port(value: str, variable: str) -> str:
    host, sep, port = value.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"{variable} must be host:port (for example localhost:7233)")
    return value


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_file=".env",
        env_file_encoding="utf-8",
        extra="ignore",
        case_sensitive=False,
        # A variable left empty (as in .env.example) means "use the default".
        env_ignore_empty=True,
    )

    # --- Temporal -----------------------------------------------------------------------
    enable_temporal: bool = False
    temporal_server_url: str = DEFAULT_TEMPORAL_SERVER_URL
    temporal_namespace: str = Field(default="default", min_length=1)
    temporal_task_queue: str = Field(default="main-task-queue", min_length=1)
    temporal_cloud_namespace: str | None = None
    temporal_cloud_api_key: SecretStr | None = None
    # TLS for a self-hosted cluster: a CA to trust, and a client certificate for mTLS.
    temporal_tls: bool | None = None
    temporal_tls_server_ca_cert: Path | None = None
    temporal_tls_client_cert: Path | None = None
    temporal_tls_client_key: Path | None = None
    temporal_tls_server_name: str | None = None
    temporal_connect_timeout_seconds: float = Field(default=30.0, gt=0)
    # How long the gateway and the CLI wait for a worker to answer a query or an update.
    temporal_answer_timeout_seconds: float = Field(default=30.0, gt=0, le=600)

    # --- Worker -------------------------------------------------------------------------
    temporal_max_concurrent_workflow_tasks: int = Field(default=100, ge=2)
    temporal_max_concurrent_activities: int = Field(default=100, ge=1)
    temporal_max_concurrent_local_activities: int = Field(default=100, ge=1)
    temporal_graceful_shutdown_seconds: float = Field(default=10.0, ge=0)
    temporal_worker_identity: str | None = None

    # --- Embedded dev server (`nexpo-workflows dev`) ------------------------------------
    temporal_ui_port: int = Field(default=8233, gt=0, lt=65536)

    # --- Database providers --------------------------------------------------------------
    data_dir: Path = Path(".nexpo")
    # None: on when no other provider is enabled (the embedded default).
    enable_sqlite: bool | None = None
    sqlite_path: Path | None = None

    enable_postgres: bool = False
    postgres_url: SecretStr = SecretStr("postgresql://postgres@127.0.0.1:5432/postgres")
    postgres_pool_size: int = Field(default=5, ge=1)
    # PostgreSQL failover (README "PostgreSQL failover"): the streaming standby a monitor may
    # promote, and the monitor (its service name) whose routing record the provider follows.
    # Unset: the provider always uses POSTGRES_URL.
    postgres_standby_url: SecretStr | None = None
    postgres_failover_service: str | None = Field(
        default=None, min_length=1, pattern=r"^[A-Za-z0-9._-]+$"
    )
    # How often a following provider re-reads the routing record (also after any connection
    # error): the longest a worker keeps writing to a server the record no longer names.
    postgres_routing_refresh_seconds: float = Field(default=5.0, gt=0, le=300)

    enable_mongodb: bool = False
    mongodb_url: SecretStr = SecretStr("mongodb://127.0.0.1:27017")
    mongodb_database: str = Field(default="nexpo", min_length=1)

    enable_cosmosdb: bool = False
    cosmosdb_endpoint: str = "https://localhost:8081"
    cosmosdb_key: SecretStr = SecretStr("")
    cosmosdb_database: str = Field(default="nexpo", min_length=1)
    cosmosdb_container: str = Field(default="users", min_length=1)
    # Only for a local emulator with a self-signed certificate.
    cosmosdb_verify_tls: bool = True

    enable_supabase: bool = False
    supabase_url: str = "http://127.0.0.1:54321"
    supabase_service_role_key: SecretStr = SecretStr("")
    supabase_table: str = Field(default="nexpo_users", min_length=1)
    supabase_db_url: SecretStr | None = None

    enable_sqlserver: bool = False
    sqlserver_url: SecretStr = SecretStr("")

    # --- Object stores -------------------------------------------------------------------
    # None: on when no cloud store is enabled (the embedded default).
    enable_local_store: bool | None = None
    local_store_path: Path | None = None

    enable_s3: bool = False
    s3_bucket: str = Field(default="nexpo-objects", min_length=3)
    s3_region: str = "us-east-1"
    # For an S3-compatible store (MinIO, moto, ...); empty = AWS.
    s3_endpoint_url: str | None = None
    aws_access_key_id: SecretStr | None = None
    aws_secret_access_key: SecretStr | None = None

    enable_azure_blob: bool = False
    azure_storage_connection_string: SecretStr | None = None
    azure_blob_container: str = Field(default="nexpo-objects", min_length=3)

    enable_gcs: bool = False
    gcs_bucket: str = Field(default="nexpo-objects", min_length=3)
    gcs_project: str | None = None
    # For an emulator (fake-gcs-server); empty = Google Cloud Storage.
    gcs_endpoint_url: str | None = None

    # --- Store pair -----------------------------------------------------------------------
    # Two stores (registry names, e.g. s3 and azure) behind the one store name "pair": reads
    # and writes go to the side that the routing record of STORE_PAIR_SERVICE names active
    # (the primary until a failover monitor of that service switches), re-read every
    # STORE_PAIR_REFRESH_SECONDS and after a failure.
    enable_store_pair: bool = False
    store_pair_primary: str | None = None
    store_pair_secondary: str | None = None
    store_pair_service: str = Field(default="store-pair", pattern=r"^[A-Za-z0-9._-]{1,100}$")
    store_pair_refresh_seconds: float = Field(default=5.0, gt=0, le=300)

    # --- Failover monitor ------------------------------------------------------------------
    # The hosts a monitor's URL targets may name (exact names, comma-separated); empty: URL
    # targets are refused, only store targets are probed.
    failover_probe_allowed_hosts: Annotated[list[str], NoDecode] = Field(default_factory=list)

    # --- User onboarding saga -----------------------------------------------------------
    # "activity": each database step is a regular activity; "local": a local activity
    # (fewer server round trips, same all-or-nothing guarantees).
    onboarding_step_mode: Literal["activity", "local"] = "activity"
    onboarding_parallel: bool = True
    # The saga's own deadline: past it, the steps stop and every write is compensated.
    onboarding_timeout_seconds: float = Field(default=120.0, gt=0)
    onboarding_step_timeout_seconds: float = Field(default=10.0, gt=0)
    onboarding_compensation_attempts: int = Field(default=10, ge=1)
    # How long `POST /api/users?wait=true` and `users create` wait for the saga's outcome;
    # a saga still running then goes on, and its workflow id is the answer (202).
    onboarding_wait_seconds: float = Field(default=10.0, gt=0, le=600)

    # --- Password hashing (at the gateway and the CLI) ---------------------------------------
    # Argon2id at OWASP's recommended cost (19 MiB, 2 passes, 1 lane): ~65 ms a hash on one
    # core. Cheaper combinations than OWASP's table allows are refused (see
    # _owasp_password_hash_cost); stored hashes made with other parameters are replaced the
    # next time their password is checked.
    password_hash_memory_kib: int = Field(default=19 * 1024, ge=7 * 1024, le=4 * 1024 * 1024)
    password_hash_time_cost: int = Field(default=2, ge=1, le=20)
    password_hash_parallelism: int = Field(default=1, ge=1, le=16)
    # Hashes computed at once, each on a thread of its own (Argon2 releases the GIL); unset:
    # one per CPU core.
    password_hash_workers: int | None = Field(default=None, ge=1, le=256)
    # Requests that may wait for a free hasher, beyond those being hashed; unset: 8 per
    # worker. Past it the gateway answers 503 with Retry-After at once.
    password_hash_queue_limit: int | None = Field(default=None, ge=0, le=100_000)

    # --- Language model (Claude) ----------------------------------------------------------
    # Unset: an offline model that answers deterministic text saying it is offline.
    anthropic_api_key: SecretStr | None = None
    anthropic_model: str = Field(default="claude-sonnet-4-20250514", min_length=1)
    # For a proxy or gateway in front of the API; empty = api.anthropic.com.
    anthropic_base_url: str | None = None
    anthropic_max_tokens: int = Field(default=2048, gt=0)
    anthropic_timeout_seconds: float = Field(default=120.0, gt=0)
    # An answer that does not match its schema is asked for again at most this many times.
    llm_structured_attempts: int = Field(default=3, ge=1)

    # --- Notifications ----------------------------------------------------------------------
    # Nothing configured: notifications are log lines only.
    smtp_host: str | None = None
    smtp_port: int = Field(default=587, gt=0, lt=65536)
    smtp_username: str | None = None
    smtp_password: SecretStr | None = None
    # STARTTLS after connecting (port 587) or TLS from the start (port 465); neither: plain.
    smtp_starttls: bool = False
    smtp_use_tls: bool = False
    smtp_from: str = "nexpo-workflows@localhost"
    smtp_timeout_seconds: float = Field(default=10.0, gt=0)
    # Who gets the pipeline's emails when a request names nobody.
    notify_email_to: Annotated[list[str], NoDecode] = Field(default_factory=list)
    # Webhook receivers; every POST is signed with HMAC-SHA256 of the body under the secret.
    webhook_urls: Annotated[list[str], NoDecode] = Field(default_factory=list)
    webhook_secret: SecretStr | None = None
    webhook_timeout_seconds: float = Field(default=10.0, gt=0)

    # --- AI content pipeline and decisions --------------------------------------------------
    # "ai": Claude reviews the draft against the rubric; "human": a reviewer decides.
    content_review_mode: Literal["ai", "human"] = "ai"
    content_review_rubric: str = (
        "Accurate, clear, on topic, free of offensive or confidential material, "
        "and ready to publish without edits."
    )
    # How long a human review may take; past it, an escalation goes out and the default applies.
    content_review_timeout_seconds: float = Field(default=86400.0, gt=0)
    content_review_default: Literal["approve", "reject"] = "reject"
    content_max_revisions: int = Field(default=3, ge=0)
    # The AI decision workflow: the largest refund it may choose, and the risk above which a
    # person must approve its choice (and how long they have).
    decision_refund_limit: float = Field(default=100.0, ge=0)
    decision_risk_threshold: float = Field(default=0.5, ge=0, le=1)
    decision_approval_timeout_seconds: float = Field(default=86400.0, gt=0)

    # --- Cross-database sync ----------------------------------------------------------------
    # A JSON list of datasets (see README); "users" and "content" are built in.
    sync_datasets: list[DatasetConfig] = Field(default_factory=list)
    # The SQL provider the built-in datasets are read from.
    sync_source: str = "postgres"
    # How the built-in datasets find changes: "log" (PostgreSQL logical decoding, SQLite
    # triggers) or "poll" (a version column: misses hard deletes and late commits).
    sync_capture: CaptureMode = CaptureMode.LOG
    # Larger batches spread each batch's fixed cost (five steps) over more rows.
    sync_batch_size: int = Field(default=10_000, gt=0, le=100_000)
    # Batches per workflow run before it continues as new (bounds its history).
    sync_batches_per_run: int = Field(default=100, ge=1)
    # Rewrites of a range whose verification failed, before the run fails with a report.
    sync_repair_attempts: int = Field(default=2, ge=0)
    # How long one step may keep retrying (a target down) before the run fails.
    sync_step_deadline_seconds: float = Field(default=900.0, gt=0)
    sync_follow_poll_seconds: float = Field(
        default=0.5,
        gt=0,
        le=60,
        description="A follow run (`sync run DATASET --follow`): seconds it waits, when the "
        "source has nothing new, before it looks again; the lag of a change made while it is "
        "idle is at most about this plus one micro-batch.",
    )
    sync_read_ahead_process: bool = Field(
        default=True,
        description="Read and check a table copy's next batch in a second process of the "
        "worker, beside the write of the current one (a second core); false: in the worker's "
        "own process.",
    )
    # WAL bytes a dataset's replication slot may keep on its PostgreSQL source before the sync
    # status warns (and logs): a sync paused or gone keeps WAL until its slot is dropped.
    sync_slot_lag_warn_bytes: int = Field(default=1 << 30, gt=0)

    # --- Health check -------------------------------------------------------------------
    health_check_timeout_seconds: float = Field(default=5.0, gt=0)
    # How long a started health check may wait for a worker to pick it up.
    health_check_worker_wait_seconds: float = Field(default=10.0, gt=0)
    # /readyz answers from one check for this long; concurrent callers share the one in flight.
    readyz_cache_seconds: float = Field(default=5.0, ge=0, le=300)

    # --- Gateway and metrics ------------------------------------------------------------
    api_host: str = "127.0.0.1"
    api_port: int = Field(default=8000, ge=0, lt=65536)
    # Prometheus endpoint of the Temporal SDK runtime ("off" turns it off).
    metrics_bind_address: str = "127.0.0.1:9464"
    api_metrics_bind_address: str = "127.0.0.1:9465"

    # --- Tracing (OpenTelemetry) --------------------------------------------------------
    # Collector base URL for OTLP/HTTP (`/v1/traces` is appended); unset: tracing is off.
    otel_exporter_otlp_endpoint: str | None = None
    otel_service_name: str = Field(default="nexpo-workflows", min_length=1)

    # --- Gateway authentication ----------------------------------------------------------
    # SHA-256 hex digests of the accepted API keys (`nexpo-workflows api-key new` makes one).
    api_key_hashes: Annotated[list[str], NoDecode] = Field(default_factory=list)
    auth_jwt_secret: SecretStr | None = None
    auth_jwt_audience: str | None = None
    auth_jwt_issuer: str | None = None

    # --- Payload encryption and the codec server -----------------------------------------
    # `id1:base64key1,id2:base64key2`, 32-byte AES keys; the last encrypts, all decrypt.
    payload_encryption_keys: SecretStr | None = None
    # Web UI origins allowed to call the codec server from the browser.
    codec_cors_origins: Annotated[list[str], NoDecode] = Field(
        default_factory=lambda: ["http://127.0.0.1:8233", "http://localhost:8233"]
    )

    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"

    @field_validator("log_level", mode="before")
    @classmethod
    def _upper_log_level(cls, value: object) -> object:
        return value.upper() if isinstance(value, str) else value

    @field_validator(
        "api_key_hashes",
        "codec_cors_origins",
        "notify_email_to",
        "webhook_urls",
        "failover_probe_allowed_hosts",
        mode="before",
    )
    @classmethod
    def _comma_separated(cls, value: object) -> object:
        if isinstance(value, str):
            return [part.strip() for part in value.split(",") if part.strip()]
        return value

    @field_validator("api_key_hashes")
    @classmethod
    def _sha256_digests(cls, value: list[str]) -> list[str]:
        for digest in value:
            if len(digest) != 64 or any(c not in "0123456789abcdefABCDEF" for c in digest):
                raise ValueError("each entry must be a SHA-256 hex digest of an API key")
        return value

    @field_validator("payload_encryption_keys")
    @classmethod
    def _valid_key_ring(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None:
            parse_key_ring(value.get_secret_value())
        return value

    @field_validator("temporal_server_url")
    @classmethod
    def _valid_server_url(cls, value: str) -> str:
        return _check_host_port(value, "TEMPORAL_SERVER_URL")

    @field_validator(
        "postgres_url", "postgres_standby_url", "mongodb_url", "supabase_db_url", "sqlserver_url"
    )
    @classmethod
    def _database_url(cls, value: SecretStr | None) -> SecretStr | None:
        # Checked here, not when a provider first connects: a command would end in a traceback.
        url = value.get_secret_value() if value is not None else ""
        if url and "://" not in url:
            raise ValueError("not a database URL (expected scheme://user@host:port/database)")
        return value

    @field_validator("metrics_bind_address", "api_metrics_bind_address")
    @classmethod
    def _valid_bind_address(cls, value: str) -> str:
        if value.lower() in ("", "off"):
            return ""
        return _check_host_port(value, "a metrics bind address (host:port or off)")

    @field_validator(
        "temporal_tls_server_ca_cert", "temporal_tls_client_cert", "temporal_tls_client_key"
    )
    @classmethod
    def _file_exists(cls, value: Path | None) -> Path | None:
        if value is not None and not value.is_file():
            raise ValueError(f"no readable file at {value}")
        return value

    @model_validator(mode="after")
    def _required_credentials(self) -> Settings:
        required = {
            "COSMOSDB_KEY": self.enable_cosmosdb and not self.cosmosdb_key.get_secret_value(),
            "SUPABASE_SERVICE_ROLE_KEY": self.enable_supabase
            and not self.supabase_service_role_key.get_secret_value(),
            "SQLSERVER_URL": self.enable_sqlserver and not self.sqlserver_url.get_secret_value(),
            "WEBHOOK_SECRET": bool(self.webhook_urls) and not self.webhook_secret,
            "POSTGRES_STANDBY_URL": bool(self.postgres_failover_service)
            and not self.postgres_standby_url,
        }
        missing = [name for name, absent in required.items() if absent]
        if missing:
            raise ValueError(f"{', '.join(missing)} must be set when what needs it is enabled")
        return self

    @model_validator(mode="after")
    def _client_cert_pair(self) -> Settings:
        if (self.temporal_tls_client_cert is None) != (self.temporal_tls_client_key is None):
            raise ValueError(
                "TEMPORAL_TLS_CLIENT_CERT and TEMPORAL_TLS_CLIENT_KEY must be set together"
            )
        return self

    @model_validator(mode="after")
    def _owasp_password_hash_cost(self) -> Settings:
        least = OWASP_ARGON2ID_MEMORY_KIB[min(self.password_hash_time_cost, 5)]
        if self.password_hash_memory_kib < least:
            raise ValueError(
                f"PASSWORD_HASH_MEMORY_KIB must be at least {least} with "
                f"PASSWORD_HASH_TIME_COST={self.password_hash_time_cost} (OWASP's minimum for "
                "Argon2id)"
            )
        return self

    @cached_property
    def temporal_uses_cloud(self) -> bool:
        return bool(self.temporal_cloud_namespace)

    @property
    def temporal_target(self) -> str:
        """The address to dial: the Cloud namespace endpoint unless an address was given."""
        if self.temporal_uses_cloud and self.temporal_server_url == DEFAULT_TEMPORAL_SERVER_URL:
            return f"{self.temporal_cloud_namespace}.tmprl.cloud:{TEMPORAL_CLOUD_PORT}"
        return self.temporal_server_url

    @property
    def temporal_effective_namespace(self) -> str:
        if self.temporal_uses_cloud and self.temporal_namespace == "default":
            return str(self.temporal_cloud_namespace)
        return self.temporal_namespace

    @property
    def temporal_answer_timeout(self) -> timedelta:
        return timedelta(seconds=self.temporal_answer_timeout_seconds)

    @property
    def onboarding_wait(self) -> timedelta:
        return timedelta(seconds=self.onboarding_wait_seconds)

    @property
    def sqlite_file(self) -> Path:
        return self.sqlite_path or self.data_dir / "nexpo.db"


# A rejected value of these is never repeated in the error message.
_SECRET_FIELDS = {
    name
    for name, field in Settings.model_fields.items()
    if SecretStr in (field.annotation, *get_args(field.annotation))
}


def load_settings(**overrides: object) -> Settings:
    """Read the settings, turning validation errors into one readable message per variable."""
    try:
        return Settings(**overrides)  # type: ignore[arg-type]
    except ValidationError as error:
        lines = []
        for problem in error.errors():
            variable = "_".join(str(part) for part in problem["loc"]).upper() or "configuration"
            given = problem.get("input")
            secret = (
                isinstance(given, dict)
                or variable.endswith("KEY")
                or variable.lower() in _SECRET_FIELDS
            )
            shown = "" if secret else f" (got {given!r})"
            lines.append(f"{variable}: {problem['msg']}{shown}")
        raise ConfigError("invalid configuration:\n  " + "\n  ".join(lines)) from None
    except SettingsError as error:
        # A value the environment source could not even parse; its message names the field.
        raise ConfigError(f"invalid configuration: {str(error).splitlines()[0]}") from None

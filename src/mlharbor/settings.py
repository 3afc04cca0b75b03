"""One typed settings tree, read once at the entry point and passed down.

Sources, highest precedence first: arguments given in code, ``MLHARBOR_*`` environment variables
(nested fields use ``__``: ``MLHARBOR_SERVER__PORT=9000``), an optional config file (YAML or TOML,
named by ``MLHARBOR_CONFIG`` or ``--config``, else the first ``mlharbor.yaml``/``.yml``/``.toml``
found in the working folder or a parent folder, else ``~/.config/mlharbor/config.yaml``), then
defaults. A relative ``home`` in a config file is relative to that file's folder. Nothing below
the entry point reads ``os.environ``.

Each stage owns one section class below; add fields there, with a type, a default and a
description, rather than reading environment variables elsewhere.
"""

from __future__ import annotations

import os
import tomllib
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit, urlunsplit

from pydantic import BaseModel, Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
)

from mlharbor.core.errors import ConfigError, InvalidInputError

CONFIG_ENV_VAR = "MLHARBOR_CONFIG"
# Looked for in the working folder and each parent, as git looks for .git.
CONFIG_FILE_NAMES = ("mlharbor.yaml", "mlharbor.yml", "mlharbor.toml")


class ServerSettings(BaseModel):
    """The control-plane and serving HTTP server."""

    host: str = Field("127.0.0.1", description="Interface to bind; 0.0.0.0 exposes the server.")
    port: int = Field(8080, ge=0, le=65535, description="TCP port (0 picks a free one).")
    debug: bool = Field(False, description="Include stack traces in error bodies.")
    tls_certfile: Path | None = Field(None, description="PEM certificate for HTTPS.")
    tls_keyfile: Path | None = Field(None, description="PEM private key for HTTPS.")
    workers: int = Field(
        1, ge=1, description="Processes of `mlharbor serve` sharing the port, each with its "
        "own models in memory (about one per core).")
    max_body_bytes: int = Field(16 * 1024 * 1024, gt=0, description="Request body size limit.")


class SecuritySettings(BaseModel):
    """Authentication, authorization, encryption and signing."""

    master_key: SecretStr | None = Field(
        None, description="Base64 256-bit master key for envelope encryption of artifacts."
    )
    master_key_file: Path | None = Field(None, description="File holding the master key.")
    kms_key_id: str | None = Field(
        None, description="AWS KMS key id/ARN wrapping artifact data keys (instead of a "
        "master key); the KMS endpoint follows s3_region and kms_endpoint_url."
    )
    kms_endpoint_url: str | None = Field(None, description="KMS API endpoint (moto, LocalStack).")
    data_key_max_age_s: float = Field(
        300.0, ge=0, description="Seconds one data key seals prediction-log blobs (journal "
        "frames, segments) before a new one is made (with KMS: one GenerateDataKey per key); "
        "0 = a fresh key per blob. Plaintext keys stay in memory only.")
    data_key_max_uses: int = Field(
        100_000, ge=1, description="Blobs one prediction-log data key seals at most.")
    jwks_file: Path | None = Field(None, description="JWKS file verifying OIDC bearer tokens.")
    jwks_url: str | None = Field(None, description="JWKS URL verifying OIDC bearer tokens.")
    jwt_issuer: str | None = Field(None, description="Required `iss` of bearer tokens.")
    jwt_audience: str | None = Field(None, description="Required `aud` of bearer tokens.")
    jwt_role_claim: str = Field("roles", description="Claim whose values map to roles.")
    jwt_subject_claim: str = Field("sub", description="Claim naming the caller in the audit.")
    jwt_role_map: dict[str, list[str]] = Field(
        default_factory=dict,
        description="Claim value -> grants, e.g. {\"ml-ops\": [\"deployer@model:churn\"]}.",
    )
    cors_origins: list[str] = Field(
        default_factory=list, description="Origins allowed by CORS; none by default."
    )
    allowed_hosts: list[str] = Field(
        default_factory=list,
        description="Host headers accepted besides localhost, 127.0.0.1, [::1] and server.host.",
    )
    rate_limit_per_minute: int = Field(
        1200, ge=0, description="Requests per minute per key or token (0 = no limit)."
    )
    rate_limit_burst: int = Field(100, ge=1, description="Requests allowed at once per key.")
    tracking_rate_limit_per_minute: int = Field(
        60_000, ge=0, description="MLflow tracking API requests (/api/2.0/mlflow/...) per "
        "minute per key, a bucket of their own: a training loop logs a metric per step "
        "(0 = no limit).")
    tracking_rate_limit_burst: int = Field(
        1000, ge=1, description="MLflow tracking API requests allowed at once per key.")
    key_cache_ttl_s: float = Field(
        2.0, ge=0, description="Seconds an API key checked against the database is trusted "
        "again without a query by the control plane. Revoking a key, disabling an identity "
        "or changing grants through the server's own process applies at once; done elsewhere "
        "(the CLI, another replica) within this time, as on serving. 0 checks every request.")
    anonymous_grants: list[str] = Field(
        default_factory=list,
        description="Grants for requests without credentials, e.g. [\"predictor\"], for a "
        "server behind a platform that authenticates callers itself (SageMaker, Vertex AI, "
        "Azure ML, KServe). Only viewer and predictor roles are accepted.",
    )
    session_ttl_s: float = Field(
        8 * 3600.0, gt=0, description="Lifetime of a dashboard login session in seconds, "
        "counted from login (absolute, not extended by use); revoking or expiring its API "
        "key ends it sooner.",
    )
    cookie_secure: bool | None = Field(
        None, description="Mark the dashboard session cookie Secure: null = when the request "
        "is HTTPS; true = always (TLS terminated at a proxy that forwards plain HTTP); "
        "false = never.",
    )
    require_signed_aliases: list[str] = Field(
        default_factory=list,
        description="Aliases (e.g. production) that may only point at signed versions.",
    )
    signing_key_file: Path | None = Field(
        None, description="Ed25519 private key (PEM) signing versions at registration."
    )
    trusted_signing_keys: list[Path] = Field(
        default_factory=list, description="Ed25519 public keys (PEM) accepted as signers."
    )


class FormatSettings(BaseModel):
    """Model formats and safe loading."""

    skops_trusted_types: list[str] = Field(
        default_factory=list,
        description="Extra fully-qualified type names skops may load, beyond scikit-learn's own.",
    )
    onnx_parity_tolerance: float = Field(1e-5, gt=0, description="Max |p_native - p_onnx|.")


class TrainingSettings(BaseModel):
    """Training and evaluation runs."""

    n_jobs: int = Field(
        -1, description="Parallel fits for cross-validation and search (-1: every core)."
    )
    backend: Literal["local", "dask"] = Field(
        "local", description="Where CV and search fits run: `local` cores or a `dask` cluster "
        "(a recipe's `training.backend` and `mlharbor train --backend` take precedence).")
    scheduler: str | None = Field(
        None, description="Dask scheduler for backend dask: tcp://HOST:PORT.")


class ServingSettings(BaseModel):
    """Model serving: polling, micro-batching, limits and draining."""

    poll_interval_s: float = Field(2.0, gt=0, description="How often servers re-read endpoints.")
    batching: bool = Field(True, description="Adaptive micro-batching of concurrent requests.")
    max_batch_size: int = Field(256, ge=1, description="Most rows run in one batch.")
    max_batch_wait_ms: float = Field(1.0, ge=0, description="Longest wait to fill a batch.")
    request_timeout_s: float = Field(10.0, gt=0, description="Per-request timeout (504).")
    max_concurrency: int = Field(512, ge=1, description="In-flight predictions before 503.")
    max_queue_bytes: int = Field(
        64 << 20, ge=1, description="Bytes of prepared inputs one model's micro-batcher may "
        "hold waiting; a request past it is shed (503 with Retry-After).")
    inline_max_us: float = Field(
        200.0, ge=0, description="Batches of a model whose average run time is under this "
        "many microseconds run on the event loop (no thread hand-off); 0 = always a thread.")
    max_rows: int = Field(10_000, ge=1, description="Most rows in one prediction request.")
    inference_threads: int = Field(2, ge=1, description="Threads running model inference.")
    drain_timeout_s: float = Field(30.0, ge=0, description="Grace for in-flight on SIGTERM.")
    sticky_header: str = Field("x-mlharbor-sticky", description="Header pinning a route.")
    rate_limit_per_minute: int = Field(
        0, ge=0, description="Prediction requests per minute per key (0 = no limit: the "
        "concurrency limit sheds load instead).")
    rate_limit_burst: int = Field(1000, ge=1, description="Prediction requests at once per key.")
    key_cache_max_stale_s: float = Field(
        3600.0, ge=0, description="While the metadata database is down, an API key checked "
        "within this long keeps working (revocations then wait for the database); 0 refuses "
        "every key until it is back.")
    default_endpoint: str | None = Field(None, description="Endpoint of /invocations.")
    access_log: bool = Field(False, description="One JSON log line per request.")
    model_memory_budget: int = Field(
        0, ge=0, description="Bytes (or a size: 2GiB, 500MB) one serving process may hold "
        "above its resident memory once started with no model loaded: its loaded models, "
        "the next load's working memory and whatever else it took since (0 = no limit). "
        "When set (or max_loaded_models), versions load on their first request and the "
        "least recently used are unloaded to stay within it.")
    max_loaded_models: int = Field(
        0, ge=0, description="Most versions loaded at once in one serving process (0 = no "
        "limit); past it the least recently used is unloaded.")
    model_load_wait_s: float = Field(
        30.0, gt=0, description="How long a request waits for its version to load before "
        "a 503 with Retry-After.")

    @field_validator("model_memory_budget", mode="before")
    @classmethod
    def _size(cls, value: Any) -> Any:
        """Sizes as people write them (``2GiB``, ``500MB``): core.sizes, the one parser."""
        from mlharbor.core.sizes import parse_size

        if not isinstance(value, str):
            return value
        try:
            return parse_size(value, what="serving.model_memory_budget")
        except InvalidInputError as exc:
            raise ValueError(str(exc).rstrip(".")) from exc


class MonitoringSettings(BaseModel):
    """Prediction log, drift, live performance and alerts."""

    log_uri: str | None = Field(
        None, description="Where log segments go: a folder or s3://bucket/prefix; default "
        "<artifact store>/predictions when that is on S3, else <home>/predictions.")
    log_predictions: bool = Field(
        True, description="Record every served prediction in the prediction log (drift, "
        "live accuracy and the dashboard need it); false serves without recording.")
    flush_interval_s: float = Field(
        1.0, gt=0, le=1.0, description="Records are fsync'd to the journal within this.")
    segment_interval_s: float = Field(5.0, gt=0, description="Journal -> Parquet cadence.")
    compaction: Literal["process", "thread"] = Field(
        "process", description="Turn the journal into Parquet in a child process at a lower "
        "priority (serving's latency never waits for it), or in a thread of the server.")
    buffer_max_bytes: int = Field(
        1 << 30, gt=0, description="Journal size limit; past it new records are dropped.")
    pending_max_bytes: int = Field(
        64 << 20, gt=0, description="Records answered but not yet journaled (estimated "
        "bytes: inputs, outputs) kept in memory; past it new records are dropped and counted "
        "(buffer_full).")
    unwritten_max_bytes: int = Field(
        64 << 20, ge=0, description="Records whose journal write failed (full disk, KMS "
        "error) are kept in memory for the next flush up to this many bytes; past it they "
        "are dropped and counted.")
    retention_days: float = Field(30.0, gt=0, description="Log segments older are deleted.")
    redaction: dict[str, dict[str, str]] = Field(
        default_factory=dict, description="Endpoint (or *) -> input column -> drop|hash|mask.")
    redaction_salt: SecretStr = Field(
        SecretStr("mlharbor"), description="Salt of hashed columns; set your own.")
    drift_alpha: float = Field(
        0.002, gt=0, lt=0.5, description="Per-feature false-alarm rate on identical data.")
    drift_min_share_change: float = Field(
        0.01, ge=0, le=1, description="Smallest missing/unseen share change that alarms.")
    drift_dataset_share: float = Field(
        0.3, gt=0, le=1, description="Importance-weighted drifted share for dataset drift.")
    max_windows: int = Field(
        2000, ge=10, le=1_000_000, description="Most windows (steps, buckets, row windows) "
        "one drift, performance or traffic request may ask for; more is refused (HTTP 422) "
        "with the finest step that fits.")
    alert_rules_file: Path | None = Field(
        None, description="YAML file of alert rules: they extend the default rules, and one "
        "named like a default rule replaces it.")
    default_alert_rules: bool = Field(
        True, description="Watch every endpoint with the default rules (error rate, p99 "
        "latency, drift, live accuracy, traffic stop, log backlog); false keeps only the "
        "rules file's.")
    webhooks: list[str] = Field(default_factory=list, description="Generic JSON webhooks.")
    slack_webhooks: list[str] = Field(default_factory=list, description="Slack webhooks.")
    evaluation_interval_s: float = Field(30.0, gt=0, description="Alert evaluation cadence.")


class PipelinesSettings(BaseModel):
    """The closed loop: how often retraining policies' triggers are evaluated."""

    trigger_interval_s: float = Field(
        60.0, gt=0, description="How often every stored policy's triggers (drift, metric, "
        "estimated, schedule) are evaluated and due jobs submitted.")
    triggers: bool = Field(
        True, description="Run the trigger loop in servers; false leaves retraining to "
        "manual requests (`mlharbor retrain`).")
    run_jobs: bool = Field(
        True, description="`mlharbor server` runs the job runner and the trigger loop in the "
        "background; false leaves both to `mlharbor worker` processes (training off the "
        "control plane).")
    job_lease_s: float = Field(
        30.0, gt=0, le=3600, description="Seconds a runner holds a job between heartbeats; "
        "another runner takes a job over this long after its runner died.")
    job_poll_s: float = Field(
        1.0, gt=0, le=600, description="How often an idle runner looks for a queued job.")


class Settings(BaseSettings):
    """Everything mlharbor can be configured with."""

    model_config = SettingsConfigDict(
        env_prefix="MLHARBOR_",
        env_nested_delimiter="__",
        extra="forbid",
        validate_default=True,
    )

    home: Path = Field(Path(".mlharbor"), description="Where local state lives.")
    database_url: SecretStr | None = Field(
        None, description="SQLAlchemy URL of the metadata store; default SQLite in the home."
    )
    artifact_uri: str | None = Field(
        None, description="Artifact store: a folder, file:// URL or s3://bucket/prefix."
    )
    s3_endpoint_url: str | None = Field(None, description="S3 API endpoint (MinIO, moto ...).")
    s3_region: str = Field("us-east-1", description="Region for S3 and KMS clients.")
    server: ServerSettings = Field(default_factory=ServerSettings)
    security: SecuritySettings = Field(default_factory=SecuritySettings)
    formats: FormatSettings = Field(default_factory=FormatSettings)
    serving: ServingSettings = Field(default_factory=ServingSettings)
    training: TrainingSettings = Field(default_factory=TrainingSettings)
    monitoring: MonitoringSettings = Field(default_factory=MonitoringSettings)
    pipelines: PipelinesSettings = Field(default_factory=PipelinesSettings)

    @field_validator("home", mode="after")
    @classmethod
    def _absolute_home(cls, value: Path) -> Path:
        return value.expanduser().absolute()

    @model_validator(mode="after")
    def _derived_defaults(self) -> Settings:
        if self.database_url is None:
            self.database_url = SecretStr(f"sqlite:///{self.home / 'mlharbor.db'}")
        if self.artifact_uri is None:
            self.artifact_uri = str(self.home / "artifacts")
        return self

    @property
    def database_url_value(self) -> str:
        assert self.database_url is not None
        return self.database_url.get_secret_value()

    @property
    def artifact_uri_value(self) -> str:
        assert self.artifact_uri is not None
        return self.artifact_uri

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return (init_settings, env_settings, _ConfigFileSource(settings_cls))

    def masked(self) -> dict[str, Any]:
        """The effective settings with every secret masked, for display."""
        data = self.model_dump(mode="json")
        data["database_url"] = mask_url(self.database_url_value)
        return _mask_secrets(self, data)


class _ConfigFileSource(PydanticBaseSettingsSource):
    """Reads the optional YAML/TOML file named by ``MLHARBOR_CONFIG``."""

    def get_field_value(self, field: Any, field_name: str) -> tuple[Any, str, bool]:
        return None, field_name, False

    def __call__(self) -> dict[str, Any]:
        path_text = os.environ.get(CONFIG_ENV_VAR)
        if not path_text:
            return {}
        return read_config_file(Path(path_text))


def read_config_file(path: Path) -> dict[str, Any]:
    """Parse a YAML or TOML config file into a dict, with errors that name the file."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(
            f"Cannot read the config file {str(path)!r}: {exc.strerror}.",
            hint=f"Fix the path in {CONFIG_ENV_VAR} or --config.",
        ) from exc
    try:
        if path.suffix == ".toml":
            data: Any = tomllib.loads(text)
        else:
            import yaml

            data = yaml.safe_load(text) or {}
    except Exception as exc:
        # Only the problem and its position: the parser's own message quotes the offending
        # line, which may hold a secret.
        problem = getattr(exc, "problem", None) or type(exc).__name__
        mark: Any = getattr(exc, "problem_mark", None) or getattr(exc, "lineno", None)
        where = f" at line {mark.line + 1}" if hasattr(mark, "line") else (
            f" at line {mark}" if isinstance(mark, int) else "")
        raise ConfigError(
            f"The config file {str(path)!r} is not valid YAML/TOML{where}: {problem}."
        ) from exc
    if not isinstance(data, dict):
        raise ConfigError(
            f"The config file {str(path)!r} must hold a mapping of settings; "
            f"it holds a {type(data).__name__}."
        )
    home = data.get("home")
    if isinstance(home, str) and home and not Path(home).expanduser().is_absolute():
        # A project's config names its home next to itself, wherever the command runs.
        data = {**data, "home": str(path.resolve().parent / home)}
    return dict(data)


def find_config_file(start: Path, user_config_dir: Path | None) -> Path | None:
    """The config file a command run in ``start`` uses when none is named: the first of
    CONFIG_FILE_NAMES in ``start`` or a parent folder, else ``config.yaml``/``.yml``/``.toml``
    in ``user_config_dir`` (``$XDG_CONFIG_HOME/mlharbor`` or ``~/.config/mlharbor``)."""
    for folder in (start, *start.parents):
        for name in CONFIG_FILE_NAMES:
            candidate = folder / name
            if candidate.is_file():
                return candidate
    if user_config_dir is not None:
        for name in ("config.yaml", "config.yml", "config.toml"):
            candidate = user_config_dir / name
            if candidate.is_file():
                return candidate
    return None


def user_config_dir() -> Path:
    """Where a user's own mlharbor config lives (XDG base directory convention)."""
    base = os.environ.get("XDG_CONFIG_HOME") or str(Path("~/.config").expanduser())
    return Path(base) / "mlharbor"


def load_settings(config_file: Path | None = None, *, discover: bool = False,
                  **overrides: Any) -> Settings:
    """Build the settings once, at an entry point, turning validation errors into ConfigError.

    ``discover`` (the CLI) looks for a config file (find_config_file) when none is named; the
    one found is put in MLHARBOR_CONFIG so that processes the command starts read it too."""
    if config_file is None and discover and not os.environ.get(CONFIG_ENV_VAR):
        config_file = find_config_file(Path.cwd(), user_config_dir())
    if config_file is not None:
        os.environ[CONFIG_ENV_VAR] = str(config_file)
    try:
        return Settings(**overrides)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc']) or 'settings'}: {err['msg']}"
            for err in exc.errors()
        )
        raise ConfigError(
            f"Invalid settings: {problems}.",
            hint="Check MLHARBOR_* environment variables and the config file.",
        ) from exc


def mask_url(url: str) -> str:
    """Replace the password of a URL with ``***``."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return "***"
    if parts.password is None:
        return url
    netloc = parts.netloc.rsplit("@", 1)[1]
    user = parts.username or ""
    return urlunsplit(parts._replace(netloc=f"{user}:***@{netloc}"))


def _mask_secrets(model: BaseModel, data: dict[str, Any]) -> dict[str, Any]:
    for name in type(model).model_fields:
        value = getattr(model, name)
        if isinstance(value, SecretStr) and name != "database_url":
            data[name] = "***" if value.get_secret_value() else ""
        elif isinstance(value, BaseModel):
            data[name] = _mask_secrets(value, data[name])
    return data

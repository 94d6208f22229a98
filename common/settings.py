"""Settings: environment first (12-factor), plus an optional TOML file for providers, models and limits.

Environment variables win over the file for everything that has one. Provider keys and base URLs are
read per provider (``<ID>_API_KEY``, ``<ID>_BASE_URL``) by the provider registry in ``router/``; this
module only carries the environment along so the registry can look.
"""

from __future__ import annotations

import os
import tomllib
import uuid
from collections.abc import Mapping
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any

import msgspec


class Limits(msgspec.Struct, kw_only=True):
    free_requests_per_minute: int = 20
    anonymous_requests_per_day: int = 50
    user_requests_per_day: int = 1000  # free-model allowance of a signed-in user's keys (all of them together)
    # failed log-ins per 15 minutes before 429 (api/access/login_guard.py): at one email from one client IP,
    # at one email from anywhere (far higher, so a stranger cannot lock the owner out), from one client IP
    login_failures_per_email_ip: int = 5
    login_failures_per_email: int = 100
    login_failures_per_ip: int = 30
    keys_per_account: int = 20  # API keys an account may hold at once (revoked ones do not count)
    signups_per_ip_per_day: int = 10
    trusted_proxy_hops: int = 0
    max_body_bytes: int = 4 * 1024 * 1024
    bodies_in_flight_bytes: int = 64 * 1024 * 1024  # per web process: request bodies held at once; beyond, 503
    max_upload_bytes: int = 25 * 1024 * 1024
    max_embedding_inputs: int = 2048
    queue_depth_limit: int = 1000  # per pool; beyond it the next candidate or a 503
    # requests in flight at once (admitted, not yet answered, failed or abandoned; 0 = no bound), beyond
    # which a 429: per API key, per account (all of a signed-in user's keys), and for all keyless
    # (anonymous free-tier) requests together, kept below a paid key's share of a pool (api/access/limits.py)
    key_concurrency: int = 64
    account_concurrency: int = 128
    anonymous_concurrency: int = 32


class ProviderConfig(msgspec.Struct, kw_only=True):
    """A provider declared or overridden in the config file."""

    kind: str = "openai"  # openai | anthropic | gemini | azure
    name: str | None = None
    base_url: str | None = None
    api_key_env: str | None = None
    api_key: str | None = None
    api_version: str | None = None
    headers: dict[str, str] = {}
    capabilities: list[str] = msgspec.field(default_factory=lambda: ["chat"])
    quirks: dict[str, Any] = {}
    enabled: bool | None = None


class ModelConfig(msgspec.Struct, kw_only=True):
    """A model added or overridden in the config file."""

    id: str
    provider: str | None = None
    upstream_id: str | None = None
    name: str | None = None
    free: bool | None = None
    tier: str | None = None
    context_length: int | None = None
    max_output_tokens: int | None = None
    pricing: dict[str, str] = {}
    modality: str | None = None
    capabilities: list[str] | None = None
    aliases: list[str] = []
    fallbacks: list[str] = []
    hidden: bool = False


class FileConfig(msgspec.Struct, kw_only=True):
    limits: Limits = msgspec.field(default_factory=Limits)
    providers: dict[str, ProviderConfig] = {}
    models: list[ModelConfig] = []
    gateway: dict[str, Any] = {}


class Settings(msgspec.Struct, kw_only=True):
    redis_url: str | None = None
    data_dir: str = ".megabrain"  # the embedded store's socket and AOF when REDIS_URL is unset
    host: str = "0.0.0.0"
    port: int = 8000
    mount_prefix: str = ""
    namespace: str = "mb"  # prefix of every Redis key and channel we own
    instance_id: str = msgspec.field(default_factory=lambda: uuid.uuid4().hex[:12])
    sentry_dsn: str | None = None
    sentry_traces_sample_rate: float = 0.0
    admin_key: str | None = None  # at least 32 characters (common/server_secret.py)
    operator_emails: str = ""  # comma-separated: these accounts, signed in, see the dashboard (api/pages/dashboard.py)
    metrics_key: str | None = None  # reads GET /metrics (the admin key does too)
    secret: str | None = None  # keys the account email index (common/server_secret.py)
    log_level: str = "info"
    public_url: str | None = None  # e.g. https://gw.example.com: makes the sign-up link in API errors absolute
    signup: bool = True  # MEGABRAIN_SIGNUP=off: no self-service accounts (private deployments)
    signup_credit: str = "0"  # USD granted to each new account (common/ledger.py), a decimal string
    stripe_secret_key: str | None = None  # credit top-ups through Stripe Checkout (api/billing/)
    stripe_webhook_secret: str | None = None  # verifies Stripe's webhook signatures
    stripe_api_base: str | None = None  # another Stripe API (stripe-mock, a test server)
    topup_min: int = 5  # USD, the smallest and largest top-up a person may choose
    topup_max: int = 500
    smtp_url: str | None = None  # smtp://user:pass@host:587 or smtps://…: verification mail (verification.py)
    mail_from: str = "Megabrain Gateway <no-reply@localhost>"
    session_ttl: float = 14 * 86400.0  # seconds a browser stays signed in
    response_ttl: float = 30 * 86400.0  # seconds a stored Responses object is kept (api/exchange/stored.py)
    response_max_bytes: int = 4 * 1024 * 1024  # the largest stored response (its input and answer)
    response_events_ttl: float = 3600.0  # seconds a background answer's events are kept after its last one
    response_events_max_bytes: int = 8 * 1024 * 1024  # the most one answer's kept events may take
    # timing
    pickup_timeout: float = 5.0  # a job not picked up by then: fall back or 503
    heartbeat_timeout: float = 20.0  # no word from a busy worker for this long: it is presumed dead
    request_timeout: float = 600.0  # whole-request deadline
    stream_commit_wait: float = 5.0  # how long a stream may hold its status line to report an early error
    keepalive_interval: float = 15.0
    stream_buffer_bytes: int = 1 << 20  # a stream's frames waiting for a slow client; beyond, its stream ends
    store_down_limit: float = 10.0  # serve's embedded store down this long: /health says 503
    poll_delay: float = 2.0  # arq safety-net poll; workers are woken on enqueue
    worker_max_jobs: int = 100
    shutdown_grace: float = 25.0
    upstream_connect_timeout: float = 5.0
    upstream_read_timeout: float = 120.0  # a whole non-streamed answer (its first byte is its end)
    upstream_first_byte_timeout: float = 30.0  # a stream's response headers: a silent upstream, next provider
    upstream_idle_timeout: float = 60.0  # a stream's longest silence between two reads once it answered
    upstream_max_retries: int = 2
    default_max_tokens: int = 4096
    limits: Limits = msgspec.field(default_factory=Limits)
    providers: dict[str, ProviderConfig] = {}
    models: list[ModelConfig] = []
    env: dict[str, str] = {}

    @property
    def topups(self) -> bool:
        """Whether people can add credits themselves (Stripe configured: both its secrets)."""
        return bool(self.stripe_secret_key and self.stripe_webhook_secret)

    @property
    def profile_url(self) -> str:
        """Where a person adds credits and sees their balance (the Profile page)."""
        return (self.public_url or "").rstrip("/") + self.mount_prefix + "/profile"

    @property
    def signup_url(self) -> str | None:
        """Where API errors send people for a key; None when sign-up is off."""
        if not self.signup:
            return None
        return (self.public_url or "").rstrip("/") + self.mount_prefix + "/signup"


_ENV_FIELDS: dict[str, tuple[str, type]] = {
    "REDIS_URL": ("redis_url", str),
    "MEGABRAIN_DATA_DIR": ("data_dir", str),
    "HOST": ("host", str),
    "PORT": ("port", int),
    "MEGABRAIN_MOUNT_PREFIX": ("mount_prefix", str),
    "MEGABRAIN_NAMESPACE": ("namespace", str),
    "SENTRY_DSN": ("sentry_dsn", str),
    "SENTRY_TRACES_SAMPLE_RATE": ("sentry_traces_sample_rate", float),
    "MEGABRAIN_ADMIN_KEY": ("admin_key", str),
    "MEGABRAIN_OPERATOR_EMAILS": ("operator_emails", str),
    "MEGABRAIN_METRICS_KEY": ("metrics_key", str),
    "MEGABRAIN_SECRET": ("secret", str),
    "MEGABRAIN_LOG_LEVEL": ("log_level", str),
    "MEGABRAIN_PUBLIC_URL": ("public_url", str),
    "MEGABRAIN_SIGNUP": ("signup", bool),
    "MEGABRAIN_SIGNUP_CREDIT": ("signup_credit", str),
    "STRIPE_SECRET_KEY": ("stripe_secret_key", str),
    "STRIPE_WEBHOOK_SECRET": ("stripe_webhook_secret", str),
    "STRIPE_API_BASE": ("stripe_api_base", str),
    "MEGABRAIN_TOPUP_MIN": ("topup_min", int),
    "MEGABRAIN_TOPUP_MAX": ("topup_max", int),
    "MEGABRAIN_SMTP_URL": ("smtp_url", str),
    "MEGABRAIN_MAIL_FROM": ("mail_from", str),
    "MEGABRAIN_SESSION_TTL": ("session_ttl", float),
    "MEGABRAIN_RESPONSE_TTL": ("response_ttl", float),
    "MEGABRAIN_RESPONSE_MAX_BYTES": ("response_max_bytes", int),
    "MEGABRAIN_RESPONSE_EVENTS_TTL": ("response_events_ttl", float),
    "MEGABRAIN_RESPONSE_EVENTS_MAX_BYTES": ("response_events_max_bytes", int),
    "MEGABRAIN_PICKUP_TIMEOUT": ("pickup_timeout", float),
    "MEGABRAIN_HEARTBEAT_TIMEOUT": ("heartbeat_timeout", float),
    "MEGABRAIN_REQUEST_TIMEOUT": ("request_timeout", float),
    "MEGABRAIN_STREAM_COMMIT_WAIT": ("stream_commit_wait", float),
    "MEGABRAIN_KEEPALIVE_INTERVAL": ("keepalive_interval", float),
    "MEGABRAIN_STREAM_BUFFER_BYTES": ("stream_buffer_bytes", int),
    "MEGABRAIN_POLL_DELAY": ("poll_delay", float),
    "MEGABRAIN_STORE_DOWN_LIMIT": ("store_down_limit", float),
    "MEGABRAIN_WORKER_MAX_JOBS": ("worker_max_jobs", int),
    "MEGABRAIN_SHUTDOWN_GRACE": ("shutdown_grace", float),
    "MEGABRAIN_UPSTREAM_MAX_RETRIES": ("upstream_max_retries", int),
    "MEGABRAIN_UPSTREAM_READ_TIMEOUT": ("upstream_read_timeout", float),
    "MEGABRAIN_UPSTREAM_FIRST_BYTE_TIMEOUT": ("upstream_first_byte_timeout", float),
    "MEGABRAIN_UPSTREAM_IDLE_TIMEOUT": ("upstream_idle_timeout", float),
}

_LIMIT_ENV: dict[str, tuple[str, type]] = {
    "MEGABRAIN_FREE_RPM": ("free_requests_per_minute", int),
    "MEGABRAIN_ANON_PER_DAY": ("anonymous_requests_per_day", int),
    "MEGABRAIN_USER_PER_DAY": ("user_requests_per_day", int),
    "MEGABRAIN_TRUSTED_PROXY_HOPS": ("trusted_proxy_hops", int),
    "MEGABRAIN_MAX_BODY_BYTES": ("max_body_bytes", int),
    "MEGABRAIN_BODIES_IN_FLIGHT_BYTES": ("bodies_in_flight_bytes", int),
    "MEGABRAIN_QUEUE_DEPTH_LIMIT": ("queue_depth_limit", int),
    "MEGABRAIN_KEYS_PER_ACCOUNT": ("keys_per_account", int),
    "MEGABRAIN_KEY_CONCURRENCY": ("key_concurrency", int),
    "MEGABRAIN_ACCOUNT_CONCURRENCY": ("account_concurrency", int),
    "MEGABRAIN_ANONYMOUS_CONCURRENCY": ("anonymous_concurrency", int),
}


class ConfigError(ValueError):
    pass


def load_settings(env: Mapping[str, str] | None = None, config_path: str | None = None) -> Settings:
    """Build settings from the environment and the config file (``MEGABRAIN_CONFIG``/``megabrain.toml``)."""
    env = dict(os.environ if env is None else env)
    file_config = _read_config_file(config_path or env.get("MEGABRAIN_CONFIG"), explicit=bool(config_path))
    gateway = dict(file_config.gateway)
    try:
        settings = msgspec.convert(gateway, Settings) if gateway else Settings()
    except msgspec.ValidationError as exc:
        raise ConfigError(f"[gateway] in the config file: {exc}") from None
    limits = file_config.limits
    values: dict[str, Any] = {}
    for var, (field, typ) in _ENV_FIELDS.items():
        if env.get(var):
            values[field] = _coerce(var, env[var], typ)
    limit_values: dict[str, Any] = {}
    for var, (field, typ) in _LIMIT_ENV.items():
        if env.get(var):
            limit_values[field] = _coerce(var, env[var], typ)
    if limit_values:
        limits = msgspec.structs.replace(limits, **limit_values)
    settings = msgspec.structs.replace(
        settings,
        **values,
        limits=limits,
        providers=file_config.providers,
        models=_mark_free(file_config.models, env.get("MEGABRAIN_FREE_MODELS", "")),
        env=env,
    )
    settings.mount_prefix = settings.mount_prefix.rstrip("/")
    if settings.mount_prefix and not settings.mount_prefix.startswith("/"):
        settings.mount_prefix = "/" + settings.mount_prefix
    try:
        credit = Decimal(settings.signup_credit)
    except InvalidOperation:
        credit = Decimal(-1)
    if not credit.is_finite() or credit < 0:
        raise ConfigError("MEGABRAIN_SIGNUP_CREDIT must be an amount of USD, 0 or more "
                          f"(got {settings.signup_credit!r})")
    if not 1 <= settings.topup_min <= settings.topup_max <= 10_000:
        raise ConfigError("MEGABRAIN_TOPUP_MIN and MEGABRAIN_TOPUP_MAX must be whole USD, 1 <= min <= max <= 10000")
    return settings


def _mark_free(models: list[ModelConfig], ids: str) -> list[ModelConfig]:
    """``MEGABRAIN_FREE_MODELS=openai/gpt-4o-mini,…``: those models are free (no key needed), as if the
    config file said ``free = true`` for each."""
    wanted = [i.strip() for i in ids.split(",") if i.strip()]
    if not wanted:
        return models
    marked = [msgspec.structs.replace(m, free=True) if m.id in wanted else m for m in models]
    known = {m.id for m in models}
    return marked + [ModelConfig(id=i, free=True) for i in dict.fromkeys(wanted) if i not in known]


_SWITCHES = {"on": True, "true": True, "1": True, "yes": True, "off": False, "false": False, "0": False,
             "no": False}


def _coerce(var: str, raw: str, typ: type) -> Any:
    if typ is bool:
        if raw.strip().lower() not in _SWITCHES:
            raise ConfigError(f"{var}={raw!r} must be on or off")
        return _SWITCHES[raw.strip().lower()]
    try:
        return typ(raw)
    except ValueError:
        raise ConfigError(f"{var}={raw!r} is not a valid {typ.__name__}") from None


def _read_config_file(path: str | None, explicit: bool) -> FileConfig:
    if path is None:
        default = Path("megabrain.toml")
        if not default.exists():
            return FileConfig()
        path = str(default)
    try:
        raw = Path(path).read_bytes()
    except FileNotFoundError:
        raise ConfigError(f"config file {path} does not exist") from None
    try:
        data = tomllib.loads(raw.decode())
        return msgspec.convert(data, FileConfig)
    except (tomllib.TOMLDecodeError, msgspec.ValidationError) as exc:
        raise ConfigError(f"config file {path}: {exc}") from None

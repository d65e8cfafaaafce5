"""Configuration read from the environment when the app is created, never at import time."""

from __future__ import annotations

import ipaddress
import itertools
import os
import re
import secrets
from datetime import timedelta
from pathlib import Path

import limits

INSTANCE_DIR = Path(__file__).resolve().parents[2] / "instance"
MIN_SECRET_BYTES = 32
# A key is hex (one case) or base64 (standard or URL-safe) text: the generators' forms.
HEX_KEY = re.compile(r"[0-9a-f]+|[0-9A-F]+")
BASE64_KEY = re.compile(r"[A-Za-z0-9+/_-]+={0,2}")
# The shortest part of a key that may not appear twice, in any case: over 32 bits of
# random text (a generator's key repeats one with a chance under one in a billion).
HEX_REPEAT = 9
BASE64_REPEAT = 9
# At most this share of a key's neighbouring characters may be equal or next to each
# other (abc, 123): a generator's keys stay under half of it.
HEX_STEPS = 0.6
BASE64_STEPS = 0.4
# Words people put in a key "for now"; a key that is mostly these is no key.
PLACEHOLDER_WORDS = (
    "changeme",
    "change",
    "secret",
    "password",
    "passw0rd",
    "default",
    "example",
    "placeholder",
    "replace",
    "insecure",
    "dummy",
    "token",
    "test",
    "key",
    "me",
    "your",
    "xxx",
)
# OWASP Password Storage Cheat Sheet: argon2id, m = 19 MiB, t = 2, p = 1.
ARGON2_MEMORY_KIB = 19 * 1024
ARGON2_TIME_COST = 2
ARGON2_PARALLELISM = 1
# A host name: dot-separated labels of letters, digits, hyphens (not at either end).
LABEL = r"[A-Za-z0-9_](?:[A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?"
HOST_NAME = re.compile(rf"(?=.{{1,253}}$){LABEL}(?:\.{LABEL})*\.?")
MAKE_A_KEY = 'python -c "import secrets; print(secrets.token_urlsafe(48))"'


class ConfigError(RuntimeError):
    """The environment cannot run the service; the message says what to set."""


def env_str(name: str, default: str | None = None) -> str | None:
    value = os.environ.get(name)
    return value if value not in (None, "") else default


def _env_parsed(name: str, default, parse, kind: str):
    raw = env_str(name)
    if raw is None:
        return default
    try:
        return parse(raw)
    except ValueError as exc:
        raise ConfigError(f"{name} must be {kind}, got {raw!r}.") from exc


def env_int(name: str, default: int) -> int:
    return _env_parsed(name, default, int, "a whole number")


def env_float(name: str, default: float) -> float:
    return _env_parsed(name, default, float, "a number")


def env_bool(name: str, default: bool) -> bool:
    raw = env_str(name)
    if raw is None:
        return default
    lowered = raw.strip().lower()
    if lowered in {"1", "true", "yes", "on"}:
        return True
    if lowered in {"0", "false", "no", "off"}:
        return False
    raise ConfigError(f"{name} must be true or false, got {raw!r}.")


def env_list(name: str) -> list[str]:
    """A comma-separated list; blanks dropped."""
    return [item.strip() for item in (env_str(name) or "").split(",") if item.strip()]


def allowed_host_entry(entry: str) -> bool:
    """A WEBHOOK_ALLOWED_HOSTS entry: a host name, an address or a CIDR block."""
    try:
        ipaddress.ip_network(entry, strict=False)
    except ValueError:
        return bool(HOST_NAME.fullmatch(entry))
    return True


def database_url(raw: str | None) -> str:
    """Return a SQLAlchemy URL, mapping the seed's ``mysql://`` form onto the pymysql driver."""
    if not raw:
        return f"sqlite:///{INSTANCE_DIR / 'marketplace.db'}"
    for scheme in ("mysql", "mariadb"):
        if raw.startswith(f"{scheme}://"):
            raw = f"{scheme}+pymysql://" + raw[len(scheme) + 3 :]
    if raw.startswith(("mysql+pymysql://", "mariadb+pymysql://")) and "charset=" not in raw:
        raw += ("&" if "?" in raw else "?") + "charset=utf8mb4"
    return raw


def engine_options(url: str) -> dict:
    if url.startswith("sqlite"):
        # The web server and the worker share the file: wait for the other's write.
        return {"connect_args": {"timeout": 30}}
    # MySQL closes idle connections: recycle them before it does.
    # No ping before each checkout by default: it is a round trip on every request (about
    # a fifth of a product read). Without it, the first request on each process after a
    # database restart answers 503 and SQLAlchemy then replaces the whole pool.
    # READ COMMITTED: no gap locks, so outbox claims (FOR UPDATE SKIP LOCKED) and the
    # updates that finish them do not deadlock, and each statement sees fresh commits.
    return {
        "pool_pre_ping": env_bool("DB_PRE_PING", False),
        "pool_recycle": 280,
        "pool_size": 10,
        "max_overflow": 10,
        "isolation_level": "READ COMMITTED",
        # No hangs: a database that stops answering gives an error (a JSON 503) within
        # seconds, well before uWSGI's harakiri would kill the worker. The server's own
        # limits (set on each connection, see app/extensions.py) come first.
        "connect_args": {
            "connect_timeout": env_int("DB_CONNECT_TIMEOUT", 3),
            "read_timeout": env_int("DB_READ_TIMEOUT", 5),
            "write_timeout": env_int("DB_WRITE_TIMEOUT", 5),
            "init_command": session_limits(
                env_int("DB_LOCK_WAIT_SECONDS", 3), env_float("DB_STATEMENT_SECONDS", 4.0)
            ),
        },
        # Every session ends with a rollback or commit already, so the pool's own reset
        # (a second ROLLBACK per request) is a wasted round trip.
        "pool_reset_on_return": None,
    }


def session_limits(lock_wait: int, statement: float) -> str:
    """Per-connection limits the server enforces: a row lock waited for, and (MariaDB
    only: MySQL skips the ``/*M! */`` comment) a statement's running time."""
    command = f"SET SESSION innodb_lock_wait_timeout = {int(lock_wait)}"
    if statement:
        command += f" /*M!, max_statement_time = {float(statement)} */"
    return command


def development_secret() -> str:
    """A random key kept under instance/ so tokens survive a restart of `make run`."""
    path = INSTANCE_DIR / "secret_key"
    if path.exists():
        return path.read_text().strip()
    INSTANCE_DIR.mkdir(parents=True, exist_ok=True)
    key = secrets.token_urlsafe(48)
    path.write_text(key)
    path.chmod(0o600)
    return key


def weak_secret(key: str) -> str | None:
    """Why ``key`` cannot sign tokens in production, or None when it can.

    A key must be what a random generator prints: at least MIN_SECRET_BYTES random bytes
    written as hex or base64 (standard or URL-safe, padded or not), as
    ``secrets.token_urlsafe``, ``secrets.token_hex``, ``openssl rand -base64`` or
    ``-hex`` and terraform's ``random_password`` (letters and digits) print them. Text
    cannot prove itself random, so each rule below refuses what hand-made keys look like
    and almost never what a generator prints (none of a million keys of each of those
    generators fails them).
    """
    if any(char.isspace() for char in key):
        return "contains whitespace"
    if HEX_KEY.fullmatch(key):
        bits, repeat = 4, HEX_REPEAT
    elif BASE64_KEY.fullmatch(key):
        bits, repeat = 6, BASE64_REPEAT
    else:
        return "is not hex or base64 text (what a random generator prints)"
    size = len(key.rstrip("=")) * bits // 8
    if size < MIN_SECRET_BYTES:
        return f"holds {size} bytes, fewer than {MIN_SECRET_BYTES}"
    if bits == 4 and (key.isdigit() or key.isalpha()):
        return "uses only digits or only letters"
    if bits == 6 and (key.lower() == key or key.upper() == key):
        return "uses letters of one case only"
    folded = key.lower()
    parts = [folded[i : i + repeat] for i in range(len(key) - repeat + 1)]
    if len(set(parts)) < len(parts):
        return "repeats a part of itself"
    steps = sum(abs(ord(a) - ord(b)) <= 1 for a, b in itertools.pairwise(key))
    if steps > (len(key) - 1) * (HEX_STEPS if bits == 4 else BASE64_STEPS):
        return "runs through the alphabet"
    rest = re.sub(r"[^a-z0-9]", "", folded)
    for word in PLACEHOLDER_WORDS:
        rest = rest.replace(word, "")
    if len(rest) < MIN_SECRET_BYTES // 2:
        return "is made of placeholder words"
    return None


class Config:
    """Development defaults: embedded SQLite, console mailer, a generated secret."""

    DEFAULT_MAIL_BACKEND = "console"
    APP_ENV = "development"

    def __init__(self) -> None:
        self.SQLALCHEMY_DATABASE_URI = database_url(env_str("DATABASE_URL"))
        self.SQLALCHEMY_ENGINE_OPTIONS = engine_options(self.SQLALCHEMY_DATABASE_URI)
        self.SECRET_KEY = self.secret_key()
        self.JWT_SECRET_KEY = self.SECRET_KEY
        self.JWT_ALGORITHM = "HS256"
        self.JWT_DECODE_ALGORITHMS = ["HS256"]
        self.JWT_TOKEN_LOCATION = ["headers"]
        self.JWT_ACCESS_TOKEN_EXPIRES = timedelta(seconds=env_int("TOKEN_TTL_SECONDS", 3600))
        self.ADMIN_EMAIL = env_str("ADMIN_EMAIL")
        self.ADMIN_PASSWORD = env_str("ADMIN_PASSWORD")
        self.MAX_CONTENT_LENGTH = env_int("MAX_BODY_BYTES", 64 * 1024)
        # POST /api/catalog/import only: a file of up to IMPORT_MAX_ROWS products (nginx.conf
        # lets a little more through to it, so that this limit answers).
        self.IMPORT_MAX_BODY_BYTES = env_int("IMPORT_MAX_BODY_BYTES", 10 * 1024 * 1024)
        self.IMPORT_MAX_ROWS = env_int("IMPORT_MAX_ROWS", 20_000)

        # Product-change emails (the outbox).
        self.MAIL_BACKEND = (env_str("MAIL_BACKEND") or self.DEFAULT_MAIL_BACKEND).lower()
        self.EMAIL_SOURCE = env_str("EMAIL_SOURCE")
        self.REGION_NAME = env_str("REGION_NAME") or env_str("AWS_DEFAULT_REGION") or "us-east-1"
        self.NOTIFY_ACTOR = env_bool("NOTIFY_ACTOR", True)
        self.NOTIFY_MAX_ATTEMPTS = env_int("NOTIFY_MAX_ATTEMPTS", 10)
        self.NOTIFY_RETRY_BASE_SECONDS = env_int("NOTIFY_RETRY_BASE_SECONDS", 15)
        # SES's events (bounces, complaints, deliveries): the SQS queue `flask worker`
        # reads them from (none: not read).
        self.SES_EVENTS_QUEUE_URL = env_str("SES_EVENTS_QUEUE_URL")
        # The most emails a second all workers send together: unset, SES's own maximum
        # (GetSendQuota, read every SES_QUOTA_REFRESH_SECONDS); 0, no limit.
        self.SES_MAX_SEND_RATE = _env_parsed("SES_MAX_SEND_RATE", None, float, "a number")
        self.SES_QUOTA_REFRESH_SECONDS = env_float("SES_QUOTA_REFRESH_SECONDS", 300.0)

        # Webhooks (app/notifications/webhooks/): how long a receiver has to answer, the
        # first retry delay, hosts and CIDR blocks exempt from the public-address rule,
        # and plain http in production.
        self.WEBHOOK_TIMEOUT_SECONDS = env_float("WEBHOOK_TIMEOUT_SECONDS", 10.0)
        self.WEBHOOK_RETRY_BASE_SECONDS = env_float("WEBHOOK_RETRY_BASE_SECONDS", 30.0)
        self.WEBHOOK_ALLOWED_HOSTS = env_list("WEBHOOK_ALLOWED_HOSTS")
        self.WEBHOOK_ALLOW_HTTP = env_bool("WEBHOOK_ALLOW_HTTP", self.APP_ENV != "production")
        # Deliveries in flight at once in `flask worker`, and claimed per transaction;
        # after a claim smaller than it asked for, how long it lets deliveries gather.
        self.WEBHOOK_CONCURRENCY = env_int("WEBHOOK_CONCURRENCY", 8)
        self.WEBHOOK_BATCH = env_int("WEBHOOK_BATCH", 10)
        self.WEBHOOK_LINGER_SECONDS = env_float("WEBHOOK_LINGER_SECONDS", 0.1)

        # Redis: the views stream and the worker's wake-up (optional; see app/streams.py).
        self.REDIS_URL = env_str("REDIS_URL")
        self.REDIS_TIMEOUT = env_float("REDIS_TIMEOUT", 0.5)
        # With Redis, product answers are cached this long at most (app/cache.py; 0: off).
        # A write that cannot invalidate them (Redis unreachable) answers that much later.
        self.PRODUCT_CACHE_SECONDS = env_float("PRODUCT_CACHE_SECONDS", 5.0)
        # Bytes of list pages stored per PRODUCT_CACHE_SECONDS (pages past it are read
        # from the database): distinct queries cannot fill Redis.
        self.PRODUCT_PAGE_CACHE_BYTES = env_int("PRODUCT_PAGE_CACHE_BYTES", 2 * 1024 * 1024)

        # The worker process (`flask worker`, app/worker.py).
        self.WORKER_NAME = env_str("WORKER_NAME")
        self.WORKER_SENDERS = env_int("WORKER_SENDERS", 2)
        self.WORKER_BATCH = env_int("WORKER_BATCH", 25)
        self.WORKER_POLL_SECONDS = env_float("WORKER_POLL_SECONDS", 2.0 if self.REDIS_URL else 0.5)
        # After a claim of fewer emails than WORKER_BATCH, how long a sender lets the next
        # ones gather.
        self.WORKER_LINGER_SECONDS = env_float("WORKER_LINGER_SECONDS", 0.1)

        # Product views and their statistics: auto = the stream when REDIS_URL is set,
        # else written directly; direct = always written by the read; off.
        self.VIEW_RECORDING = (env_str("VIEW_RECORDING") or "auto").lower()
        # Count the same client (user, or address when anonymous) and product once per
        # this many seconds (0: every read counts).
        self.VIEW_DEDUP_SECONDS = env_int("VIEW_DEDUP_SECONDS", 0)
        self.VIEWS_BATCH = env_int("VIEWS_BATCH", 500)
        self.VIEWS_RECLAIM_SECONDS = env_float("VIEWS_RECLAIM_SECONDS", 30.0)
        self.VIEWS_LINGER_SECONDS = env_float("VIEWS_LINGER_SECONDS", 0.5)
        stats_url = env_str("STATS_DATABASE_URL")
        self.SQLALCHEMY_BINDS = (
            {"stats": {"url": database_url(stats_url), **engine_options(database_url(stats_url))}}
            if stats_url
            else {}
        )

        # Failed logins per client address, and per account from any address: in the
        # views stream's Redis when REDIS_URL is set (one count for every process and
        # container), else in each process's memory (app/security.py says so at start-up).
        self.LOGIN_FAILURES_LIMIT = env_str("LOGIN_FAILURES_LIMIT") or "10 per minute"
        self.LOGIN_ACCOUNT_FAILURES_LIMIT = (
            env_str("LOGIN_ACCOUNT_FAILURES_LIMIT") or "50 per minute"
        )
        # Wrong current passwords (PATCH /users/me) per token, from any address.
        self.LOGIN_TOKEN_FAILURES_LIMIT = env_str("LOGIN_TOKEN_FAILURES_LIMIT") or "5 per minute"
        # Password hashing (argon2id) and how many passwords one process verifies at once:
        # past that an attempt is answered 503 at once instead of queueing CPU-bound work.
        # Fewer than uWSGI's request threads per worker (WEB_THREADS, 2), so that a thread
        # is always left for the reads.
        self.ARGON2_MEMORY_KIB = env_int("ARGON2_MEMORY_KIB", ARGON2_MEMORY_KIB)
        self.ARGON2_TIME_COST = env_int("ARGON2_TIME_COST", ARGON2_TIME_COST)
        self.ARGON2_PARALLELISM = env_int("ARGON2_PARALLELISM", ARGON2_PARALLELISM)
        self.LOGIN_CONCURRENCY = env_int("LOGIN_CONCURRENCY", 1)
        self.RATELIMIT_STORAGE_URI = (
            env_str("RATELIMIT_STORAGE_URI") or self.REDIS_URL or "memory://"
        )
        # Strict-Transport-Security on answers to HTTPS requests (0: not sent).
        self.HSTS_MAX_AGE = env_int("HSTS_MAX_AGE", 365 * 24 * 3600)
        # Log lines: text (a terminal) or json (one object a line; the image's default),
        # and one line per answered request (app/logs.py).
        self.LOG_FORMAT = (env_str("LOG_FORMAT") or "text").lower()
        self.LOG_LEVEL = (env_str("LOG_LEVEL") or "INFO").upper()
        self.LOG_REQUESTS = env_bool("LOG_REQUESTS", True)
        # /healthz, /readyz and /metrics too; production's nginx logs them instead.
        self.LOG_PROBES = env_bool("LOG_PROBES", self.APP_ENV != "production")
        # GET /metrics answers loopback and private addresses, or this bearer token.
        self.METRICS_TOKEN = env_str("METRICS_TOKEN")
        self.CORS_ORIGINS = env_list("CORS_ORIGINS")

        self.API_TITLE = "Marketplace catalog"
        self.API_VERSION = "1.0.0"
        self.OPENAPI_VERSION = "3.0.3"
        self.OPENAPI_URL_PREFIX = "/api"
        self.OPENAPI_JSON_PATH = "openapi.json"
        self.OPENAPI_SWAGGER_UI_PATH = "/docs"
        self.OPENAPI_SWAGGER_UI_URL = "/api/docs/static/"

    def secret_key(self) -> str:
        return env_str("SECRET_KEY") or development_secret()

    def validate(self) -> None:
        """Raise ConfigError when the environment cannot run this configuration."""
        if self.VIEW_RECORDING not in {"auto", "direct", "off"}:
            raise ConfigError(
                f"VIEW_RECORDING must be auto, direct or off, got {self.VIEW_RECORDING!r}."
            )
        if self.VIEW_DEDUP_SECONDS < 0:
            raise ConfigError("VIEW_DEDUP_SECONDS must be 0 (off) or more.")
        if not 0 <= self.PRODUCT_CACHE_SECONDS <= 3600:
            raise ConfigError("PRODUCT_CACHE_SECONDS must be 0 (off) to 3600.")
        if self.LOGIN_CONCURRENCY < 1:
            raise ConfigError("LOGIN_CONCURRENCY must be 1 or more.")
        for name in (
            "LOGIN_FAILURES_LIMIT",
            "LOGIN_ACCOUNT_FAILURES_LIMIT",
            "LOGIN_TOKEN_FAILURES_LIMIT",
        ):
            try:
                limits.parse(getattr(self, name))
            except ValueError as exc:
                raise ConfigError(
                    f"{name} must be a limit such as '10 per minute', got {getattr(self, name)!r}."
                ) from exc
        if self.PRODUCT_PAGE_CACHE_BYTES < 0:
            raise ConfigError("PRODUCT_PAGE_CACHE_BYTES must be 0 (no pages cached) or more.")
        if self.SES_MAX_SEND_RATE is not None and not 0 <= self.SES_MAX_SEND_RATE < 1e6:
            raise ConfigError(
                f"SES_MAX_SEND_RATE must be 0 (no limit) or a positive number, got "
                f"{self.SES_MAX_SEND_RATE!r}."
            )
        if self.MAIL_BACKEND not in {"console", "ses"}:
            raise ConfigError(
                f"MAIL_BACKEND must be 'ses' or 'console', got {self.MAIL_BACKEND!r}."
            )
        if not 0 < self.WEBHOOK_TIMEOUT_SECONDS <= 60:
            raise ConfigError("WEBHOOK_TIMEOUT_SECONDS must be more than 0 and at most 60.")
        if not 1 <= self.WEBHOOK_RETRY_BASE_SECONDS <= 3600:
            raise ConfigError("WEBHOOK_RETRY_BASE_SECONDS must be 1 to 3600.")
        if self.WEBHOOK_CONCURRENCY < 1 or self.WEBHOOK_BATCH < 1:
            raise ConfigError("WEBHOOK_CONCURRENCY and WEBHOOK_BATCH must be 1 or more.")
        for name in ("WORKER_LINGER_SECONDS", "WEBHOOK_LINGER_SECONDS"):
            if not 0 <= getattr(self, name) <= 5:
                raise ConfigError(f"{name} must be 0 to 5.")
        for entry in self.WEBHOOK_ALLOWED_HOSTS:
            if not allowed_host_entry(entry):
                raise ConfigError(
                    "WEBHOOK_ALLOWED_HOSTS must list host names, addresses or CIDR blocks, "
                    f"got {entry!r}."
                )
        if self.LOG_FORMAT not in {"text", "json"}:
            raise ConfigError(f"LOG_FORMAT must be text or json, got {self.LOG_FORMAT!r}.")
        if self.LOG_LEVEL not in {"DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"}:
            raise ConfigError(
                "LOG_LEVEL must be DEBUG, INFO, WARNING, ERROR or CRITICAL, "
                f"got {self.LOG_LEVEL!r}."
            )


class ProductionConfig(Config):
    """Production: secrets must come from the environment."""

    DEFAULT_MAIL_BACKEND = "ses"
    APP_ENV = "production"

    def secret_key(self) -> str:
        return env_str("SECRET_KEY") or ""

    def validate(self) -> None:
        if not self.SECRET_KEY:
            raise ConfigError(
                "SECRET_KEY must be set to a random string of at least "
                f"{MIN_SECRET_BYTES} bytes in production (for example: {MAKE_A_KEY})."
            )
        if reason := weak_secret(self.SECRET_KEY):
            raise ConfigError(
                f"SECRET_KEY {reason}: set it to a random string from a generator, at "
                f"least {MIN_SECRET_BYTES} random bytes as hex or base64 (for example: "
                f"{MAKE_A_KEY})."
            )
        super().validate()
        if self.MAIL_BACKEND == "ses" and not self.EMAIL_SOURCE:
            raise ConfigError(
                "EMAIL_SOURCE must be set to the SES-verified sender address when "
                "MAIL_BACKEND=ses (the production default); set MAIL_BACKEND=console to "
                "log emails instead."
            )


class TestConfig(Config):
    """Tests pass their database URL in; everything else is deterministic."""

    TESTING = True

    def __init__(self, database_url_: str | None = None) -> None:
        super().__init__()
        if database_url_:
            self.SQLALCHEMY_DATABASE_URI = database_url(database_url_)
            self.SQLALCHEMY_ENGINE_OPTIONS = engine_options(self.SQLALCHEMY_DATABASE_URI)
        # moto's SES says one email a second; the tests of the pace set their own.
        self.SES_MAX_SEND_RATE = 0.0

    def secret_key(self) -> str:
        return "test-secret-key-that-is-long-enough-for-hs256"


def config_for_environment() -> Config:
    raw = os.environ.get("APP_ENV")
    if raw is not None and not raw.strip():
        # `docker run -e APP_ENV= ...`: an image built for production must not fall back
        # to development's generated key and console mailer.
        raise ConfigError(
            "APP_ENV is set but empty: set APP_ENV=production (or development), or unset it."
        )
    name = (raw or "development").strip().lower()
    if name == "production":
        return ProductionConfig()
    if name in {"development", "dev"}:
        return Config()
    raise ConfigError(f"APP_ENV must be 'development' or 'production', got {name!r}.")

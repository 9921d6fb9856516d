"""karen-host settings: every value comes from the environment (see .env.example)."""

import ipaddress
import os
import secrets
from pathlib import Path

import environ
from django.core.exceptions import ImproperlyConfigured

BASE_DIR = Path(__file__).resolve().parent.parent
VAR_DIR = Path(environ.Env().str("VAR_DIR", default=str(BASE_DIR / "var")))
VAR_DIR.mkdir(parents=True, exist_ok=True)

env = environ.Env()
environ.Env.read_env(BASE_DIR / ".env", overwrite=False)


def _secret_key() -> str:
    """SECRET_KEY from the environment, else one generated once and kept in var/."""
    if value := env.str("SECRET_KEY", default=""):
        return value
    key_file = VAR_DIR / "secret_key"
    if not key_file.exists():
        key_file.write_text(secrets.token_urlsafe(50))
        key_file.chmod(0o600)
    return key_file.read_text().strip()


SECRET_KEY = _secret_key()
DEBUG = env.bool("DEBUG", default=False)
ALLOWED_HOSTS = env.list("ALLOWED_HOSTS", default=["127.0.0.1", "localhost", "[::1]"])

# HTTPS (README, "TLS"): `make run` serves it itself with TLS_CERT_FILE and TLS_KEY_FILE, or
# a proxy in front terminates it (BEHIND_TLS_PROXY: it must set X-Forwarded-Proto, and nothing
# but the proxy may reach the server, or a client could claim https). Either one turns on
# HSTS, the redirect to https and secure cookies.
TLS_CERT_FILE = env.str("TLS_CERT_FILE", default="")
TLS_KEY_FILE = env.str("TLS_KEY_FILE", default="")
if bool(TLS_CERT_FILE) != bool(TLS_KEY_FILE):
    raise ImproperlyConfigured("Set both TLS_CERT_FILE and TLS_KEY_FILE (PEM files), or neither.")
BEHIND_TLS_PROXY = env.bool("BEHIND_TLS_PROXY", default=False)
if TLS_CERT_FILE or BEHIND_TLS_PROXY:
    SECURE_SSL_REDIRECT = True
    # Probes and scrapers on the machine or in the cluster speak plain HTTP to the server itself.
    SECURE_REDIRECT_EXEMPT = [r"^health(/|$)", r"^metrics$"]
    SESSION_COOKIE_SECURE = CSRF_COOKIE_SECURE = True
    SECURE_HSTS_SECONDS = env.int("HSTS_SECONDS", default=365 * 24 * 3600)
    SECURE_HSTS_INCLUDE_SUBDOMAINS = env.bool("HSTS_INCLUDE_SUBDOMAINS", default=True)
    SECURE_HSTS_PRELOAD = env.bool("HSTS_PRELOAD", default=False)
    if not SECURE_HSTS_PRELOAD:
        # Preloading is a promise made to the browsers' list (hstspreload.org), not a setting
        # to turn on by default: HSTS_PRELOAD=true opts in, and only then is W021 relevant.
        SILENCED_SYSTEM_CHECKS = ["security.W021"]
if BEHIND_TLS_PROXY:
    SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
CSRF_TRUSTED_ORIGINS = env.list("CSRF_TRUSTED_ORIGINS", default=[])
CORS_ALLOWED_ORIGINS = env.list("CORS_ALLOWED_ORIGINS", default=[])
# What a browser client may read of a cross-origin response: the usage row, and the token limits (README, "Limits").
CORS_EXPOSE_HEADERS = ["X-Request-Id", "Retry-After"] + [
    f"x-ratelimit-{kind}-{unit}" for kind in ("limit", "remaining", "reset") for unit in ("requests", "tokens")
]

INSTALLED_APPS = [
    # First, so its `runserver` (daphne's: HTTP + websockets) wins over staticfiles'. Not "daphne"
    # itself: that app imports Twisted in every process; `make run` serves with uvicorn (karen_host/web.py).
    "karen_host.devserver",
    "models_app.console.apps.ConsoleAdminConfig",  # django.contrib.admin, opened on the dashboard
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "corsheaders",
    "channels",
    "rest_framework",
    "django_filters",
    "drf_spectacular",
    "drf_spectacular_sidecar",  # Swagger UI served from here: /api/docs/ works offline
    "models_app",
    "inference",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "corsheaders.middleware.CorsMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
]

ROOT_URLCONF = "karen_host.urls"
ASGI_APPLICATION = "karen_host.asgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ],
        },
    },
]

DATABASES = {"default": env.db("DATABASE_URL", default=f"sqlite:///{VAR_DIR / 'karen_host.sqlite3'}")}
if DATABASES["default"]["ENGINE"] == "django.db.backends.sqlite3":
    # WAL lets the admin read while a request finalizes its usage row; the timeout
    # waits out a concurrent writer instead of failing with "database is locked".
    DATABASES["default"].setdefault("OPTIONS", {}).update(
        {"timeout": 20, "init_command": "PRAGMA journal_mode=WAL;", "transaction_mode": "IMMEDIATE"}
    )
    # A file, not shared memory: live-server tests run the API on other threads and
    # processes, and shared-cache memory databases fail at once instead of waiting.
    # The pid keeps two test runs on one checkout from deleting each other's database.
    DATABASES["default"].setdefault("TEST", {"NAME": str(VAR_DIR / f"test_karen_host_{os.getpid()}.sqlite3")})

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
]

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True

STATIC_URL = "static/"
STATIC_ROOT = VAR_DIR / "static"
STATIC_ROOT.mkdir(exist_ok=True)  # WhiteNoise warns on every request without it
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"
# Bodies past this are refused with 413 before any view parses them.
DATA_UPLOAD_MAX_MEMORY_SIZE = env.int("MAX_REQUEST_BODY_BYTES", default=2 * 1024 * 1024)

# Models
MODELS_DIR = Path(env.str("MODELS_DIR", default=str(BASE_DIR / "models"))).resolve()
# llama.cpp's extra CPU buffer types (AMX matmul, weight repacking): "auto" turns them off on a CPU
# with AMX, where llama.cpp's AMX matmul crashes the process (README, "Known issues"); "on", "off".
LLAMA_EXTRA_BUFFERS = env.str("LLAMA_EXTRA_BUFFERS", default="auto")
if LLAMA_EXTRA_BUFFERS not in ("auto", "on", "off"):
    raise ImproperlyConfigured("LLAMA_EXTRA_BUFFERS is auto, on or off")
MODEL_PROBE_TIMEOUT_S = env.int("MODEL_PROBE_TIMEOUT_S", default=120)
MODEL_PROBE_MEMORY_MB = env.int("MODEL_PROBE_MEMORY_MB", default=0)  # 0: file size + 2 GiB

# Redis, Celery, Channels
REDIS_URL = env.str("REDIS_URL", default="")
# "localhost" only silences kombu's "No hostname was supplied" warning; the files stay local either way.
CELERY_BROKER_URL = env.str("CELERY_BROKER_URL", default=REDIS_URL or "filesystem://localhost/")
CELERY_BROKER_DIR = VAR_DIR / "celery-broker"
if CELERY_BROKER_URL.startswith("filesystem://"):
    # Kombu's filesystem transport: a broker that needs no server, for `make run`.
    for sub in ("in", "processed", "control"):
        (CELERY_BROKER_DIR / sub).mkdir(parents=True, exist_ok=True)
    CELERY_BROKER_TRANSPORT_OPTIONS = {
        "data_folder_in": str(CELERY_BROKER_DIR / "in"),
        "data_folder_out": str(CELERY_BROKER_DIR / "in"),
        "processed_folder": str(CELERY_BROKER_DIR / "processed"),
        "control_folder": str(CELERY_BROKER_DIR / "control"),  # kombu's default is ./control
        "store_processed": False,
    }
CELERY_TASK_ALWAYS_EAGER = env.bool("CELERY_TASK_ALWAYS_EAGER", default=False)
# The queue tasks are sent to and the worker reads: two deployments sharing one Redis keep apart by it.
CELERY_TASK_DEFAULT_QUEUE = env.str("CELERY_TASK_DEFAULT_QUEUE", default="celery")
CELERY_TIMEZONE = TIME_ZONE

CHANNEL_LAYERS = {"default": {"BACKEND": "channels.layers.InMemoryChannelLayer"}}

# Server (manage.py serve / make run)
HOST = env.str("HOST", default="127.0.0.1")
PORT = env.int("PORT", default=8080)

LOG_LEVEL = env.str("LOG_LEVEL", default="INFO").upper()
# text for a terminal; json (one object per line) for a log collector. Secrets are masked either way.
LOG_FORMAT = env.str("LOG_FORMAT", default="text")
if LOG_FORMAT not in ("text", "json"):
    raise ImproperlyConfigured(f"LOG_FORMAT is {LOG_FORMAT!r}; use text or json")
LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "filters": {"secrets": {"()": "karen_host.logs.SecretFilter"}, "context": {"()": "karen_host.logs.ContextFilter"}},
    "formatters": {"text": {"()": "karen_host.logs.TextFormatter"}, "json": {"()": "karen_host.logs.JSONFormatter"}},
    "handlers": {
        "console": {"class": "logging.StreamHandler", "formatter": LOG_FORMAT, "filters": ["secrets", "context"]}
    },
    "root": {"handlers": ["console"], "level": LOG_LEVEL},
    "loggers": {"django.db.backends": {"level": "INFO"}},
}
CELERY_WORKER_HIJACK_ROOT_LOGGER = False  # the worker's records go through the handler above too
WHITENOISE_USE_FINDERS = True  # serve admin assets without a collectstatic step

# Inference
MAX_LOADED_MODELS = env.int("MAX_LOADED_MODELS", default=2)
MODEL_MEMORY_BUDGET_MB = env.int("MODEL_MEMORY_BUDGET_MB", default=0)  # 0: 60% of RAM
DEFAULT_KEEP_ALIVE_S = env.float("DEFAULT_KEEP_ALIVE_S", default=300.0)  # negative: never unload
DEFAULT_KEEP_ALIVE_S = None if DEFAULT_KEEP_ALIVE_S < 0 else DEFAULT_KEEP_ALIVE_S
MAX_QUEUE = env.int("MAX_QUEUE", default=64)
QUEUE_TIMEOUT_S = env.float("QUEUE_TIMEOUT_S", default=120.0)
QUEUE_SHARE_PER_TOKEN = env.float("QUEUE_SHARE_PER_TOKEN", default=0.5)  # of MAX_QUEUE one token may hold
BATCH_MAX_WAIT_S = env.float("BATCH_MAX_WAIT_S", default=30.0)  # a batch request waiting this long goes first
# Host memory per loaded model for the KV of conversations that had to leave their slot (0: off).
PROMPT_CACHE_MB = env.float("PROMPT_CACHE_MB", default=1024.0)
USAGE_STALE_AFTER_S = env.float("USAGE_STALE_AFTER_S", default=6 * 3600)  # a started row older is from a crash
MAX_TOKENS_LIMIT = env.int("MAX_TOKENS_LIMIT", default=8192)  # hard cap on any request's max_tokens
AUTH_CACHE_TTL_S = env.float("AUTH_CACHE_TTL_S", default=5.0)  # revocation takes effect within this
# Trusted local clients (README, "Using Ollama clients"): requests with no Authorization header
# from these addresses act as this token (named by the prefix the admin lists, e.g. khk_Ab12Cd34).
# Unset: off; every request needs a bearer token.
TRUSTED_LOCAL_TOKEN = env.str("TRUSTED_LOCAL_TOKEN", default="").strip()
TRUSTED_LOCAL_ADDRESSES = tuple(
    ipaddress.ip_network(a.strip(), strict=False)
    for a in env.list("TRUSTED_LOCAL_ADDRESSES", default=["127.0.0.0/8", "::1/128"])
    if a.strip()
)
WS_MAX_BACKLOG = env.int("WS_MAX_BACKLOG", default=2000)  # undelivered events before a slow reader is cut off
# Token limits (README, "Limits") are kept in Redis when REDIS_URL is set. A web node that dies
# mid-request cannot release its requests in flight; Redis stops counting them after this.
CONCURRENCY_LEASE_S = env.float("CONCURRENCY_LEASE_S", default=1800.0)

# Bounds on what one request may ask (each refusal is a 400 naming the field; README, "Bounds").
MAX_MESSAGES = env.int("MAX_MESSAGES", default=1000)
MAX_STOP_STRINGS = env.int("MAX_STOP_STRINGS", default=4)  # OpenAI's limit
MAX_STOP_CHARS = env.int("MAX_STOP_CHARS", default=256)
MAX_LOGIT_BIAS = env.int("MAX_LOGIT_BIAS", default=1024)  # entries; ids must exist in the vocabulary
JSON_SCHEMA_MAX_BYTES = env.int("JSON_SCHEMA_MAX_BYTES", default=64 * 1024)
JSON_SCHEMA_MAX_DEPTH = env.int("JSON_SCHEMA_MAX_DEPTH", default=32)
JSON_SCHEMA_MAX_REPETITIONS = env.int("JSON_SCHEMA_MAX_REPETITIONS", default=2000)  # llama.cpp's own cap
GRAMMAR_MAX_BYTES = env.int("GRAMMAR_MAX_BYTES", default=256 * 1024)
CHAT_TEMPLATE_MAX_OUTPUT_CHARS = env.int("CHAT_TEMPLATE_MAX_OUTPUT_CHARS", default=4 * 1024 * 1024)
CHAT_TEMPLATE_TIMEOUT_S = env.float("CHAT_TEMPLATE_TIMEOUT_S", default=2.0)
WS_MAX_FRAME_BYTES = env.int("WS_MAX_FRAME_BYTES", default=DATA_UPLOAD_MAX_MEMORY_SIZE)

# Management REST API (models_app/api, Django REST framework) at /api/v1
REST_FRAMEWORK = {
    # Bearer first: its challenge header is what makes a missing token a 401, not a 403.
    "DEFAULT_AUTHENTICATION_CLASSES": [
        "models_app.api.authentication.BearerTokenAuthentication",
        "rest_framework.authentication.SessionAuthentication",  # browsable API; enforces CSRF
    ],
    "DEFAULT_PERMISSION_CLASSES": ["rest_framework.permissions.IsAuthenticated"],  # viewsets add scopes
    "DEFAULT_RENDERER_CLASSES": [
        "rest_framework.renderers.JSONRenderer",
        "rest_framework.renderers.BrowsableAPIRenderer",
    ],
    "DEFAULT_FILTER_BACKENDS": [
        "django_filters.rest_framework.DjangoFilterBackend",
        "rest_framework.filters.SearchFilter",
    ],
    "DEFAULT_PAGINATION_CLASS": "models_app.api.pagination.RegistryPagination",
    "DEFAULT_THROTTLE_CLASSES": ["models_app.api.throttling.TokenRateThrottle"],
    "DEFAULT_THROTTLE_RATES": {"management": "600/min"},  # per token; the cache is per process
    "EXCEPTION_HANDLER": "models_app.api.errors.render_error",
    "DEFAULT_SCHEMA_CLASS": "models_app.api.schema.ManagementAutoSchema",
    "TEST_REQUEST_DEFAULT_FORMAT": "json",
}
SPECTACULAR_SETTINGS = {
    "TITLE": "karen-host management API",
    "DESCRIPTION": "Models, configs, tokens and usage. Authenticate with `Authorization: Bearer khk_...`.",
    "VERSION": "1",
    "SERVE_INCLUDE_SCHEMA": False,
    "SCHEMA_PATH_PREFIX": r"/api/v1",
    "COMPONENT_SPLIT_REQUEST": True,  # read-only fields stay out of request bodies
    "SWAGGER_UI_DIST": "SIDECAR",
    "SWAGGER_UI_FAVICON_HREF": "SIDECAR",
    "ENUM_NAME_OVERRIDES": {
        "ModelStatusEnum": "models_app.choices.ModelStatus",
        "UsageStatusEnum": "models_app.choices.UsageStatus",
        "ScopeEnum": "models_app.choices.Scope",
        "KVCacheTypeEnum": "models_app.choices.KVCacheType",
    },
}

# Background work (models_app/tasks.py): results and schedules live in the database,
# so the admin shows each task's last result and edits the schedules.
INSTALLED_APPS += ["django_celery_results", "django_celery_beat"]
CELERY_RESULT_BACKEND = "django-db"
CELERY_RESULT_EXTENDED = True  # task name and arguments on each result row, for the admin
CELERY_TASK_TRACK_STARTED = True
CELERY_BEAT_SCHEDULER = "django_celery_beat.schedulers:DatabaseScheduler"
CELERY_WORKER_CONCURRENCY = env.int("CELERY_WORKER_CONCURRENCY", default=2)
# Threads: the tasks wait on HTTP or on the probe's child process, and a threaded worker
# stops with a warm shutdown when `make run` is stopped, where prefork children are
# killed mid-task by the signal sent to the whole process group.
CELERY_WORKER_POOL = env.str("CELERY_WORKER_POOL", default="threads")
CELERY_BROKER_CONNECTION_RETRY_ON_STARTUP = True
# The worker reaches the serving process over its own authenticated API, as it would
# from another machine, with the secret `manage.py serve` writes to SERVICE_TOKEN_FILE.
SERVER_URL = env.str("SERVER_URL", default=f"{'https' if TLS_CERT_FILE else 'http'}://127.0.0.1:{PORT}").rstrip("/")
# What the worker trusts for an https SERVER_URL: by default the server's own certificate
# (a self-signed one works when it names 127.0.0.1), else the system's CAs.
SERVER_CA_FILE = env.str("SERVER_CA_FILE", default=TLS_CERT_FILE)
SERVER_TIMEOUT_S = env.float("SERVER_TIMEOUT_S", default=300.0)  # covers loading a large model
SERVICE_TOKEN_FILE = Path(env.str("SERVICE_TOKEN_FILE", default=str(VAR_DIR / "service_token")))

# Scaling out (README, "Running on several machines"): web nodes with INFERENCE_MODE=remote
# relay jobs over the channel layer to inference nodes (`manage.py runworker inference`),
# so the layer must then be Redis; one machine keeps the in-memory layer and local mode.
if REDIS_URL:
    CHANNEL_LAYERS = {
        "default": {
            "BACKEND": "channels_redis.core.RedisChannelLayer",
            "CONFIG": {
                # redis-py's default 5 s read timeout equals channels-redis's 5 s blocking pop,
                # so an idle receive would time out now and then; give reads room.
                "hosts": [{"address": REDIS_URL, "socket_timeout": 30}],
                # Capacity is per channel: a web node's replies for all its streams share one.
                "capacity": env.int("CHANNEL_CAPACITY", default=1000),
                "expiry": 60,
            },
        }
    }
INFERENCE_MODE = env.str("INFERENCE_MODE", default="local")

# Readiness (/health/ready): the free space VAR_DIR and MODELS_DIR need, and KAREN's URL to
# check for reachability (unset: not checked).
DISK_MIN_FREE_MB = env.int("DISK_MIN_FREE_MB", default=500)
# On SIGTERM or SIGINT, running generations may finish for this long before they are cancelled.
DRAIN_TIMEOUT_S = env.float("DRAIN_TIMEOUT_S", default=30.0)
# The web server (karen_host/web.py) refuses a request line and headers longer than this (431), and
# closes a connection whose request line and headers have not all arrived this long after they began (408).
HTTP_MAX_HEAD_BYTES = env.int("HTTP_MAX_HEAD_BYTES", default=65536)
HTTP_HEAD_TIMEOUT_S = env.float("HTTP_HEAD_TIMEOUT_S", default=30.0)
KAREN_URL = env.str("KAREN_URL", default="")
if INFERENCE_MODE not in ("local", "remote"):
    from django.core.exceptions import ImproperlyConfigured

    raise ImproperlyConfigured(f"INFERENCE_MODE is {INFERENCE_MODE!r}; use 'local' or 'remote'.")
INFERENCE_NODE_NAME = env.str("INFERENCE_NODE_NAME", default=os.uname().nodename)  # one per worker process
INFERENCE_NODE_DESCRIPTION = env.str("INFERENCE_NODE_DESCRIPTION", default="")  # empty: detected GPU / CPU
INFERENCE_HEARTBEAT_S = env.float("INFERENCE_HEARTBEAT_S", default=2.0)  # down after 3 missed
# `manage.py runworker` is inference's (it starts the node at boot); Django takes a command
# from the first app in INSTALLED_APPS that has it, so inference goes before channels.
INSTALLED_APPS.remove("inference")
INSTALLED_APPS.insert(INSTALLED_APPS.index("channels"), "inference")

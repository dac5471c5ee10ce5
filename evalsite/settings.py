"""Needle settings: everything comes from the environment.

Development defaults need no server at all (SQLite under ``var/``, a
filesystem message queue); production sets ``DEBUG=0`` and points
``DATABASE_URL`` at PostgreSQL and ``CELERY_BROKER_URL`` at Redis or RabbitMQ.
See README "Production".
"""

import os
from pathlib import Path

import dj_database_url
from django.core.exceptions import ImproperlyConfigured

BASE_DIR = Path(__file__).resolve().parent.parent
VAR_DIR = Path(os.environ.get("NEEDLE_VAR_DIR", BASE_DIR / "var"))

# Needle loads models only from local directories; never let a stray hub id
# hang a worker or silently fetch a different tokenizer.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


def env_bool(name: str, default: bool) -> bool:
    value = os.environ.get(name)
    if value is None or value == "":
        return default
    if value.lower() in ("1", "true", "yes", "on"):
        return True
    if value.lower() in ("0", "false", "no", "off"):
        return False
    raise ImproperlyConfigured(f"{name}={value!r} is not a boolean (use 1/0, true/false, yes/no, on/off)")


def env_int(name: str, default: int) -> int:
    value = os.environ.get(name)
    if value is None or value == "":
        return default
    try:
        return int(value)
    except ValueError:
        raise ImproperlyConfigured(f"{name}={value!r} is not an integer") from None


def env_list(name: str, default: str) -> list[str]:
    return [item.strip() for item in os.environ.get(name, default).split(",") if item.strip()]


DEBUG = env_bool("DEBUG", True)

SECRET_KEY = os.environ.get("SECRET_KEY", "")
if not SECRET_KEY:
    if not DEBUG:
        raise ImproperlyConfigured(
            "SECRET_KEY must be set when DEBUG is off (e.g. python -c 'import secrets; print(secrets.token_urlsafe(50))')."
        )
    SECRET_KEY = "dev-only-not-secret-" + "x" * 40

ALLOWED_HOSTS = env_list("ALLOWED_HOSTS", "localhost,127.0.0.1,[::1]" if DEBUG else "")
CSRF_TRUSTED_ORIGINS = env_list("CSRF_TRUSTED_ORIGINS", "")

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "whitenoise.runserver_nostatic",
    "django.contrib.staticfiles",
    # django-ninja: the researcher JSON API (evalsite.api); listed for its Swagger page's own static files (no CDN).
    "ninja",
    "generation",
    "annotation",
    "analysis",
    "training",
    # evalsite itself: the mini_emu command, which drives the apps and the world (no models).
    "evalsite",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    # Errors at JSON endpoints (NEEDLE_JSON_ENDPOINTS) answer in JSON, never in an HTML page.
    "evalsite.json_errors.JsonErrorsMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    # Raters' images (/i/<sealed link>): answered here, before sessions, authentication or any view (issue 12).
    "annotation.rater_access.ServedImagesMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
]

ROOT_URLCONF = "evalsite.urls"
WSGI_APPLICATION = "evalsite.wsgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "templates"],
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

# --- Database -----------------------------------------------------------------
DATABASE_URL = os.environ.get("DATABASE_URL", f"sqlite:///{VAR_DIR / 'needle.sqlite3'}")
# Connections are kept between requests (a new PostgreSQL connection costs ~2 ms, a kept one nothing) and checked
# before reuse, so a database restart costs one reconnect, not an error page.
DATABASES = {
    "default": dj_database_url.parse(DATABASE_URL, conn_max_age=env_int("DB_CONN_MAX_AGE", 60), conn_health_checks=True)
}
if DATABASES["default"]["ENGINE"] == "django.db.backends.postgresql":
    # DB_POOL=1: each process shares a psycopg pool of at most DB_POOL_MAX_SIZE connections (threaded workers);
    # Django then opens and closes nothing itself, so persistent connections are off.
    if env_bool("DB_POOL", False):
        DATABASES["default"]["OPTIONS"] = {"pool": {"min_size": 1, "max_size": env_int("DB_POOL_MAX_SIZE", 4)}}
        DATABASES["default"]["CONN_MAX_AGE"] = 0
    # DB_PGBOUNCER=1: DATABASE_URL points at PgBouncer in transaction mode, where a server-side cursor (which
    # outlives a transaction) would land on another server connection. Everything else Needle does fits it: the
    # assignment engine's locks live inside one transaction.
    DATABASES["default"]["DISABLE_SERVER_SIDE_CURSORS"] = env_bool("DB_PGBOUNCER", False)
if DATABASES["default"]["ENGINE"] == "django.db.backends.sqlite3":
    VAR_DIR.mkdir(parents=True, exist_ok=True)
    DATABASES["default"]["OPTIONS"] = {
        # The web server and a worker process write at the same time: WAL lets
        # readers run beside a writer, IMMEDIATE avoids deadlocking upgrades.
        "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;",
        "transaction_mode": "IMMEDIATE",
        "timeout": 30,
    }
    # A file, not :memory:, so worker processes started by tests see the test database.
    DATABASES["default"]["TEST"] = {"NAME": str(VAR_DIR / "test.sqlite3")}

DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]

LANGUAGE_CODE = "en-us"
TIME_ZONE = os.environ.get("TIME_ZONE", "UTC")
USE_I18N = True
USE_TZ = True

LOGIN_URL = "admin:login"

# --- Cache (rate limits) ------------------------------------------------------------
# Rate limits count in the cache, so with several web processes it must be shared:
# production sets NEEDLE_CACHE_URL=redis://host:6379/1. The default is per process.
_cache_url = os.environ.get("NEEDLE_CACHE_URL", "")
CACHES = {
    "default": (
        {"BACKEND": "django.core.cache.backends.redis.RedisCache", "LOCATION": _cache_url}
        if _cache_url
        else {"BACKEND": "django.core.cache.backends.locmem.LocMemCache", "LOCATION": "needle"}
    )
}

# --- Files ----------------------------------------------------------------------
STATIC_URL = "static/"
STATICFILES_DIRS = [BASE_DIR / "static"]
STATIC_ROOT = Path(os.environ.get("STATIC_ROOT", BASE_DIR / "staticfiles"))
MEDIA_URL = "media/"
MEDIA_ROOT = Path(os.environ.get("MEDIA_ROOT", VAR_DIR / "media"))
STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    # Generated images: content-addressed, written atomically. Every worker
    # machine must see the same MEDIA_ROOT (shared volume) in production.
    "images": {
        "BACKEND": "generation.storage.ContentAddressedStorage",
        "OPTIONS": {"location": MEDIA_ROOT / "images", "base_url": f"/{MEDIA_URL}images/"},
    },
    "staticfiles": {
        "BACKEND": "django.contrib.staticfiles.storage.StaticFilesStorage"
        if DEBUG
        else "whitenoise.storage.CompressedManifestStaticFilesStorage"
    },
}
FILE_UPLOAD_MAX_MEMORY_SIZE = 2_621_440
DATA_UPLOAD_MAX_MEMORY_SIZE = 2_621_440

# --- Security (production) --------------------------------------------------------
SESSION_COOKIE_HTTPONLY = True
X_FRAME_OPTIONS = "DENY"
SECURE_CONTENT_TYPE_NOSNIFF = True
SECURE_REFERRER_POLICY = "same-origin"
if not DEBUG:
    SECURE_SSL_REDIRECT = env_bool("SECURE_SSL_REDIRECT", True)
    SESSION_COOKIE_SECURE = True
    CSRF_COOKIE_SECURE = True
    SECURE_HSTS_SECONDS = env_int("SECURE_HSTS_SECONDS", 31_536_000)
    SECURE_HSTS_INCLUDE_SUBDOMAINS = env_bool("SECURE_HSTS_INCLUDE_SUBDOMAINS", True)
    SECURE_HSTS_PRELOAD = env_bool("SECURE_HSTS_PRELOAD", True)
    if env_bool("BEHIND_TLS_PROXY", False):
        SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")

# --- Celery -------------------------------------------------------------------------
# The filesystem transport ignores the host; naming one keeps kombu from warning about it on every connection.
CELERY_BROKER_URL = os.environ.get("CELERY_BROKER_URL", "filesystem://localhost/")
CELERY_BROKER_TRANSPORT_OPTIONS: dict = {
    # A task unacknowledged this long is handed to another worker (Redis/SQS).
    # Generation chunks take minutes on a GPU; keep this well above the
    # longest chunk, or a slow chunk is run twice (harmless, but wasted).
    "visibility_timeout": env_int("CELERY_VISIBILITY_TIMEOUT", 7200),
}
if CELERY_BROKER_URL.startswith("filesystem://"):
    BROKER_DIR = Path(os.environ.get("NEEDLE_BROKER_DIR", VAR_DIR / "broker"))
    (BROKER_DIR / "queue").mkdir(parents=True, exist_ok=True)
    (BROKER_DIR / "processed").mkdir(parents=True, exist_ok=True)
    (BROKER_DIR / "control").mkdir(parents=True, exist_ok=True)
    CELERY_BROKER_TRANSPORT_OPTIONS.update(
        control_folder=str(BROKER_DIR / "control"),  # exchange bindings; kombu's default is ./control
        data_folder_in=str(BROKER_DIR / "queue"),
        data_folder_out=str(BROKER_DIR / "queue"),
        processed_folder=str(BROKER_DIR / "processed"),
        store_processed=False,
        polling_interval=0.05,  # an idle worker lists one folder 20 times a second: cheap
    )
CELERY_BROKER_CONNECTION_RETRY_ON_STARTUP = True
CELERY_TASK_SERIALIZER = "json"
CELERY_ACCEPT_CONTENT = ["json"]
# Progress lives in the database; task results are never read.
CELERY_TASK_IGNORE_RESULT = True
CELERY_RESULT_BACKEND = None
# A task is acknowledged only after it finishes, so a killed worker's task goes
# back to the queue; tasks are idempotent, so running one twice is harmless.
CELERY_TASK_ACKS_LATE = True
CELERY_TASK_REJECT_ON_WORKER_LOST = True
CELERY_WORKER_PREFETCH_MULTIPLIER = 1
CELERY_TASK_DEFAULT_QUEUE = "default"
# Queues are named by the kind of work, so a GPU machine can run
# `celery -A evalsite worker -Q generation,training` and nothing else.
CELERY_TASK_ROUTES = {
    "generation.tasks.*": {"queue": "generation"},
    "training.tasks.*": {"queue": "training"},
}
# Optional (`celery -A evalsite beat`): the assignment engine sweeps stale leases
# itself as raters come and go; this also sweeps campaigns nobody is visiting.
# It also closes "stop when decided" campaigns once their anytime-valid interval decides (analysis, issue 13).
CELERY_BEAT_SCHEDULE = {
    "sweep-expired-leases": {"task": "annotation.tasks.sweep_expired_leases", "schedule": 60.0},
    "check-decisions": {"task": "analysis.tasks.check_decisions", "schedule": 30.0},
    # Adaptive campaigns' pair priorities from the votes so far (never in a rater's request).
    "refresh-adaptive-pairs": {"task": "analysis.tasks.refresh_adaptive_pairs", "schedule": 30.0},
}
CELERY_WORKER_HIJACK_ROOT_LOGGER = False

# --- Needle ---------------------------------------------------------------------------
# "auto" picks cuda, then mps, then cpu.
NEEDLE_DEVICE = os.environ.get("NEEDLE_DEVICE", "auto")
# "auto": float16 on CUDA, float32 elsewhere.
NEEDLE_TORCH_DTYPE = os.environ.get("NEEDLE_TORCH_DTYPE", "auto")
# Images per forward pass. Part of a batch's frozen settings: it fixes how
# images are grouped, which keeps results byte-identical on a re-run.
NEEDLE_INFERENCE_BATCH_SIZE = env_int("NEEDLE_INFERENCE_BATCH_SIZE", 8)
# Images per Celery task.
NEEDLE_CHUNK_SIZE = env_int("NEEDLE_CHUNK_SIZE", 64)
# Pipelines a worker process keeps loaded (a pairwise comparison needs two).
NEEDLE_PIPELINE_CACHE_SIZE = env_int("NEEDLE_PIPELINE_CACHE_SIZE", 2)
# A queued, unfinished batch no worker has reported on for this long shows as "stalled" and offers resume.
NEEDLE_BATCH_STALL_SECONDS = env_int("NEEDLE_BATCH_STALL_SECONDS", 600)
NEEDLE_PROMPT_FILE_MAX_BYTES = env_int("NEEDLE_PROMPT_FILE_MAX_BYTES", 10 * 1024 * 1024)
NEEDLE_PROMPT_MAX_CHARS = env_int("NEEDLE_PROMPT_MAX_CHARS", 2000)

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"plain": {"format": "%(asctime)s %(levelname)s %(name)s: %(message)s"}},
    "handlers": {"console": {"class": "logging.StreamHandler", "formatter": "plain"}},
    "root": {"handlers": ["console"], "level": os.environ.get("LOG_LEVEL", "INFO")},
    "loggers": {"django": {"level": os.environ.get("DJANGO_LOG_LEVEL", "INFO")}},
}
# Votes one rater may submit per minute (a person needs more than a second per pair).
NEEDLE_VOTE_RATE_LIMIT_PER_MINUTE = env_int("NEEDLE_VOTE_RATE_LIMIT_PER_MINUTE", 60)
# Unknown invite or rater tokens one client address may try per minute before being refused.
NEEDLE_BAD_TOKEN_LIMIT_PER_MINUTE = env_int("NEEDLE_BAD_TOKEN_LIMIT_PER_MINUTE", 20)
# How long a researcher API token (`manage.py campaign api-token USER`) stays valid.
NEEDLE_API_TOKEN_MAX_AGE_DAYS = env_int("NEEDLE_API_TOKEN_MAX_AGE_DAYS", 90)
# The site's public address, for the invite links the command line prints.
NEEDLE_BASE_URL = os.environ.get("NEEDLE_BASE_URL", "http://localhost:8000")

# --- Training (quality-tuning runs) -----------------------------------------------------
# Run directories (checkpoints, metrics, validation images), the shared encoding
# cache and exported pipelines live here. Every machine that runs the training
# queue, and the web server that shows runs, must see the same folder (a shared
# volume in production, like MEDIA_ROOT). Never served under a public URL.
NEEDLE_TRAINING_DIR = Path(os.environ.get("NEEDLE_TRAINING_DIR", VAR_DIR / "training"))
# The automatic judge of AI-assisted win rates (issue 13): an aesthetic head (LAION layout) and the open_clip model
# it sits on, local files. Empty: no judge unless `manage.py judge_campaign` is given them.
NEEDLE_JUDGE_HEAD_PATH = os.environ.get("NEEDLE_JUDGE_HEAD_PATH", "")
NEEDLE_JUDGE_CLIP_PATH = os.environ.get("NEEDLE_JUDGE_CLIP_PATH", "")
# The command that runs `-m training.quality_tuning ...` in the training task.
# Empty: this worker's Python. On a multi-GPU machine, e.g.
# NEEDLE_TRAINING_LAUNCHER="accelerate launch --num_processes 8 --mixed_precision bf16".
NEEDLE_TRAINING_LAUNCHER = os.environ.get("NEEDLE_TRAINING_LAUNCHER", "")
# Seconds between the task's looks at the trainer's metrics and checkpoints.
NEEDLE_TRAINING_POLL_SECONDS = float(os.environ.get("NEEDLE_TRAINING_POLL_SECONDS", "1.0"))
# A running run whose task has not reported for this long is taken for lost
# (worker machine gone): it may then be cancelled or resumed from the page.
NEEDLE_TRAINING_STALE_SECONDS = env_int("NEEDLE_TRAINING_STALE_SECONDS", 600)
# Paths (regular expressions) of the JSON endpoints: their errors (404, 405, 413, 500, ...) answer in JSON.
NEEDLE_JSON_ENDPOINTS = [r"^/annotation/api/", r"^/analysis/api/", r"^/api/", r"\.json$", r"^/rate/[^/]+/vote$"]
# Reverse proxies of yours in front of Django that append to X-Forwarded-For;
# rate limits then count the address the outermost one saw. 0: use REMOTE_ADDR.
NEEDLE_TRUSTED_PROXY_HOPS = env_int("NEEDLE_TRUSTED_PROXY_HOPS", 0)

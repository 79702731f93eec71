"""labseg settings, read from the environment (django-environ) with safe local defaults.

Embedded defaults (nothing set): SQLite under ``var/``, a filesystem Celery broker under
``var/broker/`` and media under ``var/media/``, so a fresh machine runs the server and a real
worker process without any service. Production (``DJANGO_DEBUG=false``) refuses to start without
``DJANGO_SECRET_KEY`` and ``DJANGO_ALLOWED_HOSTS``.

Why the filesystem transport for the embedded broker: it is a real kombu transport (a real worker
process consumes from it, acks and redelivers), needs no server and no extra package, and works
across processes on one machine. SQLAlchemy's transport would need an extra dependency and
kombu's in-memory transport does not cross processes.
"""

from __future__ import annotations

from pathlib import Path

import environ
from django.core.exceptions import ImproperlyConfigured

BASE_DIR = Path(__file__).resolve().parent.parent
env = environ.Env()
if (BASE_DIR / ".env").exists():
    environ.Env.read_env(str(BASE_DIR / ".env"))

VAR_DIR = Path(env.str("LABSEG_VAR_DIR", default=str(BASE_DIR / "var")))
VAR_DIR.mkdir(parents=True, exist_ok=True)

DEBUG = env.bool("DJANGO_DEBUG", default=True)

_missing = [
    name
    for name in ("DJANGO_SECRET_KEY", "DJANGO_ALLOWED_HOSTS")
    if not DEBUG and not env.str(name, default="")
]
if _missing:
    raise ImproperlyConfigured(
        "labseg refuses to start in production (DJANGO_DEBUG=false) without "
        + " and ".join(_missing)
        + ": set them in the environment or in .env (see docker/.env.example)."
    )
SECRET_KEY = env.str("DJANGO_SECRET_KEY", default="labseg-local-development-only-not-secret")
if not DEBUG:
    # Production sits behind a TLS reverse proxy (docker/compose.yaml) that sets X-Forwarded-Proto;
    # ``manage.py check --deploy`` reports no warning with these.
    SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
    SECURE_SSL_REDIRECT = env.bool("LABSEG_SSL_REDIRECT", default=True)
    SECURE_HSTS_SECONDS = env.int("LABSEG_HSTS_SECONDS", default=31_536_000)
    SECURE_HSTS_INCLUDE_SUBDOMAINS = True
    SECURE_HSTS_PRELOAD = env.bool("LABSEG_HSTS_PRELOAD", default=True)
    SESSION_COOKIE_SECURE = True
    CSRF_COOKIE_SECURE = True
ALLOWED_HOSTS = env.list("DJANGO_ALLOWED_HOSTS", default=["localhost", "127.0.0.1", "[::1]", "testserver"])
CSRF_TRUSTED_ORIGINS = env.list("DJANGO_CSRF_TRUSTED_ORIGINS", default=[])

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "rest_framework",
    "drf_spectacular",
    "drf_spectacular_sidecar",  # Swagger UI's files, served from here (no CDN)
    "rules",
    "labs",
    "scans",
    "segmentation.apps.SegmentationConfig",
    "review",
    "frontend",
    "audit",
    "backups",
    "retraining",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    # Serves collected static files (NiiVue, pages' JS/CSS) under gunicorn in production.
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    # Keeps the request for the who and from where of audit events (audit/context.py).
    "audit.context.RequestContextMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    # A full disk (ENOSPC) in a plain Django view answers 507 in words (DRF views: refusals.py).
    "labseg.refusals.DiskFullMiddleware",
]

ROOT_URLCONF = "labseg.urls"
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
                "labs.context_processors.lab_header",
            ],
        },
    },
]
WSGI_APPLICATION = "labseg.wsgi.application"

DATABASES = {"default": env.db("DATABASE_URL", default=f"sqlite:///{VAR_DIR / 'labseg.sqlite3'}")}
DATABASES["default"].setdefault("CONN_MAX_AGE", env.int("DATABASE_CONN_MAX_AGE", default=0))
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

# Django's full set: similar to the username, shorter than 10, among 20,000 common ones, all digits.
AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {
        "NAME": "django.contrib.auth.password_validation.MinimumLengthValidator",
        "OPTIONS": {"min_length": 10},
    },
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]
LOGIN_URL = "/login/"
LOGIN_REDIRECT_URL = "/"
LOGOUT_REDIRECT_URL = "/login/"

LANGUAGE_CODE = "en-us"
TIME_ZONE = env.str("TIME_ZONE", default="UTC")
USE_I18N = True
USE_TZ = True

STATIC_URL = "/static/"
STATIC_ROOT = Path(env.str("LABSEG_STATIC_ROOT", default=str(VAR_DIR / "static")))
WHITENOISE_USE_FINDERS = DEBUG
MEDIA_URL = "/media/"
MEDIA_ROOT = Path(env.str("LABSEG_MEDIA_ROOT", default=str(VAR_DIR / "media")))

# Files go through Django's storage API so that workers on other machines can read them.
# LABSEG_STORAGE=s3 uses django-storages' S3 backend (AWS_* settings from the environment).
LABSEG_STORAGE = env.str("LABSEG_STORAGE", default="local")
if LABSEG_STORAGE == "s3":
    from boto3.s3.transfer import TransferConfig

    # Files go to the bucket in 8 MiB parts, AWS_S3_MAX_CONCURRENCY at a time, and no more parts than
    # that are read into the web process's memory while they are sent: memory stays flat.
    _transfer = TransferConfig(max_concurrency=env.int("AWS_S3_MAX_CONCURRENCY", default=4))
    _transfer.max_in_memory_upload_chunks = _transfer.max_request_concurrency
    from botocore.config import Config as _BotoConfig

    # Request bodies carry a CRC32 checksum that S3 verifies (botocore's default); over HTTPS botocore
    # then leaves the payload out of the SigV4 signature, and with AWS_S3_PAYLOAD_SIGNING=false
    # (default) it does so over plain HTTP too (a MinIO inside the network): signing costs the web
    # process a SHA-256 pass over every byte stored (labseg/storage.py).
    _client_config = _BotoConfig(
        s3={
            "addressing_style": env.str("AWS_S3_ADDRESSING_STYLE", default="path"),
            "payload_signing_enabled": env.bool("AWS_S3_PAYLOAD_SIGNING", default=False),
        },
        signature_version="s3v4",
    )
    # Credentials: AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY, read by boto3 itself. Path-style
    # addressing: a MinIO or other endpoint by host name has no per-bucket DNS names.
    _default_storage = {
        "BACKEND": "storages.backends.s3.S3Storage",
        "OPTIONS": {
            "bucket_name": env.str("AWS_STORAGE_BUCKET_NAME"),
            "endpoint_url": env.str("AWS_S3_ENDPOINT_URL", default=None),
            "region_name": env.str("AWS_S3_REGION_NAME", default=None),
            "addressing_style": env.str("AWS_S3_ADDRESSING_STYLE", default="path"),
            "signature_version": "s3v4",
            "querystring_expire": env.int("AWS_QUERYSTRING_EXPIRE", default=3600),
            # A file opened for reading is spooled to FILE_UPLOAD_TEMP_DIR above this size (the
            # backend's default 0 would hold a whole scan in memory).
            "max_memory_size": 8 * 1024 * 1024,
            "transfer_config": _transfer,
            "client_config": _client_config,
            "file_overwrite": False,
        },
    }
else:
    _default_storage = {
        "BACKEND": "django.core.files.storage.FileSystemStorage",
        "OPTIONS": {"location": str(MEDIA_ROOT), "base_url": MEDIA_URL},
    }
STORAGES = {
    "default": _default_storage,
    "staticfiles": {"BACKEND": "django.contrib.staticfiles.storage.StaticFilesStorage"},
}
# Downloads answer 302 to a presigned URL (the bytes go from storage to the client, not through
# the web process) where the backend can sign URLs (S3); local storage streams (labseg/downloads.py).
LABSEG_PRESIGNED_DOWNLOADS = env.bool("LABSEG_PRESIGNED_DOWNLOADS", default=True)
# Where uploads wait while they are received and checked (resumable parts included). Empty: in
# MEDIA_ROOT/tmp on local storage (same disk: storing is a rename), else VAR_DIR/tmp/uploads on the
# web host (scans/files.py).
LABSEG_UPLOAD_TMP_DIR = env.str("LABSEG_UPLOAD_TMP_DIR", default="")

# Uploads: Django spools bodies above this size to a temporary file, never holding them in memory.
FILE_UPLOAD_MAX_MEMORY_SIZE = 2 * 1024 * 1024
DATA_UPLOAD_MAX_MEMORY_SIZE = 10 * 1024 * 1024
FILE_UPLOAD_TEMP_DIR = str(VAR_DIR / "tmp")
# Every uploaded file is streamed to MEDIA_ROOT/tmp while its sha256 is computed (scans/files.py).
FILE_UPLOAD_HANDLERS = ["scans.files.HashingUploadHandler"]
Path(FILE_UPLOAD_TEMP_DIR).mkdir(parents=True, exist_ok=True)

# Limits for scan validation (see scans/validation.py).
LABSEG_MAX_UPLOAD_BYTES = env.int("LABSEG_MAX_UPLOAD_BYTES", default=4 * 1024**3)
# Storage a lab may fill: its scans plus the declared sizes of its uploads in progress (0: no limit).
LABSEG_LAB_QUOTA_BYTES = env.int("LABSEG_LAB_QUOTA_BYTES", default=0)
# A resumable upload idle this long is abandoned: beat sweeps its session and partial file.
LABSEG_UPLOAD_ABANDON_AFTER_H = env.float("LABSEG_UPLOAD_ABANDON_AFTER_H", default=24.0)
# A deleted scan stays in the bin (restorable) this long; beat then purges it with its files.
# Bearer token for GET /metrics (Prometheus); without one only loopback clients may read it.
LABSEG_METRICS_TOKEN = env.str("LABSEG_METRICS_TOKEN", default="")
LABSEG_BIN_RETENTION_DAYS = env.float("LABSEG_BIN_RETENTION_DAYS", default=30.0)
LABSEG_MAX_VOXELS = env.int("LABSEG_MAX_VOXELS", default=1100**3)
LABSEG_MAX_DIM = env.int("LABSEG_MAX_DIM", default=4096)
LABSEG_MAX_DECOMPRESSED_BYTES = env.int("LABSEG_MAX_DECOMPRESSED_BYTES", default=8 * 1024**3)
LABSEG_ANNOTATION_AFFINE_TOLERANCE_MM = env.float("LABSEG_ANNOTATION_AFFINE_TOLERANCE_MM", default=1e-3)
LABSEG_SEGMENT_ON_UPLOAD = env.bool("LABSEG_SEGMENT_ON_UPLOAD", default=True)
LABSEG_PREVIEW_MAX_BYTES = env.int("LABSEG_PREVIEW_MAX_BYTES", default=64 * 1024**2)
LABSEG_PREVIEW_MAX_VOXELS = env.int("LABSEG_PREVIEW_MAX_VOXELS", default=2_500_000)
# The viewer's first frame grid, and up to which size it refines to full resolution on its own
# (frontend/layers.py).
LABSEG_PREVIEW_FIRST_VOXELS = env.int("LABSEG_PREVIEW_FIRST_VOXELS", default=400_000)
LABSEG_VIEWER_AUTO_FULL_VOXELS = env.int("LABSEG_VIEWER_AUTO_FULL_VOXELS", default=8_000_000)
LABSEG_UPLOAD_CHUNK_BYTES = env.int("LABSEG_UPLOAD_CHUNK_BYTES", default=8 * 1024**2)
# Background jobs (labseg/jobs.py): a running job's worker touches its heartbeat every
# LABSEG_JOB_HEARTBEAT_S (at least 4 times per LABSEG_JOB_TIMEOUT_S); after LABSEG_JOB_LOST_AFTER_BEATS
# missed beats (20 s) its worker is presumed lost and the job is taken over (a redelivered message
# claims it, or beat's reconciler sends it again). A queued job's message is resent after
# LABSEG_JOB_TIMEOUT_S, which also caps the silence allowed to a running job.
LABSEG_JOB_TIMEOUT_S = env.int("LABSEG_JOB_TIMEOUT_S", default=300)
LABSEG_JOB_HEARTBEAT_S = env.float("LABSEG_JOB_HEARTBEAT_S", default=5.0)
LABSEG_JOB_LOST_AFTER_BEATS = env.int("LABSEG_JOB_LOST_AFTER_BEATS", default=4)
LABSEG_JOB_MAX_ATTEMPTS = env.int("LABSEG_JOB_MAX_ATTEMPTS", default=3)
LABSEG_MODELS_DIR = Path(env.str("LABSEG_MODELS_DIR", default=str(BASE_DIR / "inference" / "models")))
# Scans above this many voxels get their consensus computed by a worker (review.tasks), not in the request.
LABSEG_REVIEW_INLINE_MAX_VOXELS = env.int("LABSEG_REVIEW_INLINE_MAX_VOXELS", default=8_000_000)
LABSEG_INFERENCE_THREADS = env.int("LABSEG_INFERENCE_THREADS", default=0)
LABSEG_DEVICE = env.str("LABSEG_DEVICE", default="auto")
# Jobs go to the gpu queue while a live worker consumes it (labseg/fleet.py); the answer is cached.
LABSEG_GPU_WORKERS_CACHE_S = env.float("LABSEG_GPU_WORKERS_CACHE_S", default=10.0)

# Failed token logins per client address and minute before its attempts answer 429.
LABSEG_AUTH_FAILURES_PER_MIN = env.int("LABSEG_AUTH_FAILURES_PER_MIN", default=20)
# API tokens (labs/tokens.py) are stored hashed and expire this many days after they are made.
LABSEG_TOKEN_TTL_DAYS = env.float("LABSEG_TOKEN_TTL_DAYS", default=90.0)
# Sign-in lockout (labs/lockout.py): this many failed sign-ins of one account within the cool-off
# refuse its sign-ins, the right password too, until the oldest failure is LABSEG_LOGIN_COOLOFF_MIN old.
LABSEG_LOGIN_FAILURE_LIMIT = env.int("LABSEG_LOGIN_FAILURE_LIMIT", default=5)
LABSEG_LOGIN_COOLOFF_MIN = env.float("LABSEG_LOGIN_COOLOFF_MIN", default=15.0)

REST_FRAMEWORK = {
    "DEFAULT_AUTHENTICATION_CLASSES": [
        "rest_framework.authentication.SessionAuthentication",
        "labseg.authentication.ThrottledTokenAuthentication",
    ],
    "DEFAULT_PERMISSION_CLASSES": ["rest_framework.permissions.IsAuthenticated"],
    "DEFAULT_PAGINATION_CLASS": "labseg.pagination.BoundedLimitOffsetPagination",
    "PAGE_SIZE": 100,
    # Per client: anonymous requests by address, signed-in ones (session or token) by user.
    "DEFAULT_THROTTLE_CLASSES": [
        "rest_framework.throttling.AnonRateThrottle",
        "rest_framework.throttling.UserRateThrottle",
    ],
    "DEFAULT_THROTTLE_RATES": {  # (bad tokens: LABSEG_AUTH_FAILURES_PER_MIN, labseg/authentication.py)
        "anon": env.str("LABSEG_THROTTLE_ANON", default="60/min"),
        "user": env.str("LABSEG_THROTTLE_USER", default="3000/min"),
    },
    "EXCEPTION_HANDLER": "labseg.refusals.exception_handler",
    "DEFAULT_SCHEMA_CLASS": "drf_spectacular.openapi.AutoSchema",
}

# OpenAPI 3 schema at /api/schema/, Swagger UI at /api/docs/ (labseg/urls.py), for signed-in users.
SPECTACULAR_SETTINGS = {
    "TITLE": "labseg API",
    "DESCRIPTION": "Scans, segmentations, annotations and reviews of your labs (README.md, API).",
    "VERSION": "1",
    "SERVE_INCLUDE_SCHEMA": False,
    "SERVE_PERMISSIONS": ["rest_framework.permissions.IsAuthenticated"],
    "SCHEMA_PATH_PREFIX": "/api/",
    # Importing the hook's module also describes the plain APIViews (labseg/openapi.py).
    "PREPROCESSING_HOOKS": ["labseg.openapi.deduplicate_trailing_slashes"],
    "COMPONENT_SPLIT_REQUEST": True,
    "ENUM_NAME_OVERRIDES": {"AnnotationStatusEnum": "scans.models.Annotation.Status"},
    "SWAGGER_UI_DIST": "SIDECAR",
    "SWAGGER_UI_FAVICON_HREF": "SIDECAR",
    "REDOC_DIST": "SIDECAR",
}

# Celery: the database, not the broker, is the truth about a job (segmentation.models.InferenceJob).
_broker_dir = VAR_DIR / "broker"
CELERY_BROKER_URL = env.str("CELERY_BROKER_URL", default="filesystem://")
if CELERY_BROKER_URL.startswith("filesystem://"):
    for _sub in ("in", "processed", "control"):
        (_broker_dir / _sub).mkdir(parents=True, exist_ok=True)
    CELERY_BROKER_TRANSPORT_OPTIONS = {
        "data_folder_in": str(_broker_dir / "in"),
        "data_folder_out": str(_broker_dir / "in"),
        "processed_folder": str(_broker_dir / "processed"),
        # Exchange tables too, or kombu writes them to ./control in the working directory.
        "control_folder": str(_broker_dir / "control"),
        "store_processed": False,
    }
else:
    CELERY_BROKER_TRANSPORT_OPTIONS = {
        "visibility_timeout": env.int("CELERY_VISIBILITY_TIMEOUT", default=3600)
    }
CELERY_RESULT_BACKEND = None
CELERY_TASK_IGNORE_RESULT = True
CELERY_TASK_ACKS_LATE = True
CELERY_TASK_REJECT_ON_WORKER_LOST = True
CELERY_WORKER_PREFETCH_MULTIPLIER = 1
# A worker's pool process keeps the memory of its largest scan between jobs (the pipeline asks
# glibc to, inference/pipeline/runtime.py keep_freed_memory); one that ends a job holding more than
# this is replaced by a fresh one, so a very large scan cannot pin its memory for good (kB).
CELERY_WORKER_MAX_MEMORY_PER_CHILD = env.int("LABSEG_WORKER_MAX_MEMORY_MB", default=4096) * 1024
CELERY_TASK_DEFAULT_QUEUE = "cpu"
CELERY_TASK_ALWAYS_EAGER = env.bool("CELERY_TASK_ALWAYS_EAGER", default=False)
CELERY_BROKER_CONNECTION_RETRY_ON_STARTUP = True
# Background jobs (labseg/jobs.py): a job whose work reports no progress for LABSEG_JOB_STALL_S stops
# heartbeating; the soft limit fails it with "took longer than ...", the hard one kills the process.
LABSEG_JOB_STALL_S = env.int("LABSEG_JOB_STALL_S", default=900)
LABSEG_JOB_SOFT_TIME_LIMIT_S = env.int("LABSEG_JOB_SOFT_TIME_LIMIT_S", default=3600)
LABSEG_JOB_TIME_LIMIT_S = env.int("LABSEG_JOB_TIME_LIMIT_S", default=LABSEG_JOB_SOFT_TIME_LIMIT_S + 300)
if LABSEG_JOB_TIME_LIMIT_S <= LABSEG_JOB_SOFT_TIME_LIMIT_S:
    raise ImproperlyConfigured(
        "LABSEG_JOB_TIME_LIMIT_S (the hard limit) must be larger than LABSEG_JOB_SOFT_TIME_LIMIT_S, "
        "or a job is killed before it can record why it stopped."
    )
# Often, so that a job whose whole worker was SIGKILLed is sent again within lost + this (30 s):
# Redis would redeliver its unacknowledged message only after the visibility_timeout above.
_reconcile_every_s = env.float("LABSEG_RECONCILE_EVERY_S", default=10.0)
# One reconciler per kind of job, each through labseg.jobs.reconcile.
CELERY_BEAT_SCHEDULE = {
    "sweep-uploads": {"task": "scans.tasks.sweep_uploads_task", "schedule": 3600.0},
    "purge-bin": {"task": "scans.tasks.purge_bin_task", "schedule": 86400.0},
    "reconcile-jobs": {"task": "inference.tasks.reconcile_jobs_task", "schedule": _reconcile_every_s},
    "reconcile-review-analyses": {
        "task": "review.tasks.reconcile_analyses_task",
        "schedule": _reconcile_every_s,
    },
    "reconcile-trainings": {
        "task": "retraining.tasks.reconcile_trainings_task",
        "schedule": _reconcile_every_s,
    },
}
# Training (retraining/): its own queue, served by workers that have torch (requirements-train.txt).
CELERY_TASK_ROUTES = {"retraining.tasks.train_task": {"queue": "train"}}
# A training run is a job like any other: it stops within every job's soft time limit.
LABSEG_TRAIN_MAX_MINUTES = min(
    env.float("LABSEG_TRAIN_MAX_MINUTES", default=30.0), LABSEG_JOB_SOFT_TIME_LIMIT_S / 60.0
)
LABSEG_TRAIN_MAX_MEMORY_MB = env.float("LABSEG_TRAIN_MAX_MEMORY_MB", default=8192.0)
LABSEG_TRAIN_THREADS = env.int("LABSEG_TRAIN_THREADS", default=2)
LABSEG_TRAIN_DEVICE = env.str("LABSEG_TRAIN_DEVICE", default="auto")

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"plain": {"format": "%(asctime)s %(levelname)s %(name)s: %(message)s"}},
    "handlers": {"console": {"class": "logging.StreamHandler", "formatter": "plain"}},
    "root": {"handlers": ["console"], "level": env.str("LABSEG_LOG_LEVEL", default="INFO")},
    "loggers": {"django.db.backends": {"level": "WARNING"}},
}

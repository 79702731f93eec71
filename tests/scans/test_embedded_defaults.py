"""``make run``'s embedded defaults: with no DATABASE_URL and no CELERY_BROKER_URL the project runs on
SQLite and the filesystem broker under LABSEG_VAR_DIR, and a real worker process starts on them."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import REPO

pytestmark = pytest.mark.e2e
# INFO: the worker announces "ready." at that level only.
WORKER_OPTIONS = ["--concurrency", "1", "--pool", "solo", "--loglevel", "INFO"]


def _embedded_env(var_dir: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "CELERY_BROKER_URL")}
    env.update({"LABSEG_VAR_DIR": str(var_dir), "DJANGO_SETTINGS_MODULE": "labseg.settings"})
    env.pop("LABSEG_MEDIA_ROOT", None)
    return env


def test_the_embedded_defaults_use_sqlite_and_the_filesystem_broker(tmp_path):
    env = _embedded_env(tmp_path)
    show = (
        "import django; django.setup(); from django.conf import settings as s; "
        "print(s.DATABASES['default']['ENGINE'], s.DATABASES['default']['NAME'], s.CELERY_BROKER_URL)"
    )

    migrate = subprocess.run(
        [sys.executable, "manage.py", "migrate", "--noinput"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
    )
    shown = subprocess.run([sys.executable, "-c", show], cwd=REPO, env=env, capture_output=True, text=True)

    assert migrate.returncode == 0, migrate.stderr
    engine, name, broker = shown.stdout.split()
    assert (engine, broker) == ("django.db.backends.sqlite3", "filesystem://")
    assert Path(name) == tmp_path / "labseg.sqlite3"
    assert (tmp_path / "broker" / "in").is_dir()


def test_a_real_worker_starts_on_the_filesystem_broker(tmp_path):
    env = _embedded_env(tmp_path)
    log = tmp_path / "worker.log"
    with log.open("wb") as output:
        worker = subprocess.Popen(
            [sys.executable, "-m", "celery", "-A", "labseg", "worker", "-Q", "cpu", *WORKER_OPTIONS],
            cwd=REPO,
            env=env,
            stdout=output,
            stderr=subprocess.STDOUT,
        )
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and b"ready." not in log.read_bytes():
            assert worker.poll() is None, log.read_text()
            time.sleep(0.5)
    finally:
        worker.terminate()
        worker.wait(timeout=30)

    text = log.read_text()
    assert "ready." in text
    assert "filesystem://" in text
    # The broker's exchange tables live under LABSEG_VAR_DIR, not in the working directory.
    assert (tmp_path / "broker" / "control" / "cpu.exchange").is_file()

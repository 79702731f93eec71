"""A worker's pool process is replaced once it holds more than LABSEG_WORKER_MAX_MEMORY_MB."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _limit_seen_by_celery(**env: str) -> int:
    code = (
        "import django; django.setup(); from labseg.celery import app; "
        "print(app.conf.worker_max_memory_per_child)"
    )
    environment = {**os.environ, "DJANGO_SETTINGS_MODULE": "labseg.settings", **env}
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, env=environment, capture_output=True, text=True, check=True
    )
    return int(done.stdout.strip().splitlines()[-1])


def test_the_celery_worker_reads_its_memory_limit_in_kilobytes() -> None:
    assert _limit_seen_by_celery() == 4096 * 1024
    assert _limit_seen_by_celery(LABSEG_WORKER_MAX_MEMORY_MB="1500") == 1500 * 1024

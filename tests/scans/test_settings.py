"""Production settings refuse to start without a secret key and allowed hosts, naming what is missing."""

from __future__ import annotations

import os
import subprocess
import sys

from tests.conftest import REPO

SETUP = "import django; django.setup(); print('started')"


def _start(**environment: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("DJANGO_")}
    env.update({"DJANGO_SETTINGS_MODULE": "labseg.settings", "DJANGO_DEBUG": "false", **environment})
    return subprocess.run(
        [sys.executable, "-c", SETUP], cwd=REPO, env=env, capture_output=True, text=True, timeout=60
    )


def test_production_refuses_to_start_without_secret_and_hosts():
    result = _start()

    assert result.returncode != 0
    assert "DJANGO_SECRET_KEY and DJANGO_ALLOWED_HOSTS" in result.stderr


def test_production_names_the_one_missing_setting():
    result = _start(DJANGO_SECRET_KEY="s" * 50)

    assert result.returncode != 0
    assert "without DJANGO_ALLOWED_HOSTS" in result.stderr


def test_production_starts_with_both():
    result = _start(DJANGO_SECRET_KEY="s" * 50, DJANGO_ALLOWED_HOSTS="labseg.example.org")

    assert result.returncode == 0, result.stderr
    assert "started" in result.stdout

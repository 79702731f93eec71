"""Fixtures of the browser tests: Debian's Chromium through Playwright, a real Celery worker on
the test database (Redis DB 4), the tiny deterministic models, and a signed-in page.

Screenshots go to ``test-artifacts/browser/`` at the repository root.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from django.conf import settings as django_settings
from django.db import connection

from labs.models import Lab
from segmentation import services
from segmentation.models import ModelVersion
from tests.factories import LabFactory, member_of
from tests.segmentation.tiny import write_tiny_models

# Playwright's sync API keeps an asyncio loop running in this thread, which Django's ORM guard
# mistakes for async code; the tests only call the ORM synchronously, between browser steps.
os.environ.setdefault("DJANGO_ALLOW_ASYNC_UNSAFE", "true")

REPO = Path(__file__).resolve().parents[2]
ARTIFACTS = REPO / "test-artifacts" / "browser"
NIIVUE = REPO / "frontend" / "static" / "vendor" / "niivue" / "niivue.js"
CELERY = Path(sys.executable).with_name("celery")
PASSWORD = "labseg-pass-123"
#: Messages a deliberately cut request leaves in the console; anything else fails a test.
EXPECTED_CONSOLE = ("net::ERR_CONNECTION_RESET",)


class ConsoleLog:
    """Console errors and uncaught exceptions of a page, minus the expected ones (a test adds to
    ``expected`` what it provokes on purpose, such as a refused upload's status line)."""

    def __init__(self) -> None:
        self.messages: list[str] = []
        self.expected: list[str] = list(EXPECTED_CONSOLE)

    def record(self, kind: str, text: str) -> None:
        if not any(expected in text for expected in self.expected):
            self.messages.append(f"{kind}: {text}")


@pytest.fixture
def lab() -> Lab:
    return LabFactory.create(name="Tumor Lab")


@pytest.fixture
def researcher(lab: Lab) -> Any:
    return member_of(lab, username="rita")


@pytest.fixture
def open_page(browser: Any, live_server: Any) -> Iterator[Callable[..., tuple[Any, ConsoleLog]]]:
    """``open_page(user)`` -> (a page signed in as ``user`` through the login form, its console)."""
    contexts = []

    def open_(user: Any, *, width: int = 1440, height: int = 900) -> tuple[Any, ConsoleLog]:
        context = browser.new_context(viewport={"width": width, "height": height}, accept_downloads=True)
        contexts.append(context)
        page = context.new_page()
        page.set_default_timeout(30_000)
        console = ConsoleLog()
        page.on("console", lambda m: console.record(m.type, m.text) if m.type == "error" else None)
        page.on("pageerror", lambda e: console.record("pageerror", str(e)))
        # The console names no URL for a failed request: record server errors with theirs.
        page.on(
            "response",
            lambda r: console.record("server error", f"{r.status} {r.url}") if r.status >= 500 else None,
        )
        page.goto(f"{live_server.url}/login/")
        page.fill("#id_username", user.username)
        page.fill("#id_password", PASSWORD)
        page.click("button[type=submit]")
        page.wait_for_url(f"{live_server.url}/")
        return page, console

    yield open_
    for context in contexts:
        context.close()


def screenshot(page: Any, name: str) -> Path:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    path = ARTIFACTS / f"{name}.png"
    page.screenshot(path=str(path), full_page=True)
    return path


@pytest.fixture(scope="session")
def tiny_models_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_models(tmp_path_factory.mktemp("models"))


@pytest.fixture
def tiny_models(transactional_db: Any, settings: Any, tiny_models_root: Path) -> dict[str, ModelVersion]:
    """The tiny organ and lesion models (deterministic ONNX models, tests/segmentation/tiny.py)."""
    settings.LABSEG_MODELS_DIR = tiny_models_root
    services.sync_models(root=tiny_models_root)
    return {mv.task: mv for mv in ModelVersion.objects.filter(is_default=True)}


class Worker:
    """A real ``celery worker`` process on the test database and this process's broker."""

    def __init__(self, tmp_path: Path, media_root: Path) -> None:
        self.log_path = tmp_path / "worker.log"
        env = {
            **os.environ,
            "DATABASE_URL": f"postgres://postgres@127.0.0.1:5432/{connection.settings_dict['NAME']}",
            "CELERY_BROKER_URL": django_settings.CELERY_BROKER_URL,
            "LABSEG_MEDIA_ROOT": str(media_root),
            "LABSEG_VAR_DIR": str(tmp_path / "var"),
            "LABSEG_INFERENCE_THREADS": "1",
            "DJANGO_SETTINGS_MODULE": "labseg.settings",
        }
        command = [
            str(CELERY), "-A", "labseg", "worker", "-Q", "cpu,gpu", "-c", "1", "--pool", "solo",
            "-n", "browser@%h", "--without-gossip", "--without-mingle", "-l", "info",
        ]  # fmt: skip
        with self.log_path.open("wb") as log:
            self.process = subprocess.Popen(
                command, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
            )

    def stop(self) -> None:
        os.killpg(self.process.pid, signal.SIGTERM)
        try:
            self.process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=10)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-4000:]


@pytest.fixture
def worker(transactional_db: Any, tmp_path: Path, media_root: Path) -> Iterator[Worker]:
    """A worker process; messages left in the job queues by earlier runs are purged first."""
    from labseg.celery import app as celery_app

    if not django_settings.CELERY_BROKER_URL.startswith("redis://"):
        pytest.fail(
            "the browser tests need a Redis broker, such as CELERY_BROKER_URL=redis://127.0.0.1:6379/4"
        )
    with celery_app.connection_for_write() as connection:
        for queue in ("cpu", "gpu"):
            connection.default_channel.queue_purge(queue)
    started = Worker(tmp_path, media_root)
    deadline = time.monotonic() + 30
    while "ready" not in started.log() and time.monotonic() < deadline:
        time.sleep(0.2)
    try:
        yield started
    finally:
        started.stop()

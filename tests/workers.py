"""Real worker processes for the end-to-end tests: a private Redis and ``celery worker`` subprocesses.

Each test that uses ``workers`` gets a private ``redis-server`` (the shared one on 6379 serves
other test runs, and some tests stop or restart their broker) and ``celery worker`` subprocesses
against pytest-django's test database and the test's MEDIA_ROOT. Jobs time out after
``JOB_TIMEOUT_S`` without a heartbeat and beat reconciles every second, so a lost worker is
noticed within seconds; a test changes any other setting per worker with ``start(env=...)``.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import kombu.pools
import pytest
from django.db import connection

from labseg.celery import app as celery_app

REPO = Path(__file__).resolve().parents[1]
#: Seconds without a heartbeat before a running job counts as lost (workers heartbeat 4x as often).
JOB_TIMEOUT_S = 3


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


class PrivateRedis:
    """A throw-away ``redis-server`` without persistence: a restart loses every queued message."""

    def __init__(self, folder: Path) -> None:
        self.port = free_port()
        self.folder = folder
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        self.process = subprocess.Popen(
            [
                "redis-server",
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
            ],
            cwd=self.folder,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 10
        while self.cli("ping") != "PONG":
            assert time.monotonic() < deadline, "the private redis-server did not start"
            time.sleep(0.05)

    def stop(self) -> None:
        if self.process is not None:
            self.cli("shutdown", "nosave")
            self.process.wait(timeout=10)
            self.process = None

    def cli(self, *args: str) -> str:
        done = subprocess.run(
            ["redis-cli", "-p", str(self.port), *args],
            capture_output=True,
            text=True,
            timeout=10,
            check=False,
        )
        return done.stdout.strip()

    def queued_tasks(self, queue: str = "cpu") -> list[str]:
        """Task names of the messages waiting in ``queue`` (an upload also queues its previews
        there: frontend/apps.py)."""
        raw = self.cli("--raw", "lrange", queue, "0", "-1")
        return [json.loads(line)["headers"]["task"] for line in raw.splitlines() if line.strip()]


def private_broker(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[PrivateRedis]:
    """A private Redis, and this process's Celery app pointed at it (its pools rebuilt).

    The body of a test module's ``broker`` fixture: ``yield from private_broker(...)``.
    """
    redis = PrivateRedis(tmp_path)
    redis.start()
    try:
        with point_celery_at(monkeypatch, redis.url):
            yield redis
    finally:
        redis.stop()


@contextlib.contextmanager
def point_celery_at(monkeypatch: pytest.MonkeyPatch, url: str) -> Iterator[None]:
    """This process's Celery app sends to ``url`` within the block (its connection pools rebuilt)."""
    with monkeypatch.context() as patch:
        # Celery reads CELERY_BROKER_URL from the environment before its own configuration.
        patch.setenv("CELERY_BROKER_URL", url)
        reset_celery_pools()
        try:
            yield
        finally:
            patch.undo()
            reset_celery_pools()


def reset_celery_pools() -> None:
    # Celery takes its pool from kombu's process-wide registry, keyed by broker URL: a pool closed
    # here would be handed back, closed, the next time that URL is used ("Acquire on closed
    # pool"), so the registry is emptied too.
    kombu.pools.reset()
    celery_app._pool = None
    celery_app.amqp._producer_pool = None


class Workers:
    """``celery worker`` subprocesses on the test database, each in its own process group."""

    def __init__(self, tmp_path: Path, media_root: Path, broker_url: str) -> None:
        self.tmp_path = tmp_path
        self.env = {
            **os.environ,
            "DATABASE_URL": f"postgres://postgres@127.0.0.1:5432/{connection.settings_dict['NAME']}",
            "CELERY_BROKER_URL": broker_url,
            "LABSEG_MEDIA_ROOT": str(media_root),
            "LABSEG_VAR_DIR": str(tmp_path / "var"),
            "LABSEG_JOB_TIMEOUT_S": str(JOB_TIMEOUT_S),
            "LABSEG_RECONCILE_EVERY_S": "1",
            "LABSEG_INFERENCE_THREADS": "1",
            "DJANGO_SETTINGS_MODULE": "labseg.settings",
        }
        self.running: dict[str, subprocess.Popen[bytes]] = {}

    def start(
        self,
        name: str,
        *,
        with_beat: bool = False,
        env: dict[str, str] | None = None,
        queues: str = "cpu,gpu",
        wrap: Callable[[list[str]], list[str]] | None = None,
    ) -> subprocess.Popen[bytes]:
        """``queues``: what it consumes; ``wrap``: runs the command elsewhere (another network
        namespace: tests/fleet/hosts.py)."""
        command = [
            sys.executable, "-m", "celery", "-A", "labseg", "worker",
            "-Q", queues, "-c", "1", "--pool", "prefork",
            "-n", f"{name}@%h", "--without-gossip", "--without-mingle", "-l", "info",
        ]  # fmt: skip
        if with_beat:  # the reconciler runs through beat, embedded in this worker
            command += ["-B", "-s", str(self.tmp_path / f"beat-{name}")]
        log = (self.tmp_path / f"{name}.log").open("wb")
        process = subprocess.Popen(
            wrap(command) if wrap else command,
            cwd=REPO,
            env={**self.env, **(env or {})},
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        self.running[name] = process
        return process

    def kill(self, name: str) -> None:
        """SIGKILL the worker and its pool processes at once: no clean shutdown, no ack."""
        process = self.running.pop(name)
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=10)

    def stop_all(self) -> None:
        for name in list(self.running):
            process = self.running.pop(name)
            os.killpg(process.pid, signal.SIGTERM)
            try:
                process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait(timeout=10)

    def logs(self) -> str:
        return "\n".join(
            f"--- {p.name}\n{p.read_text()[-3000:]}" for p in sorted(self.tmp_path.glob("*.log"))
        )


def started_workers(tmp_path: Path, media_root: Path, broker: PrivateRedis) -> Iterator[Workers]:
    """The body of a test module's ``workers`` fixture: every worker is stopped at the end."""
    started = Workers(tmp_path, media_root, broker.url)
    try:
        yield started
    finally:
        started.stop_all()


def wait_for(condition: Callable[[], Any], *, timeout_s: float, what: str, workers: Workers) -> Any:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out after {timeout_s} s waiting for {what}\n{workers.logs()}")

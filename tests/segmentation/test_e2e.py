"""End to end with real worker processes on Redis and PostgreSQL.

Each test starts a private ``redis-server`` (the shared one on 6379 serves other test runs, and one
test restarts its broker) and ``celery worker`` subprocesses against pytest-django's test database.
Jobs are slowed down only by what real work costs: a bigger scan.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from django.db import connection
from rest_framework.test import APIClient

from labseg.celery import app as celery_app
from scans.models import Scan
from segmentation import services
from segmentation.models import InferenceJob, ModelVersion, Prediction

from .tiny import write_phantom

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]

REPO = Path(__file__).resolve().parents[2]
#: Seconds without a heartbeat before a running job counts as lost (workers heartbeat 4x as often).
JOB_TIMEOUT_S = 3
#: A scan big enough that a job is still running when the test kills its worker.
SLOW_SHAPE = (224, 192, 192)


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


class PrivateRedis:
    """A throw-away ``redis-server`` without persistence: a restart loses every queued message."""

    def __init__(self, folder: Path) -> None:
        self.port = _free_port()
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


@pytest.fixture
def broker(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[PrivateRedis]:
    """A private Redis, and this process's Celery app pointed at it (its pools rebuilt)."""
    redis = PrivateRedis(tmp_path)
    redis.start()
    # Celery reads CELERY_BROKER_URL from the environment before its own configuration.
    monkeypatch.setenv("CELERY_BROKER_URL", redis.url)
    _reset_celery_pools()
    try:
        yield redis
    finally:
        monkeypatch.undo()
        _reset_celery_pools()
        redis.stop()


def _reset_celery_pools() -> None:
    if celery_app._pool is not None:
        celery_app._pool.force_close_all()
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

    def start(self, name: str, *, with_beat: bool = False) -> subprocess.Popen[bytes]:
        command = [
            sys.executable, "-m", "celery", "-A", "labseg", "worker",
            "-Q", "cpu,gpu", "-c", "1", "--pool", "prefork",
            "-n", f"{name}@%h", "--without-gossip", "--without-mingle", "-l", "info",
        ]  # fmt: skip
        if with_beat:  # the reconciler runs through beat, embedded in this worker
            command += ["-B", "-s", str(self.tmp_path / f"beat-{name}")]
        log = (self.tmp_path / f"{name}.log").open("wb")
        process = subprocess.Popen(
            command, cwd=REPO, env=self.env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
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


@pytest.fixture
def workers(tmp_path: Path, media_root: Path, broker: PrivateRedis) -> Iterator[Workers]:
    started = Workers(tmp_path, media_root, broker.url)
    try:
        yield started
    finally:
        started.stop_all()


def _wait_for(condition: Callable[[], Any], *, timeout_s: float, what: str, workers: Workers) -> Any:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out after {timeout_s} s waiting for {what}\n{workers.logs()}")


def _all_finished(jobs: list[InferenceJob]) -> bool:
    states = InferenceJob.objects.filter(pk__in=[j.pk for j in jobs]).values_list("state", flat=True)
    return all(state in ("succeeded", "failed", "cancelled") for state in states)


@pytest.fixture
def e2e_models(models: dict[str, ModelVersion]) -> dict[str, ModelVersion]:
    if shutil.which("redis-server") is None:
        pytest.fail("the end-to-end tests need redis-server on PATH")
    return models


def test_an_upload_through_the_api_is_segmented_by_a_real_worker(
    e2e_models: dict[str, ModelVersion], workers: Workers, member: Any, tmp_path: Path, settings: Any
) -> None:
    settings.LABSEG_SEGMENT_ON_UPLOAD = True
    client = APIClient()
    client.force_authenticate(member)
    workers.start("w1")
    path = write_phantom(tmp_path / "upload.nii.gz", seed=7)

    with path.open("rb") as handle:
        uploaded = client.post(
            "/api/scans/",
            {"file": handle, "study": "E2E study", "mouse": "M07", "time_point": "0h"},
            format="multipart",
        )
    assert uploaded.status_code == 201, uploaded.content
    scan_id = uploaded.json()["id"]
    requested = client.post(f"/api/scans/{scan_id}/segment")
    assert requested.status_code == 202
    jobs = requested.json()["jobs"]
    assert [j["model"]["label"] for j in jobs] == ["tiny-organs@1.0.0", "tiny-lesions@1.0.0"]

    def finished() -> list[dict[str, Any]] | None:
        states = [client.get(j["url"]).json() for j in jobs]
        return states if all(s["state"] in ("succeeded", "failed") for s in states) else None

    final = _wait_for(finished, timeout_s=60, what="both jobs", workers=workers)
    for job in final:
        assert job["state"] == "succeeded", f"{job['error']}\n{workers.logs()}"
        assert job["worker_host"].startswith("w1@") and job["attempts"] == 1 and job["progress"] == 100
    predictions = {p["model"]["label"]: p for p in client.get(f"/api/scans/{scan_id}/predictions/").json()}
    assert {v["name"] for v in predictions["tiny-organs@1.0.0"]["volumes"]} == {"liver", "heart"}
    lesions = predictions["tiny-lesions@1.0.0"]["lesions"]
    assert sorted((les["organ_name"], les["allocation"]) for les in lesions) == [
        ("liver", "centroid"),
        ("subcutaneous/other", "none"),
    ]
    assert predictions["tiny-lesions@1.0.0"]["metastasis_counts"]["liver"] == 1
    assert Prediction.objects.filter(scan_id=scan_id).count() == 2


def test_a_job_whose_worker_is_killed_completes_once_on_a_new_worker(
    e2e_models: dict[str, ModelVersion], upload_scan: Callable[..., Scan], workers: Workers
) -> None:
    scan = upload_scan(shape=SLOW_SHAPE)
    workers.start("doomed")
    [job] = services.request_segmentation(scan=scan, model_versions=[e2e_models["organs"]])
    _wait_for(
        lambda: InferenceJob.objects.filter(pk=job.pk, state="running", progress__gt=3).exists(),
        timeout_s=60,
        what="the first worker to be inside the pipeline",
        workers=workers,
    )

    workers.kill("doomed")
    job.refresh_from_db()
    assert job.state == "running" and job.worker_host.startswith("doomed@")
    workers.start("rescuer", with_beat=True)

    _wait_for(lambda: _all_finished([job]), timeout_s=90, what="the job to finish again", workers=workers)
    job.refresh_from_db()
    assert job.state == "succeeded", f"{job.error}\n{workers.logs()}"
    assert job.worker_host.startswith("rescuer@")
    assert job.attempts == 2
    assert Prediction.objects.filter(scan=scan).count() == 1


def test_jobs_queued_when_the_broker_restarts_are_not_lost(
    e2e_models: dict[str, ModelVersion],
    upload_scan: Callable[..., Scan],
    workers: Workers,
    broker: PrivateRedis,
) -> None:
    scans = [upload_scan(mouse=f"M0{n}", segment=True) for n in (1, 2)]
    jobs = list(InferenceJob.objects.filter(scan__in=scans))
    assert len(jobs) == 4 and int(broker.cli("llen", "cpu")) == 4

    broker.stop()
    broker.start()
    assert int(broker.cli("llen", "cpu") or 0) == 0, "the restart should have lost the queued messages"
    workers.start("after-restart", with_beat=True)

    _wait_for(lambda: _all_finished(jobs), timeout_s=90, what="every queued job", workers=workers)
    assert set(InferenceJob.objects.filter(pk__in=[j.pk for j in jobs]).values_list("state", flat=True)) == {
        "succeeded"
    }
    assert Prediction.objects.filter(scan__in=scans).count() == 4

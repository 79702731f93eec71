"""End to end with real worker processes on Redis and PostgreSQL.

Each test starts a private ``redis-server`` (the shared one on 6379 serves other test runs, and one
test restarts its broker) and ``celery worker`` subprocesses against pytest-django's test database
(see ``tests/workers.py``). Jobs are slowed down only by what real work costs: a bigger scan.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from rest_framework.test import APIClient

from scans.models import Scan
from segmentation import services
from segmentation.models import InferenceJob, ModelVersion, Prediction
from tests.workers import PrivateRedis, Workers, private_broker, started_workers, wait_for

from .tiny import write_phantom

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]

#: A scan big enough that a job is still running when the test kills its worker.
SLOW_SHAPE = (224, 192, 192)


@pytest.fixture
def broker(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[PrivateRedis]:
    yield from private_broker(tmp_path, monkeypatch)


@pytest.fixture
def workers(tmp_path: Path, media_root: Path, broker: PrivateRedis) -> Iterator[Workers]:
    yield from started_workers(tmp_path, media_root, broker)


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

    final = wait_for(finished, timeout_s=60, what="both jobs", workers=workers)
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
    wait_for(
        lambda: InferenceJob.objects.filter(pk=job.pk, state="running", progress__gt=3).exists(),
        timeout_s=60,
        what="the first worker to be inside the pipeline",
        workers=workers,
    )

    workers.kill("doomed")
    job.refresh_from_db()
    assert job.state == "running" and job.worker_host.startswith("doomed@")
    workers.start("rescuer", with_beat=True)

    wait_for(lambda: _all_finished([job]), timeout_s=90, what="the job to finish again", workers=workers)
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
    assert len(jobs) == 4 and broker.queued_tasks().count(InferenceJob.task_name) == 4

    broker.stop()
    broker.start()
    assert int(broker.cli("llen", "cpu") or 0) == 0, "the restart should have lost the queued messages"
    workers.start("after-restart", with_beat=True)

    wait_for(lambda: _all_finished(jobs), timeout_s=90, what="every queued job", workers=workers)
    assert set(InferenceJob.objects.filter(pk__in=[j.pk for j in jobs]).values_list("state", flat=True)) == {
        "succeeded"
    }
    assert Prediction.objects.filter(scan__in=scans).count() == 4

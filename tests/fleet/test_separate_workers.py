"""Workers as separate hosts: each worker (and beat) in a network namespace of its own, with private
temp, var and media folders, reaching PostgreSQL and Redis only over TCP (``tests/fleet/fleet.py``).

Scans are uploaded through the API by this process (the web); the workers share the work, every
(scan, model) gets exactly one prediction, and a worker killed mid-job has its job finished by the
other. With S3 storage (moto's server over HTTP, ``tests/s3.py``) the hosts share no file at all;
with local storage the media folder is the one thing shared (as an NFS mount would be).
"""

from __future__ import annotations

import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from django.core.files.storage import default_storage
from rest_framework.test import APIClient

from scans.models import Scan
from segmentation import services
from segmentation.models import InferenceJob, ModelVersion, Prediction
from tests.fleet.fleet import Fleet
from tests.s3 import S3Server, s3_server, use_bucket
from tests.segmentation.tiny import write_phantom
from tests.workers import PrivateRedis, wait_for

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]

#: A scan big enough that a job is still running when the test kills its worker.
SLOW_SHAPE = (224, 192, 192)
FINISHED = ("succeeded", "failed", "cancelled")


@pytest.fixture(scope="module")
def s3(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
    yield from s3_server(tmp_path_factory.mktemp("s3"))


@pytest.fixture(params=["s3", "local"])
def fleet(
    request: pytest.FixtureRequest,
    tmp_path: Path,
    media_root: Path,
    broker: PrivateRedis,
    models: Any,
    settings: Any,
) -> Iterator[Fleet]:
    if shutil.which("redis-server") is None:
        pytest.fail("the fleet tests need redis-server on PATH")
    root = tmp_path / "fleet"
    root.mkdir()
    if request.param == "s3":
        server: S3Server = request.getfixturevalue("s3")
        bucket = server.new_bucket()
        use_bucket(settings, bucket)
        made = Fleet(root, broker_port=broker.port, storage_env=bucket.env, s3_port=server.port)
    else:
        made = Fleet(root, broker_port=broker.port, shared_media=media_root)
    try:
        yield made
    finally:
        made.close()


def _finished(job_ids: list[int]) -> bool:
    states = InferenceJob.objects.filter(pk__in=job_ids).values_list("state", flat=True)
    return len(states) == len(job_ids) and all(state in FINISHED for state in states)


def test_two_worker_hosts_share_the_uploads_with_one_prediction_per_scan_and_model(
    fleet: Fleet,
    models: dict[str, ModelVersion],
    member: Any,
    tmp_path: Path,
    settings: Any,
    media_root: Path,
) -> None:
    settings.LABSEG_SEGMENT_ON_UPLOAD = True
    fleet.start("hostA")
    fleet.start("hostB")
    fleet.start_beat()
    fleet.wait_ready(["hostA", "hostB"])
    if fleet.namespaces:  # a host reaches PostgreSQL through its gateway only, not this loopback
        host = fleet.hosts["hostA"]
        assert host.reaches(host.gateway, fleet.db_port)
        assert not host.reaches("127.0.0.1", fleet.db_port)
    client = APIClient()
    client.force_authenticate(member)

    scan_ids = []
    for n in range(6):
        path = write_phantom(tmp_path / f"upload{n}.nii.gz", seed=100 + n)
        with path.open("rb") as handle:
            answer = client.post(
                "/api/scans/",
                {"file": handle, "study": "Fleet", "mouse": f"M{n:02}", "time_point": "0h"},
                format="multipart",
            )
        assert answer.status_code == 201, answer.content
        scan_ids.append(answer.json()["id"])
    job_ids = list(InferenceJob.objects.filter(scan_id__in=scan_ids).values_list("pk", flat=True))
    assert len(job_ids) == 12

    wait_for(lambda: _finished(job_ids), timeout_s=120, what="all 12 jobs", workers=fleet.workers)

    jobs = InferenceJob.objects.filter(pk__in=job_ids)
    assert set(jobs.values_list("state", flat=True)) == {"succeeded"}, fleet.workers.logs()
    hosts = {host.split("@")[0] for host in jobs.values_list("worker_host", flat=True)}
    assert hosts == {"hostA", "hostB"}, "both worker hosts should have taken jobs"
    pairs = list(Prediction.objects.filter(scan_id__in=scan_ids).values_list("scan_id", "model_version_id"))
    assert len(pairs) == len(set(pairs)) == 12
    for n, scan_id in enumerate(scan_ids):
        answer = client.get(f"/api/scans/{scan_id}/predictions/")
        assert answer.status_code == 200 and len(answer.json()) == 2, f"scan {n}: {answer.content!r}"
    # Every worker's copies of scans are gone, and nothing landed in its private media folder.
    for name in ("hostA", "hostB"):
        private = fleet.root / f"host-{name}"
        left = [p.name for p in (private / "tmp").iterdir() if p.name.startswith("labseg-")]
        assert not left, f"{name} left temporary files: {left}"
        assert not any((private / "media").rglob("*.nii.gz")), f"{name} wrote to its private media"
    if fleet.shared_media is None:  # S3: every file is an object, none on any disk
        assert not any(media_root.rglob("*.nii.gz"))
        for prediction in Prediction.objects.filter(scan_id__in=scan_ids):
            assert default_storage.exists(prediction.labels.name)


@pytest.mark.parametrize("fleet", ["s3"], indirect=True)
def test_a_worker_host_killed_mid_job_has_its_job_finished_by_the_other(
    fleet: Fleet, models: dict[str, ModelVersion], upload_scan: Callable[..., Scan]
) -> None:
    scan = upload_scan(shape=SLOW_SHAPE)
    fleet.start("hostA")
    fleet.start("hostB")
    fleet.start_beat()
    fleet.wait_ready(["hostA", "hostB"])
    [job] = services.request_segmentation(scan=scan, model_versions=[models["organs"]])
    wait_for(
        lambda: InferenceJob.objects.filter(pk=job.pk, state="running", progress__gt=3).exists(),
        timeout_s=60,
        what="a worker to be inside the pipeline",
        workers=fleet.workers,
    )
    job.refresh_from_db()
    doomed = job.worker_host.split("@")[0]
    survivor = {"hostA": "hostB", "hostB": "hostA"}[doomed]

    fleet.kill(doomed)

    wait_for(lambda: _finished([job.pk]), timeout_s=90, what="the job to finish again", workers=fleet.workers)
    job.refresh_from_db()
    assert job.state == "succeeded", f"{job.error}\n{fleet.workers.logs()}"
    assert job.worker_host.startswith(f"{survivor}@") and job.attempts == 2
    assert Prediction.objects.filter(scan=scan).count() == 1

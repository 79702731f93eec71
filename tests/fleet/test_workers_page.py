"""The "Workers and queues" page: a real worker is seen, the broker's queue depth and the lab's
jobs are shown, and only the lab's admins may open it."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from django.test import Client
from django.utils import timezone

from labs.models import Lab, Membership
from scans.models import Scan
from segmentation import services
from segmentation.models import InferenceJob, ModelVersion
from tests.factories import LabFactory, member_of
from tests.workers import PrivateRedis, Workers, started_workers, wait_for

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]


@pytest.fixture
def workers(tmp_path: Path, media_root: Path, broker: PrivateRedis) -> Iterator[Workers]:
    yield from started_workers(tmp_path, media_root, broker)


def test_a_lab_admin_sees_the_live_worker_the_queue_depth_and_the_labs_jobs(
    models: dict[str, ModelVersion],
    upload_scan: Callable[..., Scan],
    workers: Workers,
    broker: PrivateRedis,
    lab: Lab,
) -> None:
    admin = member_of(lab, role=Membership.Role.ADMIN, username="boss")
    other_lab = LabFactory.create(name="Other Lab")
    scan = upload_scan()
    hidden = upload_scan(in_lab=other_lab, user=member_of(other_lab), mouse="X1")
    # Three messages wait in the cpu queue (no worker consumes it yet), one job has failed.
    # Three jobs wait in the cpu queue (no worker consumes it), one of this lab's has failed.
    queued = services.request_segmentation(scan=scan, model_versions=[models["organs"], models["tumor"]])
    services.request_segmentation(scan=hidden, model_versions=[models["organs"]])
    # The broker holds these three and whatever else uploads queue (the page shows its LLEN).
    waiting = int(broker.cli("llen", "cpu"))
    assert waiting >= 3
    InferenceJob.objects.filter(pk=queued[1].pk).update(
        state="failed", finished_at=timezone.now(), error="The scan could not be read."
    )
    workers.start("page-worker", queues="gpu")
    wait_for(
        lambda: " ready." in (workers.tmp_path / "page-worker.log").read_text(errors="replace"),
        timeout_s=60,
        what="the worker",
        workers=workers,
    )
    client = Client()
    client.force_login(admin)

    dashboard = client.get("/")
    answer = client.get("/workers/")

    assert 'href="/workers/"' in dashboard.content.decode()
    assert answer.status_code == 200
    html = answer.content.decode()
    assert "page-worker@" in html and "A worker consumes the gpu queue" in html
    assert f'<tr class="queue" data-queue="cpu"><td>cpu</td><td>{waiting}</td>' in html
    assert '<span class="count-queued">1</span> queued' in html
    assert '<span class="count-failed">1</span> failed in the last day' in html
    assert "The scan could not be read." in html
    assert f"scan {hidden.pk}<" not in html, "another lab's job is not listed"


def test_members_and_reviewers_are_refused(lab: Lab) -> None:
    client = Client()
    for role in (Membership.Role.MEMBER, Membership.Role.REVIEWER):
        client.force_login(member_of(lab, role=role))
        assert client.get("/workers/").status_code == 403
        assert 'href="/workers/"' not in client.get("/").content.decode()


def test_no_worker_is_said_in_words(lab: Lab, broker: PrivateRedis, settings: Any) -> None:
    client = Client()
    client.force_login(member_of(lab, role=Membership.Role.ADMIN))

    html = client.get("/workers/").content.decode()

    assert "No worker answered within a second" in html

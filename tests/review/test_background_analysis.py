"""Large scans are analysed by a worker: a ReviewAnalysis row, a task that claims it once."""

from __future__ import annotations

import pytest
from rest_framework.test import APIClient

from review.models import Consensus, ReviewAnalysis
from review.services import approve_annotation
from review.tasks import analyse_scan_task

pytestmark = pytest.mark.django_db


def post_consensus(user, scan, body):  # type: ignore[no-untyped-def]
    client = APIClient()
    client.force_authenticate(user)
    return client.post(f"/api/scans/{scan.pk}/consensus", body, format="json")


def approved(tumor_scan, reviewer):  # type: ignore[no-untyped-def]
    scan, annotations = tumor_scan()
    for a in annotations:
        approve_annotation(annotation=a, reviewer=reviewer)
    return scan


def test_a_large_scan_is_queued_once_and_the_task_computes_it(
    tumor_scan, reviewer, settings, django_capture_on_commit_callbacks
):
    settings.LABSEG_REVIEW_INLINE_MAX_VOXELS = 1000
    scan = approved(tumor_scan, reviewer)

    with django_capture_on_commit_callbacks() as callbacks:
        first = post_consensus(reviewer, scan, {})
        second = post_consensus(reviewer, scan, {"structures": ["tumor"]})

    assert (first.status_code, second.status_code) == (202, 202)
    assert first.json()["analysis"]["state"] == "queued"
    assert first.json()["analysis"]["id"] == second.json()["analysis"]["id"]
    assert len(callbacks) == 1  # one message, sent after the row was committed
    analysis = ReviewAnalysis.objects.get()

    assert analyse_scan_task(analysis.pk) == "succeeded"
    assert analyse_scan_task(analysis.pk) == "not claimed"
    analysis.refresh_from_db()
    assert analysis.finished_at is not None and analysis.error == ""
    assert Consensus.objects.filter(scan=scan).count() == 1


def test_a_background_analysis_without_enough_approvals_fails_with_a_plain_message(tumor_scan, reviewer):
    scan, _ = tumor_scan()

    response = post_consensus(reviewer, scan, {"background": True})
    state = analyse_scan_task(response.json()["analysis"]["id"])

    analysis = ReviewAnalysis.objects.get()
    assert (state, analysis.state) == ("failed", "failed")
    assert "at least two approved annotations" in analysis.error

"""People's decisions on the server: a flagged prediction is held back from charts, cohort means
and humane-endpoint alerts until a reviewer accepts it; an excluded lesion leaves volumes, counts,
CSVs and charts; every decision is recorded; CSVs carry qc_status."""

from __future__ import annotations

import csv
import io
from collections.abc import Callable
from typing import Any

import pytest
from rest_framework.test import APIClient

from frontend import results
from inference.structures import BY_NAME
from labs.models import Lab, Membership
from scans.models import Scan
from segmentation import services
from segmentation.models import InferenceJob, LesionReview, ModelVersion, Prediction, QCReview
from tests.factories import LabFactory, member_of

pytestmark = pytest.mark.django_db

BED_LESION = {
    "code": "lesion_outside_body",
    "structure": "tumor",
    "message": "1 lesion(s), 320 voxels, lie mostly outside the mouse's body (on the animal bed, ...)",
}


def _client(user: Any) -> APIClient:
    api = APIClient()
    api.force_authenticate(user)
    return api


def _segmented(scan: Scan) -> dict[str, Prediction]:
    for job in services.request_segmentation(scan=scan):
        finished = services.run_job(job.pk, worker_host="test-worker")
        assert finished is not None and finished.state == InferenceJob.State.SUCCEEDED
    return {p.model_version.task: p for p in Prediction.objects.filter(scan=scan)}


def _flag(prediction: Prediction) -> None:
    # What the pipeline writes for a lesion on the animal bed (inference.pipeline.qc).
    manifest = {**prediction.manifest, "qc": {"status": "needs_review", "reasons": [BED_LESION]}}
    Prediction.objects.filter(pk=prediction.pk).update(manifest=manifest)


def _csv(response: Any) -> list[dict[str, str]]:
    assert response.status_code == 200
    return list(csv.DictReader(io.StringIO(b"".join(response.streaming_content).decode())))


def test_every_run_records_a_qc_verdict_in_its_manifest(
    models: dict[str, ModelVersion], upload_scan: Callable[..., Scan], member: Any
) -> None:
    scan = upload_scan()
    predictions = _segmented(scan)

    body = _client(member).get(f"/api/predictions/{predictions['tumor'].pk}/").json()

    assert body["qc"]["status"] in ("ok", "needs_review")
    assert body["qc"]["pipeline_status"] == body["qc"]["status"]
    assert isinstance(body["qc"]["reasons"], list)
    assert body["manifest"]["qc"]["status"] == body["qc"]["status"]


def test_a_flagged_prediction_is_held_back_until_a_reviewer_accepts_it(
    models: dict[str, ModelVersion], upload_scan: Callable[..., Scan], member: Any, lab: Lab
) -> None:
    scans = [upload_scan(mouse="M01", time_point=tp) for tp in ("0h", "24h")]
    tumor_predictions = [_segmented(scan)["tumor"] for scan in scans]
    # The tiny test models draw no mouse: as if every run had passed, but one.
    for prediction in Prediction.objects.filter(scan__in=scans):
        Prediction.objects.filter(pk=prediction.pk).update(
            manifest={**prediction.manifest, "qc": {"status": "ok", "reasons": []}}
        )
    tumor_predictions = [Prediction.objects.get(pk=p.pk) for p in tumor_predictions]
    flagged = tumor_predictions[1]
    _flag(flagged)
    reviewer = member_of(lab, role=Membership.Role.REVIEWER, username="rita")
    mouse = scans[0].time_point.mouse

    held = results.mouse_series([mouse])[0]
    refused = _client(member).post(
        f"/api/predictions/{flagged.pk}/qc", {"decision": "accepted"}, format="json"
    )
    no_reason = _client(reviewer).post(
        f"/api/predictions/{flagged.pk}/qc", {"decision": "rejected"}, format="json"
    )
    accepted = _client(reviewer).post(
        f"/api/predictions/{flagged.pk}/qc",
        {"decision": "accepted", "note": "bed lesion excluded by eye"},
        format="json",
    )
    charted = results.mouse_series([mouse])[0]
    rows = _csv(_client(member).get(f"/api/studies/{scans[0].study.pk}/volumes.csv"))

    assert [p.scan_id for p in held.tumor] == [scans[0].pk]
    assert [(h["scan_id"], h["qc_status"]) for h in held.held_back] == [(scans[1].pk, "needs_review")]
    assert BED_LESION["message"] in held.held_back[0]["reasons"]
    assert refused.status_code == 403 and "reviewer or admin" in refused.json()["detail"]
    assert no_reason.status_code == 400 and "say why" in no_reason.json()["detail"]
    assert accepted.status_code == 200
    assert accepted.json()["qc"]["status"] == "accepted"
    assert accepted.json()["qc"]["decision"]["by"] == "rita"
    assert QCReview.objects.get(prediction=flagged).note == "bed lesion excluded by eye"
    assert [p.scan_id for p in charted.tumor] == [s.pk for s in scans] and charted.held_back == []
    assert {r["qc_status"] for r in rows if int(r["scan_id"]) == scans[1].pk} == {"accepted", "ok"}


def test_a_rejected_prediction_stays_out_and_a_passed_one_cannot_be_decided(
    models: dict[str, ModelVersion], upload_scan: Callable[..., Scan], lab: Lab
) -> None:
    scan = upload_scan()
    predictions = _segmented(scan)
    _flag(predictions["tumor"])
    Prediction.objects.filter(pk=predictions["organs"].pk).update(
        manifest={**predictions["organs"].manifest, "qc": {"status": "ok", "reasons": []}}
    )
    reviewer = _client(member_of(lab, role=Membership.Role.ADMIN, username="adam"))

    rejected = reviewer.post(
        f"/api/predictions/{predictions['tumor'].pk}/qc",
        {"decision": "rejected", "note": "bed"},
        format="json",
    )
    passed = reviewer.post(
        f"/api/predictions/{predictions['organs'].pk}/qc", {"decision": "accepted"}, format="json"
    )
    nonsense = reviewer.post(
        f"/api/predictions/{predictions['tumor'].pk}/qc", {"decision": "maybe"}, format="json"
    )
    series = results.mouse_series([scan.time_point.mouse])[0]

    assert rejected.json()["qc"]["status"] == "rejected"
    assert passed.status_code == 409
    assert nonsense.status_code == 400 and "accepted, rejected" in nonsense.json()["detail"]
    assert series.tumor == [] and series.held_back[0]["qc_status"] == "rejected"


def test_an_excluded_lesion_leaves_volumes_counts_csvs_and_the_chart(
    models: dict[str, ModelVersion], upload_scan: Callable[..., Scan], member: Any
) -> None:
    scan = upload_scan()
    lesions = _segmented(scan)["tumor"]
    for prediction in Prediction.objects.filter(scan=scan):
        Prediction.objects.filter(pk=prediction.pk).update(
            manifest={**prediction.manifest, "qc": {"status": "ok", "reasons": []}}
        )
    tumor = lesions.lesions.get(structure_id=BY_NAME["tumor"].id)
    client = _client(member)
    study = scan.study.pk
    before = {
        r["structure"]: float(r["volume_mm3"]) for r in _csv(client.get(f"/api/scans/{scan.pk}/volumes.csv"))
    }
    chart_before = results.mouse_series([scan.time_point.mouse])[0].tumor[0].volume_mm3

    no_reason = client.post(f"/api/lesions/{tumor.pk}/review", {"decision": "excluded"}, format="json")
    done = client.post(
        f"/api/lesions/{tumor.pk}/review",
        {"decision": "excluded", "reason": "on the animal bed"},
        format="json",
    )
    outsider = _client(member_of(LabFactory.create(name="Other"), username="olga"))
    hidden = outsider.post(
        f"/api/lesions/{tumor.pk}/review", {"decision": "confirmed", "reason": "x"}, format="json"
    )
    after = {r["structure"]: r for r in _csv(client.get(f"/api/scans/{scan.pk}/volumes.csv"))}
    listed = {int(r["lesion"]): r for r in _csv(client.get(f"/api/studies/{study}/lesions.csv"))}
    chart_after = results.mouse_series([scan.time_point.mouse])[0].tumor[0].volume_mm3

    assert no_reason.status_code == 400 and "give the reason" in no_reason.json()["detail"]
    assert done.status_code == 200
    assert {les["id"]: les["review"] for les in done.json()["lesions"]}[tumor.pk] == "excluded"
    assert hidden.status_code == 404
    assert float(after["tumor"]["volume_mm3"]) == pytest.approx(before["tumor"] - tumor.volume_mm3, abs=1e-6)
    assert after["tumor"]["assessment"].startswith("measured, excluded lesions taken out")
    assert (listed[tumor.index]["review"], listed[tumor.index]["review_reason"]) == (
        "excluded",
        "on the animal bed",
    )
    assert chart_after == pytest.approx(chart_before - tumor.volume_mm3, abs=1e-6)
    assert LesionReview.objects.get(lesion=tumor).decided_by == member

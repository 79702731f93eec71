"""The segmentation REST API: 202 with jobs, lab scoping (404 across labs), CSV rows = API volumes."""

from __future__ import annotations

import csv
import io
from collections.abc import Callable
from typing import Any

import pytest
from django.core.files.storage import default_storage
from rest_framework.test import APIClient

from inference.assessment import CUT_BY_FIELD
from labs.models import Lab
from scans.models import Scan
from segmentation import exports, services
from segmentation.models import InferenceJob, ModelVersion, Prediction
from tests.factories import LabFactory, member_of

pytestmark = pytest.mark.django_db


@pytest.fixture
def client(member: Any) -> APIClient:
    api = APIClient()
    api.force_authenticate(member)
    return api


@pytest.fixture
def outsider() -> APIClient:
    api = APIClient()
    api.force_authenticate(member_of(LabFactory.create(name="Other Lab"), username="mallory"))
    return api


def _segmented(scan: Scan) -> list[InferenceJob]:
    jobs = services.request_segmentation(scan=scan)
    for job in jobs:
        finished = services.run_job(job.pk, worker_host="test-worker")
        assert finished is not None and finished.state == InferenceJob.State.SUCCEEDED, (
            finished and finished.error
        )
    return jobs


def _segmented_predictions(upload_scan: Callable[..., Scan]) -> tuple[Scan, Prediction, Prediction]:
    """A scan uploaded and segmented, with its organ and its lesion prediction."""
    scan = upload_scan()
    _segmented(scan)
    return (
        scan,
        Prediction.objects.get(scan=scan, model_version__name="tiny-organs"),
        Prediction.objects.get(scan=scan, model_version__name="tiny-lesions"),
    )


def _csv(response: Any) -> list[dict[str, str]]:
    assert response.status_code == 200
    assert response["Content-Type"].startswith("text/csv")
    return list(csv.DictReader(io.StringIO(b"".join(response.streaming_content).decode())))


def test_segment_answers_202_with_one_job_per_default_model(
    client: APIClient,
    models: dict[str, ModelVersion],
    upload_scan: Callable[..., Scan],
    django_capture_on_commit_callbacks: Any,
) -> None:
    scan = upload_scan()

    with django_capture_on_commit_callbacks(execute=False):
        response = client.post(f"/api/scans/{scan.pk}/segment")

    assert response.status_code == 202
    jobs = response.json()["jobs"]
    assert [(j["model"]["label"], j["state"], j["scan"]) for j in jobs] == [
        ("tiny-organs@1.0.0", "queued", scan.pk),
        ("tiny-lesions@1.0.0", "queued", scan.pk),
    ]
    detail = client.get(jobs[0]["url"])
    assert detail.status_code == 200 and detail.json()["id"] == jobs[0]["id"]


def test_a_chosen_model_version_can_be_asked_for_and_an_unknown_one_is_named(
    client: APIClient, models: dict[str, ModelVersion], upload_scan: Callable[..., Scan]
) -> None:
    scan = upload_scan()

    chosen = client.post(f"/api/scans/{scan.pk}/segment", {"models": ["tiny-organs@1.0.0"]}, format="json")
    unknown = client.post(f"/api/scans/{scan.pk}/segment", {"models": ["nnunet@9"]}, format="json")

    assert chosen.status_code == 202
    assert [j["model"]["label"] for j in chosen.json()["jobs"]] == ["tiny-organs@1.0.0"]
    assert unknown.status_code == 400
    assert "nnunet@9" in str(unknown.json()["models"])


def test_segment_without_models_installed_says_so(
    client: APIClient, upload_scan: Callable[..., Scan]
) -> None:
    ModelVersion.objects.all().delete()
    response = client.post(f"/api/scans/{upload_scan().pk}/segment")

    assert response.status_code == 503
    assert "sync_models" in response.json()["detail"]


def test_jobs_are_listed_filtered_and_cancelled(
    client: APIClient, models: dict[str, ModelVersion], upload_scan: Callable[..., Scan]
) -> None:
    scan = upload_scan()
    organs, lesions = services.request_segmentation(scan=scan)

    listed = client.get("/api/jobs/", {"scan": str(scan.pk), "state": "queued"})
    cancelled = client.post(f"/api/jobs/{lesions.pk}/cancel")
    again = client.post(f"/api/jobs/{lesions.pk}/cancel")
    still_queued = client.get("/api/jobs/", {"state": "queued"})

    assert listed.status_code == 200
    assert {j["id"] for j in listed.json()["results"]} == {organs.pk, lesions.pk}
    assert cancelled.status_code == 200 and cancelled.json()["state"] == "cancelled"
    assert again.status_code == 409
    assert [j["id"] for j in still_queued.json()["results"]] == [organs.pk]
    assert client.get("/api/jobs/", {"state": "lost"}).status_code == 400


def test_another_lab_sees_404_everywhere(
    client: APIClient, outsider: APIClient, models: dict[str, ModelVersion], upload_scan: Callable[..., Scan]
) -> None:
    scan = upload_scan()
    jobs = _segmented(scan)
    prediction = Prediction.objects.filter(scan=scan).first()
    assert prediction is not None
    urls = [
        f"/api/jobs/{jobs[0].pk}/",
        f"/api/scans/{scan.pk}/predictions/",
        f"/api/predictions/{prediction.pk}/",
        f"/api/predictions/{prediction.pk}/labels",
        f"/api/predictions/{prediction.pk}/uncertainty",
        f"/api/scans/{scan.pk}/volumes.csv",
        f"/api/studies/{scan.study.pk}/volumes.csv",
        f"/api/studies/{scan.study.pk}/lesions.csv",
    ]

    for url in urls:
        assert client.get(url).status_code == 200, url
        assert outsider.get(url).status_code == 404, url
    assert outsider.post(f"/api/scans/{scan.pk}/segment").status_code == 404
    assert outsider.post(f"/api/jobs/{jobs[0].pk}/cancel").status_code == 404
    assert outsider.get("/api/jobs/").json()["results"] == []
    assert APIClient().get(f"/api/jobs/{jobs[0].pk}/").status_code in (401, 403)


def test_a_prediction_shows_volumes_lesions_counts_and_serves_its_label_file(
    client: APIClient, models: dict[str, ModelVersion], upload_scan: Callable[..., Scan]
) -> None:
    scan = upload_scan()
    _segmented(scan)

    listed = client.get(f"/api/scans/{scan.pk}/predictions/").json()
    by_model = {p["model"]["label"]: p for p in listed}
    lesion_prediction = by_model["tiny-lesions@1.0.0"]
    labels = client.get(lesion_prediction["labels_url"])

    assert set(by_model) == {"tiny-organs@1.0.0", "tiny-lesions@1.0.0"}
    assert {v["name"] for v in by_model["tiny-organs@1.0.0"]["volumes"]} == {"liver", "heart"}
    assert {(les["organ_name"], les["allocation"]) for les in lesion_prediction["lesions"]} == {
        ("liver", "centroid"),
        ("subcutaneous/other", "none"),
    }
    assert lesion_prediction["metastasis_counts"]["liver"] == 1
    assert labels.status_code == 200
    stored = Prediction.objects.get(pk=lesion_prediction["id"]).labels.name
    with default_storage.open(stored, "rb") as handle:
        assert labels.streaming and b"".join(labels) == handle.read()
    assert client.get(f"/api/predictions/{lesion_prediction['id']}/").json() == lesion_prediction


def test_study_volumes_csv_rows_are_the_api_volumes(
    client: APIClient, models: dict[str, ModelVersion], upload_scan: Callable[..., Scan], lab: Lab
) -> None:
    scans = [upload_scan(mouse="M01", time_point="0h"), upload_scan(mouse="M02", time_point="24h")]
    for scan in scans:
        _segmented(scan)

    rows = _csv(client.get(f"/api/studies/{scans[0].study.pk}/volumes.csv"))

    expected = []
    for scan in scans:
        for prediction in client.get(f"/api/scans/{scan.pk}/predictions/").json():
            for volume in prediction["volumes"]:
                expected.append(
                    (
                        scan.pk,
                        prediction["model"]["label"],
                        volume["name"],
                        volume["voxels"],
                        volume["volume_mm3"],
                    )
                )
    got = [
        (int(r["scan_id"]), r["source"], r["structure"], int(r["voxels"]), float(r["volume_mm3"]))
        for r in rows
    ]
    assert sorted(got) == sorted(expected)
    assert list(rows[0]) == list(exports.VOLUME_COLUMNS)
    first = next(r for r in rows if r["mouse"] == "M02")
    assert (first["lab"], first["study"], first["time_point"], float(first["offset_hours"])) == (
        lab.name,
        "Metastasis study",
        "24h",
        24.0,
    )
    assert first["modality"] == "contrast_ct"


def test_scan_lesion_and_metastasis_csvs_list_every_lesion_and_every_organ(
    client: APIClient, models: dict[str, ModelVersion], upload_scan: Callable[..., Scan]
) -> None:
    scan = upload_scan()
    _segmented(scan)

    lesions = _csv(client.get(f"/api/scans/{scan.pk}/lesions.csv"))
    counts = _csv(client.get(f"/api/scans/{scan.pk}/metastases.csv"))

    assert sorted((r["structure"], r["organ"]) for r in lesions) == [
        ("metastasis", "liver"),
        ("tumor", "subcutaneous/other"),
    ]
    by_organ = {r["organ"]: int(r["metastases"]) for r in counts if r["assessment"] == "assessed"}
    assert by_organ["liver"] == 1 and sum(by_organ.values()) == 1
    not_assessed = [r for r in counts if r["assessment"] == "not assessed"]
    assert not_assessed and all(r["metastases"] == "" for r in not_assessed)
    assert {r["source"] for r in counts} == {"tiny-lesions@1.0.0"}


def test_the_model_list_shows_the_registry(client: APIClient, models: dict[str, ModelVersion]) -> None:
    listed = client.get("/api/models/").json()

    assert {(m["label"], m["task"], m["is_default"]) for m in listed} >= {
        ("tiny-organs@1.0.0", "organs", True),
        ("tiny-lesions@1.0.0", "tumor", True),
    }


def test_csvs_leave_not_assessed_cells_empty_never_zero(
    client: APIClient, models: dict[str, ModelVersion], upload_scan: Callable[..., Scan]
) -> None:
    scan, organs, lesions = _segmented_predictions(upload_scan)
    # As the pipeline stores a model that looks for metastases in the liver only, on a scan
    # whose organ map has no kidney; and an organ the model did not find.
    Prediction.objects.filter(pk=lesions.pk).update(
        metastasis_counts={"liver": 1, "kidney_left": None, "subcutaneous/other": 0},
        manifest={**lesions.manifest, "metastases_found_from_mm": {"liver": 0.5}},
    )
    organs.volumes.filter(name="heart").update(
        voxels=0, volume_mm3=0.0, volume_low_mm3=0.0, volume_high_mm3=0.0
    )

    counts = {r["organ"]: r for r in _csv(client.get(f"/api/scans/{scan.pk}/metastases.csv"))}
    volumes = {r["structure"]: r for r in _csv(client.get(f"/api/scans/{scan.pk}/volumes.csv"))}

    assert (counts["liver"]["metastases"], counts["liver"]["assessment"]) == ("1", "assessed")
    # From what size the liver's count runs; no size for an organ the model did not measure.
    assert counts["liver"]["found_from_mm"] == "0.5"
    assert counts["subcutaneous/other"]["found_from_mm"] == ""
    assert (counts["kidney_left"]["metastases"], counts["kidney_left"]["assessment"]) == ("", "not assessed")
    assert counts["kidney_left"]["found_from_mm"] == ""
    assert (counts["brain"]["metastases"], counts["brain"]["assessment"]) == ("", "not assessed")
    assert (counts["subcutaneous/other"]["metastases"], counts["subcutaneous/other"]["assessment"]) == (
        "0",
        "assessed",
    )
    assert (volumes["heart"]["volume_mm3"], volumes["heart"]["assessment"]) == ("", "not found")
    assert volumes["liver"]["assessment"] == "measured" and float(volumes["liver"]["volume_mm3"]) > 0
    # The API's JSON says the same as its CSV: no 0 mm3 for an organ not found.
    shown = {v["name"]: v for v in client.get(f"/api/predictions/{organs.pk}/").json()["volumes"]}
    assert (shown["heart"]["volume_mm3"], shown["heart"]["volume_high_mm3"]) == (None, None)
    assert shown["heart"]["assessment"] == "not found"
    assert shown["liver"]["assessment"] == "measured" and shown["liver"]["volume_mm3"] > 0


def test_an_organ_cut_by_the_field_of_view_has_no_volume_in_the_csvs(
    client: APIClient, models: dict[str, ModelVersion], upload_scan: Callable[..., Scan]
) -> None:
    scan, organs, _ = _segmented_predictions(upload_scan)
    # As the pipeline's QC stores a thorax scan whose field cuts through the liver.
    manifest = dict(organs.manifest or {})
    manifest["qc"] = {**(manifest.get("qc") or {}), "cut_by_field": ["liver"]}
    Prediction.objects.filter(pk=organs.pk).update(manifest=manifest)

    volumes = {r["structure"]: r for r in _csv(client.get(f"/api/scans/{scan.pk}/volumes.csv"))}
    shown = client.get(f"/api/predictions/{organs.pk}/").json()

    assert (volumes["liver"]["volume_mm3"], volumes["liver"]["assessment"]) == ("", CUT_BY_FIELD)
    assert int(volumes["liver"]["voxels"]) > 0  # drawn, but only part of it was scanned
    assert volumes["heart"]["assessment"] == "measured"
    assert shown["qc"]["cut_by_field"] == ["liver"]
    liver = next(v for v in shown["volumes"] if v["name"] == "liver")
    assert (liver["volume_mm3"], liver["assessment"], liver["voxels"] > 0) == (None, CUT_BY_FIELD, True)


def test_the_volumes_assessment_reads_no_row_per_volume(
    client: APIClient,
    models: dict[str, ModelVersion],
    upload_scan: Callable[..., Scan],
    django_assert_max_num_queries: Any,
) -> None:
    # Each volume's assessment reads its prediction's stored QC verdict, which comes with it.
    scan, _, _ = _segmented_predictions(upload_scan)
    shown = client.get(f"/api/scans/{scan.pk}/predictions/").json()
    volumes = sum(len(p["volumes"]) for p in shown)
    assert volumes >= 3

    with django_assert_max_num_queries(10):
        again = client.get(f"/api/scans/{scan.pk}/predictions/").json()

    assert again == shown

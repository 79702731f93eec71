"""A prediction corrected through the API (as the viewer's drawing tools save it): stored as a new
annotation version that records the prediction, volumes, CSVs and the study's series follow, the
prediction is unchanged, a rejected version falls back, bad drawings are refused with nothing
stored."""

from __future__ import annotations

import csv
import gzip
import hashlib
import io
from pathlib import Path
from typing import Any, cast

import nibabel as nib
import numpy as np
import pytest
from rest_framework.test import APIClient

from frontend import results
from inference.structures import BY_NAME
from labs.models import Membership
from review.models import AnnotationRevision
from scans.models import Annotation, Scan
from scans.services import register_scan
from segmentation.models import Prediction
from tests.demo_scan import add_prediction, write_phantom
from tests.factories import LabFactory, member_of

pytestmark = pytest.mark.django_db

LIVER = BY_NAME["liver"].id
TUMOR = BY_NAME["tumor"].id


@pytest.fixture
def scan(tmp_path: Path, settings: Any, media_root: Path) -> Scan:
    settings.LABSEG_SEGMENT_ON_UPLOAD = False
    lab = LabFactory.create()
    user = member_of(lab, username="ana")
    files = (tmp_path / "CT_M01_0h.nii", tmp_path / "labels.nii", tmp_path / "uncertainty.nii")
    write_phantom(*files, shape=(40, 32, 48), spacing_mm=0.5)
    the_scan = register_scan(
        lab=lab,
        uploaded_file_path_or_file=files[0],
        original_filename=files[0].name,
        study_name="Corrections",
        mouse_identifier="M01",
        time_point_label="0h",
        user=user,
    )
    add_prediction(scan=the_scan, labels_path=files[1], uncertainty_path=files[2])
    return the_scan


def _prediction(scan: Scan) -> Prediction:
    return Prediction.objects.get(scan=scan)


def _labels(prediction: Prediction) -> tuple[np.ndarray, np.ndarray]:
    with prediction.labels.open("rb") as handle:
        image = cast(nib.Nifti1Image, nib.Nifti1Image.from_bytes(handle.read()))
    return np.asarray(image.dataobj).astype(np.uint8), image.affine


def _upload(labels: np.ndarray, affine: np.ndarray, name: str = "correction.nii.gz") -> io.BytesIO:
    image = nib.Nifti1Image(labels.astype(np.uint8), affine)
    data = io.BytesIO(gzip.compress(image.to_bytes(), mtime=0))
    data.name = name
    return data


def _client(user: Any) -> APIClient:
    client = APIClient()
    client.force_authenticate(user)
    return client


def _csv(client: APIClient, scan: Scan) -> list[dict[str, str]]:
    response = client.get(f"/api/scans/{scan.pk}/volumes.csv")
    assert response.status_code == 200
    text = b"".join(cast(Any, response).streaming_content).decode()
    return list(csv.DictReader(io.StringIO(text)))


def _row(rows: list[dict[str, str]], structure: str) -> dict[str, str]:
    return next(r for r in rows if r["structure"] == structure)


def test_a_saved_correction_is_a_new_version_and_the_volumes_follow(scan: Scan) -> None:
    user = scan.uploaded_by
    client = _client(user)
    prediction = _prediction(scan)
    with prediction.labels.open("rb") as handle:
        prediction_sha = hashlib.sha256(handle.read()).hexdigest()
    labels, affine = _labels(prediction)
    voxel_mm3 = 0.5**3
    before = _csv(client, scan)
    assert _row(before, "liver")["source"] == prediction.model_version.label

    # Erase half of the liver, as the eraser would.
    liver = np.argwhere(labels == LIVER)
    erased = liver[liver[:, 2] < np.median(liver[:, 2])]
    corrected = labels.copy()
    corrected[tuple(erased.T)] = 0
    response = client.post(
        f"/api/predictions/{prediction.pk}/corrections",
        {"file": _upload(corrected, affine)},
        format="multipart",
    )
    assert response.status_code == 201, response.content
    body = response.json()
    assert body["version"] == 1
    assert body["source"] == f"corrected by ana from {prediction.model_version.label}"
    revision = AnnotationRevision.objects.get(annotation_id=body["id"])
    assert revision.prediction_id == prediction.pk and revision.correction
    assert Annotation.objects.get(pk=body["id"]).status == Annotation.Status.SUBMITTED

    after = _csv(client, scan)
    liver_row = _row(after, "liver")
    assert liver_row["source"] == f"corrected by ana from {prediction.model_version.label}"
    assert liver_row["qc_status"] == "corrected"
    assert int(liver_row["voxels"]) == int((corrected == LIVER).sum())
    assert float(liver_row["volume_mm3"]) == pytest.approx((corrected == LIVER).sum() * voxel_mm3, rel=1e-4)
    assert float(liver_row["volume_mm3"]) < float(_row(before, "liver")["volume_mm3"])
    # The viewer's table and the study's series read the same numbers.
    table = {v["name"]: v for v in results.scan_volumes([prediction])}
    assert table["liver"]["volume_mm3"] == pytest.approx(float(liver_row["volume_mm3"]))
    assert table["liver"]["source"].startswith("corrected by ana")
    series = results.mouse_series([scan.time_point.mouse])[0]
    assert series.organs["liver"][0][1] == pytest.approx(float(liver_row["volume_mm3"]))
    # The prediction is as the model made it.
    with prediction.labels.open("rb") as handle:
        assert hashlib.sha256(handle.read()).hexdigest() == prediction_sha

    # A second correction is version 2; when a reviewer rejects it, version 1 stands again.
    second = corrected.copy()
    second[20:24, 14:18, 20:24] = TUMOR
    response = client.post(
        f"/api/predictions/{prediction.pk}/corrections", {"file": _upload(second, affine)}, format="multipart"
    )
    assert response.status_code == 201, response.content
    assert response.json()["version"] == 2
    assert _row(_csv(client, scan), "tumor")["assessment"] == "measured on correction v2"
    reviewer = member_of(scan.lab, role=Membership.Role.REVIEWER)
    rejected = _client(reviewer).post(
        f"/api/annotations/{response.json()['id']}/reject", {"note": "the tumor is not there"}, format="json"
    )
    assert rejected.status_code == 200, rejected.content
    assert _row(_csv(client, scan), "liver")["assessment"] == "measured on correction v1"


def test_bad_drawings_are_refused_in_plain_words_and_nothing_is_stored(scan: Scan) -> None:
    client = _client(scan.uploaded_by)
    prediction = _prediction(scan)
    labels, affine = _labels(prediction)
    url = f"/api/predictions/{prediction.pk}/corrections"
    annotations = Annotation.objects.count()

    wrong_shape = client.post(url, {"file": _upload(labels[:-2], affine)}, format="multipart")
    assert wrong_shape.status_code == 400
    assert "grid" in wrong_shape.json()["detail"] or "shape" in wrong_shape.json()["detail"]

    unknown = labels.copy()
    unknown[0, 0, 0] = 250
    not_a_structure = client.post(url, {"file": _upload(unknown, affine)}, format="multipart")
    assert not_a_structure.status_code == 400
    assert "250" in not_a_structure.json()["detail"]

    no_file = client.post(url, {}, format="multipart")
    assert no_file.status_code == 400
    assert "file" in no_file.json()["detail"]

    stranger = member_of(LabFactory.create())
    assert (
        _client(stranger).post(url, {"file": _upload(labels, affine)}, format="multipart").status_code == 404
    )
    assert Annotation.objects.count() == annotations
    assert not AnnotationRevision.objects.filter(correction=True).exists()

"""Round trip with desktop tools through the API: a prediction downloaded as a Slicer .seg.nrrd
(read back with pynrrd: canonical names, colours and the scan's geometry), edited and uploaded
back as an annotation and as a new version of one; ITK-SNAP's label file."""

from __future__ import annotations

import io
from collections.abc import Callable
from typing import Any

import nibabel as nib
import nrrd
import numpy as np
import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from rest_framework.test import APIClient

from inference.structures import BY_NAME
from labs.models import Lab, Membership
from scans.models import Scan
from segmentation import services
from segmentation.models import InferenceJob, ModelVersion, Prediction
from tests.factories import member_of

pytestmark = pytest.mark.django_db


def _predicted(scan: Scan) -> Prediction:
    for job in services.request_segmentation(scan=scan):
        finished = services.run_job(job.pk, worker_host="test-worker")
        assert finished is not None and finished.state == InferenceJob.State.SUCCEEDED
    return Prediction.objects.get(scan=scan, model_version__task="organs")


def test_a_prediction_goes_to_slicer_and_comes_back_as_annotation_versions(
    models: dict[str, ModelVersion], upload_scan: Callable[..., Scan], member: Any, lab: Lab
) -> None:
    client = APIClient()
    client.force_authenticate(member)
    scan = upload_scan()
    prediction = _predicted(scan)
    with prediction.labels.open("rb") as handle:
        predicted = np.asarray(
            nib.Nifti1Image.from_bytes(__import__("gzip").decompress(handle.read())).dataobj
        )

    response = client.get(f"/api/predictions/{prediction.pk}/labels.seg.nrrd")
    stream = io.BytesIO(response.getvalue())  # the body, streamed or not
    header = nrrd.read_header(stream)
    data = nrrd.read_data(header, stream, index_order="F")
    segments = {header[f"Segment{n}_Name"]: int(header[f"Segment{n}_LabelValue"]) for n in range(2)}

    assert response.status_code == 200 and ".seg.nrrd" in response["Content-Disposition"]
    assert np.array_equal(data, predicted)
    assert segments == {"heart": BY_NAME["heart"].id, "liver": BY_NAME["liver"].id}
    assert np.allclose(np.asarray(header["space directions"]).T, np.asarray(scan.affine)[:3, :3])
    assert np.allclose(header["space origin"], np.asarray(scan.affine)[:3, 3])

    # Edited in Slicer: the liver segment loses a slab; saved and uploaded back.
    edited = data.copy()
    edited[:4][edited[:4] == BY_NAME["liver"].id] = 0
    out = io.BytesIO()
    nrrd.write(out, edited, dict(header), index_order="F")
    upload = SimpleUploadedFile("M01_0h_corrected.seg.nrrd", out.getvalue())
    created = client.post(f"/api/scans/{scan.pk}/annotations/", {"file": upload, "annotator": "ana"})
    # Edited once more (another slab of liver gone), its segment named as a person types it.
    second = edited.copy()
    second[4:6][second[4:6] == BY_NAME["liver"].id] = 0
    out_again = io.BytesIO()
    nrrd.write(out_again, second, {**dict(header), "Segment1_Name": "Liver"}, index_order="F")
    again = SimpleUploadedFile("M01_0h_corrected_v2.seg.nrrd", out_again.getvalue())
    bad = io.BytesIO()
    nrrd.write(bad, edited, {**dict(header), "Segment0_Name": "Segment_1"}, index_order="F")
    refused = client.post(
        f"/api/scans/{scan.pk}/annotations/",
        {"file": SimpleUploadedFile("odd.seg.nrrd", bad.getvalue()), "annotator": "bo"},
    )

    assert created.status_code == 201, created.json()
    assert created.json()["structures"] == {"heart": BY_NAME["heart"].id, "liver": BY_NAME["liver"].id}
    assert refused.status_code == 400 and "is not a structure labseg knows" in refused.json()["detail"]
    annotation_id = created.json()["id"]
    exported = client.get(f"/api/annotations/{annotation_id}/file.seg.nrrd")
    stream = io.BytesIO(exported.getvalue())
    back = nrrd.read_data(nrrd.read_header(stream), stream, index_order="F")
    assert np.array_equal(back, edited)
    # A reviewer rejects it; the file edited again comes back as its new version.
    reviewer = APIClient()
    reviewer.force_authenticate(member_of(lab, role=Membership.Role.REVIEWER, username="rev"))
    assert (
        reviewer.post(f"/api/annotations/{annotation_id}/reject", {"note": "liver cut short"}).status_code
        == 200
    )
    version = client.post(f"/api/annotations/{annotation_id}/replace", {"file": again})
    assert version.status_code == 201, version.json()
    assert version.json()["id"] != annotation_id
    assert version.json()["structures"] == {"heart": BY_NAME["heart"].id, "liver": BY_NAME["liver"].id}
    labels = client.get("/api/structures/itksnap.txt")
    assert labels.status_code == 200 and '"Liver"' in labels.content.decode()

"""A segmentation corrected with NiiVue's drawing tools in Chromium and saved: a new annotation
version that records the prediction, the prediction unchanged, and the volumes CSV follows."""

from __future__ import annotations

import csv
import hashlib
import io
from pathlib import Path
from typing import Any

import pytest
from django.urls import reverse

from inference.structures import BY_NAME
from review.models import AnnotationRevision
from scans.models import Scan
from scans.services import register_scan
from segmentation.models import Prediction
from tests.demo_scan import add_prediction, write_phantom

from .conftest import screenshot

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]

TUMOR = BY_NAME["tumor"].id


@pytest.fixture
def phantom_scan(lab: Any, researcher: Any, tmp_path: Path, settings: Any, media_root: Path) -> Scan:
    settings.LABSEG_SEGMENT_ON_UPLOAD = False
    files = (tmp_path / "CT_M01_0h.nii", tmp_path / "labels.nii", tmp_path / "uncertainty.nii")
    write_phantom(*files, shape=(48, 40, 64), spacing_mm=0.5)
    scan = register_scan(
        lab=lab,
        uploaded_file_path_or_file=files[0],
        original_filename=files[0].name,
        study_name="Correct",
        mouse_identifier="M01",
        time_point_label="0h",
        user=researcher,
    )
    add_prediction(scan=scan, labels_path=files[1], uncertainty_path=files[2])
    return scan


def _tumor_row(page: Any, url: str) -> dict[str, str]:
    text = page.evaluate("url => fetch(url).then(r => r.text())", url)
    return next(r for r in csv.DictReader(io.StringIO(text)) if r["structure"] == "tumor")


def _drawn(page: Any, value: int) -> int:
    return int(page.evaluate(f"window.labsegViewer.nv.drawBitmap.filter(v => v === {value}).length"))


def _drag_square(page: Any, half: int) -> None:
    box = page.locator("canvas#gl").bounding_box()
    cx, cy = box["x"] + box["width"] / 2, box["y"] + box["height"] / 2
    corners = [(cx - half, cy - half), (cx + half, cy - half), (cx + half, cy + half), (cx - half, cy + half)]
    page.mouse.move(*corners[0])
    page.mouse.down()
    for x, y in [*corners[1:], corners[0]]:
        page.mouse.move(x, y, steps=12)
    page.mouse.up()


def test_a_segmentation_corrected_with_the_drawing_tools_changes_the_volumes(
    open_page: Any, live_server: Any, phantom_scan: Scan
) -> None:
    prediction = Prediction.objects.get(scan=phantom_scan)
    with prediction.labels.open("rb") as handle:
        prediction_sha = hashlib.sha256(handle.read()).hexdigest()
    page, console = open_page(phantom_scan.uploaded_by)
    page.goto(f"{live_server.url}/scans/{phantom_scan.pk}/")
    page.wait_for_function("window.labsegViewer && window.labsegViewer.firstFrameMs")
    csv_url = reverse("frontend:volumes-csv", args=["scan", phantom_scan.pk])
    before = _tumor_row(page, csv_url)
    assert before["source"] == prediction.model_version.label

    page.click("[data-view=axial]")
    page.click("#correct-begin")
    page.wait_for_function("document.body.dataset.drawing === '1'")
    start = _drawn(page, TUMOR)
    labels = page.locator("#draw-label option")
    assert labels.count() == len([s for s in prediction.model_version.structures if int(s) != 0])
    page.select_option("#draw-label", str(TUMOR))
    page.click("[data-tool=fill]")
    _drag_square(page, 60)
    filled = _drawn(page, TUMOR)
    assert filled > start + 50  # the square's inside is painted tumor
    page.click("[data-tool=erase]")
    _drag_square(page, 20)
    assert _drawn(page, TUMOR) < filled
    page.click("#draw-undo")
    assert _drawn(page, TUMOR) == filled  # undo takes the eraser's stroke back
    screenshot(page, "08-viewer-correction-drawn")
    page.click("#draw-save")
    page.wait_for_function("document.body.dataset.correctionSaved")

    revision = AnnotationRevision.objects.get(correction=True)
    assert revision.prediction_id == prediction.pk and revision.version == 1
    after = _tumor_row(page, csv_url)
    assert phantom_scan.uploaded_by is not None
    username = phantom_scan.uploaded_by.get_username()
    assert after["source"] == f"corrected by {username} from {prediction.model_version.label}"
    assert after["qc_status"] == "corrected"
    assert int(after["voxels"]) == filled
    assert float(after["volume_mm3"]) > float(before["volume_mm3"])
    assert f"corrected by {username}" in page.locator("#volume-sources").inner_text()
    assert "version 1" in page.locator("#correct-message").inner_text()
    with prediction.labels.open("rb") as handle:
        assert hashlib.sha256(handle.read()).hexdigest() == prediction_sha  # predictions stay as made
    screenshot(page, "09-viewer-correction-saved")
    assert console.messages == []

"""The viewer's keyboard, tooltips and layer toggles, in Chromium: arrows move the slice, digits
pick the CT window, letters switch views and layers (pixels change), the help panel lists it all;
the metastasis panel says from what size each count runs."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from scans.models import Scan
from scans.services import register_scan
from segmentation.models import Prediction
from tests.demo_scan import add_prediction, write_phantom

from .conftest import ARTIFACTS, screenshot

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]


@pytest.fixture
def phantom_scan(lab: Any, researcher: Any, tmp_path: Path, settings: Any, media_root: Path) -> Scan:
    settings.LABSEG_SEGMENT_ON_UPLOAD = False
    files = (tmp_path / "CT_M01_0h.nii", tmp_path / "labels.nii", tmp_path / "uncertainty.nii")
    write_phantom(*files, shape=(48, 40, 64), spacing_mm=0.5)
    scan = register_scan(
        lab=lab,
        uploaded_file_path_or_file=files[0],
        original_filename=files[0].name,
        study_name="Keys",
        mouse_identifier="M01",
        time_point_label="0h",
        user=researcher,
    )
    add_prediction(scan=scan, labels_path=files[1], uncertainty_path=files[2])
    return scan


def _canvas_sum(page: Any) -> int:
    # Pixels as the eye sees them: a screenshot of the canvas, summed.
    return sum(page.locator("canvas#gl").screenshot())


def test_keys_move_slices_switch_windows_views_and_layers(
    open_page: Any, live_server: Any, phantom_scan: Scan
) -> None:
    page, console = open_page(phantom_scan.uploaded_by)
    page.goto(f"{live_server.url}/scans/{phantom_scan.pk}/")
    page.wait_for_function("window.labsegViewer && window.labsegViewer.firstFrameMs")
    crosshair = "JSON.stringify(Array.from(window.labsegViewer.nv.scene.crosshairPos))"

    before = page.evaluate(crosshair)
    page.keyboard.press("PageUp")
    after = page.evaluate(crosshair)
    page.keyboard.press("2")
    second = page.locator("[data-window]").nth(1)
    page.keyboard.press("a")
    with_labels = _canvas_sum(page)
    page.keyboard.press("o")
    page.wait_for_function("document.body.dataset.layersChanged")
    without_labels = _canvas_sum(page)
    page.keyboard.press("?")

    assert after != before
    assert second.get_attribute("aria-pressed") == "true"
    assert page.locator("[data-view=axial]").get_attribute("aria-pressed") == "true"
    assert page.evaluate(
        "window.labsegViewer.config.layers.filter(l => l.kind === 'labels').every(l => !l.visible)"
    )
    assert without_labels != with_labels  # the organ overlay left the screen
    assert page.locator("#keys-help").is_visible()
    assert "10 slices" in page.locator("#keys-help").inner_text()
    assert all(page.locator("[data-view]").nth(i).get_attribute("title") for i in range(5))
    screenshot(page, "06-viewer-keys-help")
    assert console.messages == []


def test_the_metastasis_panel_says_from_what_size_each_count_runs(
    open_page: Any, live_server: Any, phantom_scan: Scan
) -> None:
    # As the pipeline stores a run of a model whose card measured that size (mouse-tumor 2.0.3:
    # the lungs' from 0.5 mm); an organ not assessed gets no size, only the "Not assessed" note.
    prediction = Prediction.objects.get(scan=phantom_scan)
    counts = {**prediction.metastasis_counts, "lung_left": 0, "lung_right": 0, "kidney_left": None}
    manifest = {**prediction.manifest, "metastases_found_from_mm": {"lung_left": 0.5, "lung_right": 0.5}}
    Prediction.objects.filter(pk=prediction.pk).update(metastasis_counts=counts, manifest=manifest)
    page, console = open_page(phantom_scan.uploaded_by)
    page.goto(f"{live_server.url}/scans/{phantom_scan.pk}/")
    page.wait_for_function("window.labsegViewer && window.labsegViewer.firstFrameMs")

    note = page.locator("#metastases .metastases-found-from")
    assert note.inner_text() == (
        "Counted from this diameter: Left lung from 0.5 mm, Right lung from 0.5 mm; "
        "smaller ones are not found."
    )
    assert "Left kidney" in page.locator("#metastases .metastases-not-assessed").inner_text()
    # The panel sits below the fold of the side column: its own picture.
    note.scroll_into_view_if_needed()
    page.locator("#metastases").screenshot(path=str(ARTIFACTS / "07-viewer-metastases-found-from.png"))
    assert console.messages == []

"""The researcher's day in a real browser: sign in, upload a scan in chunks (the connection is cut
once and the upload resumes), watch a real worker segment it, open the viewer, toggle overlays,
read the metastasis panel, download the volumetry CSV and check it against the API.

Chromium is Debian's, driven by Playwright; the worker is a real ``celery worker`` process on the
test database; the models are the tiny deterministic ONNX models of the service tests.
"""

from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import pytest

from labs.models import Membership
from scans.models import Annotation, Scan
from segmentation.models import InferenceJob, Prediction
from tests.nifti import load_nifti
from tests.segmentation.tiny import TUMOR_HU, write_phantom

from .conftest import screenshot

pytestmark = [pytest.mark.browser, pytest.mark.e2e, pytest.mark.django_db(transaction=True)]

#: Small chunks, so that a 0.3 MB phantom travels in several and one can be cut.
CHUNK_BYTES = 64 * 1024
JOB_TIMEOUT_MS = 120_000


def _cut_second_chunk(page: Any) -> dict[str, int]:
    """Drop the connection of the second chunk PUT (as a flaky network would); count the PUTs."""
    puts = {"sent": 0, "cut": 0}

    def handle(route: Any) -> None:
        if route.request.method == "PUT":
            puts["sent"] += 1
            if puts["sent"] == 2:
                puts["cut"] += 1
                route.abort("connectionreset")
                return
        route.continue_()

    page.route("**/api/uploads/**", handle)
    return puts


def _annotation_for(scan_path: Path) -> Path:
    """Annotator A's tumor label map (1 = tumor) on the phantom's grid, named as the database does."""
    image = load_nifti(str(scan_path))
    tumor = (np.asarray(image.dataobj) >= TUMOR_HU - 50).astype(np.uint8)
    path = scan_path.with_name("Annotator_A_M03_8d.nii.gz")
    nib.save(nib.Nifti1Image(tumor, image.affine), str(path))
    return path


def _upload(page: Any, live_server: Any, path: Path) -> tuple[int, dict[str, int]]:
    page.goto(f"{live_server.url}/upload/")
    # A folder in the tumor database layout: mouse and time point come from the names.
    parsed = page.evaluate(
        "(async () => { const m = await import('/static/frontend/js/upload.js'); return ["
        "m.parseName('Dataset 1/M01_M02_8d/M02_8d/CT_M02_8d.nii.gz'),"
        "m.parseName('Dataset 1/M01_M02_8d/M02_8d/Annotator_B_M02_8d.nii.gz'),"
        "m.parseName('M11_24h/scan.nii'),"
        "m.parseName('Dataset 1/M01_M02_4d/M02_4d/GroundTruth_M02_4d.nii.gz'),"
        "m.parseName('Dataset 1/M01_M02_4d/M02_4d/STAPLE_M02_4d.nii.gz'),"
        "m.parseName('M05_3h_seg.nii.gz')]; })()"
    )
    # Label maps by name are annotations of the scan of the same mouse and time point, never scans.
    assert [(p["mouse"], p["timePoint"], p["annotator"]) for p in parsed] == [
        ("M02", "8d", None),
        ("M02", "8d", "B"),
        ("M11", "24h", None),
        ("M02", "4d", "GroundTruth"),
        ("M02", "4d", "STAPLE"),
        ("M05", "3h", "Labels"),
    ]
    puts = _cut_second_chunk(page)
    page.fill("#study", "Browser study")
    page.set_input_files("#files", [str(path), str(_annotation_for(path))])
    row = page.locator("#queue tbody tr").first
    annotation_row = page.locator("#queue tbody tr").nth(1)
    assert "Annotation by A" in annotation_row.inner_text()
    # Mouse and time point come from the tumor database name CT_M03_8d.nii.gz, editable.
    assert row.locator("input.mouse").input_value() == "M03"
    assert row.locator("input.time-point").input_value() == "8d"
    page.click("#send")
    page.wait_for_function("document.body.dataset.uploadFinished")
    screenshot(page, "01-upload-finished")
    assert "Uploaded" in row.locator(".msg").inner_text(), row.locator(".msg").inner_text()
    assert int(row.get_attribute("data-resumed") or 0) >= 1
    assert "100 %" in page.inner_text("#overall-text")
    assert "Annotation saved" in annotation_row.locator(".msg").inner_text()
    return int(row.get_attribute("data-scan-id") or 0), puts


def _volumes_from_api(page: Any, live_server: Any, scan_id: int) -> dict[tuple[str, str], float]:
    response = page.request.get(f"{live_server.url}/api/scans/{scan_id}/predictions/")
    assert response.ok, response.text()
    return {(p["model"]["label"], v["name"]): v["volume_mm3"] for p in response.json() for v in p["volumes"]}


def test_a_researcher_uploads_segments_views_and_downloads(
    open_page: Any,
    live_server: Any,
    researcher: Any,
    tiny_models: Any,
    worker: Any,
    settings: Any,
    tmp_path: Path,
) -> None:
    settings.LABSEG_SEGMENT_ON_UPLOAD = True
    settings.LABSEG_UPLOAD_CHUNK_BYTES = CHUNK_BYTES
    phantom = write_phantom(tmp_path / "CT_M03_8d.nii.gz", seed=3)
    assert phantom.stat().st_size > 3 * CHUNK_BYTES
    page, console = open_page(researcher)

    # Upload with progress; the second chunk's connection is cut and the upload resumes.
    scan_id, puts = _upload(page, live_server, phantom)
    assert puts["cut"] == 1 and puts["sent"] >= 4
    scan = Scan.objects.get(pk=scan_id)
    assert scan.time_point.mouse.identifier == "M03" and scan.time_point.label == "8d"
    assert scan.size_bytes == phantom.stat().st_size
    assert Annotation.objects.get(scan=scan).annotator_name == "A"

    # Sending the same file again: the row shows the server's refusal in its own words.
    console.expected.append("the server responded with a status of 409 (Conflict)")
    page.set_input_files("#files", str(phantom))
    page.click("#send")
    page.wait_for_function("document.querySelectorAll('#queue .msg.error').length === 1")
    refusal = page.locator("#queue .msg.error").inner_text()
    assert f"this file was already uploaded to Tumor Lab as scan {scan_id}" in refusal
    screenshot(page, "01b-upload-refused")

    # The scan page follows the real worker's jobs live until they finish (one request per poll
    # for all of them), and the viewer adds the new overlays without a reload.
    job_requests: list[str] = []
    page.on("request", lambda r: job_requests.append(r.url) if "/api/jobs/" in r.url else None)
    page.goto(f"{live_server.url}/scans/{scan_id}/")
    page.evaluate("window.__sameDocument = true")
    page.wait_for_function(
        "[...document.querySelectorAll('[data-job]')].length === 2 && "
        "[...document.querySelectorAll('[data-job]')].every(e => e.dataset.state === 'succeeded')",
        timeout=JOB_TIMEOUT_MS,
    )
    jobs = InferenceJob.objects.filter(scan_id=scan_id)
    assert {job.state for job in jobs} == {"succeeded"}, worker.log()

    # The viewer shows the prediction overlay, added when the jobs ended: no reload happened.
    page.wait_for_function("window.labsegViewer && window.labsegViewer.firstFrameMs")
    page.wait_for_function("window.labsegViewer.overlayDrawn === true", timeout=JOB_TIMEOUT_MS)
    assert page.evaluate("window.__sameDocument") is True
    assert page.locator("#volumes tbody tr").count() > 0
    # Polled, if the jobs were still running when the page opened, with one request for all.
    assert all("ids=" in url for url in job_requests)
    assert page.evaluate("window.labsegViewer.errors") == []
    screenshot(page, "02-viewer")

    # Overlays: annotator A in outline mode (a band of its edge, frontend/static/frontend/js/outlines.js),
    # the organ labels off, the uncertainty heatmap on, the liver hidden.
    page.locator("[data-kind=annotation] input[type=checkbox]").check()
    page.wait_for_function(
        "window.labsegViewer.config.layers.some(l => l.kind === 'annotation' && l.volume"
        " && l.volume.labelsAsLoaded && l.volume.img.filter(Boolean).length"
        " <= l.volume.labelsAsLoaded.filter(Boolean).length)"
    )
    organ_layer = page.locator("[data-kind=labels]").filter(has_text="Organs")
    organ_layer.locator("input[type=checkbox]").uncheck()
    page.locator("[data-kind=uncertainty] input[type=checkbox]").first.check()
    page.wait_for_function("document.body.dataset.layersChanged")
    # The heatmap loads on first check: wait for its volume, not only for the layer list to change.
    page.wait_for_function(
        "window.labsegViewer.config.layers.some(l => l.kind === 'uncertainty' && l.volume"
        " && l.volume.opacity > 0)"
    )
    page.locator("#structures [data-structure=liver] input").uncheck()
    opacities = page.evaluate(
        "window.labsegViewer.config.layers.filter(l => l.volume)"
        ".map(l => [l.kind, l.title, l.volume.opacity])"
    )
    organ = [o for kind, title, o in opacities if kind == "labels" and title.startswith("Organs")]
    heat = [o for kind, _, o in opacities if kind == "uncertainty"]
    assert organ == [0] and heat and heat[0] > 0
    hidden_alpha = page.evaluate(
        "(() => { const v = window.labsegViewer.config.layers.find(l => l.kind === 'labels' && l.volume"
        " && l.title.startsWith('Organs')).volume; const lut = v.colormapLabel;"
        " return lut.lut[(4 - lut.min) * 4 + 3]; })()"
    )
    assert hidden_alpha == 0  # liver (id 4) no longer drawn
    page.wait_for_timeout(300)
    screenshot(page, "03-viewer-overlays-toggled")

    # The metastasis panel shows the counts the service stored.
    expected: dict[str, int] = {}
    for prediction in Prediction.objects.filter(scan_id=scan_id):
        for organ_name, count in prediction.metastasis_counts.items():
            if count is not None:  # None: not assessed
                expected[organ_name] = expected.get(organ_name, 0) + count
    bars = page.evaluate(
        "[...document.querySelectorAll('#metastases .bar')]"
        ".map(b => [b.dataset.label, Number(b.dataset.value)])"
    )
    assert sum(v for _, v in bars) == sum(expected.values())
    assert expected, "the phantom has a metastasis: the tiny lesion model must find it"

    # The crosshair readout names a structure and a position in mm.
    page.click("canvas#gl", position={"x": 300, "y": 300})
    assert " mm" in page.inner_text("#readout")

    # The volumetry CSV downloaded from the page matches the API's volumes.
    with page.expect_download() as download_info:
        page.click("#download-volumes")
    rows = list(csv.DictReader(io.StringIO(Path(download_info.value.path()).read_text())))
    api = _volumes_from_api(page, live_server, scan_id)
    assert rows and len(rows) == len(api)
    for row in rows:
        assert row["scan_id"] == str(scan_id) and row["mouse"] == "M03" and row["time_point"] == "8d"
        assert float(row["volume_mm3"]) == pytest.approx(api[(row["source"], row["structure"])])

    # The QC gate: the tiny models' organs on this toy scan are not a mouse's (a 600 mm3 heart), so
    # their runs need review. The study page lists them as not charted, with the reasons; a
    # reviewer accepts them on the scan page, and the charts follow.
    page.goto(f"{live_server.url}/studies/{scan.time_point.mouse.study_id}/")
    held_back = page.locator("#held-back").inner_text()
    assert "Needs review" in held_back and "expected for an adult mouse" in held_back
    screenshot(page, "04a-study-held-back")
    Membership.objects.filter(user=researcher).update(role=Membership.Role.REVIEWER)
    page.goto(f"{live_server.url}/scans/{scan_id}/")
    flagged = page.locator("#qc-card .badge.qc-needs_review").count()
    assert flagged >= 1
    for _ in range(flagged):
        page.wait_for_function("document.body.dataset.qcReady === '1'")
        form = page.locator("form.qc-decide").first
        form.locator("input[name=note]").fill("toy scan: organs outside the tiny models' reach")
        with page.expect_navigation():
            form.locator("button[value=accepted]").click()
    assert page.locator("#qc-card .badge.qc-accepted").count() == flagged
    assert page.locator("form.qc-decide").count() == 0
    screenshot(page, "04b-scan-qc-accepted")

    # The study and mouse pages show the scan, its QC thumbnail and the tumor over time.
    page.goto(f"{live_server.url}/mice/{scan.time_point.mouse_id}/")
    page.wait_for_selector("#tumor-chart svg circle")
    thumb = page.locator("img.thumb")
    thumb.scroll_into_view_if_needed()  # thumbnails load lazily
    page.wait_for_function("document.querySelector('img.thumb').complete")
    assert thumb.evaluate("img => img.naturalWidth > 0")
    screenshot(page, "04-mouse")
    page.goto(f"{live_server.url}/studies/{scan.time_point.mouse.study_id}/")
    page.wait_for_selector("#cohort-chart svg circle")
    screenshot(page, "05-study")

    assert console.messages == []

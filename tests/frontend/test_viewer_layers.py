"""The viewer in Chromium, as the eye sees it: the progressive load goes from the first preview
level to full resolution, the 3D render is drawn only on request, each layer toggle changes the
canvas's pixels the way it says, and the outline width control thickens the annotator's outline."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any, cast

import nibabel as nib
import numpy as np
import pytest
from PIL import Image

from inference.structures import BY_NAME
from review.services import create_annotation
from scans.models import Scan
from scans.services import register_scan
from tests.demo_scan import add_prediction, write_phantom

from .conftest import screenshot

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]

SHAPE = (48, 40, 64)


@pytest.fixture
def annotated_scan(lab: Any, researcher: Any, tmp_path: Path, settings: Any, media_root: Path) -> Scan:
    """A phantom with its prediction and one annotator's liver; three levels: 1 voxel per 4^3
    first, per 2^3 next, then full resolution (the scan is small enough to refine to it)."""
    settings.LABSEG_SEGMENT_ON_UPLOAD = False
    voxels = int(np.prod(SHAPE))
    settings.LABSEG_PREVIEW_FIRST_VOXELS = voxels // 64
    settings.LABSEG_PREVIEW_MAX_VOXELS = voxels // 8
    settings.LABSEG_VIEWER_AUTO_FULL_VOXELS = voxels
    files = (tmp_path / "CT_M01_0h.nii", tmp_path / "labels.nii", tmp_path / "uncertainty.nii")
    write_phantom(*files, shape=SHAPE, spacing_mm=0.5)
    scan = register_scan(
        lab=lab,
        uploaded_file_path_or_file=files[0],
        original_filename=files[0].name,
        study_name="Layers",
        mouse_identifier="M01",
        time_point_label="0h",
        user=researcher,
    )
    add_prediction(scan=scan, labels_path=files[1], uncertainty_path=files[2])
    labels = cast(nib.Nifti1Image, nib.load(str(files[1])))
    liver = (np.asarray(labels.dataobj) == BY_NAME["liver"].id).astype(np.uint8)
    drawn = tmp_path / "Annotator_A_M01_0h.nii.gz"
    nib.save(nib.Nifti1Image(liver, labels.affine), str(drawn))
    create_annotation(
        scan=scan,
        file=drawn,
        original_filename=drawn.name,
        annotator_name="A",
        user=researcher,
        structures={"liver": 1},
    )
    return scan


#: The viewer's background (backColor in viewer.js): a canvas showing none is not drawn yet.
BACKGROUND = (15, 18, 23)


def _pixels(page: Any) -> np.ndarray:
    """The canvas as the screen shows it (RGB), once a drawn frame is on screen (a canvas resized
    by the side panel is blank until NiiVue's next frame)."""
    for _ in range(25):
        page.evaluate("new Promise((resolve) => requestAnimationFrame(() => requestAnimationFrame(resolve)))")
        pixels = np.asarray(Image.open(io.BytesIO(page.locator("canvas#gl").screenshot())).convert("RGB"))
        if (pixels == BACKGROUND).all(axis=2).any():
            return pixels
        page.wait_for_timeout(200)
    raise AssertionError("the viewer's canvas shows no frame")


def _coloured(pixels: np.ndarray, rgb: tuple[int, int, int]) -> int:
    """Pixels tinted like ``rgb`` (a structure's colour blended over the grey CT): the channel that
    dominates ``rgb`` stands out from both others by more than 30."""
    channels = pixels.astype(int)
    main = int(np.argmax(rgb))
    others = [c for c in range(3) if c != main]
    return int(((channels[..., main] - channels[..., others].max(axis=2)) > 30).sum())


def _toggle(page: Any, kind: str) -> np.ndarray:
    before = page.evaluate("document.body.dataset.layersChanged || ''")
    page.locator(f"[data-kind={kind}] input[type=checkbox]").first.click()
    page.wait_for_function(f"(document.body.dataset.layersChanged || '') !== {before!r}")
    return _pixels(page)


def test_the_first_preview_refines_to_full_resolution_and_3d_waits_for_a_request(
    open_page: Any, live_server: Any, annotated_scan: Scan
) -> None:
    page, console = open_page(annotated_scan.uploaded_by)
    page.goto(f"{live_server.url}/scans/{annotated_scan.pk}/")
    page.wait_for_function("window.labsegViewer && window.labsegViewer.settled", timeout=60_000)
    hook = "window.labsegViewer"

    assert page.evaluate(f"{hook}.levels") == ["first", "preview", "full"]
    assert page.evaluate(f"Array.from({hook}.nv.back.hdr.dims.slice(1, 4))") == list(SHAPE)
    assert page.locator("#resolution").inner_text() == "Full resolution"
    assert page.evaluate(f"{hook}.renderShown") is False
    assert page.evaluate(f"{hook}.nv.opts.multiplanarShowRender") == 0
    without_3d = _pixels(page)
    page.locator("#render-tile").click()
    page.wait_for_selector("body[data-render-tile=on]")
    with_3d = _pixels(page)
    assert page.evaluate(f"{hook}.renderShown") is True
    assert not np.array_equal(with_3d, without_3d)  # the free tile now holds the 3D render
    screenshot(page, "07-viewer-full-resolution-3d-tile")
    assert page.evaluate(f"{hook}.errors") == [] and console.messages == []


def test_each_layer_toggle_changes_the_pixels_it_says_and_outlines_thicken(
    open_page: Any, live_server: Any, annotated_scan: Scan
) -> None:
    page, console = open_page(annotated_scan.uploaded_by)
    page.goto(f"{live_server.url}/scans/{annotated_scan.pk}/")
    page.wait_for_function("window.labsegViewer && window.labsegViewer.settled", timeout=60_000)
    # Axial, through the middle of the liver: its outline is a ring there. (The band is 3D, so a
    # plane that grazes a structure's surface shows it filled, as NiiVue's own outline does.)
    page.keyboard.press("a")
    liver = BY_NAME["liver"].colour
    start = _pixels(page)

    organs_off = _toggle(page, "labels")
    heat_on = _toggle(page, "uncertainty")
    heat_off = _toggle(page, "uncertainty")
    outline_on = _toggle(page, "annotation")
    page.keyboard.press("]")
    page.wait_for_function("document.body.dataset.outlineWidth === '3'")
    thicker = _pixels(page)

    # The prediction's labels leave the screen (the liver's colour with them)...
    assert _coloured(start, liver) > 1000 and _coloured(organs_off, liver) < _coloured(start, liver) / 10
    # ...the uncertainty heatmap comes and goes, leaving the picture as it was...
    assert not np.array_equal(heat_on, organs_off) and np.array_equal(heat_off, organs_off)
    # ...the annotator's outline is drawn in the liver's colour, a band along its edge (fewer pixels
    # than the filled liver), and the width control thickens it.
    assert _coloured(organs_off, liver) < _coloured(outline_on, liver) < _coloured(start, liver)
    assert _coloured(thicker, liver) > _coloured(outline_on, liver)
    screenshot(page, "08-viewer-annotation-outline")
    assert page.evaluate("window.labsegViewer.errors") == [] and console.messages == []

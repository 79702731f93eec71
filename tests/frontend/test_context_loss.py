"""The viewer keeps working after the browser loses its WebGL context (a GPU process that crashed
or reset): the picture comes back as it was, a correction being drawn included, and drawing goes
on. The loss is made with WEBGL_lose_context, the extension browsers provide to test exactly this."""

from __future__ import annotations

import io
from typing import Any

import numpy as np
import pytest
from PIL import Image

from inference.structures import BY_NAME
from scans.models import Scan

from .test_correction import _drag_square, _drawn, phantom_scan  # noqa: F401 (a fixture)

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]

TUMOR = BY_NAME["tumor"].id
LOSE = (
    "window.lossTest = document.querySelector('canvas#gl').getContext('webgl2')"
    ".getExtension('WEBGL_lose_context')"
)


def _pixels(page: Any) -> np.ndarray:
    page.evaluate("new Promise((resolve) => requestAnimationFrame(() => requestAnimationFrame(resolve)))")
    return np.asarray(Image.open(io.BytesIO(page.locator("canvas#gl").screenshot())).convert("RGB"))


def test_the_viewer_and_a_drawing_come_back_after_the_webgl_context_is_lost(
    open_page: Any,
    live_server: Any,
    phantom_scan: Scan,  # noqa: F811
) -> None:
    page, console = open_page(phantom_scan.uploaded_by)
    page.goto(f"{live_server.url}/scans/{phantom_scan.pk}/")
    page.wait_for_function("window.labsegViewer && window.labsegViewer.settled", timeout=60_000)
    page.click("[data-view=axial]")
    page.click("#correct-begin")
    page.wait_for_function("document.body.dataset.drawing === '1'")
    page.select_option("#draw-label", str(TUMOR))
    page.click("[data-tool=fill]")
    _drag_square(page, 60)
    filled = _drawn(page, TUMOR)
    before = _pixels(page)

    page.evaluate(LOSE)
    page.evaluate("window.lossTest.loseContext()")
    page.wait_for_selector("canvas#gl[data-context=lost]")
    lost = _pixels(page)
    page.evaluate("window.lossTest.restoreContext()")
    page.wait_for_selector("canvas#gl[data-context=restored]", timeout=30_000)
    restored = _pixels(page)

    assert page.evaluate("window.labsegViewer.contextLosses") == 1
    assert page.evaluate("window.labsegViewer.errors") == []
    assert lost.mean() < before.mean() / 4  # nothing is drawn while the context is gone
    # The same picture as before the loss, the drawn square included (a texture rebuilt from the
    # same volumes may differ by a grey level where interpolation rounds).
    assert np.abs(restored.astype(int) - before.astype(int)).max() <= 2
    # Drawing goes on: the eraser takes part of the square away, on screen as in the bitmap.
    page.click("[data-tool=erase]")
    _drag_square(page, 20)
    assert _drawn(page, TUMOR) < filled
    assert not np.array_equal(_pixels(page), restored)
    assert console.messages == []

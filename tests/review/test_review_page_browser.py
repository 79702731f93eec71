"""A reviewer walks through the review page in real Chromium: both annotators visible, the
disagreement map on, one annotation rejected with a note, the other approved. Screenshots are
kept under test-artifacts/review/."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from django.conf import settings
from django.test import Client

from inference.phantom import generate_phantom
from review.models import AnnotationTransition
from scans.models import Annotation
from tests.review.conftest import make_annotation, make_scan

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]

ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts" / "review"


@pytest.fixture
def phantom_scan(lab):  # type: ignore[no-untyped-def]
    """Two simulated annotators of a phantom's tumor, on a crop around it."""
    phantom = generate_phantom(2, spacing_mm=0.42, annotated=["tumor"], n_annotators=2)
    tumor = np.nonzero(phantom.labels == 14)
    box = tuple(slice(max(int(i.min()) - 14, 0), int(i.max()) + 15) for i in tumor)
    scan = make_scan(lab=lab, ct=phantom.ct[box], spacing_mm=(0.42, 0.42, 0.42), mouse="M02")
    for name, labels in phantom.annotators.items():
        make_annotation(scan=scan, labels=labels[box], annotator=name)
    return scan


def session_cookie(user) -> str:  # type: ignore[no-untyped-def]
    client = Client()
    client.force_login(user)
    return client.cookies[settings.SESSION_COOKIE_NAME].value


def overlay_pixels(page):  # type: ignore[no-untyped-def]
    """The overlay canvas as the screen shows it (RGB), once a frame with the scan is on screen:
    a canvas whose WebGL context was lost shows none until it is restored (review.js keeps the
    viewer through that; a busy software renderer lost one in a CI run)."""
    import io

    from PIL import Image

    for _ in range(50):
        page.evaluate("new Promise((resolve) => requestAnimationFrame(() => requestAnimationFrame(resolve)))")
        pixels = np.asarray(Image.open(io.BytesIO(page.locator("#overlay").screenshot())).convert("RGB"))
        grey = pixels.min(axis=2)
        if ((grey > 40) & (grey < 250)).mean() > 0.01:  # the CT's greys, not a flat blank
            return pixels
        page.wait_for_timeout(300)
    raise AssertionError("the review page's overlay shows no picture of the scan")


def coloured(pixels) -> int:  # type: ignore[no-untyped-def]
    """How many pixels are strongly coloured (the annotators' outlines; the CT is grey)."""
    channels = pixels.astype(int)
    return int(((channels.max(axis=2) - channels.min(axis=2)) > 80).sum())


def walk_through_review(page, url: str) -> list[str]:  # type: ignore[no-untyped-def]
    """The reviewer's steps in the browser; returns the page's JavaScript errors."""
    errors: list[str] = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    page.goto(url)
    page.wait_for_selector("body[data-review-ready=true]", timeout=60_000)

    for name in ("A", "B"):
        card = page.get_by_test_id(f"annotator-{name}")
        assert card.is_visible()
        assert card.locator("[data-role=status]").inner_text() == "Submitted"
    # One viewer and one CT for every annotator, refined from the first preview level once idle.
    assert page.locator("canvas").count() == 1
    assert page.locator("#overlay[data-loaded=true]").count() == 1
    page.wait_for_function("window.labsegReview.settled", timeout=60_000)
    assert page.evaluate("window.labsegReview.errors") == []
    page.screenshot(path=str(ARTIFACTS / "1_both_annotators.png"), full_page=True)

    # Each annotator's outline can be switched off and on, and made thicker: the pixels follow.
    both = overlay_pixels(page)
    page.get_by_test_id("annotator-A").get_by_label("Shown in the viewer").uncheck()
    # data-hidden names the hidden annotators once the frame without them is drawn ("" before: a
    # wait for "not ''" on an attribute not yet set passed at once, and a CI run compared the old
    # frame with itself).
    page.wait_for_function("Boolean(document.querySelector('#overlay').dataset.hidden)")
    without_a = overlay_pixels(page)
    page.get_by_test_id("annotator-A").get_by_label("Shown in the viewer").check()
    page.wait_for_function("document.querySelector('#overlay').dataset.hidden === ''")
    assert np.array_equal(overlay_pixels(page), both) and not np.array_equal(without_a, both)
    page.locator("#outline-width").fill("4")
    page.wait_for_selector("#overlay[data-outline-width='4']")
    assert coloured(overlay_pixels(page)) > coloured(both)  # a wider band of the annotators' colours

    page.get_by_label("Disagreement map").check()
    page.wait_for_selector("#overlay[data-disagreement=on]", timeout=30_000)
    assert page.locator("#disagreement-legend").is_visible()
    page.locator("#overlay-card").screenshot(path=str(ARTIFACTS / "2_disagreement_map.png"))

    first, second = (page.get_by_test_id(f"annotator-{name}") for name in ("A", "B"))
    # A rejection without a note is refused beside the buttons, where the reviewer is looking.
    first.get_by_role("button", name="Reject").click()
    page.wait_for_function(
        "document.querySelector('[data-testid=annotator-A] .form-error').textContent.includes('needs a note')"
    )
    error_box = first.locator(".form-error").bounding_box()
    button_box = first.get_by_role("button", name="Reject").bounding_box()
    assert first.locator(".form-error").is_visible() and error_box and button_box
    assert abs(error_box["y"] - button_box["y"]) < 120  # beside the button, not at the top of the page
    first.get_by_label("Note").fill("The rim is drawn too generously on the caudal slices.")
    first.get_by_role("button", name="Reject").click()
    status = "document.querySelector('[data-testid=annotator-{}] [data-role=status]').textContent === '{}'"
    page.wait_for_function(status.format("A", "Rejected"))
    second.get_by_role("button", name="Approve").click()
    page.wait_for_function(status.format("B", "Approved"))
    # A decision can be undone, and taken again.
    second.get_by_role("button", name="Undo").click()
    page.wait_for_function(status.format("B", "Submitted"))
    second.get_by_role("button", name="Approve").click()
    page.wait_for_function(status.format("B", "Approved"))
    assert "too generously" in first.locator("[data-role=note]").inner_text()
    page.screenshot(path=str(ARTIFACTS / "3_after_review.png"), full_page=True)
    return errors


def test_a_reviewer_rejects_one_annotator_and_approves_the_other(
    live_server, browser, phantom_scan, reviewer
):
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    cookie = session_cookie(reviewer)

    # Only the browser runs inside Playwright's event loop; the database is read before and after.
    context = browser.new_context(viewport={"width": 1280, "height": 1100})
    context.add_cookies([{"name": settings.SESSION_COOKIE_NAME, "value": cookie, "url": live_server.url}])
    try:
        errors = walk_through_review(context.new_page(), f"{live_server.url}/review/scans/{phantom_scan.pk}/")
    finally:
        context.close()

    assert errors == []
    statuses = dict(Annotation.objects.filter(scan=phantom_scan).values_list("annotator_name", "status"))
    assert statuses == {"A": "rejected", "B": "approved"}
    rejected = Annotation.objects.get(scan=phantom_scan, annotator_name="A")
    assert rejected.review_note == "The rim is drawn too generously on the caudal slices."
    # reject A; approve B, undo, approve again
    assert AnnotationTransition.objects.filter(annotation__scan=phantom_scan, by=reviewer).count() == 4


def test_the_overlay_comes_back_and_answers_after_the_webgl_context_is_lost(
    live_server, browser, phantom_scan, reviewer
):
    """A GPU process that crashes or resets takes the canvas's WebGL context with it; the page
    gets it back and draws what the reviewer asked for meanwhile (WEBGL_lose_context makes the
    loss, as browsers provide for this test)."""
    context = browser.new_context(viewport={"width": 1280, "height": 1100})
    context.add_cookies(
        [{"name": settings.SESSION_COOKIE_NAME, "value": session_cookie(reviewer), "url": live_server.url}]
    )
    try:
        page = context.new_page()
        page.goto(f"{live_server.url}/review/scans/{phantom_scan.pk}/")
        page.wait_for_function("window.labsegReview.settled", timeout=60_000)
        both = overlay_pixels(page)
        shown = page.get_by_test_id("annotator-A").get_by_label("Shown in the viewer")

        page.evaluate(
            "window.lossTest = document.querySelector('#overlay').getContext('webgl2')"
            ".getExtension('WEBGL_lose_context'); window.lossTest.loseContext()"
        )
        page.wait_for_selector("#overlay[data-context=lost]")
        shown.uncheck()  # asked for while the context is gone
        page.evaluate("window.lossTest.restoreContext()")
        page.wait_for_selector("#overlay[data-context=restored]", timeout=30_000)
        without_a = overlay_pixels(page)
        assert coloured(without_a) < coloured(both)  # drawn as asked: B's outline only
        shown.check()
        page.wait_for_function("document.querySelector('#overlay').dataset.hidden === ''")
        assert np.abs(overlay_pixels(page).astype(int) - both.astype(int)).max() <= 2
        assert page.evaluate("[window.labsegReview.contextLosses, window.labsegReview.errors]") == [1, []]
    finally:
        context.close()

"""A reviewer walks through the review page in real Chromium: both annotators visible, the
disagreement map on, one annotation rejected with a note, the other approved. Screenshots are
kept under test-artifacts/review/."""

from __future__ import annotations

import os
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
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


@pytest.fixture
def browser():  # type: ignore[no-untyped-def]
    sync_api = pytest.importorskip("playwright.sync_api")
    # Playwright's sync API runs an event loop in this thread; the test's own ORM calls are
    # ordinary synchronous ones, made between browser steps.
    os.environ["DJANGO_ALLOW_ASYNC_UNSAFE"] = "true"
    with sync_api.sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path="/usr/bin/chromium", args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()
    os.environ.pop("DJANGO_ALLOW_ASYNC_UNSAFE", None)


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


@pytest.fixture
def reviewer_page(browser, live_server, reviewer, phantom_scan):  # type: ignore[no-untyped-def]
    """A browser page signed in as the reviewer (session cookie from Django's test client).

    Closed before the database is flushed, so no request of the page is still being served then.
    """
    client = Client()
    client.force_login(reviewer)
    cookie = client.cookies[settings.SESSION_COOKIE_NAME].value
    context = browser.new_context(viewport={"width": 1280, "height": 1100})
    context.add_cookies([{"name": settings.SESSION_COOKIE_NAME, "value": cookie, "url": live_server.url}])
    yield context.new_page()
    context.close()


def test_a_reviewer_rejects_one_annotator_and_approves_the_other(
    live_server, phantom_scan, reviewer, reviewer_page
):
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page = reviewer_page
    errors: list[str] = []
    page.on("pageerror", lambda error: errors.append(str(error)))

    page.goto(f"{live_server.url}/review/scans/{phantom_scan.pk}/")
    page.wait_for_selector("body[data-review-ready=true]", timeout=60_000)

    for name in ("A", "B"):
        card = page.get_by_test_id(f"annotator-{name}")
        assert card.is_visible()
        assert card.locator("canvas[data-loaded=true]").count() == 1
        assert card.locator("[data-role=status]").inner_text() == "Submitted"
    assert page.locator("#overlay[data-loaded=true]").count() == 1
    page.screenshot(path=str(ARTIFACTS / "1_both_annotators.png"), full_page=True)

    page.get_by_label("Disagreement map").check()
    page.wait_for_selector("#overlay[data-disagreement=on]", timeout=30_000)
    assert page.locator("#disagreement-legend").is_visible()
    page.locator("#overlay-card").screenshot(path=str(ARTIFACTS / "2_disagreement_map.png"))

    first, second = (page.get_by_test_id(f"annotator-{name}") for name in ("A", "B"))
    first.get_by_label("Note").fill("The rim is drawn too generously on the caudal slices.")
    first.get_by_role("button", name="Reject").click()
    page.wait_for_function(
        "document.querySelector('[data-testid=annotator-A] [data-role=status]').textContent === 'Rejected'"
    )
    second.get_by_role("button", name="Approve").click()
    page.wait_for_function(
        "document.querySelector('[data-testid=annotator-B] [data-role=status]').textContent === 'Approved'"
    )
    assert "too generously" in first.locator("[data-role=note]").inner_text()
    page.screenshot(path=str(ARTIFACTS / "3_after_review.png"), full_page=True)

    assert errors == []
    statuses = dict(Annotation.objects.filter(scan=phantom_scan).values_list("annotator_name", "status"))
    assert statuses == {"A": "rejected", "B": "approved"}
    rejected = Annotation.objects.get(scan=phantom_scan, annotator_name="A")
    assert rejected.review_note == "The rim is drawn too generously on the caudal slices."
    assert AnnotationTransition.objects.filter(annotation__scan=phantom_scan, by=reviewer).count() == 2

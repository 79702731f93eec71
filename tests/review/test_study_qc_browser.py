"""The study QC page in Chromium: Dice per structure drawn as SVG box plots in the browser (the one
charting path, charts.js), whole at a long study name: the chart and its legend lie inside the card."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from django.conf import settings
from django.test import Client

from tests.factories import StudyFactory
from tests.review.conftest import ball
from tests.review.test_consensus_and_agreement import approved_tumor_scan, client_for, make_prediction

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]

ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts" / "review"
LONG_NAME = "Flank tumours, cohort 2 treated with the long-named compound at three doses, follow-up"


def test_the_dice_box_plots_are_drawn_whole_at_a_long_study_name(  # type: ignore[no-untyped-def]
    live_server, browser, lab, reviewer, tumor_scan
):
    study = StudyFactory(lab=lab, name=LONG_NAME)
    for mouse in ("M01", "M02"):
        scan, _ = approved_tumor_scan(tumor_scan, reviewer, study=study, mouse=mouse)
        make_prediction(scan, ball(tuple(scan.shape), (16, 15, 14), 7.1).astype(np.uint8) * 14)
        client_for(reviewer).post(f"/api/scans/{scan.pk}/consensus", {}, format="json")
    client = Client()
    client.force_login(reviewer)
    cookie = client.cookies[settings.SESSION_COOKIE_NAME].value
    ARTIFACTS.mkdir(parents=True, exist_ok=True)

    context = browser.new_context(viewport={"width": 1280, "height": 900})
    context.add_cookies([{"name": settings.SESSION_COOKIE_NAME, "value": cookie, "url": live_server.url}])
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    try:
        page.goto(f"{live_server.url}/review/studies/{study.pk}/qc/")
        page.wait_for_selector("body[data-charts-drawn=true]")
        boxes = page.locator("#dice-chart g.box")
        groups = {boxes.nth(i).get_attribute("data-group") for i in range(boxes.count())}
        chart = page.locator("#dice-chart svg").bounding_box()
        card = page.locator("#dice-chart").locator("xpath=ancestor::section").bounding_box()
        legend = page.locator("#dice-chart .legend").inner_text()
        heading = page.locator("h1").inner_text()
        page.screenshot(path=str(ARTIFACTS / "4_study_qc.png"), full_page=True)
    finally:
        context.close()

    assert errors == []
    assert groups == {"annotator vs annotator", "model vs annotator"}
    assert (
        chart
        and card
        and chart["x"] >= card["x"]
        and chart["x"] + chart["width"] <= card["x"] + card["width"]
    )
    assert "annotator vs annotator" in legend and "model vs annotator" in legend
    assert LONG_NAME in heading  # the name is the page's, in HTML: it wraps, nothing cuts it

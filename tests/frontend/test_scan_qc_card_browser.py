"""The scan page's Quality check card in Chromium: an organ the field of view cuts through is named
as having no volume (``inference.pipeline.qc``'s ``cut_by_field``), and the line lies inside the card."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest
from django.conf import settings
from django.test import Client

from scans.models import Scan
from segmentation.models import Prediction
from tests.frontend.conftest import screenshot
from tests.frontend.test_pages import phantom_files, scan, user  # noqa: F401 (fixtures)

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]


@contextmanager
def _scan_page(live_server: Any, browser: Any, member: Any, of_scan: Scan) -> Iterator[tuple[Any, list[str]]]:
    """``of_scan``'s page opened in a browser signed in as ``member``, and the page errors it
    collects; the browser context is closed on leaving."""
    client = Client()
    client.force_login(member)
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    context.add_cookies(
        [
            {
                "name": settings.SESSION_COOKIE_NAME,
                "value": client.cookies[settings.SESSION_COOKIE_NAME].value,
                "url": live_server.url,
            }
        ]
    )
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    try:
        page.goto(f"{live_server.url}/scans/{of_scan.pk}/")
        yield page, errors
    finally:
        context.close()


def _inside_its_card(line: Any) -> bool:
    """Whether ``line`` (a locator) lies across its card (the section holding it), not past it."""
    box = line.bounding_box()
    card = line.locator("xpath=ancestor::section[1]").bounding_box()
    return bool(
        box and card and card["x"] <= box["x"] and box["x"] + box["width"] <= card["x"] + card["width"]
    )


def _store_manifest(of_scan: Scan, **sections: dict[str, Any]) -> None:
    """The scan's prediction as if its run had written ``sections`` into its manifest."""
    prediction = Prediction.objects.get(scan=of_scan)
    manifest = dict(prediction.manifest or {})
    for key, values in sections.items():
        manifest[key] = {**(manifest.get(key) or {}), **values}
    # Predictions are immutable through the model; a queryset update stands for a run that wrote this.
    Prediction.objects.filter(pk=prediction.pk).update(manifest=manifest)


def test_the_scan_page_names_an_organ_cut_by_the_field(
    live_server: Any,
    browser: Any,
    scan: Scan,  # noqa: F811
    user: Any,  # noqa: F811 (scan and user: the fixtures imported above)
) -> None:
    _store_manifest(scan, qc={"status": "ok", "reasons": [], "cut_by_field": ["liver"]})
    started = time.perf_counter()
    with _scan_page(live_server, browser, user, scan) as (page, errors):
        line = page.get_by_text("cut by the edge of the field of view")
        line.wait_for(state="visible")
        seconds = time.perf_counter() - started
        text = line.inner_text()
        inside = _inside_its_card(line)
        path = screenshot(page, "scan_qc_cut_by_field")

    print(f"cut-by-field line on screen {seconds:.2f} s after the page was opened; screenshot {path}")
    assert errors == []
    assert "liver" in text
    assert inside


def test_the_scan_page_says_where_an_outline_refiner_ran(
    live_server: Any,
    browser: Any,
    scan: Scan,  # noqa: F811
    user: Any,  # noqa: F811 (scan and user: the fixtures imported above)
) -> None:
    # The manifest's ``postprocess.refiners`` of a 0.5 mm scan: the heart's outline was redrawn on
    # resampled voxels (``inference.pipeline.refiner.RefinerRun.finding``).
    finding = (
        "Heart: outline redrawn on the scan resampled from 0.5 x 0.5 x 0.5 mm voxels to the 0.21 mm "
        "the refiner was trained at, and back."
    )
    _store_manifest(
        scan, postprocess={"refiners": [{"structure": "heart", "ran_on": "resampled", "finding": finding}]}
    )
    with _scan_page(live_server, browser, user, scan) as (page, errors):
        page.get_by_text("How the scan was read").click()
        line = page.get_by_text("outline redrawn on the scan resampled")
        line.wait_for(state="visible")
        text = line.inner_text()
        path = screenshot(page, "scan_qc_refiner_resampled")

    print(f"screenshot {path}")
    assert errors == []
    assert "Heart" in text and "0.21 mm" in text


def test_the_scan_page_shows_an_unstable_organ_and_how_alike_the_readings_were(
    live_server: Any,
    browser: Any,
    scan: Scan,  # noqa: F811
    user: Any,  # noqa: F811 (scan and user: the fixtures imported above)
) -> None:
    # The manifest of a run whose heart the organ model read differently on its shifted grids
    # (``inference.pipeline.qc``'s ``unstable``; the figures in ``qc.pass_agreement``).
    reason = (
        "the heart's outline changes when the model reads the scan moved by a few of its voxels (its "
        "readings agree at Dice 0.55; on anatomy it learned, 0.80 or more): it does not know this "
        "anatomy well; check the overlay"
    )
    _store_manifest(
        scan,
        qc={
            "status": "needs_review",
            "reasons": [{"code": "unstable", "structure": "heart", "message": reason}],
            "pass_agreement": {"heart": 0.55, "liver": 0.95},
        },
    )
    started = time.perf_counter()
    with _scan_page(live_server, browser, user, scan) as (page, errors):
        shown = page.get_by_text("it does not know this anatomy well")
        shown.wait_for(state="visible")
        seconds = time.perf_counter() - started
        page.get_by_text("How the scan was read").click()
        figures = page.get_by_text("its readings agree at Dice heart 0.55, liver 0.95")
        figures.wait_for(state="visible")
        inside = _inside_its_card(figures)
        path = screenshot(page, "scan_qc_unstable")

    print(f"unstable reason on screen {seconds:.2f} s after the page was opened; screenshot {path}")
    assert errors == []
    assert inside

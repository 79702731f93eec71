"""Curation in Chromium by a lab admin: rename a mouse, merge it into another, move a mouse to the
bin from its page, see it in the bin page and restore it; a member sees no curation controls."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from labs.models import Lab, Membership
from scans.models import Mouse, Scan
from scans.services import register_scan
from tests.factories import member_of
from tests.scans.niftis import nifti_bytes, volume

from .conftest import screenshot

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]


def _scan(lab: Lab, user: Any, tmp_path: Path, mouse: str, seed: int) -> Scan:
    path = tmp_path / f"CT_{mouse}_0h.nii.gz"
    path.write_bytes(nifti_bytes(volume(seed=seed)))
    return register_scan(
        lab=lab,
        uploaded_file_path_or_file=path,
        original_filename=path.name,
        study_name="Curated",
        mouse_identifier=mouse,
        time_point_label="0h",
        user=user,
    )


def test_an_admin_renames_merges_deletes_and_restores_mice_in_the_browser(
    open_page: Any,
    live_server: Any,
    lab: Lab,
    researcher: Any,
    tmp_path: Path,
    settings: Any,
    media_root: Path,
) -> None:
    settings.LABSEG_SEGMENT_ON_UPLOAD = False
    first = _scan(lab, researcher, tmp_path, "M01", 1)
    second = _scan(lab, researcher, tmp_path, "M02", 2)
    third = _scan(lab, researcher, tmp_path, "M03", 3)
    m01, m03 = first.time_point.mouse, third.time_point.mouse
    admin = member_of(lab, role=Membership.Role.ADMIN, username="ada")
    page, console = open_page(admin)
    page.on("dialog", lambda dialog: dialog.accept())  # the confirmations

    page.goto(f"{live_server.url}/mice/{m01.pk}/")
    page.fill("#rename-mouse input[name=identifier]", "M01b")
    page.click("#rename-mouse button")
    page.wait_for_function("document.querySelector('h1').textContent.includes('M01b')")
    assert Mouse.objects.get(pk=m01.pk).identifier == "M01b"

    # A taken name is refused beside the form, in words (the browser logs the 409 it provokes).
    console.expected.append("409 (Conflict)")
    page.fill("#rename-mouse input[name=identifier]", "M02")
    page.click("#rename-mouse button")
    page.wait_for_function("document.querySelector('#rename-mouse .error').textContent.length > 0")
    assert "merge the two instead" in page.locator("#rename-mouse .error").inner_text()

    # Merge M01b into M02: its scan joins M02 and the browser goes to M02's page.
    page.wait_for_function("document.querySelectorAll('#merge-mouse select option').length >= 2")
    page.select_option("#merge-mouse select", str(second.time_point.mouse_id))
    page.click("#merge-mouse button")
    page.wait_for_url(f"**/mice/{second.time_point.mouse_id}/")
    first.refresh_from_db()
    assert first.time_point.mouse_id == second.time_point.mouse_id
    assert not Mouse.objects.filter(pk=m01.pk).exists()

    # M03 to the bin from its page, then back from the bin page.
    page.goto(f"{live_server.url}/mice/{m03.pk}/")
    page.click("#delete-mouse button")
    page.wait_for_url(f"**/studies/{m03.study_id}/")
    assert "M03" not in page.locator("#mice").inner_text()
    third.refresh_from_db()
    assert third.deleted_at is not None
    page.goto(f"{live_server.url}/bin/")
    assert "M03" in page.locator("#bin-mice").inner_text()
    assert "M03 at 0h" in page.locator("#bin-scans").inner_text()
    screenshot(page, "10-bin")
    page.click(f"#bin-mice tr[data-id='{m03.pk}'] button")
    page.wait_for_function("document.querySelector('#bin-mice').textContent.includes('Nothing here')")
    third.refresh_from_db()
    assert third.deleted_at is None
    page.goto(f"{live_server.url}/studies/{m03.study_id}/")
    assert "M03" in page.locator("#mice").inner_text()
    assert console.messages == []

    # A member sees the pages without the curation controls.
    member_page, _ = open_page(researcher)
    member_page.goto(f"{live_server.url}/mice/{m03.pk}/")
    assert member_page.locator("#curate-mouse").count() == 0

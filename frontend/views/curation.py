"""The bin page: studies, mice and scans of the current lab in the bin (``scans.deletion``), with
Restore buttons for the lab's admins (the forms call the API: ``scans/api/bin.py``)."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from django.conf import settings
from django.http import HttpRequest, HttpResponse

from frontend.views.base import lab_page, page
from labs.rules import is_lab_admin
from scans.models import Lab, Mouse, Scan, Study


def _row(name: str, row: Any, restore: str, keep: timedelta) -> dict[str, Any]:
    return {
        "id": row.pk,
        "name": name,
        "deleted_at": row.deleted_at,
        "by": row.deleted_by.get_username() if row.deleted_by else "",
        "purge_on": row.deleted_at + keep,
        "restore": restore,
    }


@lab_page
def bin_page(request: HttpRequest, lab: Lab) -> HttpResponse:
    keep = timedelta(days=settings.LABSEG_BIN_RETENTION_DAYS)
    studies = Study.objects.filter(lab=lab, deleted_at__isnull=False).select_related("deleted_by")
    mice = Mouse.objects.filter(lab=lab, deleted_at__isnull=False).select_related("study", "deleted_by")
    scans = Scan.objects.filter(lab=lab, deleted_at__isnull=False).select_related(
        "time_point__mouse", "deleted_by"
    )
    sections = [
        {
            "key": "studies",
            "title": "Studies",
            "noun": "Study",
            "rows": [_row(s.name, s, f"/api/bin/studies/{s.pk}/restore", keep) for s in studies],
        },
        {
            "key": "mice",
            "title": "Mice",
            "noun": "Mouse",
            "rows": [
                _row(f"{m.identifier} ({m.study.name})", m, f"/api/bin/mice/{m.pk}/restore", keep)
                for m in mice
            ],
        },
        {
            "key": "scans",
            "title": "Scans",
            "noun": "Scan",
            "rows": [
                _row(
                    f"{s.time_point.mouse.identifier} at {s.time_point.label} ({s.original_filename})",
                    s,
                    f"/api/bin/{s.pk}/restore",
                    keep,
                )
                for s in scans
            ],
        },
    ]
    return page(
        request,
        lab,
        "frontend/bin.html",
        nav="dashboard",
        sections=sections,
        retention_days=settings.LABSEG_BIN_RETENTION_DAYS,
        can_restore=is_lab_admin(request.user, lab),
    )

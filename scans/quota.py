"""Who may send files, and how much: lab membership, the per-upload limit and the per-lab quota.

A lab's usage is what its scans hold (``Scan.size_bytes``, scans in the bin included: their files
are still stored) plus the declared sizes of its resumable uploads in progress, which reserve their
room when they are opened. ``LABSEG_LAB_QUOTA_BYTES`` caps it (0: no cap). Checks that decide run
with the lab's row locked (``select_for_update``), so two uploads racing for the last room cannot
both get it.
"""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.db.models import Sum

from labs.models import Lab
from labs.rules import belongs_to_a_lab, is_lab_member

from .models import Scan, UploadSession
from .validation import ScanRejected


def human_bytes(size: float) -> str:
    """``size`` in MB or GB (decimal, as disks are sold), for messages."""
    if size >= 1e9:
        return f"{size / 1e9:.2f} GB"
    return f"{size / 1e6:.1f} MB"


def require_uploader(user: Any, lab: Lab | None = None) -> None:
    """Refuse (403) a user who is in no lab, or not in ``lab`` when one is given."""
    if lab is None:
        if not belongs_to_a_lab(user):
            raise ScanRejected(
                "only members of a lab can upload: you are not a member of any lab yet; ask a lab admin "
                "to add you",
                status=403,
            )
    elif not is_lab_member(user, lab):
        raise ScanRejected(f"only members of {lab.name} can upload to it", status=403)


def check_upload_size(size_bytes: int) -> None:
    """Refuse (413) a file larger than ``LABSEG_MAX_UPLOAD_BYTES``."""
    limit = settings.LABSEG_MAX_UPLOAD_BYTES
    if size_bytes > limit:
        raise ScanRejected(
            f"the file ({human_bytes(size_bytes)}) is larger than the upload limit of {human_bytes(limit)}",
            status=413,
        )


def lab_usage_bytes(lab: Lab) -> tuple[int, int]:
    """``(stored, reserved)``: bytes of the lab's scans, and declared bytes of its open uploads."""
    stored = Scan.objects.filter(lab=lab).aggregate(total=Sum("size_bytes"))["total"] or 0
    reserved = UploadSession.objects.filter(lab=lab).aggregate(total=Sum("size_bytes"))["total"] or 0
    return int(stored), int(reserved)


def check_quota(lab: Lab, incoming_bytes: int) -> None:
    """Refuse (413) ``incoming_bytes`` more for ``lab`` when they would pass its quota.

    Call it inside a transaction that holds the lab's row (:func:`lock_lab`) when the caller then
    writes the row that uses the room, so the check and the write are one step.
    """
    quota = settings.LABSEG_LAB_QUOTA_BYTES
    if not quota:
        return
    stored, reserved = lab_usage_bytes(lab)
    if stored + reserved + incoming_bytes <= quota:
        return
    in_progress = f" ({human_bytes(reserved)} of it in uploads in progress)" if reserved else ""
    free = max(0, quota - stored - reserved)
    raise ScanRejected(
        f"{lab.name} has used {human_bytes(stored + reserved)} of its {human_bytes(quota)} storage quota"
        f"{in_progress}, so {human_bytes(free)} is free and this file ({human_bytes(incoming_bytes)}) "
        "does not fit: delete scans the lab no longer needs, or ask your administrator to raise the quota",
        status=413,
    )


def lock_lab(lab: Lab) -> Lab:
    """The lab's row, locked until the transaction ends (call inside ``transaction.atomic``)."""
    return Lab.objects.select_for_update().get(pk=lab.pk)

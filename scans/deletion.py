"""Deletion through the bin: a deleted scan, mouse or study is hidden at once, restorable for
``LABSEG_BIN_RETENTION_DAYS``, then purged with every file made from it (a mouse with its scans, a
study with its mice).

Soft delete sets ``Scan.deleted_at``; ``visible_to`` hides the scan and every row made from it
(predictions, annotations, jobs, lesions, consensus: each names its ``deleted_path``), so pages,
the API and the CSVs drop it together. Only the lab's admins delete and restore.

The purge deletes the rows (the database cascades from the scan) and then the files: every file
field of every row the cascade removes (found with Django's deletion collector, so an app that
stores files for a scan is covered without this module importing it), the folders those files lie
in, and the per-scan cache folders the apps keep beside them (``PURGE_FOLDERS``). Files go after
the transaction commits, so a failed purge leaves rows and files as they were. A purge leaves no
file in storage that no row names (tested).
"""

from __future__ import annotations

import logging
import posixpath
import re
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from django.conf import settings
from django.core.files.storage import default_storage
from django.db import router, transaction
from django.db.models import FileField, QuerySet
from django.db.models.deletion import Collector
from django.utils import timezone

import audit
from audit.models import AuditEvent
from labs.rules import is_lab_admin
from labseg.refusals import Refused

from .models import Mouse, Scan, Study

logger = logging.getLogger(__name__)

#: The folder labseg stores one upload in (``labs/<lab>/scans/<uuid hex>/``).
UPLOAD_FOLDER = re.compile(r"[0-9a-f]{32}")

#: Cache folders kept per scan by the apps (previews of the viewer, the review app's maps and
#: the workers' per-attempt prediction folders), as storage-name templates.
PURGE_FOLDERS = (
    "previews/scan_{scan}",
    "labs/{lab}/review/scan_{scan}",
    "labs/{lab}/predictions/scan{scan}",
)


@dataclass
class PurgeReport:
    scans: list[int] = field(default_factory=list)
    files: list[str] = field(default_factory=list)
    mice: list[int] = field(default_factory=list)
    studies: list[int] = field(default_factory=list)


def _manages(user: Any, row: Any) -> bool:
    """A lab admin of the row's lab, or a superuser (global, as in the admin's bin actions)."""
    return bool(getattr(user, "is_superuser", False)) or bool(is_lab_admin(user, row))


def _require_admin(user: Any, scan: Scan, what: str) -> None:
    if not _manages(user, scan):
        raise Refused(f"only an admin of {scan.lab.name} can {what} its scans", status=403)


def delete_scan(*, scan: Scan, user: Any) -> Scan:
    """Move ``scan`` to the bin (hidden with everything made from it; restorable)."""
    _require_admin(user, scan, "delete")
    if scan.deleted_at is not None:
        raise Refused(f"scan {scan.pk} is already in the bin", status=409)
    scan.deleted_at, scan.deleted_by = timezone.now(), user
    with transaction.atomic():
        scan.save(update_fields=["deleted_at", "deleted_by"])
        audit.record(AuditEvent.Action.SCAN_DELETED, lab=scan.lab, actor=user, target=scan)
    logger.info("scan %s moved to the bin by %s", scan.pk, user)
    return scan


def restore_scan(*, scan: Scan, user: Any) -> Scan:
    """Take ``scan`` out of the bin, with everything made from it."""
    _require_admin(user, scan, "restore")
    if scan.deleted_at is None:
        raise Refused(f"scan {scan.pk} is not in the bin", status=409)
    mouse = scan.time_point.mouse
    if mouse.deleted_at is not None:
        raise Refused(
            f"scan {scan.pk} went to the bin with mouse {mouse.identifier}: restore the mouse", status=409
        )
    scan.deleted_at, scan.deleted_by = None, None
    with transaction.atomic():
        scan.save(update_fields=["deleted_at", "deleted_by"])
        audit.record(AuditEvent.Action.SCAN_RESTORED, lab=scan.lab, actor=user, target=scan)
    logger.info("scan %s restored by %s", scan.pk, user)
    return scan


def _file_names(scan: Scan) -> set[str]:
    """Names of the stored files of ``scan`` and of every row its deletion cascades to."""
    collector = Collector(using=router.db_for_write(Scan))
    collector.collect([scan])
    names: set[str] = set()
    for model, rows in collector.data.items():
        fields = [f for f in model._meta.get_fields() if isinstance(f, FileField)]
        for row in rows:
            names.update(str(getattr(row, f.attname)) for f in fields if getattr(row, f.attname))
    return names


def _walk(folder: str) -> list[str]:
    try:
        folders, files = default_storage.listdir(folder)
    except (FileNotFoundError, NotImplementedError, OSError):
        return []
    found = [posixpath.join(folder, name) for name in files]
    for sub in folders:
        found.extend(_walk(posixpath.join(folder, sub)))
    return found


def purge_scan(scan: Scan) -> list[str]:
    """Delete ``scan``, every row made from it and every file of theirs; returns the files."""
    names = _file_names(scan)
    # Listed whole: the per-scan cache folders, and the folders labseg makes per upload (named by
    # a uuid). A folder other scans share (a lab's annotations root) is never listed.
    folders = {t.format(scan=scan.pk, lab=scan.lab_id) for t in PURGE_FOLDERS}
    folders.update(d for d in map(posixpath.dirname, names) if UPLOAD_FOLDER.fullmatch(posixpath.basename(d)))
    for folder in folders:
        names.update(_walk(folder))
    label = str(scan)
    with transaction.atomic():
        Scan.objects.filter(pk=scan.pk).delete()
        audit.record(
            AuditEvent.Action.SCAN_PURGED,
            lab=scan.lab,
            target=scan,
            target_label=f"{label} ({scan.original_filename})",
            detail={
                "files": len(names),
                "deleted_at": scan.deleted_at.isoformat() if scan.deleted_at else None,
            },
        )
    removed = []
    for name in sorted(names):
        try:
            if default_storage.exists(name):
                default_storage.delete(name)
                removed.append(name)
        except OSError as error:  # logged: a file left behind is found by the next audit
            logger.error("purge of scan %s could not delete %s: %s", scan.pk, name, error)
    return removed


def purge_expired(*, older_than: timedelta | None = None) -> PurgeReport:
    """Purge every scan, mouse and study in the bin for longer than ``LABSEG_BIN_RETENTION_DAYS``
    (beat, daily)."""
    age = older_than if older_than is not None else timedelta(days=settings.LABSEG_BIN_RETENTION_DAYS)
    report = PurgeReport()
    cutoff = timezone.now() - age
    for scan in Scan.objects.filter(deleted_at__lt=cutoff).select_related("lab"):
        report.files.extend(purge_scan(scan))
        report.scans.append(scan.pk)
    for mouse in Mouse.objects.filter(deleted_at__lt=cutoff, study__deleted_at__isnull=True):
        report.files.extend(purge_mouse(mouse))
        report.mice.append(mouse.pk)
    for study in Study.objects.filter(deleted_at__lt=cutoff):
        report.files.extend(purge_study(study))
        report.studies.append(study.pk)
    return report


# --- mice and studies ---------------------------------------------------------------------------
# A mouse (or a study) goes to the bin with its scans: they take the mouse's own ``deleted_at``, so
# a restore brings back exactly what went with it (a scan deleted before stays in the bin). The
# scans are then hidden, restored and purged like any scan; the mouse's and the study's rows go
# with the last purge of their scans.


def _require_lab_admin(user: Any, row: Mouse | Study, what: str) -> None:
    if not _manages(user, row):
        raise Refused(f"only an admin of {row.lab.name} can {what}", status=403)


def _stamp(rows: list[QuerySet[Any]], *, when: datetime | None, user: Any) -> None:
    """Put ``rows`` in the bin at ``when`` by ``user`` (or, with None, take them out), together.
    Restoring matches the parent's own ``deleted_at``: rows binned earlier on their own stay."""
    with transaction.atomic():
        for queryset in rows:
            queryset.update(deleted_at=when, deleted_by=user)


def delete_mouse(*, mouse: Mouse, user: Any) -> Mouse:
    """Move ``mouse`` to the bin with its scans (and everything made from them)."""
    _require_lab_admin(user, mouse, "delete its mice")
    if mouse.deleted_at is not None:
        raise Refused(f"mouse {mouse.identifier} is already in the bin", status=409)
    _stamp(
        [
            Scan.objects.filter(time_point__mouse=mouse, deleted_at__isnull=True),
            Mouse.objects.filter(pk=mouse.pk),
        ],
        when=timezone.now(),
        user=user,
    )
    logger.info("mouse %s moved to the bin by %s", mouse.pk, user)
    mouse.refresh_from_db()
    return mouse


def restore_mouse(*, mouse: Mouse, user: Any) -> Mouse:
    """Take ``mouse`` out of the bin with the scans that went with it."""
    _require_lab_admin(user, mouse, "restore its mice")
    if mouse.deleted_at is None:
        raise Refused(f"mouse {mouse.identifier} is not in the bin", status=409)
    if mouse.study.deleted_at is not None:
        raise Refused(
            f"mouse {mouse.identifier} went to the bin with its study {mouse.study.name}: restore the study",
            status=409,
        )
    _stamp(
        [
            Scan.objects.filter(time_point__mouse=mouse, deleted_at=mouse.deleted_at),
            Mouse.objects.filter(pk=mouse.pk),
        ],
        when=None,
        user=None,
    )
    logger.info("mouse %s restored by %s", mouse.pk, user)
    mouse.refresh_from_db()
    return mouse


def delete_study(*, study: Study, user: Any) -> Study:
    """Move ``study`` to the bin with its mice and their scans."""
    _require_lab_admin(user, study, "delete its studies")
    if study.deleted_at is not None:
        raise Refused(f"study {study.name} is already in the bin", status=409)
    _stamp(
        [
            Scan.objects.filter(time_point__mouse__study=study, deleted_at__isnull=True),
            Mouse.objects.filter(study=study, deleted_at__isnull=True),
            Study.objects.filter(pk=study.pk),
        ],
        when=timezone.now(),
        user=user,
    )
    logger.info("study %s moved to the bin by %s", study.pk, user)
    study.refresh_from_db()
    return study


def restore_study(*, study: Study, user: Any) -> Study:
    """Take ``study`` out of the bin with the mice and scans that went with it."""
    _require_lab_admin(user, study, "restore its studies")
    if study.deleted_at is None:
        raise Refused(f"study {study.name} is not in the bin", status=409)
    when = study.deleted_at
    _stamp(
        [
            Scan.objects.filter(time_point__mouse__study=study, deleted_at=when),
            Mouse.objects.filter(study=study, deleted_at=when),
            Study.objects.filter(pk=study.pk),
        ],
        when=None,
        user=None,
    )
    logger.info("study %s restored by %s", study.pk, user)
    study.refresh_from_db()
    return study


def purge_mouse(mouse: Mouse) -> list[str]:
    """Delete ``mouse``: each of its scans with every file made from it, then its rows."""
    removed: list[str] = []
    for scan in Scan.objects.filter(time_point__mouse=mouse).select_related("lab"):
        removed.extend(purge_scan(scan))
    Mouse.objects.filter(pk=mouse.pk).delete()  # time points, weights, calipers cascade
    return removed


def purge_study(study: Study) -> list[str]:
    """Delete ``study``: each of its mice as :func:`purge_mouse` does, then its rows."""
    removed: list[str] = []
    for mouse in Mouse.objects.filter(study=study):
        removed.extend(purge_mouse(mouse))
    Study.objects.filter(pk=study.pk).delete()  # cohorts cascade
    return removed

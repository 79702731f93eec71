"""Workflows of the scans app, as keyword-only functions.

Order of work in every upload: receive (stream + sha256) -> refuse duplicates -> validate with
nibabel (header, then one bounded pass over the data) -> write the files to storage -> write the
rows in one transaction. NIfTI reading never happens inside a transaction. On any refusal the
files already stored are deleted and the temporary file is removed, so nothing is left behind.
Annotation files go through the same helpers from the annotation lifecycle
(``review.services.create_annotation``).
"""

from __future__ import annotations

import logging
import posixpath
import time
import unicodedata
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import nibabel as nib
import numpy as np
from django.core.files.base import ContentFile
from django.core.files.storage import default_storage
from django.db import IntegrityError, transaction

import audit
from audit.models import AuditEvent
from inference.pipeline.pictures import projection_png
from labs.models import Lab
from labseg.ids import is_id
from labseg.storage import has_local_paths, store_file

from . import quota
from .files import IncomingFile, receive, safe_filename, sha256_of
from .models import Mouse, Scan, Study, TimePoint, parse_offset_hours
from .signals import scan_registered
from .validation import ScanRejected, VolumeStats, check_not_label_map, read_header, read_volume

logger = logging.getLogger(__name__)

MAX_IDENTIFIER_LENGTH = 64


@dataclass(frozen=True)
class UploadTarget:
    """Where an upload goes: the lab, and the study name within it (created when new)."""

    lab: Lab
    study_name: str


def resolve_upload_target(*, user: Any, study: str, lab: str | None = None) -> UploadTarget:
    """Find the lab an upload goes to from the ``study`` (id or name) and optional ``lab`` (id or name).

    An existing study of the user's labs decides the lab. A new study name needs ``lab`` when the
    user belongs to several labs; otherwise it goes to the user's only lab.
    """
    study = (study or "").strip()
    if not study:
        raise ScanRejected("name the study the scan belongs to (field 'study')")
    user_labs = Lab.objects.visible_to(user)
    chosen_lab = _find_lab(user_labs, lab) if lab not in (None, "") else None
    visible = Study.objects.visible_to(user)
    if chosen_lab is not None:
        visible = visible.filter(lab=chosen_lab)
    # is_id, not isdigit: "²" or a 20-digit number must not reach the query (ValueError, overflow).
    if is_id(study) and (by_id := visible.filter(pk=int(study)).first()):
        return UploadTarget(lab=by_id.lab, study_name=by_id.name)
    matches = list(visible.filter(name=study).select_related("lab"))
    if len(matches) == 1:
        return UploadTarget(lab=matches[0].lab, study_name=matches[0].name)
    if len(matches) > 1:
        names = ", ".join(m.lab.name for m in matches)
        raise ScanRejected(f"several of your labs have a study named {study!r} ({names}): say which lab")
    if study.isdigit():
        # A number names a study by id; creating a study called "17" is never what was meant.
        raise ScanRejected(
            f"there is no study {study} in your labs: give the id of one of your studies, or a name to "
            "create a new study",
            status=404,
        )
    if chosen_lab is not None:
        return UploadTarget(lab=chosen_lab, study_name=study)
    labs = list(user_labs[:2])
    if not labs:
        raise ScanRejected("you are not a member of any lab yet: ask a lab admin to add you", status=403)
    if len(labs) > 1:
        raise ScanRejected(
            f"study {study!r} does not exist yet and you belong to several labs: say which lab it goes to "
            "(field 'lab')"
        )
    return UploadTarget(lab=labs[0], study_name=study)


def upload_lab(*, user: Any, lab: str | None = None, study: str | None = None) -> Lab | None:
    """The lab a resumable upload being opened will go to, for its quota: the ``lab`` named (id or
    name), else the lab of an existing ``study``, else the user's only lab; None when the user
    belongs to several and said nothing. Refuses users in no lab (403) and labs not theirs (404)."""
    quota.require_uploader(user)
    user_labs = Lab.objects.visible_to(user)
    if lab not in (None, ""):
        return _find_lab(user_labs, lab)
    if study not in (None, ""):
        try:
            return resolve_upload_target(user=user, study=str(study)).lab
        except ScanRejected:
            pass  # a new study or an ambiguous name: decided when the upload completes
    labs = list(user_labs[:2])
    return labs[0] if len(labs) == 1 else None


def _find_lab(user_labs: Any, lab: str | None) -> Lab:
    text = str(lab).strip()
    found = user_labs.filter(pk=int(text)).first() if is_id(text) else None
    found = found or user_labs.filter(name=text).first()
    if found is None:
        raise ScanRejected(f"you are not a member of a lab called {text!r}", status=404)
    return found


def check_identifier(value: str, what: str) -> str:
    """``value`` stripped and in Unicode NFC (one spelling of "é", so one mouse, not two), or
    ScanRejected when it is empty, too long, holds a slash, a control character (a line break in a
    download name, a NUL) or a bidirectional override (text that displays as something else)."""
    value = unicodedata.normalize("NFC", value or "").strip()
    if not value:
        raise ScanRejected(f"name the {what}")
    hidden = [c for c in value if unicodedata.category(c) in ("Cc", "Cf", "Cs", "Co", "Cn")]
    if hidden:
        codes = ", ".join(sorted({f"U+{ord(c):04X}" for c in hidden}))
        raise ScanRejected(
            f"the {what} name holds invisible or control characters ({codes}): type it again without them"
        )
    if len(value) > MAX_IDENTIFIER_LENGTH or any(c in value for c in "/\\"):
        raise ScanRejected(f"the {what} {value!r} is not a usable name (at most 64 characters, no slashes)")
    return value


def _check_time_point(label: str) -> tuple[str, float]:
    label = (label or "").strip()
    try:
        return label, parse_offset_hours(label)
    except ValueError as error:
        raise ScanRejected(str(error)) from None


def _check_modality(modality: str) -> str:
    if modality not in Scan.Modality.values:
        choices = ", ".join(Scan.Modality.values)
        raise ScanRejected(f"modality {modality!r} is not known; use one of {choices}")
    return modality


@contextmanager
def stored_files() -> Iterator[list[str]]:
    """Names saved to storage inside the block are deleted again if the block raises."""
    saved: list[str] = []
    try:
        yield saved
    except BaseException:
        for name in saved:
            default_storage.delete(name)
        raise


def save_incoming(incoming: IncomingFile, name: str, saved: list[str]) -> str:
    """Move the received file to storage as ``name`` (recorded in ``saved``); the stored name.

    ``name`` must be new (labseg stores each upload in a folder of its own): a copy that fails
    half-way (a full disk) leaves a partial file under that name, which is deleted at once.
    """
    try:
        stored = incoming.finish_storing() if incoming.finish_storing else store_file(incoming.path, name)
    except BaseException:
        delete_partial(name)
        raise
    saved.append(stored)
    return stored


def save_content(content: bytes, name: str, saved: list[str]) -> str:
    """Store ``content`` as the new file ``name`` (recorded in ``saved``), as :func:`save_incoming`."""
    try:
        stored = default_storage.save(name, ContentFile(content))
    except BaseException:
        delete_partial(name)
        raise
    saved.append(stored)
    return stored


def delete_partial(name: str) -> None:
    """Delete what a failed save left under the new name ``name`` (a partial copy), if anything."""
    try:
        if default_storage.exists(name):
            default_storage.delete(name)
    except OSError:
        logger.exception("could not delete the partial file %s", name)


SHA256_MISMATCH = "the file received differs from the file sent (sha256 mismatch): upload it again"


def check_sha256(incoming: IncomingFile) -> None:
    """Refuse a file whose sha256 differs from the one its client claimed (``incoming.sha256``)."""
    if sha256_of(incoming.path) != incoming.sha256:
        raise ScanRejected(SHA256_MISMATCH)
    incoming.sha256_claimed = False


def scan_folder(lab: Lab) -> str:
    """A new folder in storage for one scan's files (the scan and its thumbnail) in ``lab``."""
    return f"labs/{lab.pk}/scans/{uuid.uuid4().hex}"


def register_scan(
    *,
    lab: Lab,
    uploaded_file_path_or_file: Any,
    original_filename: str,
    study_name: str,
    mouse_identifier: str,
    time_point_label: str,
    modality: str = Scan.Modality.NATIVE_CT,
    user: Any = None,
) -> Scan:
    """Validate and store one scan; create the study, mouse and time point when new.

    Raises :class:`ScanRejected` (400 bad file or fields, 409 duplicate, 413 too large or over the
    lab's quota, ``scans.quota``) and leaves nothing behind: no row, no stored file, no temporary
    file. Records the upload in the audit log, in the transaction that writes the scan.
    """
    incoming: IncomingFile | None = None
    try:
        study_name = check_identifier(study_name, "study")
        mouse_identifier = check_identifier(mouse_identifier, "mouse")
        label, offset_hours = _check_time_point(time_point_label)
        modality = _check_modality(modality)
        stored_name = safe_filename(original_filename)
        _check_mouse_study(lab=lab, mouse_identifier=mouse_identifier, study_name=study_name)
        incoming = receive(uploaded_file_path_or_file)
        quota.check_upload_size(incoming.size_bytes)
        quota.check_quota(lab, incoming.size_bytes)  # early, before the data is read; again below
        if incoming.sha256_claimed and Scan.objects.filter(lab=lab, sha256=incoming.sha256).exists():
            check_sha256(incoming)  # only the file the client claims to send is refused as a duplicate
        _refuse_duplicate_scan(lab=lab, sha256=incoming.sha256)
        try:
            header = read_header(incoming.path, original_filename)
        except ScanRejected:
            if incoming.sha256_claimed:
                check_sha256(incoming)  # a file damaged on the way is refused as such
            raise
        # A resumable upload's parts may already be in the bucket under the name chosen when it opened.
        folder = posixpath.dirname(incoming.stored_name) if incoming.stored_name else scan_folder(lab)
        file_name = incoming.stored_name or f"{folder}/{stored_name}"
        # Leaving the block waits for the pool first (the upload's name is then in ``saved``), so a
        # refusal deletes what the upload stored.
        with stored_files() as saved, ThreadPoolExecutor(1, thread_name_prefix="scan-store") as pool:
            # On S3 the upload (bound by the S3 server) runs while this process reads the data (bound
            # by this process's core) instead of after it. On disk storage storing is a rename, done
            # once the data is checked.
            uploading = None if has_local_paths() else pool.submit(save_incoming, incoming, file_name, saved)
            if incoming.sha256_claimed:
                check_sha256(incoming)
            started = time.perf_counter()
            stats = read_volume(incoming.path, header, preview=True)
            check_not_label_map(stats, original_filename)
            thumbnail = _thumbnail_png(stats, header.affine)
            checked_s = time.perf_counter() - started
            file_name = save_incoming(incoming, file_name, saved) if uploading is None else uploading.result()
            thumbnail_name = ""
            if thumbnail is not None:
                thumbnail_name = save_content(thumbnail, f"{folder}/thumbnail.png", saved)
            try:
                with transaction.atomic():
                    quota.check_quota(quota.lock_lab(lab), incoming.size_bytes)
                    time_point = _time_point(
                        lab=lab,
                        study_name=study_name,
                        mouse_identifier=mouse_identifier,
                        label=label,
                        offset_hours=offset_hours,
                    )
                    scan = Scan.objects.create(
                        lab=lab,
                        time_point=time_point,
                        modality=modality,
                        file=file_name,
                        original_filename=original_filename[:255],
                        sha256=incoming.sha256,
                        size_bytes=incoming.size_bytes,
                        shape=list(header.shape),
                        spacing_mm=list(header.spacing_mm),
                        affine=header.affine.tolist(),
                        dtype=str(header.dtype.newbyteorder("=")),
                        orientation=header.orientation,
                        intensity_min=stats.minimum,
                        intensity_max=stats.maximum,
                        intensity_mean=stats.mean,
                        intensity_std=stats.std,
                        thumbnail=thumbnail_name,
                        uploaded_by=user if user is not None and user.is_authenticated else None,
                    )
                    audit.record(
                        AuditEvent.Action.SCAN_UPLOADED,
                        lab=lab,
                        actor=scan.uploaded_by,
                        target=scan,
                        target_label=f"{scan.original_filename} ({mouse_identifier} {label}, {study_name})",
                        detail={"sha256": scan.sha256, "size_bytes": scan.size_bytes},
                    )
            except IntegrityError:
                # Two uploads of the same file raced past the duplicate check: the constraint decides.
                _refuse_duplicate_scan(lab=lab, sha256=incoming.sha256)
                raise
    finally:
        if incoming is not None:
            incoming.discard()
    logger.info(
        "registered scan %s (%s, %.0f MB) in lab %s; data checked in %.2f s",
        scan.pk,
        scan.original_filename,
        scan.size_bytes / 1e6,
        lab,
        checked_s,
    )
    # Apps above scans act on a new scan through this signal (segmentation queues its jobs).
    scan_registered.send(sender=Scan, scan=scan, user=user)
    return scan


def _check_mouse_study(*, lab: Lab, mouse_identifier: str, study_name: str) -> None:
    mouse = Mouse.objects.filter(lab=lab, identifier=mouse_identifier).select_related("study").first()
    # Names in the bin stay taken until the purge: a new scan must not join a hidden mouse or study.
    if mouse is not None and mouse.deleted_at is not None:
        raise ScanRejected(
            f"mouse {mouse_identifier} is in the bin: a lab admin can restore it from the bin, or upload "
            "under another mouse name",
            status=409,
        )
    if Study.objects.filter(lab=lab, name=study_name, deleted_at__isnull=False).exists():
        raise ScanRejected(
            f"study {study_name!r} is in the bin: a lab admin can restore it from the bin, or upload to "
            "another study",
            status=409,
        )
    if mouse is not None and mouse.study.name != study_name:
        raise ScanRejected(
            f"mouse {mouse_identifier} already belongs to study {mouse.study.name!r} in this lab: upload "
            "its scans to that study"
        )


def _time_point(
    *, lab: Lab, study_name: str, mouse_identifier: str, label: str, offset_hours: float
) -> TimePoint:
    study, _ = Study.objects.get_or_create(lab=lab, name=study_name)
    mouse, _ = Mouse.objects.get_or_create(lab=lab, identifier=mouse_identifier, defaults={"study": study})
    if mouse.study_id != study.pk:
        raise ScanRejected(f"mouse {mouse_identifier} already belongs to study {mouse.study.name!r}")
    time_point, _ = TimePoint.objects.get_or_create(
        mouse=mouse, label=label, defaults={"offset_hours": offset_hours}
    )
    return time_point


def _refuse_duplicate_scan(*, lab: Lab, sha256: str) -> None:
    existing = Scan.objects.filter(lab=lab, sha256=sha256).select_related("time_point__mouse__study").first()
    if existing is not None:
        raise ScanRejected(
            f"this file was already uploaded to {lab.name} as scan {existing.pk} "
            f"({existing.original_filename}: mouse {existing.time_point.mouse.identifier}, time point "
            f"{existing.time_point.label}, study {existing.time_point.mouse.study.name!r})",
            status=409,
        )


def _thumbnail_png(stats: VolumeStats, affine: np.ndarray) -> bytes | None:
    """The projection thumbnail, drawn from the downsampled volume turned to RAS axis order."""
    if stats.preview is None or stats.preview_spacing_mm is None:
        return None
    orientation = nib.orientations.io_orientation(affine)
    volume = nib.orientations.apply_orientation(stats.preview, orientation)
    spacing = [0.0, 0.0, 0.0]
    for axis, (target, _flip) in enumerate(orientation):
        spacing[int(target)] = stats.preview_spacing_mm[axis]
    try:
        return projection_png(np.ascontiguousarray(volume), tuple(spacing))
    except Exception:
        # A thumbnail is a convenience: a drawing failure must not refuse a valid scan.
        logger.exception("could not draw the thumbnail; the scan is stored without one")
        return None

"""Resumable chunked uploads: create a session, PUT byte ranges in order, complete.

The bytes accumulate in ``upload_tmp_dir()/chunks/<session id>.part`` on the web host
(``MEDIA_ROOT/tmp`` on local storage, a local folder on S3: a web tier of several hosts needs
sticky sessions for uploads in progress). A chunk must start at the session's current offset; the
offset moves with a compare-and-set so two clients sending the same range cannot both win.
Completion hands the file, with the sha256 the client computed, to
:func:`scans.services.register_scan`, which checks that sha256 and streams the file to storage;
the chunk file and the session are removed on completion or refusal. On S3 the parts go to the bucket
while the rest arrives (``scans/upload_parts.py``), so completion does not wait for the whole transfer.
"""

from __future__ import annotations

import hashlib
import re
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any, Protocol

from django.conf import settings
from django.db import transaction
from django.utils import timezone

from labseg.refusals import is_disk_full

from . import quota, upload_parts
from .files import PIECE_BYTES, IncomingFile, safe_filename, upload_tmp_dir
from .models import Lab, Scan, UploadSession
from .services import SHA256_MISMATCH, register_scan, scan_folder
from .validation import ScanRejected

_CONTENT_RANGE = re.compile(r"^bytes (\d+)-(\d+)/(\d+)$")

#: The sha256 of the bytes this process received of each upload, from the first byte on, and how
#: far it got: completion then needs no second pass over the file. A chunk another process took (a
#: server of several processes) leaves that upload's entry behind, and completion hashes the file.
_hashes: OrderedDict[str, tuple[Any, int]] = OrderedDict()
_hashes_lock = threading.Lock()
#: Uploads followed at once per process; the oldest entries go first (abandoned uploads).
HASHES_KEPT = 256


def _hash_at(session: UploadSession, start: int) -> Any | None:
    """A copy of the hash of the upload's first ``start`` bytes, if this process holds it."""
    if start == 0:
        return hashlib.sha256()
    with _hashes_lock:
        held = _hashes.get(str(session.pk))
    return held[0].copy() if held is not None and held[1] == start else None


def _hash_moved(session: UploadSession, hasher: Any, end: int) -> None:
    with _hashes_lock:
        _hashes[str(session.pk)] = (hasher, end)
        _hashes.move_to_end(str(session.pk))
        while len(_hashes) > HASHES_KEPT:
            _hashes.popitem(last=False)


def _received_sha256(session: UploadSession) -> str | None:
    """The sha256 of the whole upload, if this process hashed every byte as it arrived."""
    with _hashes_lock:
        held = _hashes.pop(str(session.pk), None)
    return held[0].hexdigest() if held is not None and held[1] == session.size_bytes else None


class OffsetMismatch(ScanRejected):
    """A chunk that does not start where the upload stands; ``expected_offset`` says where."""

    def __init__(self, expected_offset: int, start: int) -> None:
        super().__init__(
            f"this chunk starts at byte {start} but the upload stands at byte {expected_offset}: resume "
            f"from byte {expected_offset}",
            status=409,
            offset=expected_offset,
        )
        self.expected_offset = expected_offset


def chunk_path(session: UploadSession) -> Path:
    folder = upload_tmp_dir() / "chunks"
    folder.mkdir(exist_ok=True)
    return folder / f"{session.pk}.part"


def create_upload(*, user: Any, filename: str, size_bytes: int, lab: Lab | None = None) -> UploadSession:
    """Open a resumable upload of ``size_bytes`` bytes for a NIfTI file called ``filename``.

    Only lab members may open one (403). The declared size must be under the upload limit and fit
    the quota of ``lab`` (413): the size is reserved against the lab's quota until the upload
    completes or is abandoned. ``lab`` is None when the user did not say and belongs to several
    labs; the quota is then checked at completion.
    """
    quota.require_uploader(user, lab)
    stored_name = safe_filename(filename)
    if not isinstance(size_bytes, int) or isinstance(size_bytes, bool) or size_bytes <= 0:
        raise ScanRejected("size_bytes must be the file size in bytes, a positive whole number")
    quota.check_upload_size(size_bytes)
    with transaction.atomic():
        if lab is not None:
            quota.check_quota(quota.lock_lab(lab), size_bytes)
        session = UploadSession.objects.create(user=user, lab=lab, filename=filename, size_bytes=size_bytes)
    try:
        chunk_path(session).touch()
    except BaseException:
        session.delete()
        raise
    if lab is not None:
        # Without a lab the scan's name is known only at completion: the file is stored then.
        upload_parts.open_for(session, f"{scan_folder(lab)}/{stored_name}")
    return session


def parse_content_range(value: str | None) -> tuple[int, int, int]:
    """``(start, end, total)`` from ``Content-Range: bytes START-END/TOTAL`` (END inclusive)."""
    match = _CONTENT_RANGE.match((value or "").strip())
    if not match:
        raise ScanRejected("each chunk needs a header 'Content-Range: bytes START-END/TOTAL'")
    start, end, total = (int(g) for g in match.groups())
    if end < start:
        raise ScanRejected(f"the Content-Range {value!r} ends before it starts")
    return start, end, total


class Readable(Protocol):
    """What a chunk is read from: a binary file, or the request's own body stream (``HttpRequest``)."""

    def read(self, size: int, /) -> bytes: ...


def append_chunk(*, session: UploadSession, content_range: str | None, body: Readable) -> UploadSession:
    """Write one chunk read from ``body`` at the session's offset and move the offset past it."""
    start, end, total = parse_content_range(content_range)
    if total != session.size_bytes:
        raise ScanRejected(
            f"the Content-Range total {total} differs from the announced size {session.size_bytes}"
        )
    if end >= session.size_bytes:
        raise ScanRejected(
            f"the chunk ends at byte {end}, beyond the end of the file ({session.size_bytes} bytes)"
        )
    if start != session.offset:
        raise OffsetMismatch(session.offset, start)
    expected = end - start + 1
    received = 0
    hasher = _hash_at(session, start)
    try:
        with chunk_path(session).open("r+b") as target:
            target.seek(start)
            while received < expected and (piece := body.read(min(PIECE_BYTES, expected - received))):
                target.write(piece)
                if hasher is not None:
                    hasher.update(piece)
                received += len(piece)
            if received != expected:
                # Keep the file consistent with the offset the database holds.
                target.truncate(start)
                raise ScanRejected(
                    f"the chunk body holds {received} bytes but its Content-Range says {expected}"
                )
    except OSError as error:
        if is_disk_full(error):
            # The partial file would hold the last free space: the upload goes, whole, at once
            # (the 507 says so; labseg/refusals.py).
            discard_upload(session)
        raise
    # Compare-and-set: only the request that found the offset at ``start`` may move it.
    moved = UploadSession.objects.filter(pk=session.pk, offset=start).update(offset=end + 1)
    session.refresh_from_db()
    if moved != 1:
        raise OffsetMismatch(session.offset, start)
    if hasher is not None:
        _hash_moved(session, hasher, end + 1)
    upload_parts.send_received(session, start, end + 1, chunk_path(session))
    return session


def discard_upload(session: UploadSession, *, stored: bool = False) -> None:
    """Remove the upload's chunk file and session; what it sent to storage too unless ``stored``."""
    with _hashes_lock:
        _hashes.pop(str(session.pk), None)
    if not stored:
        upload_parts.abort(session)
    chunk_path(session).unlink(missing_ok=True)
    session.delete()


def complete_upload(
    *,
    session: UploadSession,
    sha256: str,
    lab: Lab,
    study_name: str,
    mouse_identifier: str,
    time_point_label: str,
    modality: str,
    user: Any,
) -> Scan:
    """Check the assembled file against the client's sha256 and register it as a scan.

    The chunk file and the session are gone afterwards, whether the scan was accepted or refused.
    """
    if not session.complete:
        # Not a refusal of the file: the client may still send the rest, so the session stays.
        raise ScanRejected(
            f"the upload is incomplete: {session.offset} of {session.size_bytes} bytes received; send "
            f"the rest from byte {session.offset}"
        )
    path = chunk_path(session)
    scan: Scan | None = None
    try:
        # The session's reserved room is released now: register_scan checks the quota again for
        # the lab the scan goes to, with the real file.
        UploadSession.objects.filter(pk=session.pk).update(lab=None)
        # Unless this process hashed every byte as it arrived, register_scan hashes the file while
        # it stores it (on S3 the upload and the hash overlap). Either way a sha256 that differs
        # from the client's is refused, leaving nothing behind.
        claimed = (sha256 or "").strip().lower()
        received = _received_sha256(session)
        if received is not None and received != claimed:
            raise ScanRejected(SHA256_MISMATCH)
        incoming = IncomingFile(
            path=path,
            sha256=received or claimed,
            size_bytes=session.size_bytes,
            sha256_claimed=received is None,
        )
        if upload_parts.multipart_of(session) is not None and session.lab_id == lab.pk:
            # The parts sent so far are under a name in the lab's folder: the scan keeps it.
            incoming.stored_name = session.stored_name
            incoming.finish_storing = lambda: upload_parts.finish(session, path)
        scan = register_scan(
            lab=lab,
            uploaded_file_path_or_file=incoming,
            original_filename=session.filename,
            study_name=study_name,
            mouse_identifier=mouse_identifier,
            time_point_label=time_point_label,
            modality=modality,
            user=user,
        )
        return scan
    finally:
        # A scan stored under the multipart upload's name completed it; anything else drops it.
        discard_upload(session, stored=scan is not None and scan.file.name == session.stored_name)


@dataclass
class SweepReport:
    """What one sweep removed: upload sessions, and files in the upload temp folder."""

    sessions: int = 0
    files: list[str] = field(default_factory=list)


def sweep_abandoned_uploads(*, older_than: timedelta | None = None) -> SweepReport:
    """Remove resumable uploads nobody touched for ``older_than`` (``LABSEG_UPLOAD_ABANDON_AFTER_H``).

    Also removes files left in the upload temp folder by requests that never finished (a server
    killed mid-upload): ``.part`` files without a session and ``.upload`` files, by modification
    time. Beat runs it every hour (``settings.CELERY_BEAT_SCHEDULE``); a client resuming an upload
    moves ``updated_at`` with every chunk, so only uploads idle for the whole period go.
    """
    age = older_than if older_than is not None else timedelta(hours=settings.LABSEG_UPLOAD_ABANDON_AFTER_H)
    report = SweepReport()
    for session in UploadSession.objects.filter(updated_at__lt=timezone.now() - age):
        path = chunk_path(session)
        if path.exists():
            report.files.append(path.name)
        discard_upload(session)
        report.sessions += 1
    live = {f"{pk}.part" for pk in UploadSession.objects.values_list("pk", flat=True)}
    cutoff = time.time() - age.total_seconds()
    tmp = upload_tmp_dir()
    for path in [*tmp.glob("*.upload"), *(tmp / "chunks").glob("*.part")]:
        if path.name in live:
            continue
        try:
            if path.stat().st_mtime < cutoff:
                path.unlink()
                report.files.append(path.name)
        except FileNotFoundError:  # removed by the request that owned it meanwhile
            continue
    return report

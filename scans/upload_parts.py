"""A resumable upload's parts go to S3 while the rest of the file still arrives.

On S3 storage, opening a resumable upload for a known lab also opens a multipart upload under the
name the scan will have (``UploadSession.stored_name``). Whenever the bytes received complete a part
(``labseg.storage.part_ranges``: 8 MiB parts, whatever the client's chunk size), a background thread
of this web process sends that part from the chunk file on disk while the client sends the next
chunk. At completion :func:`finish` waits for this process's parts still in flight, sends what the
bucket lacks and completes the upload, beside the sha256 and data checks
(``scans.services.register_scan``): after the last byte only S3's completion is left to wait for,
not the whole file's transfer. A refused or abandoned upload is aborted: no parts stay in the bucket.

The chunk file on disk stays the source of truth: a part whose sending failed, or that another web
process sent and is still sending, is sent again at completion, so nothing here can lose data.
"""

from __future__ import annotations

import logging
import os
import threading
from concurrent.futures import Future, ThreadPoolExecutor, wait
from pathlib import Path
from typing import Any

from labseg.storage import (
    Multipart,
    abort_multipart,
    finish_multipart,
    open_multipart,
    part_ranges,
    send_part,
)

from .models import UploadSession

logger = logging.getLogger(__name__)

#: Parts sent at once by one web process, for all its uploads (each holds a socket, not the part).
#: One upload's parts go one after the other, in order: a server that streams a multipart upload
#: to its disk as it arrives (rclone's, ``tests/s3.py``) need not hold parts that came early, and
#: the client's chunks, sent one after the other, are what paces an upload anyway.
PART_THREADS = 4

_lock = threading.Lock()
_pool: tuple[int, ThreadPoolExecutor] | None = None
_in_flight: dict[str, list[Future[dict[str, Any]]]] = {}


def _executor() -> ThreadPoolExecutor:
    global _pool
    with _lock:
        # A pool made before a fork (a preloading server) has no threads in the child.
        if _pool is None or _pool[0] != os.getpid():
            _pool = (os.getpid(), ThreadPoolExecutor(PART_THREADS, thread_name_prefix="upload-part"))
        return _pool[1]


def open_for(session: UploadSession, name: str) -> None:
    """Open the multipart upload of ``session`` for the new file ``name`` where storage has them (S3)."""
    try:
        multipart = open_multipart(name, session.size_bytes)
    except Exception:
        # Not a refusal: the file is then stored whole at completion, as on disk.
        logger.warning(
            "could not open a multipart upload for %s; it will be stored at completion", name, exc_info=True
        )
        return
    if multipart is None:
        return
    session.stored_name, session.storage_upload_id = multipart.name, multipart.upload_id
    session.save(update_fields=["stored_name", "storage_upload_id"])


def multipart_of(session: UploadSession) -> Multipart | None:
    if not session.storage_upload_id:
        return None
    return Multipart(session.stored_name, session.storage_upload_id, session.size_bytes)


def send_received(session: UploadSession, start: int, end: int, path: Path) -> None:
    """Send, in the background, the parts that the bytes ``start`` to ``end`` (exclusive) completed."""
    multipart = multipart_of(session)
    if multipart is None:
        return
    numbers = [
        number for number, first, length in part_ranges(multipart.size) if start < first + length <= end
    ]
    if not numbers:
        return
    pool = _executor()
    with _lock:
        queued = _in_flight.setdefault(str(session.pk), [])
        for number in numbers:
            # The pool takes tasks in order, so the part waited for has always been taken first.
            queued.append(pool.submit(_send, multipart, number, path, queued[-1] if queued else None))


def _send(
    multipart: Multipart, number: int, path: Path, after: Future[dict[str, Any]] | None
) -> dict[str, Any]:
    if after is not None:
        wait([after])
    try:
        return send_part(multipart, number, path)
    except Exception:
        logger.info(
            "part %d of %s was not sent; it is sent again at completion",
            number,
            multipart.name,
            exc_info=True,
        )
        raise


def _collect(session: UploadSession) -> dict[int, dict[str, Any]]:
    """Wait for this process's parts of ``session`` in flight; those that arrived, by number."""
    with _lock:
        futures = _in_flight.pop(str(session.pk), [])
    wait(futures)
    arrived = [future.result() for future in futures if future.exception() is None]
    return {part["PartNumber"]: part for part in arrived}


def finish(session: UploadSession, path: Path) -> str:
    """Complete the multipart upload of ``session`` from the whole file ``path``; the stored name."""
    multipart = multipart_of(session)
    if multipart is None:
        raise ValueError("this upload has no multipart upload in storage")
    return finish_multipart(multipart, path, sent=_collect(session))


def abort(session: UploadSession) -> None:
    """Drop what ``session`` sent to storage (once its parts in flight have landed)."""
    multipart = multipart_of(session)
    _collect(session)
    if multipart is None:
        return
    try:
        abort_multipart(multipart)
    except Exception:
        # Logged with the name, so an operator can find the open upload in the bucket and drop it.
        logger.warning("could not abort the multipart upload of %s", multipart.name, exc_info=True)

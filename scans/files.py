"""Receiving files: streamed to a temporary file in ``upload_tmp_dir()`` while their sha256 is computed.

Nothing here holds a whole upload in memory: request bodies arrive through
:class:`HashingUploadHandler` (installed for every request in ``settings.FILE_UPLOAD_HANDLERS``)
in 1 MiB pieces, and local files are copied in 1 MiB pieces. On local storage the temporary file
sits on the same disk (``MEDIA_ROOT/tmp``), so storing an accepted scan is a rename, not a second
copy; on S3 it waits on the web host (``VAR_DIR/tmp/uploads``) and is streamed to the bucket in
parts (``scans.services.save_incoming``): no media folder is needed at all.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import queue
import re
import tempfile
import threading
import unicodedata
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from django.conf import settings
from django.core.files import File
from django.core.files.uploadedfile import UploadedFile
from django.core.files.uploadhandler import FileUploadHandler

from labseg.storage import has_local_paths

from .validation import ScanRejected, nifti_suffix

PIECE_BYTES = 1024**2


def upload_tmp_dir() -> Path:
    """Where uploads wait while they are checked; created on demand. ``LABSEG_UPLOAD_TMP_DIR``, else
    ``MEDIA_ROOT/tmp`` on local storage, else ``VAR_DIR/tmp/uploads`` on this host (S3)."""
    if settings.LABSEG_UPLOAD_TMP_DIR:
        path = Path(settings.LABSEG_UPLOAD_TMP_DIR)
    elif has_local_paths():
        path = Path(settings.MEDIA_ROOT) / "tmp"
    else:
        path = Path(settings.VAR_DIR) / "tmp" / "uploads"
    path.mkdir(parents=True, exist_ok=True)
    return path


@dataclass
class IncomingFile:
    """A received file waiting in ``upload_tmp_dir()``; ``owned`` files are deleted after use.

    ``sha256_claimed`` marks a ``sha256`` that the client computed and this server has not yet:
    :func:`scans.services.register_scan` hashes the file while it is being stored and refuses it
    when they differ.
    """

    path: Path
    sha256: str
    size_bytes: int
    owned: bool = True
    sha256_claimed: bool = False
    #: Where storing already began (a resumable upload's parts sent to S3 while it arrived): the
    #: name the file will have, and the call that finishes storing it there and returns that name.
    stored_name: str = ""
    finish_storing: Callable[[], str] | None = None

    def discard(self) -> None:
        if self.owned:
            self.path.unlink(missing_ok=True)


class HashedUploadedFile(UploadedFile):
    """A request file streamed to disk, with its sha256 computed on the way in."""

    file: IO[bytes]  # always the named temporary file made in __init__, never None

    def __init__(self, name: str, content_type: str, charset: str | None, extra: Any) -> None:
        file = tempfile.NamedTemporaryFile(suffix=".upload", dir=upload_tmp_dir())  # noqa: SIM115
        super().__init__(file, name, content_type, 0, charset, extra)
        self.hasher = hashlib.sha256()

    def temporary_file_path(self) -> str:
        return self.file.name

    @property
    def sha256(self) -> str:
        return self.hasher.hexdigest()

    def close(self) -> None:
        # Moved into storage or discarded before the tempfile could unlink it.
        with contextlib.suppress(FileNotFoundError):
            self.file.close()


class _Consumer(threading.Thread):
    """Applies ``work`` to each piece handed over by the request thread, on its own core.

    ``hashlib`` and file writes release the GIL on large buffers, so hashing, writing and the
    request thread's multipart parsing run in parallel. Each queue is bounded (8 MiB in flight)
    and both consumers share the same piece objects, so memory stays flat.
    """

    def __init__(self, name: str, work: Any) -> None:
        super().__init__(name=name, daemon=True)
        self.work = work
        self.pieces: queue.Queue[bytes | None] = queue.Queue(maxsize=8)
        self.error: BaseException | None = None

    def run(self) -> None:
        while (piece := self.pieces.get()) is not None:
            if self.error is None:
                try:
                    self.work(piece)
                except BaseException as error:  # re-raised in the request thread by finish()
                    self.error = error

    def finish(self) -> None:
        self.pieces.put(None)
        self.join()
        if self.error is not None:
            raise self.error


class HashingUploadHandler(FileUploadHandler):
    """Streams every uploaded file to ``upload_tmp_dir()`` and hashes it as it arrives."""

    chunk_size = PIECE_BYTES

    def new_file(
        self,
        field_name: str,
        file_name: str,
        content_type: str,
        content_length: int | None,
        charset: str | None = None,
        content_type_extra: dict[str, bytes] | None = None,
    ) -> None:
        super().new_file(field_name, file_name, content_type, content_length, charset, content_type_extra)
        self.file = HashedUploadedFile(file_name, content_type, charset, content_type_extra)
        self.consumers = (
            _Consumer("upload-hasher", self.file.hasher.update),
            _Consumer("upload-writer", self.file.write),
        )
        for consumer in self.consumers:
            consumer.start()

    def receive_data_chunk(self, raw_data: bytes, start: int) -> None:
        for consumer in self.consumers:
            if consumer.error is not None:
                # A write failed (a full disk): stop reading the body and free the space now.
                self._discard()
                raise consumer.error
            consumer.pieces.put(raw_data)
        return None

    def file_complete(self, file_size: int) -> HashedUploadedFile:
        try:
            for consumer in self.consumers:
                consumer.finish()
            self.file.flush()
        except BaseException:
            self._discard()
            raise
        self.file.seek(0)
        self.file.size = file_size
        return self.file

    def upload_interrupted(self) -> None:
        if hasattr(self, "file"):
            self._discard()

    def _discard(self) -> None:
        """Stop the consumers and delete the partial file (its disk space is freed at once)."""
        for consumer in self.consumers:
            if consumer.is_alive():
                consumer.pieces.put(None)
                consumer.join()
        path = self.file.temporary_file_path()
        with contextlib.suppress(OSError):  # closing flushes: a full disk fails that flush too
            self.file.close()
        Path(path).unlink(missing_ok=True)


def copy_hashing(source: IO[bytes], *, limit_bytes: int | None = None) -> IncomingFile:
    """Copy a readable stream into ``upload_tmp_dir()`` in 1 MiB pieces, hashing on the way."""
    hasher = hashlib.sha256()
    size = 0
    handle, name = tempfile.mkstemp(suffix=".upload", dir=upload_tmp_dir())
    path = Path(name)
    try:
        with os.fdopen(handle, "wb") as target:
            while piece := source.read(PIECE_BYTES):
                size += len(piece)
                if limit_bytes is not None and size > limit_bytes:
                    raise ScanRejected(
                        f"the file is larger than the upload limit of {limit_bytes / 1024**3:.1f} GiB",
                        status=413,
                    )
                hasher.update(piece)
                target.write(piece)
    except BaseException:
        path.unlink(missing_ok=True)
        raise
    return IncomingFile(path=path, sha256=hasher.hexdigest(), size_bytes=size)


def sha256_of(path: Path) -> str:
    hasher = hashlib.sha256()
    with path.open("rb") as source:
        while piece := source.read(PIECE_BYTES):
            hasher.update(piece)
    return hasher.hexdigest()


def receive(source: Any) -> IncomingFile:
    """An :class:`IncomingFile` from what a caller holds.

    Accepts an ``IncomingFile`` (used as is), a request file from :class:`HashingUploadHandler`
    (already on disk and hashed), a local path (copied: the original is never moved or altered),
    or any readable binary stream (copied).
    """
    limit = settings.LABSEG_MAX_UPLOAD_BYTES
    if isinstance(source, IncomingFile):
        return source
    if isinstance(source, HashedUploadedFile):
        return IncomingFile(
            path=Path(source.temporary_file_path()), sha256=source.sha256, size_bytes=source.size or 0
        )
    if isinstance(source, str | os.PathLike):
        with open(source, "rb") as stream:
            return copy_hashing(stream, limit_bytes=limit)
    if hasattr(source, "read"):
        if hasattr(source, "seek"):
            source.seek(0)
        return copy_hashing(source, limit_bytes=limit)
    raise TypeError(f"cannot receive a file from {type(source).__name__}")


_UNSAFE_CHARACTERS = re.compile(r"[^A-Za-z0-9._+-]+")


def safe_filename(original_filename: str) -> str:
    """A storage-safe version of a plain file name; refuses names that reach into folders.

    Folder parts (``../``, ``/``, ``\\``), control characters and hidden names are refused rather
    than silently cut, so the researcher learns the name was not taken as given.
    """
    name = original_filename.strip()
    if not name:
        raise ScanRejected("the file has no name: give a file name ending in .nii or .nii.gz")
    if "/" in name or "\\" in name or name.startswith(".") or "\x00" in name:
        raise ScanRejected(
            f"the file name {original_filename!r} contains folder parts or starts with a dot: give a "
            "plain file name such as CT_M02_8d.nii.gz"
        )
    if any(unicodedata.category(c) == "Cc" for c in name):
        raise ScanRejected("the file name contains control characters: give a plain file name")
    suffix = nifti_suffix(name)
    stem = _UNSAFE_CHARACTERS.sub("_", name[: -len(suffix)]).strip("._") or "scan"
    return stem[:150] + suffix


class MovableFile(File):
    """A local temporary file that Django's file storage may move (rename) instead of copying."""

    def __init__(self, path: Path) -> None:
        super().__init__(path.open("rb"), name=path.name)
        self._path = path

    def temporary_file_path(self) -> str:
        return str(self._path)

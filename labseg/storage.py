"""The one way to read a stored file as a local path, whatever the storage backend.

Workers and pages hand NIfTI files to nibabel and the pipeline, which want a path. On disk storage
the stored file's own path is used (no copy); on storage without local paths (S3) the file is
streamed into a temporary file that is removed when the block ends.

Files received by the web process go to storage with :func:`store_file`: a rename on disk storage, and
on S3 a multipart upload read part by part from the file on disk (no part is held in memory).

Downloads on storage that can sign URLs (S3: ``presigned_url``) go from storage to the client
directly; ``labseg/downloads.py`` answers them with a redirect.
"""

from __future__ import annotations

import shutil
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

from django.conf import settings
from django.core.files import File
from django.core.files.storage import Storage, default_storage

#: Bytes copied per read when a stored file is fetched.
COPY_CHUNK_BYTES = 8 * 1024 * 1024
#: Part size of the multipart uploads of :func:`store_file` (boto3's default). Measured against moto's
#: server on loopback, 16 and 32 MiB parts cost the server as much or more CPU per byte (it reads
#: each request body whole and copies it into a temporary file), and the web process's memory does
#: not depend on it (parts are read from disk as they are sent). S3 allows 10,000 parts, so a file
#: over 80 GB gets larger ones.
UPLOAD_PART_BYTES = 8 * 1024 * 1024
S3_MAX_PARTS = 10_000


def _suffix(name: str) -> str:
    # nibabel picks its reader from the suffix, so a copy keeps the stored name's.
    for known in (".nii.gz", ".seg.nrrd", ".nii", ".nrrd"):
        if name.lower().endswith(known):
            return known
    return Path(name).suffix


def _local(store: Storage, name: str) -> Path | None:
    """The file's own path on storage that has one (disk), None on storage without (S3)."""
    try:
        return Path(store.path(name))
    except NotImplementedError:
        return None


def _s3(store: Storage) -> Any | None:
    """The store as django-storages' S3 backend, None for any other backend."""
    # An S3 store exists only once its module is imported: on local storage, importing it here would
    # load boto3 into the web process (about 10 MiB and 0.2 s, measured with bench/upload.py).
    module = sys.modules.get("storages.backends.s3")
    return store if module is not None and isinstance(store, module.S3Storage) else None


def open_stream(name: str, *, storage: Storage | None = None) -> tuple[IO[bytes], int | None]:
    """The stored file ``name`` opened for one pass from start to end, and its size when known.

    On S3 the body of one streamed GET, read as it arrives: the backend's ``open`` would first spool
    the whole object with parallel ranged GETs (a first byte only after the last), and a server
    that slices the whole object for every range (moto's, ``tests/s3.py``) turns those quadratic.
    A missing file raises ``FileNotFoundError`` on every backend.
    """
    store = storage or default_storage
    s3 = _s3(store)
    if s3 is None:
        return store.open(name, "rb"), None
    from botocore.exceptions import ClientError
    from storages.utils import clean_name

    try:
        answer = s3.bucket.Object(s3._normalize_name(clean_name(name))).get()
    except ClientError as error:
        if error.response.get("Error", {}).get("Code") in ("NoSuchKey", "404"):
            raise FileNotFoundError(f"{name} is not in the bucket") from error
        raise
    return answer["Body"], int(answer["ContentLength"])


def _copy_into(store: Storage, name: str, target: IO[bytes]) -> None:
    source, _size = open_stream(name, storage=store)
    with source:
        shutil.copyfileobj(source, target, COPY_CHUNK_BYTES)


def copy_to(name: str, path: Path, *, storage: Storage | None = None) -> Path:
    """Copy the stored file ``name`` to the local file ``path`` (a job's own folder); returns it."""
    with path.open("wb") as target:
        _copy_into(storage or default_storage, name, target)
    return path


class _MovableFile(File):
    """A local file that disk storage may move (rename) into place instead of copying it."""

    def __init__(self, source: IO[bytes], path: Path) -> None:
        super().__init__(source, name=path.name)
        self._path = path

    def temporary_file_path(self) -> str:
        return str(self._path)


def store_file(path: Path, name: str, *, storage: Storage | None = None) -> str:
    """Store the local file ``path`` as the new file ``name``; the name it was stored under.

    On disk storage this is ``Storage.save`` (a rename when ``path`` is a temporary file on the
    same disk, through ``temporary_file_path``). On S3 the file is uploaded from disk with boto3's
    ``upload_file``, in :data:`UPLOAD_PART_BYTES` parts, ``AWS_S3_MAX_CONCURRENCY`` at a time: each
    part's body is a window on the file read as the socket sends it, so the web process's memory
    does not grow with the file (``upload_fileobj``, which ``Storage.save`` uses, reads every part
    into memory first); a failed upload is aborted, leaving no parts in the bucket. The object gets
    the same parameters (content type and encoding) as ``Storage.save`` gives it.
    """
    store = storage or default_storage
    s3 = _s3(store)
    if s3 is None:
        with path.open("rb") as source:
            return str(store.save(name, _MovableFile(source, path)))
    from boto3.s3.transfer import TransferConfig
    from storages.utils import clean_name

    name = store.get_available_name(name)
    cleaned = clean_name(name)
    key = s3._normalize_name(cleaned)
    size = path.stat().st_size
    part_bytes = max(UPLOAD_PART_BYTES, -(-size // S3_MAX_PARTS))
    configured = s3.transfer_config
    transfer = TransferConfig(
        multipart_threshold=part_bytes,
        multipart_chunksize=part_bytes,
        max_concurrency=configured.max_request_concurrency if configured else 4,
    )
    s3.bucket.upload_file(str(path), key, ExtraArgs=s3._get_write_parameters(key), Config=transfer)
    return str(cleaned)


def has_local_paths(storage: Storage | None = None) -> bool:
    """Whether the storage keeps files on this machine's disk (local), not behind an API (S3)."""
    return _local(storage or default_storage, "probe") is not None


def presigned_url(
    name: str, *, content_disposition: str, content_type: str, storage: Storage | None = None
) -> str | None:
    """A time-limited URL from which a client fetches ``name`` straight from storage, answered with
    these ``Content-Disposition`` and ``Content-Type`` headers; None where the backend cannot sign
    URLs (local disk) or ``LABSEG_PRESIGNED_DOWNLOADS`` is off."""
    if not settings.LABSEG_PRESIGNED_DOWNLOADS:
        return None
    store = _s3(storage or default_storage)
    # A custom domain without a CloudFront signer gives unsigned URLs: those are not presigned.
    if store is None or not store.querystring_auth or store.custom_domain:
        return None
    parameters = {"ResponseContentDisposition": content_disposition, "ResponseContentType": content_type}
    return str(store.url(name, parameters=parameters))


@contextmanager
def local_path(
    name: str | None, *, storage: Storage | None = None, folder: Path | None = None
) -> Iterator[Path]:
    """A local path holding the stored file ``name`` for the duration of the block.

    ``name`` is a file field's name: an empty one (nothing stored) raises ``FileNotFoundError``.
    ``folder`` puts a copy there (a job's own temporary folder) instead of the system temp folder;
    a local file is always used in place.
    """
    if not name:
        raise FileNotFoundError("no file is stored in this field")
    store = storage or default_storage
    in_place = _local(store, name)
    if in_place is not None:
        # Only the lookup is guarded: an error in the caller's block must reach the caller.
        yield in_place
        return
    with tempfile.NamedTemporaryFile(suffix=_suffix(name), dir=folder) as tmp:
        _copy_into(store, name, tmp)
        tmp.flush()
        yield Path(tmp.name)

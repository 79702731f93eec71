"""The one way to read a stored file as a local path, whatever the storage backend.

Workers and pages hand NIfTI files to nibabel and the pipeline, which want a path. On disk storage
the stored file's own path is used (no copy); on storage without local paths (S3) the file is
streamed into a temporary file that is removed when the block ends.

Files received by the web process go to storage with :func:`store_file`: a rename on disk storage, and
on S3 a multipart upload read part by part from the file on disk (no part is held in memory). A
resumable upload sends its parts while the rest of the file still arrives: :func:`open_multipart`,
:func:`send_part` and :func:`finish_multipart` (``scans/upload_parts.py``).

Downloads on storage that can sign URLs (S3: ``presigned_url``) go from storage to the client
directly; ``labseg/downloads.py`` answers them with a redirect.
"""

from __future__ import annotations

import shutil
import sys
import tempfile
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
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

    cleaned, key = _new_key(s3, name)
    part_bytes = part_size(path.stat().st_size)
    transfer = TransferConfig(
        multipart_threshold=part_bytes, multipart_chunksize=part_bytes, max_concurrency=_concurrency(s3)
    )
    s3.bucket.upload_file(str(path), key, ExtraArgs=s3._get_write_parameters(key), Config=transfer)
    return cleaned


def part_size(size: int) -> int:
    """Bytes per part of a multipart upload of ``size`` bytes (S3 allows at most 10,000 parts)."""
    return max(UPLOAD_PART_BYTES, -(-size // S3_MAX_PARTS))


def part_range(size: int, number: int) -> tuple[int, int]:
    """``(first byte, length)`` of part ``number`` (from 1) of a ``size``-byte multipart upload."""
    step = part_size(size)
    start = (number - 1) * step
    return start, min(step, size - start)


def part_ranges(size: int) -> list[tuple[int, int, int]]:
    """``(part number, first byte, length)`` of each part of a ``size``-byte multipart upload."""
    return [(number, *part_range(size, number)) for number in range(1, -(-size // part_size(size)) + 1)]


def _new_key(s3: Any, name: str) -> tuple[str, str]:
    """The stored name a new file ``name`` gets (as ``Storage.save`` would give it) and its key."""
    from storages.utils import clean_name

    cleaned = str(clean_name(s3.get_available_name(name)))
    return cleaned, str(s3._normalize_name(cleaned))


def _concurrency(s3: Any) -> int:
    configured = s3.transfer_config
    return int(configured.max_request_concurrency) if configured else 4


#: What each part and the completion repeat from the multipart upload's parameters (as boto3's own
#: multipart uploads do, ``s3transfer.upload.UploadSubmissionTask``).
_PART_ARGS = ("ChecksumAlgorithm", "SSECustomerKey", "SSECustomerAlgorithm", "SSECustomerKeyMD5")
_COMPLETE_ARGS = ("SSECustomerKey", "SSECustomerAlgorithm", "SSECustomerKeyMD5")


@dataclass(frozen=True)
class Multipart:
    """A multipart upload open on S3 for the new file ``name``: its parts can be sent in any order,
    by any process, until :func:`finish_multipart` completes it or :func:`abort_multipart` drops it."""

    name: str
    upload_id: str
    size: int

    def parameters(self, s3: Any) -> dict[str, Any]:
        return _multipart_parameters(s3, self.name)


def _multipart_parameters(s3: Any, name: str) -> dict[str, Any]:
    """Bucket, key and the parameters ``Storage.save`` gives the stored file ``name``."""
    key = s3._normalize_name(name)
    parameters = dict(s3._get_write_parameters(key))
    # boto3's own uploads ask for a CRC32 of every part when the client computes checksums
    # (botocore's default, ``request_checksum_calculation``); the completion repeats them.
    if s3.bucket.meta.client.meta.config.request_checksum_calculation == "when_supported":
        parameters.setdefault("ChecksumAlgorithm", "CRC32")
    return {"Bucket": s3.bucket_name, "Key": key, **parameters}


def _s3_or_refuse(storage: Storage | None) -> Any:
    s3 = _s3(storage or default_storage)
    if s3 is None:
        raise ValueError("multipart uploads exist only on S3 storage")
    return s3


def open_multipart(name: str, size: int, *, storage: Storage | None = None) -> Multipart | None:
    """Open a multipart upload for the new file ``name`` of ``size`` bytes; None where the storage
    has no multipart uploads (disk: the file is stored whole by :func:`store_file`)."""
    s3 = _s3(storage or default_storage)
    if s3 is None:
        return None
    cleaned, _key = _new_key(s3, name)
    created = s3.bucket.meta.client.create_multipart_upload(**_multipart_parameters(s3, cleaned))
    return Multipart(cleaned, str(created["UploadId"]), size)


def _part_fields(answer: dict[str, Any], number: int) -> dict[str, Any]:
    fields = {"PartNumber": number, "ETag": answer["ETag"]}
    fields.update({key: value for key, value in answer.items() if key.startswith("Checksum") and value})
    fields.pop("ChecksumType", None)
    return fields


def send_part(
    multipart: Multipart, number: int, path: Path, *, storage: Storage | None = None
) -> dict[str, Any]:
    """Send part ``number`` of ``multipart`` from the local file ``path`` (read as the socket sends
    it, never whole); what the completion needs of it (number, ETag, checksum)."""
    from s3transfer.utils import ReadFileChunk

    s3 = _s3_or_refuse(storage)
    parameters = multipart.parameters(s3)
    start, length = part_range(multipart.size, number)
    extra = {key: parameters[key] for key in _PART_ARGS if key in parameters}
    with ReadFileChunk.from_filename(str(path), start, length, callbacks=[]) as body:
        answer = s3.bucket.meta.client.upload_part(
            Bucket=parameters["Bucket"],
            Key=parameters["Key"],
            UploadId=multipart.upload_id,
            PartNumber=number,
            Body=body,
            **extra,
        )
    return _part_fields(answer, number)


def sent_parts(multipart: Multipart, *, storage: Storage | None = None) -> dict[int, dict[str, Any]]:
    """The parts of ``multipart`` the bucket holds whole, by number (S3's ListParts)."""
    s3 = _s3_or_refuse(storage)
    parameters = multipart.parameters(s3)
    lengths = {number: length for number, _start, length in part_ranges(multipart.size)}
    pages = s3.bucket.meta.client.get_paginator("list_parts").paginate(
        Bucket=parameters["Bucket"], Key=parameters["Key"], UploadId=multipart.upload_id
    )
    held: dict[int, dict[str, Any]] = {}
    for page in pages:
        for part in page.get("Parts", []):
            number = int(part["PartNumber"])
            if lengths.get(number) == int(part["Size"]):
                held[number] = _part_fields(part, number)
    return held


def finish_multipart(
    multipart: Multipart,
    path: Path,
    *,
    sent: dict[int, dict[str, Any]] | None = None,
    storage: Storage | None = None,
) -> str:
    """Send the parts of ``multipart`` the bucket lacks from the whole local file ``path``, then
    complete it; the stored name. ``sent`` are parts this process knows arrived; the bucket is
    asked for the rest (another process may have sent them). A failure aborts the upload."""
    s3 = _s3_or_refuse(storage)
    try:
        held = {**sent_parts(multipart, storage=s3), **(sent or {})}
        missing = [number for number, _start, _length in part_ranges(multipart.size) if number not in held]
        with ThreadPoolExecutor(_concurrency(s3), thread_name_prefix="s3-part") as pool:
            for part in pool.map(lambda number: send_part(multipart, number, path, storage=s3), missing):
                held[part["PartNumber"]] = part
        parameters = multipart.parameters(s3)
        extra = {key: parameters[key] for key in _COMPLETE_ARGS if key in parameters}
        s3.bucket.meta.client.complete_multipart_upload(
            Bucket=parameters["Bucket"],
            Key=parameters["Key"],
            UploadId=multipart.upload_id,
            MultipartUpload={"Parts": [held[number] for number in sorted(held)]},
            **extra,
        )
    except BaseException:
        abort_multipart(multipart, storage=s3)
        raise
    return multipart.name


def abort_multipart(multipart: Multipart, *, storage: Storage | None = None) -> None:
    """Drop ``multipart`` and the parts it holds; one already completed or aborted is left as it is."""
    from botocore.exceptions import ClientError

    s3 = _s3_or_refuse(storage)
    parameters = multipart.parameters(s3)
    try:
        s3.bucket.meta.client.abort_multipart_upload(
            Bucket=parameters["Bucket"], Key=parameters["Key"], UploadId=multipart.upload_id
        )
    except ClientError as error:
        if error.response.get("Error", {}).get("Code") not in ("NoSuchUpload", "404"):
            raise


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

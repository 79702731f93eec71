"""The one way to read a stored file as a local path, whatever the storage backend.

Workers and pages hand NIfTI files to nibabel and the pipeline, which want a path. On disk storage
the stored file's own path is used (no copy); on storage without local paths (S3) the file is
streamed into a temporary file that is removed when the block ends.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from django.core.files.storage import Storage, default_storage

#: Bytes copied per read when a stored file is fetched.
COPY_CHUNK_BYTES = 8 * 1024 * 1024


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
        with store.open(name, "rb") as source:
            shutil.copyfileobj(source, tmp, COPY_CHUNK_BYTES)
        tmp.flush()
        yield Path(tmp.name)

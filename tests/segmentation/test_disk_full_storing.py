"""A worker storing a prediction on a full disk: the partial file is deleted at once and the job's
message says what happened in plain words (the disk is a real 4 MiB tmpfs, tests/scans/test_disk_full.py)."""

from __future__ import annotations

import os
from pathlib import Path
from types import SimpleNamespace

import pytest

from segmentation.services import _failure_message, _store
from tests.scans.niftis import iter_files
from tests.scans.test_disk_full import fill, free_bytes, small_disk  # noqa: F401 (the fixture)


def test_a_prediction_stored_on_a_full_disk_leaves_no_partial_file(small_disk: Path, tmp_path: Path) -> None:  # noqa: F811
    labels = tmp_path / "labels.nii.gz"
    labels.write_bytes(os.urandom(512 * 1024))  # twice the room left
    fill(small_disk, leave=256 * 1024)
    free_before = free_bytes(small_disk)
    stored: list[str] = []

    with pytest.raises(OSError) as raised:
        _store(labels, "labs/1/predictions/scan1/mouse-tumor-2.0.0/attempt1/labels.nii.gz", stored)

    assert raised.value.errno == 28  # the kernel's ENOSPC, not a stand-in
    assert stored == []
    assert list(iter_files(small_disk)) == ["ballast.bin"]
    assert free_bytes(small_disk) == free_before
    message = _failure_message(SimpleNamespace(stage="storing"), raised.value)  # type: ignore[arg-type]
    assert message.startswith("The server's disk is full, so this segmentation could not be stored")

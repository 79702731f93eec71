"""Backup and restore round trip on PostgreSQL: rows and files of two labs backed up, restored into
a new empty database and empty storage, then checked row by row and file by file."""

from __future__ import annotations

import hashlib
import io
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import psycopg
import pytest
from django.core.management import CommandError, call_command
from django.db import connection

from backups.core import file_columns
from labs.models import Membership
from scans.deletion import delete_scan
from scans.services import register_scan
from tests.factories import LabFactory, member_of
from tests.review.conftest import ball, make_annotation
from tests.scans.niftis import nifti_bytes, volume

pytestmark = pytest.mark.django_db(transaction=True)


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _connect(name: str) -> psycopg.Connection:
    s = connection.settings_dict
    return psycopg.connect(
        dbname=name,
        user=s["USER"],
        host=s["HOST"] or None,
        port=s["PORT"] or None,
        password=s["PASSWORD"] or None,
    )


@pytest.fixture
def restore_url() -> Iterator[str]:
    """A new, empty database beside the test database (dropped afterwards)."""
    name = f"{connection.settings_dict['NAME']}_restore"
    with _connect("postgres") as admin:
        admin.autocommit = True
        admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.execute(f'CREATE DATABASE "{name}"')
    s = connection.settings_dict
    yield f"postgres://{s['USER']}@{s['HOST'] or '127.0.0.1'}:{s['PORT'] or 5432}/{name}"
    with _connect("postgres") as admin:
        admin.autocommit = True
        admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def _counts(cursor: psycopg.Cursor) -> dict[str, int]:  # type: ignore[type-arg]
    cursor.execute("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")
    tables = [row[0] for row in cursor.fetchall()]
    counts = {}
    for table in tables:
        cursor.execute(f'SELECT count(*) FROM "{table}"')
        counts[table] = cursor.fetchone()[0]  # type: ignore[index]
    return counts


def _named(cursor: psycopg.Cursor) -> list[str]:  # type: ignore[type-arg]
    names: list[str] = []
    for table, column in file_columns():
        cursor.execute(f'SELECT "{column}" FROM "{table}" WHERE "{column}" <> \'\'')
        names.extend(row[0] for row in cursor.fetchall())
    return names


def _lab_with_files(name: str, seed: int) -> None:
    lab = LabFactory.create(name=name)
    admin = member_of(lab, role=Membership.Role.ADMIN)
    scans = [
        register_scan(
            lab=lab,
            uploaded_file_path_or_file=io.BytesIO(nifti_bytes(volume(seed=seed + n))),
            original_filename=f"CT_M0{n}_0h.nii.gz",
            study_name="Backups",
            mouse_identifier=f"M0{n}",
            time_point_label="0h",
            user=admin,
        )
        for n in range(3)
    ]
    labels = np.zeros(tuple(scans[0].shape), np.uint8)
    labels[ball(tuple(scans[0].shape), (12, 10, 8), 4.0)] = 14
    make_annotation(scan=scans[0], labels=labels, annotator="A")
    delete_scan(scan=scans[2], user=admin)  # a scan in the bin is backed up too


def test_a_backup_restores_into_an_empty_database_and_storage_with_every_file_and_row(
    tmp_path, media_root, settings, restore_url
):
    settings.LABSEG_SEGMENT_ON_UPLOAD = False
    _lab_with_files("Lab A", 1)
    _lab_with_files("Lab B", 10)
    (media_root / "tmp").mkdir(exist_ok=True)
    (media_root / "tmp" / "left.upload").write_bytes(b"an upload in progress")
    with connection.cursor() as cursor:
        source_counts = _counts(cursor.cursor)  # type: ignore[attr-defined]
        source_named = _named(cursor.cursor)  # type: ignore[attr-defined]
    source_sha = {name: _sha256(media_root / name) for name in source_named}
    assert len(source_named) == 14  # 6 scans and 6 thumbnails, 2 annotations
    assert source_counts["scans_scan"] == 6 and source_counts["audit_auditevent"] > 0

    call_command("backup", out=tmp_path / "backup")
    restored_media = tmp_path / "restored-media"
    restored_media.mkdir()
    settings.MEDIA_ROOT = restored_media
    settings.STORAGES = {
        **settings.STORAGES,
        "default": {
            "BACKEND": "django.core.files.storage.FileSystemStorage",
            "OPTIONS": {"location": str(restored_media), "base_url": "/media/"},
        },
    }
    call_command("restore", source=tmp_path / "backup", database_url=restore_url)

    with _connect(restore_url.rsplit("/", 1)[1]) as restored, restored.cursor() as cursor:
        assert _counts(cursor) == source_counts
        restored_named = _named(cursor)
        cursor.execute("SELECT file, sha256 FROM scans_scan")
        scan_files = cursor.fetchall()
    assert sorted(restored_named) == sorted(source_named)
    for name in restored_named:
        assert (restored_media / name).is_file(), name
        assert _sha256(restored_media / name) == source_sha[name], name
    assert len(scan_files) == 6 and all(_sha256(restored_media / f) == sha for f, sha in scan_files)
    assert not (restored_media / "tmp").exists()  # uploads in progress are not part of a backup

    # A second restore onto the restored data is refused: it would mix two states.
    with pytest.raises(CommandError, match="is not empty"):
        call_command("restore", source=tmp_path / "backup", database_url=restore_url)


def test_a_damaged_backup_is_refused_before_anything_is_restored(tmp_path, media_root, settings, restore_url):
    settings.LABSEG_SEGMENT_ON_UPLOAD = False
    _lab_with_files("Lab A", 1)
    call_command("backup", out=tmp_path / "backup")
    damaged = next((tmp_path / "backup" / "files").rglob("*.nii.gz"))
    content = damaged.read_bytes()
    damaged.write_bytes(content[:-1] + bytes([content[-1] ^ 0xFF]))  # one bit flipped on the backup disk
    empty = tmp_path / "empty-media"
    empty.mkdir()
    settings.MEDIA_ROOT = empty
    settings.STORAGES = {
        **settings.STORAGES,
        "default": {
            "BACKEND": "django.core.files.storage.FileSystemStorage",
            "OPTIONS": {"location": str(empty)},
        },
    }

    with pytest.raises(CommandError, match="the backup is damaged: 1 files differ"):
        call_command("restore", source=tmp_path / "backup", database_url=restore_url)
    with _connect(restore_url.rsplit("/", 1)[1]) as restored, restored.cursor() as cursor:
        assert _counts(cursor) == {}
    assert not any(empty.iterdir())


def test_a_backup_goes_only_into_a_new_folder(tmp_path, db):
    (tmp_path / "used").mkdir()
    (tmp_path / "used" / "x").write_text("x")

    with pytest.raises(CommandError, match="is not empty: give a new folder"):
        call_command("backup", out=tmp_path / "used")

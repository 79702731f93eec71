"""Backup and restore: the database and every stored file, with a manifest that proves both.

A backup is a folder:

- ``database.dump``: ``pg_dump -Fc`` of the database (PostgreSQL), or ``database.sqlite3``, a copy
  made with SQLite's online backup (the embedded default);
- ``files/<name>``: every file in Django's default storage (local media or S3 objects, read through
  the storage API), except ``tmp/`` (uploads in progress, which a restore cannot resume);
- ``manifest.json``, written last (its presence means the backup is complete): the row count of
  every table and each file's size and sha256, plus the names the rows point at.

On PostgreSQL the dump, the row counts and the file names the rows point at come from one
snapshot (``pg_export_snapshot`` shared with ``pg_dump --snapshot``), so they agree even while the
server works; files are copied after it, so a file the rows name is in the backup unless it was
deleted meanwhile (a purge from the bin): such names are listed in the manifest as ``missing``.

A restore goes into an empty database (no tables) and empty storage, and refuses anything else. It
checks every file of the backup against its sha256 first, restores the database, copies the files
into storage, then checks that every table has its row count and that every file a row names is
in storage with the sha256 of the manifest.
"""

from __future__ import annotations

import hashlib
import json
import os
import posixpath
import shutil
import sqlite3
import subprocess
from collections.abc import Iterator
from contextlib import closing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from django.apps import apps
from django.core.files import File
from django.core.files.storage import Storage, default_storage
from django.db.models import FileField
from django.utils import timezone

MANIFEST = "manifest.json"
FILES = "files"
PG_DUMP = "database.dump"
SQLITE_COPY = "database.sqlite3"
#: Storage folders left out: uploads in progress (``scans.files.upload_tmp_dir``).
SKIPPED_FOLDERS = ("tmp",)
PIECE_BYTES = 1024**2


class BackupError(Exception):
    """A backup or restore that cannot be done, with the reason in plain words."""


@dataclass
class Database:
    """Where a database is: Django's ``DATABASES`` entry (``ENGINE``, ``NAME``, ``USER``, ...)."""

    settings: dict[str, Any]

    @property
    def vendor(self) -> str:
        engine = str(self.settings["ENGINE"])
        if "postgresql" in engine:
            return "postgresql"
        if "sqlite3" in engine:
            return "sqlite"
        raise BackupError(f"backups support PostgreSQL and SQLite, not {engine}")

    def libpq(self) -> dict[str, str]:
        """Connection parameters for psycopg and the environment of pg_dump/pg_restore."""
        s = self.settings
        values = {"dbname": s.get("NAME"), "user": s.get("USER"), "password": s.get("PASSWORD")}
        values.update(host=s.get("HOST") or "", port=str(s.get("PORT") or ""))
        return {k: str(v) for k, v in values.items() if v}

    def connect(self) -> Any:
        """A psycopg connection to this PostgreSQL database."""
        import psycopg
        from psycopg.conninfo import make_conninfo

        return psycopg.connect(make_conninfo(**self.libpq()))

    def pg_env(self) -> dict[str, str]:
        names = {"dbname": "PGDATABASE", "user": "PGUSER", "password": "PGPASSWORD", "host": "PGHOST"}
        names["port"] = "PGPORT"
        return {**os.environ, **{names[k]: v for k, v in self.libpq().items()}}


@dataclass
class Report:
    folder: Path
    tables: dict[str, int] = field(default_factory=dict)
    files: int = 0
    bytes: int = 0
    missing: list[str] = field(default_factory=list)


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as source:
        while piece := source.read(PIECE_BYTES):
            digest.update(piece)
    return digest.hexdigest()


def _sha256_stored(storage: Storage, name: str) -> str:
    digest = hashlib.sha256()
    with storage.open(name, "rb") as source:
        while piece := source.read(PIECE_BYTES):
            digest.update(piece)
    return digest.hexdigest()


def stored_names(storage: Storage, folder: str = "") -> Iterator[str]:
    """Every file name in ``storage`` below ``folder``, ``tmp/`` left out at the top."""
    try:
        folders, files = storage.listdir(folder)
    except FileNotFoundError:
        return
    for name in sorted(files):
        yield posixpath.join(folder, name) if folder else name
    for sub in sorted(folders):
        if not folder and sub in SKIPPED_FOLDERS:
            continue
        yield from stored_names(storage, posixpath.join(folder, sub) if folder else sub)


def file_columns() -> list[tuple[str, str]]:
    """``(table, column)`` of every file field of every installed model."""
    columns = []
    for model in apps.get_models():
        for f in model._meta.get_fields():
            if isinstance(f, FileField) and f.concrete:
                columns.append((model._meta.db_table, str(f.column)))
    return sorted(set(columns))


def _quote(identifier: str) -> str:
    return '"' + identifier.replace('"', '""') + '"'


def _tables_and_names(cursor: Any, table_names: list[str]) -> tuple[dict[str, int], set[str]]:
    counts = {}
    for table in table_names:
        cursor.execute(f"SELECT count(*) FROM {_quote(table)}")
        counts[table] = int(cursor.fetchone()[0])
    names: set[str] = set()
    for table, column in file_columns():
        if table not in counts:
            continue
        cursor.execute(f"SELECT {_quote(column)} FROM {_quote(table)} WHERE {_quote(column)} <> ''")
        names.update(str(row[0]) for row in cursor.fetchall())
    return counts, names


def _pg_tables(cursor: Any) -> list[str]:
    cursor.execute("SELECT tablename FROM pg_tables WHERE schemaname = 'public' ORDER BY tablename")
    return [str(row[0]) for row in cursor.fetchall()]


def _sqlite_tables(cursor: Any) -> list[str]:
    cursor.execute(
        "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%' ORDER BY name"
    )
    return [str(row[0]) for row in cursor.fetchall()]


def _run(command: list[str], env: dict[str, str]) -> None:
    try:
        done = subprocess.run(command, env=env, capture_output=True, text=True, check=False)
    except FileNotFoundError:
        raise BackupError(f"{command[0]} is not installed: install the PostgreSQL client tools") from None
    if done.returncode != 0:
        raise BackupError(f"{command[0]} failed: {done.stderr.strip()[-2000:]}")


def _dump_database(db: Database, folder: Path) -> tuple[dict[str, Any], set[str]]:
    if db.vendor == "sqlite":
        target = folder / SQLITE_COPY
        with (
            closing(sqlite3.connect(db.settings["NAME"])) as source,
            closing(sqlite3.connect(target)) as copy,
        ):
            source.backup(copy)
        with closing(sqlite3.connect(target)) as copy:
            cursor = copy.cursor()
            counts, names = _tables_and_names(cursor, _sqlite_tables(cursor))
        return {
            "vendor": "sqlite",
            "file": SQLITE_COPY,
            "sha256": sha256_file(target),
            "tables": counts,
        }, names
    target = folder / PG_DUMP
    with db.connect() as connection:
        connection.execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
        with connection.cursor() as cursor:
            cursor.execute("SELECT pg_export_snapshot()")
            snapshot = str(cursor.fetchone()[0])  # type: ignore[index]
            command = ["pg_dump", "--format=custom", "--no-owner", "--no-privileges"]
            _run([*command, f"--snapshot={snapshot}", f"--file={target}"], db.pg_env())
            counts, names = _tables_and_names(cursor, _pg_tables(cursor))
        connection.rollback()
    return {"vendor": "postgresql", "file": PG_DUMP, "sha256": sha256_file(target), "tables": counts}, names


def backup(out: Path, *, db: Database, storage: Storage | None = None) -> Report:
    """Back the database and storage up into the new folder ``out``."""
    store = storage or default_storage
    if out.exists() and any(out.iterdir()):
        raise BackupError(f"{out} is not empty: give a new folder for the backup")
    out.mkdir(parents=True, exist_ok=True)
    database, named = _dump_database(db, out)
    report = Report(folder=out, tables=database["tables"])
    entries: list[dict[str, Any]] = []
    for name in stored_names(store):
        target = out / FILES / name
        target.parent.mkdir(parents=True, exist_ok=True)
        digest = hashlib.sha256()
        try:
            with store.open(name, "rb") as source, target.open("wb") as copy:
                while piece := source.read(PIECE_BYTES):
                    digest.update(piece)
                    copy.write(piece)
        except FileNotFoundError:  # deleted since it was listed (a purge): not part of this backup
            target.unlink(missing_ok=True)
            continue
        size = target.stat().st_size
        entries.append({"name": name, "size": size, "sha256": digest.hexdigest()})
        report.files += 1
        report.bytes += size
    copied = {e["name"] for e in entries}
    report.missing = sorted(named - copied)
    manifest = {
        "format": 1,
        "created_at": timezone.now().isoformat(),
        "database": database,
        "files": entries,
        "named_by_rows": sorted(named & copied),
        "missing": report.missing,
    }
    partial = out / (MANIFEST + ".part")
    partial.write_text(json.dumps(manifest, indent=1))
    partial.rename(out / MANIFEST)
    return report


def read_manifest(folder: Path) -> dict[str, Any]:
    path = folder / MANIFEST
    if not path.exists():
        raise BackupError(f"{folder} holds no {MANIFEST}: it is not a finished labseg backup")
    manifest: dict[str, Any] = json.loads(path.read_text())
    return manifest


def verify_backup(folder: Path, manifest: dict[str, Any]) -> None:
    """Refuse a backup whose dump or files differ from the manifest (damaged or incomplete)."""
    database = manifest["database"]
    damaged = []
    if (
        not (folder / database["file"]).exists()
        or sha256_file(folder / database["file"]) != database["sha256"]
    ):
        damaged.append(database["file"])
    for entry in manifest["files"]:
        path = folder / FILES / entry["name"]
        if not path.exists() or sha256_file(path) != entry["sha256"]:
            damaged.append(f"{FILES}/{entry['name']}")
    if damaged:
        raise BackupError(
            f"the backup is damaged: {len(damaged)} files differ from the manifest ({', '.join(damaged[:5])})"
        )


def _require_empty(db: Database, store: Storage) -> None:
    if db.vendor == "postgresql":
        with db.connect() as connection, connection.cursor() as cursor:
            tables = _pg_tables(cursor)
        if tables:
            raise BackupError(
                f"the database {db.settings['NAME']} is not empty ({len(tables)} tables): restore into a "
                "new, empty database (createdb NAME)"
            )
    elif Path(db.settings["NAME"]).exists() and Path(db.settings["NAME"]).stat().st_size:
        raise BackupError(f"the database file {db.settings['NAME']} exists: restore to a new file")
    present = next(stored_names(store), None)
    if present is not None:
        raise BackupError(f"the storage is not empty (it holds {present}): restore into empty storage")


def _restore_database(db: Database, folder: Path, database: dict[str, Any]) -> dict[str, int]:
    if database["vendor"] != db.vendor:
        raise BackupError(f"this backup is of a {database['vendor']} database; the target is {db.vendor}")
    if db.vendor == "sqlite":
        shutil.copyfile(folder / database["file"], db.settings["NAME"])
        with closing(sqlite3.connect(db.settings["NAME"])) as restored:
            cursor = restored.cursor()
            return _tables_and_names(cursor, _sqlite_tables(cursor))[0]
    command = ["pg_restore", "--no-owner", "--no-privileges", "--exit-on-error", "--single-transaction"]
    _run([*command, f"--dbname={db.settings['NAME']}", str(folder / database["file"])], db.pg_env())
    with db.connect() as connection, connection.cursor() as pg_cursor:
        return _tables_and_names(pg_cursor, _pg_tables(pg_cursor))[0]


def _named_in(db: Database) -> set[str]:
    if db.vendor == "sqlite":
        with closing(sqlite3.connect(db.settings["NAME"])) as restored:
            cursor = restored.cursor()
            return _tables_and_names(cursor, _sqlite_tables(cursor))[1]
    with db.connect() as connection, connection.cursor() as pg_cursor:
        return _tables_and_names(pg_cursor, _pg_tables(pg_cursor))[1]


def restore(folder: Path, *, db: Database, storage: Storage | None = None) -> Report:
    """Restore the backup in ``folder`` into the empty database ``db`` and empty storage."""
    store = storage or default_storage
    manifest = read_manifest(folder)
    verify_backup(folder, manifest)
    _require_empty(db, store)
    counts = _restore_database(db, folder, manifest["database"])
    if counts != manifest["database"]["tables"]:
        wrong = sorted(
            t for t in manifest["database"]["tables"] if counts.get(t) != manifest["database"]["tables"][t]
        )
        raise BackupError(
            f"the restored database differs from the backup in {len(wrong)} tables: {', '.join(wrong[:10])}"
        )
    report = Report(folder=folder, tables=counts)
    for entry in manifest["files"]:
        with (folder / FILES / entry["name"]).open("rb") as source:
            saved = store.save(entry["name"], File(source, name=entry["name"]))
        if saved != entry["name"]:
            raise BackupError(f"storage stored {entry['name']} as {saved}: restore into empty storage")
        report.files += 1
        report.bytes += int(entry["size"])
    # The check a restore is worth: every file a row names is there, with its sha256.
    expected = {e["name"]: e["sha256"] for e in manifest["files"]}
    for name in sorted(_named_in(db)):
        if name not in expected:
            report.missing.append(name)
        elif _sha256_stored(store, name) != expected[name]:
            raise BackupError(f"{name} was restored with another sha256 than the backup's")
    return report

"""``manage.py backup --out DIR``: the database and every stored file, with a manifest (backups.core)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.db import connections

from backups.core import BackupError, Database, backup


class Command(BaseCommand):
    help = "Back up the database (pg_dump, or SQLite's copy) and every stored file, with sha256s."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--out", required=True, type=Path, help="A new (or empty) folder.")
        parser.add_argument("--database", default="default", help="The DATABASES alias (default: default).")

    def handle(self, *args: Any, **options: Any) -> None:
        db = Database(dict(connections[options["database"]].settings_dict))
        try:
            report = backup(options["out"], db=db)
        except BackupError as error:
            raise CommandError(str(error)) from None
        rows = sum(report.tables.values())
        self.stdout.write(
            f"Backed up {len(report.tables)} tables ({rows} rows) and {report.files} files "
            f"({report.bytes / 1e6:.1f} MB) to {report.folder}"
        )
        if report.missing:
            self.stderr.write(
                f"{len(report.missing)} files named by rows were not in storage (deleted meanwhile, or lost "
                f"before): {', '.join(report.missing[:10])}"
            )

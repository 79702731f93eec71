"""``manage.py restore --from DIR``: a backup into an empty database and empty storage, checked."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import environ
from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.db import connections

from backups.core import BackupError, Database, restore


class Command(BaseCommand):
    help = (
        "Restore a backup made by `manage.py backup` into an empty database and empty storage, then check "
        "every table's row count and every file's sha256."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--from", dest="source", required=True, type=Path, help="The backup folder.")
        parser.add_argument("--database", default="default", help="The DATABASES alias (default: default).")
        parser.add_argument(
            "--database-url",
            default="",
            help="Restore into this database instead (postgres://... or sqlite:///...).",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        if options["database_url"]:
            settings_dict = dict(environ.Env.db_url_config(options["database_url"]))
        else:
            settings_dict = dict(connections[options["database"]].settings_dict)
        try:
            report = restore(options["source"], db=Database(settings_dict))
        except BackupError as error:
            raise CommandError(str(error)) from None
        rows = sum(report.tables.values())
        self.stdout.write(
            f"Restored {len(report.tables)} tables ({rows} rows, every count as backed up) and "
            f"{report.files} files ({report.bytes / 1e6:.1f} MB), every file named by a row checked "
            "against its sha256"
        )
        if report.missing:
            self.stderr.write(
                f"{len(report.missing)} files named by rows were missing when the backup was made: "
                f"{', '.join(report.missing[:10])}"
            )

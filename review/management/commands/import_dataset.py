"""``python manage.py import_dataset PATH --study NAME [--lab NAME]``: import a tumor-database folder."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandError, CommandParser
from tqdm import tqdm

from labs.models import Lab
from review.importing import import_dataset


class Command(BaseCommand):
    help = (
        "Import scans and annotations laid out as Dataset N/M01_M02_8d/M02_8d/CT_M02_8d.nii.gz (idempotent)."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("path", type=Path)
        parser.add_argument("--study", required=True, help="Study name (created when new).")
        parser.add_argument("--lab", help="Lab name (created when new); optional when only one lab exists.")
        parser.add_argument("--user", help="Username recorded as the uploader.")
        parser.add_argument(
            "--tumor-label", type=int, default=1, help="Label value of tumor voxels in the annotation files."
        )

    def handle(self, *args: Any, **options: Any) -> None:
        root: Path = options["path"]
        if not root.is_dir():
            raise CommandError(f"{root} is not a folder")
        lab = self._lab(options["lab"])
        user = None
        if options["user"]:
            user = get_user_model().objects.filter(username=options["user"]).first()
            if user is None:
                raise CommandError(f"there is no user called {options['user']!r}")
        report = import_dataset(
            root=root,
            lab=lab,
            study_name=options["study"],
            user=user,
            structures={"tumor": options["tumor_label"]},
            progress=lambda items: tqdm(items, desc="import", unit="scan", file=self.stderr),
        )
        self.stdout.write(
            f"{lab.name} / {options['study']}: {report.scans_created} scans imported, "
            f"{report.scans_existing} already there; {report.annotations_created} annotations imported, "
            f"{report.annotations_existing} already there; {len(report.refused)} files refused"
        )
        for line in report.refused:
            self.stderr.write(f"refused {line}")

    def _lab(self, name: str | None) -> Lab:
        if name:
            return Lab.objects.get_or_create(name=name)[0]
        labs = list(Lab.objects.all()[:2])
        if len(labs) != 1:
            raise CommandError("say which lab to import into with --lab NAME")
        return labs[0]

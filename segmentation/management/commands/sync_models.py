"""``manage.py sync_models [--root DIR]``: register the model folders in the database."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from segmentation import services


class Command(BaseCommand):
    help = "Register every model folder (<name>/<version>/model.json) and pick each task's default model."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--root", type=Path, default=None, help="Folder of model folders.")

    def handle(self, *args: Any, root: Path | None = None, **options: Any) -> None:
        from inference.registry import ModelCardError

        try:
            report = services.sync_models(root=root)
        except (services.ModelSyncError, ModelCardError) as exc:
            raise CommandError(str(exc)) from exc
        for label in report.created:
            self.stdout.write(f"registered {label}")
        for label in report.unchanged:
            self.stdout.write(f"unchanged  {label}")
        for task, label in sorted(report.defaults.items()):
            self.stdout.write(f"default for {task}: {label}")
        if not report.created and not report.unchanged:
            self.stdout.write(f"no model folders under {root or services.models_root()}")

"""``manage.py reconcile_jobs [--timeout-s S]``: what beat runs every minute, by hand (operations)."""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.core.management.base import BaseCommand, CommandParser

from segmentation import services


class Command(BaseCommand):
    help = "Re-queue jobs whose worker stopped heartbeating and resend jobs whose broker message was lost."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--timeout-s",
            type=float,
            default=None,
            help="Seconds without a heartbeat (running) or since the last send (queued); "
            "default LABSEG_JOB_TIMEOUT_S.",
        )

    def handle(self, *args: Any, timeout_s: float | None = None, **options: Any) -> None:
        timeout = float(timeout_s if timeout_s is not None else settings.LABSEG_JOB_TIMEOUT_S)
        report = services.reconcile_jobs(timeout_s=timeout)
        self.stdout.write(
            f"requeued {len(report.requeued)} job(s) of lost workers, resent {len(report.resent)} "
            f"queued job(s), gave up on {len(report.failed)}"
        )

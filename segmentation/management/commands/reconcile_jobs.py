"""``manage.py reconcile_jobs [--timeout-s S]``: what beat runs every minute, by hand (operations).

Reconciles every kind of background job (``labseg.jobs.reconcile_all``): segmentation jobs, review
analyses and any other model that inherits ``labseg.jobs.BackgroundJob``.
"""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandParser

from labseg import jobs


class Command(BaseCommand):
    help = (
        "Re-queue background jobs whose worker stopped heartbeating (or fail them after their last "
        "attempt) and resend queued jobs whose broker message was never sent or was lost."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--timeout-s",
            type=float,
            default=None,
            help="Seconds without a heartbeat (running) and since the last send (queued); default "
            "LABSEG_JOB_LOST_AFTER_BEATS heartbeats (20 s) for running jobs and LABSEG_JOB_TIMEOUT_S "
            "for queued ones.",
        )

    def handle(self, *args: Any, timeout_s: float | None = None, **options: Any) -> None:
        for noun, report in jobs.reconcile_all(timeout_s=timeout_s).items():
            self.stdout.write(
                f"{noun}: requeued {len(report.requeued)} job(s) of lost workers, resent "
                f"{len(report.resent)} queued job(s), gave up on {len(report.failed)}"
            )

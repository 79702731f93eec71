"""``python manage.py create_demo``: a demo lab, study and user to try labseg (idempotent)."""

from __future__ import annotations

from typing import Any

from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandParser

from labs.models import Lab, Membership
from labs.services import add_lab_member
from scans.models import Study

DEMO_LAB = "Demo lab"
DEMO_STUDY = "Demo study"


class Command(BaseCommand):
    help = "Create a demo lab, study and user (a lab admin and Django superuser) and print the credentials."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--username", default="demo")
        parser.add_argument("--password", default="labseg-demo")
        parser.add_argument(
            "--url",
            default="http://127.0.0.1:8000/",
            help="where the server listens, for the printed login line (make run passes HOST and PORT)",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        users = get_user_model().objects
        user = users.filter(username=options["username"]).first()
        if user is None:
            user = users.create_superuser(
                username=options["username"], email="", password=options["password"]
            )
        lab, _ = Lab.objects.get_or_create(name=DEMO_LAB)
        Study.objects.get_or_create(lab=lab, name=DEMO_STUDY)
        add_lab_member(lab=lab, user=user, role=Membership.Role.ADMIN)
        self.stdout.write(
            f"Demo lab ready: log in at {options['url']} as {options['username']} / "
            f"{options['password']} (also a Django admin at /admin/)"
        )

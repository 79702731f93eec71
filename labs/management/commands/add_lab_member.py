"""``manage.py add_lab_member --lab NAME --user USERNAME [--role ROLE] [--create-user --password P]``."""

from __future__ import annotations

from typing import Any

from django.contrib.auth import get_user_model
from django.contrib.auth.password_validation import validate_password
from django.core.exceptions import ValidationError
from django.core.management.base import BaseCommand, CommandError, CommandParser

from labs.models import Lab, Membership
from labs.services import add_lab_member


class Command(BaseCommand):
    help = "Add a user to a lab with a role (member, reviewer, admin); creates the lab when new."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--lab", required=True)
        parser.add_argument("--user", required=True, help="Username.")
        parser.add_argument("--role", default=Membership.Role.MEMBER, choices=Membership.Role.values)
        parser.add_argument("--create-user", action="store_true", help="Create the user when missing.")
        parser.add_argument(
            "--password", help="Password of a created user (or a new one for an existing user)."
        )
        parser.add_argument("--email", default="")

    def handle(self, *args: Any, **options: Any) -> None:
        users = get_user_model().objects
        user = users.filter(username=options["user"]).first()
        if options["password"]:
            # The same validators as the site's password forms (settings.AUTH_PASSWORD_VALIDATORS).
            candidate = user or get_user_model()(username=options["user"], email=options["email"])
            try:
                validate_password(options["password"], candidate)
            except ValidationError as error:
                raise CommandError("the password is too weak: " + " ".join(error.messages)) from None
        if user is None:
            if not options["create_user"]:
                raise CommandError(
                    f"there is no user called {options['user']!r}: add --create-user to create it"
                )
            if not options["password"]:
                raise CommandError("a created user needs --password")
            user = users.create_user(
                username=options["user"], email=options["email"], password=options["password"]
            )
            self.stdout.write(f"created user {user.username}")
        elif options["password"]:
            user.set_password(options["password"])
            user.save(update_fields=["password"])
        lab, created = Lab.objects.get_or_create(name=options["lab"])
        if created:
            self.stdout.write(f"created lab {lab.name}")
        membership = add_lab_member(lab=lab, user=user, role=options["role"])
        self.stdout.write(f"{user.username} is {membership.get_role_display().lower()} of {lab.name}")

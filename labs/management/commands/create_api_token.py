"""``manage.py create_api_token USERNAME [--days N]``: a new API token, shown once.

The database keeps only its sha256 (``labs/tokens.py``); the last line printed is the token.
"""

from __future__ import annotations

from typing import Any

from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandError, CommandParser

from labs import tokens


class Command(BaseCommand):
    help = "Create an API token for a user (stored hashed; it expires after LABSEG_TOKEN_TTL_DAYS)."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("username")
        parser.add_argument("--days", type=float, help="Days until it expires (LABSEG_TOKEN_TTL_DAYS).")

    def handle(self, *args: Any, **options: Any) -> None:
        user = get_user_model().objects.filter(username=options["username"]).first()
        if user is None:
            raise CommandError(f"no user named {options['username']!r}")
        if options["days"] is not None and options["days"] <= 0:
            raise CommandError("--days must be more than 0")
        token, secret = tokens.issue(user, days=options["days"])
        self.stdout.write(
            f"API token for {user.username}, valid until {token.expires_at:%Y-%m-%d %H:%M} UTC. "
            "It is shown once and stored only as a hash: keep it now."
        )
        self.stdout.write(secret)

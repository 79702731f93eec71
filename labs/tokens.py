"""API tokens, Knox-style: the secret is shown once, the database keeps its sha256 and its first
characters (``ApiToken.prefix``), and every token expires after ``LABSEG_TOKEN_TTL_DAYS``.

The secret is 32 random bytes, so an unsalted sha256 is enough: nothing is guessed from it, and
a lookup by digest is one indexed query (``labseg/authentication.py``).
"""

from __future__ import annotations

import hashlib
import secrets
from datetime import timedelta
from typing import Any

from django.conf import settings
from django.utils import timezone

from .models import ApiToken

PREFIX_CHARS = 8


def digest(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def issue(user: Any, *, days: float | None = None) -> tuple[ApiToken, str]:
    """A new token for ``user``: the row, and the secret (shown once, never stored)."""
    secret = secrets.token_urlsafe(32)
    ttl = timedelta(days=float(days if days is not None else settings.LABSEG_TOKEN_TTL_DAYS))
    token = ApiToken.objects.create(
        user=user, prefix=secret[:PREFIX_CHARS], digest=digest(secret), expires_at=timezone.now() + ttl
    )
    return token, secret


def find(secret: str) -> ApiToken | None:
    return ApiToken.objects.select_related("user").filter(digest=digest(secret)).first()

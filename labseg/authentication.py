"""API token authentication (``labs/tokens.py``: hashed, expiring tokens) that slows down
guessing: failed attempts are counted per client address, and past
``LABSEG_AUTH_FAILURES_PER_MIN`` in a minute every further attempt from that address answers 429
with the seconds to wait, whatever its token.

DRF authenticates before it throttles, so its throttles never see a request with a bad token
(each one is refused at full speed); the count lives here instead, in Django's cache.

A bad or expired token answers 401 with a ``WWW-Authenticate: Token`` header and a plain
message. (DRF would answer 403 for an ``AuthenticationFailed``, because session authentication,
listed first, names no authentication scheme.)
"""

from __future__ import annotations

import time
from datetime import timedelta
from typing import Any

from django.conf import settings
from django.core.cache import cache
from django.utils import timezone
from rest_framework import status
from rest_framework.authentication import TokenAuthentication
from rest_framework.exceptions import APIException, AuthenticationFailed, Throttled

from labs import tokens
from labs.models import ApiToken

WINDOW_S = 60
#: ``last_used_at`` is written at most this often per token (not on every request).
LAST_USED_EVERY = timedelta(minutes=5)


class TokenRefused(APIException):
    """401 for a token that is unknown, expired or of an inactive user."""

    status_code = status.HTTP_401_UNAUTHORIZED
    default_code = "authentication_failed"
    auth_header = "Token"


def _key(request: Any) -> str:
    return f"labseg:auth-failures:{request.META.get('REMOTE_ADDR', '')}"


class ThrottledTokenAuthentication(TokenAuthentication):
    def authenticate(self, request: Any) -> Any:
        key = _key(request)
        failures = [t for t in cache.get(key, []) if t > time.time() - WINDOW_S]
        limit = int(settings.LABSEG_AUTH_FAILURES_PER_MIN)
        if len(failures) >= limit and self._has_token(request):
            raise Throttled(wait=max(1, int(failures[0] + WINDOW_S - time.time())))
        try:
            return super().authenticate(request)
        except AuthenticationFailed as failure:
            cache.set(key, [*failures, time.time()], WINDOW_S)
            raise TokenRefused(failure.detail) from failure

    def authenticate_credentials(self, key: str) -> tuple[Any, ApiToken]:
        token = tokens.find(key)
        if token is None:
            raise AuthenticationFailed("This API token is not valid (unknown or revoked).")
        now = timezone.now()
        if token.expires_at <= now:
            raise AuthenticationFailed(
                f"This API token expired on {token.expires_at:%Y-%m-%d}: ask for a new one "
                "(python manage.py create_api_token USERNAME)."
            )
        if not token.user.is_active:
            raise AuthenticationFailed("The account of this API token is disabled.")
        if token.last_used_at is None or token.last_used_at < now - LAST_USED_EVERY:
            ApiToken.objects.filter(pk=token.pk).update(last_used_at=now)
        return token.user, token

    def _has_token(self, request: Any) -> bool:
        header = request.META.get("HTTP_AUTHORIZATION", "")
        return header.lower().startswith(self.keyword.lower() + " ")

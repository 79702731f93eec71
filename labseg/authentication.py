"""API token authentication that slows down guessing: failed attempts are counted per client
address, and past ``LABSEG_AUTH_FAILURES_PER_MIN`` in a minute every further attempt from that
address answers 429 with the seconds to wait, whatever its token.

DRF authenticates before it throttles, so its throttles never see a request with a bad token
(each one is refused 401/403 at full speed); the count lives here instead, in Django's cache.
"""

from __future__ import annotations

import time
from typing import Any

from django.conf import settings
from django.core.cache import cache
from rest_framework.authentication import TokenAuthentication
from rest_framework.exceptions import AuthenticationFailed, Throttled

WINDOW_S = 60


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
        except AuthenticationFailed:
            cache.set(key, [*failures, time.time()], WINDOW_S)
            raise

    def _has_token(self, request: Any) -> bool:
        header = request.META.get("HTTP_AUTHORIZATION", "")
        return header.lower().startswith(self.keyword.lower() + " ")

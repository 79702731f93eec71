"""The request being served, for the who and from where of an audit event.

Services do not take the request; :class:`RequestContextMiddleware` keeps it in a context variable
for the length of the request, so :func:`audit.record` finds the signed-in user (DRF sets it on
the Django request when it authenticates a token) and the client's address. Beat tasks and
commands run outside any request: their events have no actor (the system) and no address.
"""

from __future__ import annotations

from collections.abc import Callable
from contextvars import ContextVar
from typing import Any

from django.http import HttpRequest, HttpResponse

_current: ContextVar[HttpRequest | None] = ContextVar("audit_request", default=None)


def current_request() -> HttpRequest | None:
    return _current.get()


def current_user() -> Any:
    """The signed-in user of the request being served, or None."""
    request = _current.get()
    user = getattr(request, "user", None) if request is not None else None
    return user if user is not None and user.is_authenticated else None


def client_ip(request: HttpRequest | None) -> str | None:
    """The peer's address as the server saw it (``REMOTE_ADDR``; the TLS proxy sets it for gunicorn)."""
    if request is None:
        return None
    return request.META.get("REMOTE_ADDR") or None


class RequestContextMiddleware:
    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        token = _current.set(request)
        try:
            return self.get_response(request)
        finally:
            _current.reset(token)

"""The one refusal: a request labseg will not do, with a reason a researcher can read.

Every service raises :class:`Refused` (or a subclass named for its area: ``ScanRejected``,
``ReviewError``, ``LayerNotFoundError`` ...) and never builds a response itself. The API answers it
through DRF's ``EXCEPTION_HANDLER`` (:func:`exception_handler`, named in ``settings.REST_FRAMEWORK``)
as ``{"detail": message, ...extra}`` with the refusal's HTTP status; pages answer it with
:func:`json_refusal`. Nothing here touches the database, so a refusal never leaves half a change.
"""

from __future__ import annotations

from typing import Any

from django.http import JsonResponse
from rest_framework.response import Response
from rest_framework.views import exception_handler as drf_exception_handler


class Refused(Exception):  # noqa: N818 (a refusal is not a programming error)
    """A refusal with a plain-words ``message``; ``status`` is the HTTP status to answer.

    ``extra`` holds fields the client needs to act on it (an upload's offset to resume from).
    """

    status: int = 400

    def __init__(self, message: str, status: int | None = None, **extra: Any) -> None:
        super().__init__(message)
        self.message = message
        if status is not None:
            self.status = status
        self.extra: dict[str, Any] = dict(extra)

    def __str__(self) -> str:
        return self.message

    def body(self) -> dict[str, Any]:
        return {"detail": self.message, **self.extra}


def exception_handler(exc: Exception, context: dict[str, Any]) -> Response | None:
    """DRF's handler, plus :class:`Refused` as its status and body."""
    if isinstance(exc, Refused):
        return Response(exc.body(), status=exc.status)
    return drf_exception_handler(exc, context)


def json_refusal(exc: Refused) -> JsonResponse:
    """The same answer for a plain Django view (pages' JSON and file endpoints)."""
    return JsonResponse(exc.body(), status=exc.status)

"""The one refusal: a request labseg will not do, with a reason a researcher can read.

Every service raises :class:`Refused` (or a subclass named for its area: ``ScanRejected``,
``ReviewError``, ``LayerNotFoundError`` ...) and never builds a response itself. The API answers it
through DRF's ``EXCEPTION_HANDLER`` (:func:`exception_handler`, named in ``settings.REST_FRAMEWORK``)
as ``{"detail": message, ...extra}`` with the refusal's HTTP status; pages answer it with
:func:`json_refusal`. Nothing here touches the database, so a refusal never leaves half a change.

A full disk is answered here too: an ``OSError`` with ``ENOSPC`` (or ``EDQUOT``) raised anywhere
in a request answers 507 with :data:`DISK_FULL_MESSAGE`, from DRF views through
:func:`exception_handler` and from plain views through :class:`DiskFullMiddleware`. The code that
was writing deletes its partial file before the error gets here (``scans.files``,
``scans.uploads``, ``scans.services.save_incoming``).
"""

from __future__ import annotations

import errno
import logging
from collections.abc import Callable
from typing import Any

from django.http import HttpRequest, HttpResponse, JsonResponse
from rest_framework.response import Response
from rest_framework.views import exception_handler as drf_exception_handler

logger = logging.getLogger(__name__)

#: What a researcher reads when the server's disk (or its quota on it) is full.
DISK_FULL_MESSAGE = (
    "The server's disk is full, so nothing was stored: the partial file was deleted. Ask your "
    "administrator to free space, then send it again."
)
#: HTTP 507 Insufficient Storage.
DISK_FULL_STATUS = 507


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


def is_disk_full(exc: BaseException) -> bool:
    """True for the errors of a full disk or an exhausted disk quota, however deeply wrapped."""
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, OSError) and seen.errno in (errno.ENOSPC, errno.EDQUOT):
            return True
        seen = seen.__cause__ or seen.__context__
    return False


def _disk_full_body(exc: BaseException) -> dict[str, str]:
    # Logged for the administrator: the researcher's message never names paths.
    logger.error("disk full while handling a request: %s", exc)
    return {"detail": DISK_FULL_MESSAGE}


#: What a researcher reads when a text sent to the API holds a NUL character.
NUL_TEXT_MESSAGE = (
    "A text you sent holds a NUL character (\\x00), which cannot be stored: remove it and send again."
)


def is_nul_text(exc: BaseException) -> bool:
    """PostgreSQL refusing a text with a NUL byte (a query filter, a note): the input's fault.

    DRF's serializer fields refuse NUL themselves; this covers every text a view reads by hand.
    The statement failed, so nothing of it was stored (services write in ``transaction.atomic``).
    """
    from django.db import DataError

    return isinstance(exc, DataError) and "NUL (0x00)" in str(exc)


def exception_handler(exc: Exception, context: dict[str, Any]) -> Response | None:
    """DRF's handler, plus :class:`Refused` as its status and body, a full disk as 507 and a text
    with a NUL character as 400."""
    if isinstance(exc, Refused):
        return Response(exc.body(), status=exc.status)
    if is_disk_full(exc):
        return Response(_disk_full_body(exc), status=DISK_FULL_STATUS)
    if is_nul_text(exc):
        return Response({"detail": NUL_TEXT_MESSAGE}, status=400)
    return drf_exception_handler(exc, context)


class DiskFullMiddleware:
    """A full disk in a plain Django view (pages, file endpoints) answers 507 in words, not 500."""

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        return self.get_response(request)

    def process_exception(self, request: HttpRequest, exception: Exception) -> HttpResponse | None:
        if is_disk_full(exception):
            return JsonResponse(_disk_full_body(exception), status=DISK_FULL_STATUS)
        return None


def json_refusal(exc: Refused) -> JsonResponse:
    """The same answer for a plain Django view (pages' JSON and file endpoints)."""
    return JsonResponse(exc.body(), status=exc.status)

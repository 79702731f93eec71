"""The one CSV writer and the one stored-file download, for the API and the pages alike.

CSV rows are streamed line by line (a large study never sits in memory). Cells are written as
spreadsheets read them safely: ``None`` is an empty cell ("not assessed" is never 0), and text that
a spreadsheet would run as a formula (starting with ``= + - @``, tab or carriage return) is
prefixed with an apostrophe. Download names go into ``Content-Disposition`` through Django's
RFC 6266 helper, after control characters are removed, so no name can split the header.

A stored file downloaded as an attachment is a 302 to a presigned URL where storage can sign one
(S3, ``labseg.storage.presigned_url``, with the same ``Content-Disposition``), so large files never
pass through the web process; local storage streams it. Inline files (the viewer's layers, pictures)
always stream: a browser's ``fetch`` could follow a redirect to another origin only with CORS set
on the bucket.
"""

from __future__ import annotations

import csv
import re
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any, Literal, overload

from django.core.files.storage import default_storage
from django.http import FileResponse, Http404, HttpResponseRedirect, StreamingHttpResponse
from django.http.response import HttpResponseBase
from django.utils.http import content_disposition_header

from labseg.storage import open_stream, presigned_url

Record = Mapping[str, Any] | Sequence[Any]

_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")
_UNSAFE_IN_NAME = re.compile(r"[\x00-\x1f\x7f\u202a-\u202e\u2066-\u2069\"\\/]+")


def cell(value: Any) -> Any:
    """A value as a CSV cell: empty for None, formula-like text neutralised, numbers unchanged."""
    if value is None:
        return ""
    if isinstance(value, str) and value.startswith(_FORMULA_START):
        return "'" + value
    return value


class _Echo:
    """A write-only file whose ``write`` returns the line, for ``csv.writer`` into a stream."""

    def write(self, value: str) -> str:
        return value


def csv_lines(records: Iterable[Record], columns: Sequence[str]) -> Iterator[str]:
    """The header, then one line per record: a mapping (keyed by ``columns``) or a row in order."""
    writer = csv.writer(_Echo())
    yield writer.writerow(list(columns))
    for record in records:
        values = [record.get(column) for column in columns] if isinstance(record, Mapping) else list(record)
        yield writer.writerow([cell(value) for value in values])


def safe_filename(name: str, default: str = "download") -> str:
    """``name`` without control characters, bidi overrides, quotes or slashes."""
    cleaned = _UNSAFE_IN_NAME.sub("_", name).strip(" ._")
    return cleaned or default


def attach(response: Any, filename: str, *, inline: bool = False) -> Any:
    """Set a safe ``Content-Disposition`` (RFC 6266, ``filename*`` for non-ASCII names)."""
    header = content_disposition_header(not inline, safe_filename(filename))
    if header:
        response["Content-Disposition"] = header
    return response


def csv_response(records: Iterable[Record], columns: Sequence[str], filename: str) -> StreamingHttpResponse:
    """A streamed CSV download."""
    response = StreamingHttpResponse(csv_lines(records, columns), content_type="text/csv; charset=utf-8")
    return attach(response, filename)


@overload
def stored_file_response(
    name: str, filename: str, *, content_type: str | None = None, inline: Literal[True]
) -> FileResponse: ...


@overload
def stored_file_response(
    name: str, filename: str, *, content_type: str | None = None, inline: bool = False
) -> HttpResponseBase: ...


def stored_file_response(
    name: str, filename: str, *, content_type: str | None = None, inline: bool = False
) -> HttpResponseBase:
    """A stored file as a download (a presigned redirect where storage signs URLs) or inline (always
    streamed); a missing file is a plain 404, never a 500."""
    if not name or not default_storage.exists(name):
        raise Http404("the stored file is missing")
    if content_type is None:
        content_type = "application/gzip" if name.lower().endswith(".gz") else "application/octet-stream"
    if not inline:
        disposition = content_disposition_header(True, safe_filename(filename)) or "attachment"
        url = presigned_url(name, content_disposition=disposition, content_type=content_type)
        if url is not None:
            redirect = HttpResponseRedirect(url)
            # The URL carries a signature that expires: no shared cache may keep it.
            redirect["Cache-Control"] = "private, no-store"
            return redirect
    stream, size = open_stream(name)
    response = FileResponse(stream, content_type=content_type)
    if size is not None and not response.has_header("Content-Length"):
        response["Content-Length"] = str(size)
    return attach(response, filename, inline=inline)

"""The one CSV writer and the one stored-file download, for the API and the pages alike.

CSV rows are streamed line by line (a large study never sits in memory). Cells are written as
spreadsheets read them safely: ``None`` is an empty cell ("not assessed" is never 0), and text that
a spreadsheet would run as a formula (starting with ``= + - @``, tab or carriage return) is
prefixed with an apostrophe. Download names go into ``Content-Disposition`` through Django's
RFC 6266 helper, after control characters are removed, so no name can split the header.
"""

from __future__ import annotations

import csv
import re
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any

from django.core.files.storage import default_storage
from django.http import FileResponse, Http404, StreamingHttpResponse
from django.utils.http import content_disposition_header

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


def stored_file_response(
    name: str, filename: str, *, content_type: str | None = None, inline: bool = False
) -> FileResponse:
    """A stored file as a download; a missing file is a plain 404, never a 500."""
    if not name or not default_storage.exists(name):
        raise Http404("the stored file is missing")
    if content_type is None:
        content_type = "application/gzip" if name.lower().endswith(".gz") else "application/octet-stream"
    response = FileResponse(default_storage.open(name, "rb"), content_type=content_type)
    return attach(response, filename, inline=inline)

"""API pagination: ``?limit=&offset=`` with a ceiling, so no request can ask for a whole table."""

from __future__ import annotations

from rest_framework.pagination import LimitOffsetPagination


class BoundedLimitOffsetPagination(LimitOffsetPagination):
    """DRF's limit/offset, ``limit`` at most 1000 (larger values are served as 1000)."""

    max_limit = 1000

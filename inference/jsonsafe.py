"""Strict JSON for metric reports: NaN and infinities (an empty prediction's surface distance)
become ``null``, since PostgreSQL's jsonb, browsers and most JSON readers refuse them."""

from __future__ import annotations

import math
from typing import Any


def finite_or_null(value: Any) -> Any:
    """A copy of ``value`` (dicts, lists, tuples, numbers) with every non-finite float as None."""
    if isinstance(value, dict):
        return {key: finite_or_null(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [finite_or_null(item) for item in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if hasattr(value, "item") and callable(value.item):  # numpy scalars
        return finite_or_null(value.item())
    return value

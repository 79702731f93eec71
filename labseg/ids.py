"""Row ids as researchers send them (a path, a query parameter, a JSON or form field): whole
numbers that fit PostgreSQL's bigint. Anything else is a plain 400 (``Refused``), never a
database error: ``int("٣")``, ``"null"`` or ``99999999999999999999`` would otherwise reach the
query as an exception (500) or an overflow ("bigint out of range")."""

from __future__ import annotations

import re
from typing import Any

from labseg.refusals import Refused

#: The largest id a bigint column holds.
MAX_ID = 2**63 - 1
_DIGITS = re.compile(r"[0-9]{1,19}")


def is_id(value: Any) -> bool:
    """``value`` (an int or its text) is an id a row could have."""
    if isinstance(value, bool):
        return False
    text = str(value).strip()
    return bool(_DIGITS.fullmatch(text)) and int(text) <= MAX_ID


def parse_id(value: Any, field: str, *, of: str = "one of your lab's rows") -> int:
    """``value`` as an id, or a 400 that names ``field``."""
    if not is_id(value):
        raise Refused(f"{field} must be the id (a whole number) of {of}")
    return int(str(value).strip())

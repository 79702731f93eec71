"""DRF permissions from the lab rules (``labs.rules``)."""

from __future__ import annotations

from typing import Any

import rules
from rest_framework.permissions import BasePermission


class LabRule(BasePermission):
    """Object permission: the view's ``lab_rule`` (a name in ``labs.rules.RULES``) must hold for
    the user and the object. Views that refuse with 404 for other labs' rows still scope their
    queryset with ``visible_to``; this decides what a member of the right lab may do."""

    message = "your role in this lab does not allow this"

    def has_object_permission(self, request: Any, view: Any, obj: Any) -> bool:
        return bool(rules.test_rule(view.lab_rule, request.user, obj))

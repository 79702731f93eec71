"""Lab workflows, as keyword-only functions."""

from __future__ import annotations

from typing import Any

from .models import Lab, Membership


def add_lab_member(*, lab: Lab, user: Any, role: str = Membership.Role.MEMBER) -> Membership:
    """Add ``user`` to ``lab`` with ``role``, or change the role of an existing member."""
    if role not in Membership.Role.values:
        raise ValueError(f"role {role!r} is not known; use one of {', '.join(Membership.Role.values)}")
    membership, _ = Membership.objects.update_or_create(lab=lab, user=user, defaults={"role": role})
    return membership

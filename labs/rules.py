"""Who may do what, as django-rules predicates: the one set of role rules of the project.

Every predicate takes ``(user, obj)`` where ``obj`` is a ``Lab`` or any row that leads to one
(``lab_of``: a scan, study, mouse, annotation, prediction, ...). The same named rules serve the
services and views (``rules.test_rule("labs.reviewer", user, annotation)`` or the functions below),
DRF (``labs.permissions.LabRule``), the admin (``labs.admin``) and templates
(``{% load rules %}{% test_rule "labs.reviewer" user scan as can_review %}``).

They are rules, not Django permissions, on purpose: ``user.has_perm`` lets a superuser do
anything, while approving an annotation needs a reviewer of that lab, superuser or not.
"""

from __future__ import annotations

from typing import Any

import rules

from .models import Lab, Membership

#: Attributes followed from a row to its lab, in order (a scan has ``lab``; an annotation or a
#: prediction has ``scan``; a lesion has ``prediction``; a transition has ``annotation``; a cohort
#: has ``study``; a time point has ``mouse``).
_LAB_PATH = ("lab", "scan", "prediction", "annotation", "study", "mouse", "time_point")

REVIEW_ROLES = (Membership.Role.REVIEWER, Membership.Role.ADMIN)


def lab_of(obj: Any) -> Lab | None:
    """The lab ``obj`` belongs to (``obj`` itself for a lab); None when there is none."""
    for _ in range(len(_LAB_PATH) + 1):
        if obj is None or isinstance(obj, Lab):
            return obj
        obj = next((getattr(obj, name) for name in _LAB_PATH if hasattr(obj, name)), None)
    return None


def role_of(user: Any, obj: Any) -> str | None:
    """The user's role (member, reviewer or admin) in the lab of ``obj``; None for a non-member,
    an anonymous user or no lab."""
    lab = lab_of(obj)
    if lab is None or user is None or not user.is_authenticated:
        return None
    return Membership.objects.filter(lab=lab, user=user).values_list("role", flat=True).first()


@rules.predicate
def is_lab_member(user: Any, obj: Any) -> bool:
    return role_of(user, obj) is not None


@rules.predicate
def is_lab_reviewer(user: Any, obj: Any) -> bool:
    return role_of(user, obj) in REVIEW_ROLES


@rules.predicate
def is_lab_admin(user: Any, obj: Any) -> bool:
    return role_of(user, obj) == Membership.Role.ADMIN


@rules.predicate
def belongs_to_a_lab(user: Any) -> bool:
    return bool(user is not None and user.is_authenticated and Membership.objects.filter(user=user).exists())


#: Staff who work in the admin on their labs' rows (superusers see every lab).
is_lab_staff = rules.is_active & rules.is_staff & (rules.is_superuser | belongs_to_a_lab)

RULES = {
    "labs.member": is_lab_member,
    "labs.reviewer": is_lab_reviewer,
    "labs.admin": is_lab_admin,
    "labs.staff": is_lab_staff,
}
for _name, _predicate in RULES.items():
    rules.set_rule(_name, _predicate)

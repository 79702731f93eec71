"""The lab a page shows: the session's lab (chosen with the header's lab switcher), or the lab of
the row a page is about (a review page shows its scan's lab).

The choice lives in the session (``labseg_lab_id``); a user who belongs to a single lab never sees
the switcher do anything. Pages scope every query with ``in_lab(current_lab(request))`` on top of
``visible_to(user)``, so a stale session value can never reveal another lab's rows.
"""

from __future__ import annotations

from django.http import HttpRequest

from .models import Lab

SESSION_KEY = "labseg_lab_id"
#: Request attribute naming the lab the page shows, read by ``context_processors.lab_header``.
SHOWN_ATTRIBUTE = "labseg_lab"


def labs_of(request: HttpRequest) -> list[Lab]:
    """The labs the signed-in user belongs to, by name."""
    return list(Lab.objects.visible_to(request.user).order_by("name"))


def current_lab(request: HttpRequest) -> Lab | None:
    """The lab chosen in this session, else the user's first lab; None for a user with no lab."""
    labs = labs_of(request)
    if not labs:
        return None
    wanted = request.session.get(SESSION_KEY)
    for lab in labs:
        if lab.pk == wanted:
            return lab
    request.session[SESSION_KEY] = labs[0].pk
    return labs[0]


def switch_lab(request: HttpRequest, *, lab_id: int) -> Lab | None:
    """Make ``lab_id`` the session's lab if the user belongs to it; returns the lab or None."""
    for lab in labs_of(request):
        if lab.pk == lab_id:
            request.session[SESSION_KEY] = lab.pk
            return lab
    return None


def show_lab(request: HttpRequest, lab: Lab | None) -> None:
    """Say which lab this page shows, for the header (see ``context_processors.lab_header``)."""
    setattr(request, SHOWN_ATTRIBUTE, lab)

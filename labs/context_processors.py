"""The site header's lab context: the user's labs, the lab the page shows and the user's role there."""

from __future__ import annotations

from typing import Any

from django.http import HttpRequest

from .current import SESSION_KEY, SHOWN_ATTRIBUTE, labs_of
from .rules import role_of


def lab_header(request: HttpRequest) -> dict[str, Any]:
    """``labs``, ``current_lab`` and ``role`` for ``frontend/base.html``.

    The page's lab is the one a view named with ``current.show_lab``; otherwise the session's lab
    (read only: choosing a default lab is the views' job, see ``current.current_lab``).
    """
    user = getattr(request, "user", None)
    if user is None or not user.is_authenticated:
        return {"labs": [], "current_lab": None, "role": None}
    labs = labs_of(request)
    if hasattr(request, SHOWN_ATTRIBUTE):
        lab = getattr(request, SHOWN_ATTRIBUTE)
    else:
        wanted = request.session.get(SESSION_KEY) if hasattr(request, "session") else None
        lab = next((lab for lab in labs if lab.pk == wanted), labs[0] if labs else None)
    return {"labs": labs, "current_lab": lab, "role": role_of(user, lab)}

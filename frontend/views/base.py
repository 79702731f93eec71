"""What every page shares: sign-in, the current lab and the header context."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

from django.contrib.auth.decorators import login_required
from django.http import HttpRequest, HttpResponse
from django.shortcuts import render

from frontend.labs import current_lab, labs_of, role_in
from scans.models import Lab

View = Callable[..., HttpResponse]


def lab_page(view: View) -> View:
    """Sign-in required; the view gets ``lab`` (the session's lab) after ``request``.

    A signed-in user with no lab sees a page that says so instead of an empty product.
    """

    @login_required
    @functools.wraps(view)
    def wrapper(request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponse:
        lab = current_lab(request)
        if lab is None:
            return render(request, "frontend/no_lab.html", header(request, None), status=403)
        return view(request, lab, *args, **kwargs)

    return wrapper


def header(request: HttpRequest, lab: Lab | None, **extra: Any) -> dict[str, Any]:
    """Template context for the header (labs, current lab, role) plus ``extra``."""
    return {"labs": labs_of(request), "current_lab": lab, "role": role_in(request, lab), **extra}


def page(request: HttpRequest, lab: Lab, template: str, **context: Any) -> HttpResponse:
    """Render ``template`` with the header context."""
    return render(request, template, header(request, lab, **context))

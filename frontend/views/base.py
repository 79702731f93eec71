"""What every page shares: sign-in and the current lab. The header's labs, lab and role come from
the context processor ``labs.context_processors.lab_header``."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

from django.contrib.auth.decorators import login_required
from django.http import HttpRequest, HttpResponse
from django.http.response import HttpResponseBase
from django.shortcuts import render

from labs.current import current_lab, show_lab
from labs.models import Lab

# A page, a JSON reply or a streamed file (FileResponse, StreamingHttpResponse).
View = Callable[..., HttpResponseBase]


def lab_page(view: View) -> View:
    """Sign-in required; the view gets ``lab`` (the session's lab) after ``request``.

    A signed-in user with no lab sees a page that says so instead of an empty product.
    """

    @login_required
    @functools.wraps(view)
    def wrapper(request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponseBase:
        lab = current_lab(request)
        show_lab(request, lab)
        if lab is None:
            return render(request, "frontend/no_lab.html", status=403)
        return view(request, lab, *args, **kwargs)

    return wrapper


def page(request: HttpRequest, lab: Lab, template: str, **context: Any) -> HttpResponse:
    """Render ``template`` for a page of ``lab`` (the header shows that lab and the user's role)."""
    show_lab(request, lab)
    return render(request, template, context)

"""Reading the audit log: ``GET /api/audit/`` and the page ``/labs/<id>/audit/``.

A lab's admins read its events; superusers read every lab's (and the events of no lab, such as a
model made the default). Anyone else: 403 when they are in the lab, 404 when they are not (the
lab's existence is not theirs to learn).
"""

from __future__ import annotations

from typing import Any

from django.contrib.auth.decorators import login_required
from django.core.paginator import Paginator
from django.db.models import QuerySet
from django.http import Http404, HttpRequest, HttpResponse
from django.shortcuts import render
from rest_framework import generics, serializers

from labs.models import Lab, Membership
from labs.rules import is_lab_admin, is_lab_member
from labseg.refusals import Refused

from .models import AuditEvent

PAGE_SIZE = 50


def admin_lab_ids(user: Any) -> list[int]:
    return list(
        Membership.objects.filter(user=user, role=Membership.Role.ADMIN).values_list("lab_id", flat=True)
    )


def events_for(user: Any, *, lab: str | int | None = None, action: str | None = None) -> QuerySet[AuditEvent]:
    """The events ``user`` may read, of one ``lab`` (id) when given, of one ``action`` when given.

    Raises :class:`Refused` 404 for a lab the user is not in, 403 when they are not its admin.
    """
    events = AuditEvent.objects.all()
    if lab not in (None, ""):
        text = str(lab).strip()
        found = Lab.objects.filter(pk=int(text)).first() if text.isdigit() else None
        if found is None or not (user.is_superuser or is_lab_member(user, found)):
            raise Refused(f"there is no lab {text} among your labs", status=404)
        if not (user.is_superuser or is_lab_admin(user, found)):
            raise Refused(f"only an admin of {found.name} can read its audit log", status=403)
        events = events.filter(lab_id=found.pk)
    elif not user.is_superuser:
        labs = admin_lab_ids(user)
        if not labs:
            raise Refused(
                "only a lab's admins can read its audit log; you are not an admin of a lab", status=403
            )
        events = events.filter(lab_id__in=labs)
    if action:
        if action not in AuditEvent.Action.values:
            raise Refused(f"action must be one of {', '.join(AuditEvent.Action.values)}, not {action!r}")
        events = events.filter(action=action)
    return events


class AuditEventSerializer(serializers.ModelSerializer[AuditEvent]):
    actor = serializers.CharField(source="actor_name")
    lab = serializers.IntegerField(source="lab_id", allow_null=True)

    class Meta:
        model = AuditEvent
        fields = [
            "id",
            "at",
            "actor",
            "lab",
            "lab_name",
            "action",
            "target_type",
            "target_id",
            "target_label",
            "detail",
            "ip",
        ]


class AuditEventList(generics.ListAPIView):
    """``GET /api/audit/?lab=&action=`` (paginated, newest first)."""

    serializer_class = AuditEventSerializer

    def get_queryset(self) -> QuerySet[AuditEvent]:
        params = self.request.query_params
        return events_for(self.request.user, lab=params.get("lab"), action=params.get("action"))


@login_required
def lab_audit_page(request: HttpRequest, pk: int) -> HttpResponse:
    """The lab's events, newest first, filterable by action, 50 a page."""
    action = request.GET.get("action") or ""
    try:
        events = events_for(request.user, lab=pk, action=action or None)
    except Refused as refusal:
        if refusal.status == 404:
            raise Http404(refusal.message) from None
        return render(request, "audit/refused.html", {"message": refusal.message}, status=refusal.status)
    page = Paginator(events, PAGE_SIZE).get_page(request.GET.get("page"))
    return render(
        request,
        "audit/lab_audit.html",
        {
            "lab": Lab.objects.get(pk=pk),
            "page": page,
            "action": action,
            "actions": AuditEvent.Action.choices,
        },
    )

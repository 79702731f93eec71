"""The audit log (``audit.models.AuditEvent``): call :func:`record` where a change happens."""

from __future__ import annotations

from typing import Any

from django.db import models


def record(
    action: str,
    *,
    lab: Any = None,
    actor: Any = None,
    target: models.Model | None = None,
    target_label: str = "",
    detail: dict[str, Any] | None = None,
) -> Any:
    """Write one audit event and return it.

    ``actor`` defaults to the signed-in user of the request being served (none outside requests:
    the system); ``target`` is the row acted on (its model name, id and ``str`` are kept);
    ``detail`` holds what else a reader needs (the old and new role, the note). Call it inside the
    transaction of the change it records, so both are stored or neither.
    """
    from .context import client_ip, current_request, current_user
    from .models import AuditEvent

    if actor is None or not getattr(actor, "is_authenticated", False):
        actor = current_user()
    return AuditEvent.objects.create(
        action=action,
        actor=actor,
        actor_name=actor.get_username() if actor is not None else "",
        lab_id=getattr(lab, "pk", None),
        lab_name=str(getattr(lab, "name", ""))[:120],
        target_type=target._meta.model_name or "" if target is not None else "",
        target_id=str(target.pk) if target is not None else "",
        target_label=(target_label or (str(target) if target is not None else ""))[:255],
        detail=detail or {},
        ip=client_ip(current_request()),
    )

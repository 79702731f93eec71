"""Changes recorded from model signals, whichever way they are made (the admin, a command, a
service): memberships and roles, and a lab's own default model (``LabDefaultModel``, set when a
lab promotes a model and removed when it rolls back to the shipped one)."""

from __future__ import annotations

from typing import Any

from django.apps import apps
from django.db.models.signals import post_delete, post_save, pre_save
from django.dispatch import receiver

from labs.models import Lab, Membership

from . import record
from .models import AuditEvent


def _label(membership: Membership) -> str:
    return f"{membership.user.get_username()} in {membership.lab.name}"


@receiver(pre_save, sender=Membership, dispatch_uid="audit-membership-before")
def _remember_role(sender: Any, instance: Membership, **kwargs: Any) -> None:
    previous = Membership.objects.filter(pk=instance.pk).values_list("role", flat=True).first()
    instance._audit_previous_role = previous  # type: ignore[attr-defined]


@receiver(post_save, sender=Membership, dispatch_uid="audit-membership-saved")
def _membership_saved(sender: Any, instance: Membership, created: bool, **kwargs: Any) -> None:
    if kwargs.get("raw"):  # loaddata, restores: not a change anyone made
        return
    previous = getattr(instance, "_audit_previous_role", None)
    if created or previous is None:
        record(
            AuditEvent.Action.MEMBER_ADDED,
            lab=instance.lab,
            target=instance,
            target_label=_label(instance),
            detail={"user": instance.user.get_username(), "role": instance.role},
        )
    elif previous != instance.role:
        record(
            AuditEvent.Action.ROLE_CHANGED,
            lab=instance.lab,
            target=instance,
            target_label=_label(instance),
            detail={"user": instance.user.get_username(), "from": previous, "to": instance.role},
        )


@receiver(post_delete, sender=Membership, dispatch_uid="audit-membership-deleted")
def _membership_deleted(sender: Any, instance: Membership, **kwargs: Any) -> None:
    lab = Lab.objects.filter(pk=instance.lab_id).first()
    record(
        AuditEvent.Action.MEMBER_REMOVED,
        lab=lab,
        target=instance,
        target_label=f"{instance.user.get_username()} in {lab.name if lab else instance.lab_id}",
        detail={"user": instance.user.get_username(), "role": instance.role},
    )


def _lab_default_saved(sender: Any, instance: Any, raw: bool = False, **kwargs: Any) -> None:
    if raw:
        return
    record(
        AuditEvent.Action.MODEL_MADE_DEFAULT,
        lab=instance.lab,
        target=instance.model_version,
        detail={"task": instance.task, "via": "lab promotion"},
    )


def _lab_default_deleted(sender: Any, instance: Any, **kwargs: Any) -> None:
    record(
        AuditEvent.Action.MODEL_DEFAULT_REMOVED,
        lab=Lab.objects.filter(pk=instance.lab_id).first(),
        target=instance.model_version,
        detail={"task": instance.task},
    )


def connect_model_signals() -> None:
    """Connect the lab default model's signals where the segmentation app has that model."""
    try:
        lab_default = apps.get_model("inference", "LabDefaultModel")
    except LookupError:
        return
    post_save.connect(_lab_default_saved, sender=lab_default, dispatch_uid="audit-lab-default-saved")
    post_delete.connect(_lab_default_deleted, sender=lab_default, dispatch_uid="audit-lab-default-deleted")

"""Curation by a lab's admins: rename and regroup mice, move a scan to another mouse or time
point, merge two mice, create and rename cohorts. Every move keeps the files and the rows made
from a scan (predictions, annotations) with it, runs in one transaction, and refuses in plain
words what would break a rule (a name taken, another study or lab, a time point taken).
"""

from __future__ import annotations

import logging
from typing import Any

from django.db import transaction

from labs.rules import is_lab_admin
from labseg.ids import parse_id
from labseg.refusals import Refused

from .models import Cohort, Mouse, Scan, Study, TimePoint, parse_offset_hours
from .services import check_identifier

logger = logging.getLogger(__name__)


def _require_admin(user: Any, row: Any) -> None:
    if not is_lab_admin(user, row):
        raise Refused("only an admin of this lab can rename, move or merge its scans and mice", status=403)


def _time_point(mouse: Mouse, label: str) -> TimePoint:
    label = check_identifier(label, "time point")
    try:
        hours = parse_offset_hours(label)
    except ValueError as error:
        raise Refused(str(error)) from None
    point, _ = TimePoint.objects.get_or_create(mouse=mouse, label=label, defaults={"offset_hours": hours})
    return point


def update_mouse(*, mouse: Mouse, user: Any, changes: dict[str, Any]) -> Mouse:
    """Rename a mouse and set its cohort, strain, sex or notes (``changes`` holds those keys)."""
    _require_admin(user, mouse)
    unknown = set(changes) - {"identifier", "cohort", "strain", "sex", "notes"}
    if unknown:
        raise Refused(f"a mouse has no field {', '.join(sorted(unknown))} that can be changed")
    with transaction.atomic():
        if "identifier" in changes:
            name = check_identifier(str(changes["identifier"]), "mouse")
            if Mouse.objects.filter(lab=mouse.lab, identifier=name).exclude(pk=mouse.pk).exists():
                raise Refused(
                    f"{mouse.lab.name} already has a mouse {name}: merge the two instead", status=409
                )
            mouse.identifier = name
        if "cohort" in changes:
            cohort = changes["cohort"]
            if cohort in (None, ""):
                mouse.cohort = None
            else:
                cohort_id = parse_id(cohort, "cohort", of=f"a cohort of the study {mouse.study.name}")
                found = Cohort.objects.filter(study=mouse.study, pk=cohort_id).first()
                if found is None:
                    raise Refused(f"cohort {cohort} is not a cohort of the study {mouse.study.name}")
                mouse.cohort = found
        if "sex" in changes:
            if changes["sex"] not in Mouse.Sex.values:
                raise Refused(f"sex must be one of {', '.join(Mouse.Sex.values)}")
            mouse.sex = changes["sex"]
        for text in ("strain", "notes"):
            if text in changes:
                setattr(mouse, text, str(changes[text])[: 2000 if text == "notes" else 120])
        mouse.save()
    logger.info("mouse %s updated by %s: %s", mouse.pk, user, sorted(changes))
    return mouse


def move_scan(*, scan: Scan, user: Any, mouse: Mouse, time_point: str) -> Scan:
    """Put ``scan`` (with its predictions and annotations) under ``mouse`` at ``time_point``."""
    _require_admin(user, scan)
    if mouse.lab_id != scan.lab_id:
        raise Refused("a scan can only move to a mouse of its own lab", status=400)
    with transaction.atomic():
        old = scan.time_point
        scan.time_point = _time_point(mouse, time_point)
        scan.save(update_fields=["time_point"])
        if not old.scans.exists():
            old.delete()  # an empty time point says nothing
    logger.info("scan %s moved to %s %s by %s", scan.pk, mouse, time_point, user)
    return scan


def merge_mice(*, source: Mouse, into: Mouse, user: Any) -> Mouse:
    """Move every scan of ``source`` to ``into`` (same study), at the same time points; then
    delete ``source``. Body weights and caliper measurements move too."""
    _require_admin(user, source)
    if source.pk == into.pk:
        raise Refused("a mouse cannot be merged into itself")
    if source.study_id != into.study_id:
        raise Refused(f"{source} and {into} are in different studies: move the scans one by one instead")
    with transaction.atomic():
        for point in source.time_points.all():
            target = _time_point(into, point.label)
            Scan.objects.filter(time_point=point).update(time_point=target)
        source.body_weights.update(mouse=into)
        source.caliper_measurements.update(mouse=into)
        source.delete()
    logger.info("mouse %s merged into %s by %s", source.identifier, into.identifier, user)
    return into


def create_cohort(*, study: Study, user: Any, name: str, treatment: str = "") -> Cohort:
    _require_admin(user, study)
    name = check_identifier(name, "cohort")
    if Cohort.objects.filter(study=study, name=name).exists():
        raise Refused(f"the study {study.name} already has a cohort {name}", status=409)
    return Cohort.objects.create(study=study, name=name, treatment=str(treatment)[:200])

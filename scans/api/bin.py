"""The bin for mice and studies (``scans.deletion``): ``DELETE /api/mice/{id}/`` and
``DELETE /api/studies/{id}/`` move one to the bin with everything under it (lab admins);
``GET /api/bin/mice/`` and ``/api/bin/studies/`` list what is in the bin of the user's labs;
``POST /api/bin/mice/{id}/restore`` and ``/api/bin/studies/{id}/restore`` bring it back. Scans
keep their own routes (``GET /api/bin/``, ``POST /api/bin/{id}/restore``)."""

from __future__ import annotations

from typing import Any

from django.db.models import Count, Q, QuerySet
from django.shortcuts import get_object_or_404
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from scans import deletion
from scans.models import Mouse, Study

from . import views


def _when(row: Mouse | Study) -> dict[str, Any]:
    return {
        "deleted_at": row.deleted_at.isoformat() if row.deleted_at else None,
        "deleted_by": row.deleted_by.get_username() if row.deleted_by else None,
    }


def mouse_json(mouse: Mouse) -> dict[str, Any]:
    return {"id": mouse.pk, "identifier": mouse.identifier, "study": mouse.study.name, **_when(mouse)}


def study_json(study: Study) -> dict[str, Any]:
    return {"id": study.pk, "name": study.name, "lab": study.lab.name, **_when(study)}


def binned_mice(user: Any) -> QuerySet[Mouse]:
    """Mice in the bin of the user's labs (``visible_to`` hides them)."""
    return (
        Mouse.objects.filter(lab__memberships__user=user, deleted_at__isnull=False)
        .select_related("study", "deleted_by")
        .distinct()
    )


def binned_studies(user: Any) -> QuerySet[Study]:
    return (
        Study.objects.filter(lab__memberships__user=user, deleted_at__isnull=False)
        .select_related("lab", "deleted_by")
        .distinct()
    )


class MouseDetail(views.MouseDetail):
    """``GET`` and ``PATCH`` as ``views.MouseDetail``; ``DELETE`` moves the mouse to the bin."""

    def delete(self, request: Request, pk: int) -> Response:
        mouse = deletion.delete_mouse(mouse=self.get_object(), user=request.user)
        return Response(mouse_json(mouse))


class StudyDetail(views.StudyDetail):
    """``GET`` as ``views.StudyDetail``; ``DELETE`` moves the study to the bin with its mice."""

    def delete(self, request: Request, pk: int) -> Response:
        study = deletion.delete_study(study=self.get_object(), user=request.user)
        return Response(study_json(study))


class BinMice(APIView):
    def get(self, request: Request) -> Response:
        mice = binned_mice(request.user).annotate(
            n_scans=Count("time_points__scans", filter=Q(time_points__scans__deleted_at__isnull=False))
        )
        return Response([{**mouse_json(m), "scans": m.n_scans} for m in mice.order_by("-deleted_at", "pk")])


class BinStudies(APIView):
    def get(self, request: Request) -> Response:
        studies = binned_studies(request.user).annotate(n_mice=Count("mice"))
        return Response([{**study_json(s), "mice": s.n_mice} for s in studies.order_by("-deleted_at", "pk")])


class MouseRestore(APIView):
    def post(self, request: Request, pk: int) -> Response:
        mouse = deletion.restore_mouse(
            mouse=get_object_or_404(binned_mice(request.user), pk=pk), user=request.user
        )
        return Response(mouse_json(mouse))


class StudyRestore(APIView):
    def post(self, request: Request, pk: int) -> Response:
        study = get_object_or_404(binned_studies(request.user), pk=pk)
        return Response(study_json(deletion.restore_study(study=study, user=request.user)))

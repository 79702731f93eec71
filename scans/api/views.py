"""REST views: validate the form, call one service, answer. Every lookup goes through ``visible_to``.

A row of another lab answers 404 (not 403), so nobody learns that it exists.
"""

from __future__ import annotations

from typing import Any, cast

from django.conf import settings
from django.contrib.auth.models import User
from django.db.models import QuerySet
from django.http import FileResponse
from django.http.response import HttpResponseBase
from django.shortcuts import get_object_or_404
from rest_framework import generics, status
from rest_framework.exceptions import NotFound
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from inference import structures
from labseg.downloads import stored_file_response
from labseg.ids import parse_id
from scans import curation, deletion, quota, services, uploads
from scans.files import HashedUploadedFile
from scans.models import Lab, Mouse, Scan, Study, UploadSession

from . import serializers

#: Multipart framing (boundaries, form fields) on top of the file itself.
MULTIPART_OVERHEAD_BYTES = 1024**2


def _scans_for(user: Any) -> QuerySet[Scan]:
    return Scan.objects.visible_to(user).select_related("time_point__mouse__study", "uploaded_by", "lab")


class ScanListCreate(generics.ListAPIView):
    """``GET /api/scans/`` (filters ``study``, ``mouse``, ``lab``); ``POST`` multipart upload."""

    serializer_class = serializers.ScanSerializer

    def get_queryset(self) -> QuerySet[Scan]:
        scans = _scans_for(self.request.user)
        for parameter, lookup in (
            ("study", "time_point__mouse__study"),
            ("mouse", "time_point__mouse"),
            ("lab", "lab"),
        ):
            value = self.request.query_params.get(parameter)
            if value and value.isdigit():
                scans = scans.filter(**{lookup: parse_id(value, parameter)})
        # By name, as a folder upload knows them: the scan an annotation file belongs to.
        for parameter, lookup in (
            ("study_name", "time_point__mouse__study__name"),
            ("mouse_name", "time_point__mouse__identifier__iexact"),
            ("time_point", "time_point__label__iexact"),
        ):
            value = self.request.query_params.get(parameter)
            if value:
                scans = scans.filter(**{lookup: value.strip()[:200]})
        return scans

    def post(self, request: Request) -> Response:
        # Before a byte of the body is read: only lab members may send files.
        quota.require_uploader(request.user)
        length = int(request.META.get("CONTENT_LENGTH") or 0)
        if length > settings.LABSEG_MAX_UPLOAD_BYTES + MULTIPART_OVERHEAD_BYTES:
            limit = settings.LABSEG_MAX_UPLOAD_BYTES / 1024**3
            return Response(
                {"detail": f"the file is larger than the upload limit of {limit:.1f} GiB"},
                status=status.HTTP_413_REQUEST_ENTITY_TOO_LARGE,
            )
        fields = serializers.ScanFieldsSerializer(data=request.data)
        fields.is_valid(raise_exception=True)
        upload = request.FILES.get("file")
        if upload is None:
            return Response({"detail": "attach the scan as the multipart field 'file'"}, status=400)
        if not isinstance(upload, HashedUploadedFile):
            # Only reachable if FILE_UPLOAD_HANDLERS was changed; the service then copies and hashes.
            upload.seek(0)
        target = services.resolve_upload_target(
            user=request.user, study=fields.validated_data["study"], lab=fields.validated_data.get("lab")
        )
        scan = services.register_scan(
            lab=target.lab,
            uploaded_file_path_or_file=upload,
            original_filename=upload.name or "",
            study_name=target.study_name,
            mouse_identifier=fields.validated_data["mouse"],
            time_point_label=fields.validated_data["time_point"],
            modality=fields.validated_data["modality"],
            user=request.user,
        )
        return Response(serializers.ScanSerializer(scan).data, status=status.HTTP_201_CREATED)


class ScanDetail(generics.RetrieveAPIView):
    """``GET /api/scans/{id}/``; ``DELETE`` moves it to the bin (lab admins; restorable)."""

    serializer_class = serializers.ScanSerializer

    def get_queryset(self) -> QuerySet[Scan]:
        return _scans_for(self.request.user)

    def delete(self, request: Request, pk: int) -> Response:
        scan = deletion.delete_scan(scan=self.get_object(), user=request.user)
        return Response(serializers.ScanSerializer(scan).data)


def _bin_for(user: Any) -> QuerySet[Scan]:
    """Scans in the bin of the user's labs (``visible_to`` hides them)."""
    return Scan.objects.filter(lab__memberships__user=user, deleted_at__isnull=False).distinct()


class BinList(generics.ListAPIView):
    """``GET /api/bin/``: scans in the bin of the user's labs, restorable until the purge."""

    serializer_class = serializers.ScanSerializer

    def get_queryset(self) -> QuerySet[Scan]:
        return _bin_for(self.request.user).select_related("time_point__mouse__study", "lab")


class ScanRestore(APIView):
    """``POST /api/bin/{id}/restore``: the scan and everything made from it come back."""

    def post(self, request: Request, pk: int) -> Response:
        scan = deletion.restore_scan(scan=get_object_or_404(_bin_for(request.user), pk=pk), user=request.user)
        return Response(serializers.ScanSerializer(scan).data)


class ScanFile(APIView):
    """The NIfTI file exactly as uploaded (on S3, a redirect to a presigned URL)."""

    def get(self, request: Request, pk: int) -> HttpResponseBase:
        scan = get_object_or_404(Scan.objects.visible_to(request.user), pk=pk)
        return stored_file_response(scan.file.name, scan.original_filename)


class ScanThumbnail(APIView):
    def get(self, request: Request, pk: int) -> FileResponse:
        scan = get_object_or_404(Scan.objects.visible_to(request.user), pk=pk)
        return stored_file_response(
            scan.thumbnail.name, f"scan-{scan.pk}.png", content_type="image/png", inline=True
        )


class StudyList(generics.ListAPIView):
    serializer_class = serializers.StudySerializer

    def get_queryset(self) -> QuerySet[Study]:
        return Study.objects.visible_to(self.request.user).select_related("lab")


class StudyDetail(generics.RetrieveAPIView):
    serializer_class = serializers.StudySerializer

    def get_queryset(self) -> QuerySet[Study]:
        return Study.objects.visible_to(self.request.user).select_related("lab")


class MouseList(generics.ListAPIView):
    serializer_class = serializers.MouseSerializer

    def get_queryset(self) -> QuerySet[Mouse]:
        mice = Mouse.objects.visible_to(self.request.user).select_related("study", "cohort")
        study = self.request.query_params.get("study")
        if study and study.isdigit():
            mice = mice.filter(study_id=parse_id(study, "study"))
        return mice.prefetch_related("time_points__scans")


class MouseDetail(generics.RetrieveAPIView):
    """``GET /api/mice/{id}/``; ``PATCH`` renames it or sets cohort, strain, sex, notes (admins)."""

    serializer_class = serializers.MouseSerializer

    def get_queryset(self) -> QuerySet[Mouse]:
        return Mouse.objects.visible_to(self.request.user).prefetch_related("time_points__scans")

    def patch(self, request: Request, pk: int) -> Response:
        changes = dict(request.data.items()) if hasattr(request.data, "items") else {}
        mouse = curation.update_mouse(mouse=self.get_object(), user=request.user, changes=changes)
        return Response(serializers.MouseSerializer(self.get_queryset().get(pk=mouse.pk)).data)


class MouseMerge(APIView):
    """``POST /api/mice/{id}/merge {"into": id}``: its scans join the other mouse (admins)."""

    def post(self, request: Request, pk: int) -> Response:
        mice = Mouse.objects.visible_to(request.user)
        source = get_object_or_404(mice, pk=pk)
        into = get_object_or_404(mice, pk=_id(request.data, "into"))
        merged = curation.merge_mice(source=source, into=into, user=request.user)
        return Response(serializers.MouseSerializer(merged).data)


class ScanMove(APIView):
    """``POST /api/scans/{id}/move {"mouse": id, "time_point": "8d"}`` (admins)."""

    def post(self, request: Request, pk: int) -> Response:
        scan = get_object_or_404(_scans_for(request.user), pk=pk)
        mouse = get_object_or_404(Mouse.objects.visible_to(request.user), pk=_id(request.data, "mouse"))
        time_point = str(request.data.get("time_point", "")) if hasattr(request.data, "get") else ""
        moved = curation.move_scan(scan=scan, user=request.user, mouse=mouse, time_point=time_point)
        return Response(serializers.ScanSerializer(moved).data)


class CohortCreate(APIView):
    """``POST /api/studies/{id}/cohorts {"name": ..., "treatment": ...}`` (admins)."""

    def post(self, request: Request, pk: int) -> Response:
        study = get_object_or_404(Study.objects.visible_to(request.user), pk=pk)
        data = request.data if hasattr(request.data, "get") else {}
        cohort = curation.create_cohort(
            study=study,
            user=request.user,
            name=str(data.get("name", "")),
            treatment=str(data.get("treatment", "")),
        )
        return Response({"id": cohort.pk, "name": cohort.name, "treatment": cohort.treatment}, status=201)


def _id(data: Any, field: str) -> int:
    return parse_id(data.get(field) if hasattr(data, "get") else None, field)


class LabList(generics.ListAPIView):
    serializer_class = serializers.LabSerializer

    def get_queryset(self) -> QuerySet[Lab]:
        return Lab.objects.visible_to(self.request.user)


class StructureList(APIView):
    """The canonical structure table (id, name, colour): the only source of label numbers."""

    def get(self, request: Request) -> Response:
        return Response(structures.as_json())


class UploadCreate(APIView):
    """``POST /api/uploads/`` JSON ``{filename, size_bytes[, lab, study]}`` opens a resumable upload
    (lab members only; the size is checked against the upload limit and the lab's quota)."""

    def post(self, request: Request) -> Response:
        fields = serializers.CreateUploadSerializer(data=request.data)
        fields.is_valid(raise_exception=True)
        data = dict(fields.validated_data)
        session = uploads.create_upload(
            user=request.user,
            filename=data["filename"],
            size_bytes=data["size_bytes"],
            lab=services.upload_lab(user=request.user, lab=data.get("lab"), study=data.get("study")),
        )
        return Response(
            {"id": str(session.pk), "offset": session.offset, "size_bytes": session.size_bytes},
            status=status.HTTP_201_CREATED,
        )


def _session_for(request: Request, pk: str) -> UploadSession:
    # Uploads belong to the user who opened them; anyone else gets 404. The API needs sign-in
    # (IsAuthenticated in settings.REST_FRAMEWORK), so the user is an account.
    session = UploadSession.objects.filter(user=cast(User, request.user), pk=pk).first()
    if session is None:
        raise NotFound(
            "there is no upload in progress with this id: it was completed, refused or left idle too long "
            "(LABSEG_UPLOAD_ABANDON_AFTER_H), or it is another user's; open a new upload"
        )
    return session


class UploadChunk(APIView):
    """``GET`` the offset to resume from; ``PUT`` a raw chunk with ``Content-Range``."""

    def get(self, request: Request, pk: str) -> Response:
        session = _session_for(request, pk)
        return Response({"offset": session.offset, "size_bytes": session.size_bytes})

    def put(self, request: Request, pk: str) -> Response:
        session = _session_for(request, pk)
        # Read the raw WSGI stream: the body is never parsed nor held whole in memory.
        session = uploads.append_chunk(
            session=session, content_range=request.META.get("HTTP_CONTENT_RANGE"), body=request._request
        )
        return Response({"offset": session.offset, "size_bytes": session.size_bytes})


class UploadComplete(APIView):
    """``POST /api/uploads/{id}/complete/`` JSON ``{sha256, study, mouse, time_point, modality[, lab]}``."""

    def post(self, request: Request, pk: str) -> Response:
        session = _session_for(request, pk)
        fields = serializers.CompleteUploadSerializer(data=request.data)
        fields.is_valid(raise_exception=True)
        data = fields.validated_data
        target = services.resolve_upload_target(user=request.user, study=data["study"], lab=data.get("lab"))
        scan = uploads.complete_upload(
            session=session,
            sha256=data["sha256"],
            lab=target.lab,
            study_name=target.study_name,
            mouse_identifier=data["mouse"],
            time_point_label=data["time_point"],
            modality=data["modality"],
            user=request.user,
        )
        return Response(serializers.ScanSerializer(scan).data, status=status.HTTP_201_CREATED)

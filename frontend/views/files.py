"""Volumes for the viewer and pictures for the lists: NIfTI layers (preview, full, region) and the
QC picture per scan."""

from __future__ import annotations

import logging

from django.core.files.storage import default_storage
from django.http import FileResponse, HttpRequest, JsonResponse
from django.http.response import HttpResponseBase
from django.shortcuts import get_object_or_404
from django.views.decorators.http import require_GET

from frontend import layers, pictures
from frontend.views.base import lab_page
from labseg.downloads import stored_file_response
from labseg.refusals import Refused, json_refusal
from scans.models import Lab, Scan

logger = logging.getLogger(__name__)


def _scan(request: HttpRequest, lab: Lab, pk: int) -> Scan:
    return get_object_or_404(Scan.objects.visible_to(request.user), pk=pk)


def _nifti(name: str, filename: str) -> FileResponse:
    response = stored_file_response(name, filename, content_type="application/octet-stream", inline=True)
    # Stored layers never change (predictions and uploads are immutable): let the browser keep them.
    response["Cache-Control"] = "private, max-age=86400"
    return response


@require_GET
@lab_page
def layer(request: HttpRequest, lab: Lab, pk: int, key: str) -> HttpResponseBase:
    """``?level=preview`` (default), ``?level=first`` (the coarser grid of the first frame),
    ``?level=full``, ``?region=x,y,z`` (full resolution around a
    point in mm) or ``?download=1`` (the stored file as an attachment, any size). Refusals are
    JSON ``{"detail": message}``."""
    scan = _scan(request, lab, pk)
    try:
        the_layer = layers.resolve_layer(scan, key)
        if "download" in request.GET and the_layer.kind in ("ct", "labels", "uncertainty"):
            # A layer holds saved files; an empty name is refused as missing (404).
            stored_name = the_layer.files[0].name or ""
            suffix = ".nii.gz" if stored_name.endswith(".gz") else ".nii"
            return stored_file_response(stored_name, f"scan{scan.pk}_{key}{suffix}")
        if "region" in request.GET:
            start, stop = layers.parse_region(scan, request.GET["region"])
            name = layers.region_file(scan, the_layer, start, stop)
            response = _nifti(name, f"scan{scan.pk}_{key}_region.nii.gz")
            response["X-Labseg-Region"] = ",".join(map(str, (*start, *stop)))
            return response
        level = request.GET.get("level", "preview")
        if level == "full":
            name = layers.full_file(scan, the_layer)
        elif level in layers.LEVELS:
            name = layers.preview_file(scan, the_layer, level)
        else:
            raise layers.LayerNotFoundError(f"unknown level {level!r}: first, preview or full")
    except Refused as error:
        return json_refusal(error)
    suffix = ".nii.gz" if name.endswith(".gz") else ".nii"
    return _nifti(name, f"scan{scan.pk}_{key}{suffix}")


@require_GET
@lab_page
def qc_picture(request: HttpRequest, lab: Lab, pk: int) -> HttpResponseBase:
    """The scan's QC picture (PNG): mean-intensity projection and mid-coronal slice with overlays.
    ``?size=thumb`` gives the small projection used in lists."""
    scan = _scan(request, lab, pk)
    try:
        name = pictures.qc_picture(scan, thumbnail=request.GET.get("size") == "thumb")
    except (OSError, ValueError) as error:
        # A list page must not break on one unreadable file: fall back to the upload's thumbnail.
        logger.warning("no QC picture for scan %s: %s", scan.pk, error)
        if not scan.thumbnail:
            return JsonResponse({"detail": f"no QC picture for scan {scan.pk}: {error}"}, status=404)
        name = scan.thumbnail.name
    response = FileResponse(default_storage.open(name, "rb"), content_type="image/png")
    response["Cache-Control"] = "private, max-age=300"
    return response

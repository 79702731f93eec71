"""The HTML pages: dashboard, upload, study, mouse and scan viewer.

Each view loads rows through ``visible_to(user)`` and the session's lab, shapes them with
``frontend.results`` and renders one template; behaviour lives in the page's ES module.
"""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.contrib import messages
from django.db.models import Count
from django.http import Http404, HttpRequest, HttpResponse, HttpResponseRedirect, JsonResponse
from django.shortcuts import get_object_or_404
from django.urls import NoReverseMatch, reverse
from django.utils.http import url_has_allowed_host_and_scheme
from django.views.decorators.http import require_POST

from frontend import layers, results
from frontend.views.base import lab_page, page
from inference.structures import as_json
from labs.current import switch_lab
from scans.models import Lab, Mouse, Scan, Study, TimePoint

#: Humane endpoint for total tumor burden, in uL (= mm^3); a page may be given another.
DEFAULT_ENDPOINT_UL = 1500.0


@require_POST
def switch_lab_view(request: HttpRequest) -> HttpResponse:
    if not request.user.is_authenticated:
        return HttpResponseRedirect(settings.LOGIN_URL)
    try:
        lab = switch_lab(request, lab_id=int(request.POST.get("lab", "")))
    except ValueError:
        lab = None
    if lab is None:
        messages.error(request, "You are not a member of that lab.")
    target = request.POST.get("next") or reverse("frontend:dashboard")
    if not url_has_allowed_host_and_scheme(target, allowed_hosts={request.get_host()}):
        target = reverse("frontend:dashboard")
    # A study or scan page of the old lab would be a 404 in the new one: go to the dashboard.
    if lab is not None and not target.startswith(("/upload", "/?")):
        target = reverse("frontend:dashboard")
    return HttpResponseRedirect(target)


def _follow_lab(request: HttpRequest, lab: Lab, row_lab_id: int) -> Lab:
    """A link to a row of another of the user's labs switches the session to that lab (the row
    was fetched through ``visible_to``), so the page still shows one lab's data."""
    if row_lab_id == lab.pk:
        return lab
    switched = switch_lab(request, lab_id=row_lab_id)
    if switched is None:
        raise Http404("not in your labs")
    messages.info(request, f"Switched to {switched.name}.")
    return switched


def _review_url(name: str, pk: int) -> str | None:
    """A link into the review app's pages when they are mounted (they live in another app)."""
    try:
        return reverse(f"review:{name}", args=[pk])
    except NoReverseMatch:
        return None


def _scan_rows(scans: list[Scan]) -> list[dict[str, Any]]:
    jobs = results.jobs_of(scans)
    qc = results.qc_of(scans)
    return [{"scan": scan, "jobs": jobs.get(scan.pk, []), "qc": qc.get(scan.pk, [])} for scan in scans]


@lab_page
def dashboard(request: HttpRequest, lab: Lab) -> HttpResponse:
    studies = (
        Study.objects.visible_to(request.user)
        .in_lab(lab)
        .annotate(
            n_mice=Count("mice", distinct=True), n_scans=Count("mice__time_points__scans", distinct=True)
        )
        .order_by("name")
    )
    recent = list(
        Scan.objects.visible_to(request.user)
        .in_lab(lab)
        .select_related("time_point__mouse__study")
        .order_by("-uploaded_at")[:12]
    )
    return page(
        request, lab, "frontend/dashboard.html", nav="dashboard", studies=studies, recent=_scan_rows(recent)
    )


@lab_page
def upload(request: HttpRequest, lab: Lab) -> HttpResponse:
    studies = list(Study.objects.visible_to(request.user).in_lab(lab).values_list("name", flat=True))
    mice = list(Mouse.objects.visible_to(request.user).in_lab(lab).values_list("identifier", "study__name"))
    labels = sorted(
        set(
            TimePoint.objects.visible_to(request.user).filter(mouse__lab=lab).values_list("label", flat=True)
        ),
        key=lambda label: (len(label), label),
    )
    config = {
        "uploadsUrl": "/api/uploads/",
        # A new study goes to the session's lab (the upload service asks when the user has several).
        "lab": str(lab.pk),
        "chunkBytes": settings.LABSEG_UPLOAD_CHUNK_BYTES,
        "studies": studies,
        "mice": [{"identifier": m, "study": s} for m, s in mice],
        "timePoints": labels or ["0h", "3h", "24h", "8d"],
        "modalities": [{"value": v, "label": str(label)} for v, label in Scan.Modality.choices],
        "defaultStudy": request.GET.get("study", studies[0] if studies else ""),
    }
    return page(request, lab, "frontend/upload.html", nav="upload", config=config)


def _endpoint_ul(request: HttpRequest) -> float:
    try:
        value = float(request.GET.get("endpoint_ul", DEFAULT_ENDPOINT_UL))
    except ValueError:
        return DEFAULT_ENDPOINT_UL
    return value if value > 0 else DEFAULT_ENDPOINT_UL


def _crossed(series: list[results.MouseSeries], endpoint_ul: float) -> list[dict[str, Any]]:
    """Mice whose tumor volume reached the humane endpoint, with the first time point it did."""
    out = []
    for s in series:
        for point in sorted([*s.tumor, *s.tumor_annotated], key=lambda p: p.days):
            if point.volume_mm3 >= endpoint_ul:
                out.append({"mouse": s.identifier, "mouse_id": s.mouse_id, "point": point})
                break
    return out


@lab_page
def study(request: HttpRequest, lab: Lab, pk: int) -> HttpResponse:
    the_study = get_object_or_404(Study.objects.visible_to(request.user), pk=pk)
    lab = _follow_lab(request, lab, the_study.lab_id)
    mice = results.study_mice(the_study)
    scans = list(
        Scan.objects.visible_to(request.user)
        .filter(time_point__mouse__study=the_study)
        .select_related("time_point__mouse__cohort")
        .order_by("time_point__mouse__identifier", "time_point__offset_hours")
    )
    series = results.mouse_series(mice)
    endpoint = _endpoint_ul(request)
    cohorts = list(the_study.cohorts.annotate(n_mice=Count("mice")).order_by("name"))
    return page(
        request,
        lab,
        "frontend/study.html",
        nav="dashboard",
        study=the_study,
        mice=mice,
        cohorts=cohorts,
        scans=_scan_rows(scans),
        page_data={"endpoint_ul": endpoint, "series": results.series_json(series)},
        review_url=_review_url("study-qc", the_study.pk),
        endpoint_ul=endpoint,
        crossed=_crossed(series, endpoint),
        held_back=[{"mouse": s.identifier, **row} for s in series for row in s.held_back],
    )


@lab_page
def scan_viewer_config(request: HttpRequest, lab: Lab, pk: int) -> JsonResponse:
    """The viewer's configuration as JSON: the page fetches it again when a job ends."""
    the_scan = get_object_or_404(Scan.objects.visible_to(request.user), pk=pk)
    return JsonResponse(layers.viewer_config(the_scan, results.latest_predictions(the_scan)))


@lab_page
def mouse(request: HttpRequest, lab: Lab, pk: int) -> HttpResponse:
    the_mouse = get_object_or_404(
        Mouse.objects.visible_to(request.user).select_related("study", "cohort"), pk=pk
    )
    lab = _follow_lab(request, lab, the_mouse.lab_id)
    scans = list(
        Scan.objects.visible_to(request.user)
        .filter(time_point__mouse=the_mouse)
        .select_related("time_point")
        .order_by("time_point__offset_hours")
    )
    series = results.mouse_series([the_mouse])
    endpoint = _endpoint_ul(request)
    return page(
        request,
        lab,
        "frontend/mouse.html",
        nav="dashboard",
        mouse=the_mouse,
        scans=_scan_rows(scans),
        page_data={"endpoint_ul": endpoint, "series": results.series_json(series), "structures": as_json()},
        endpoint_ul=endpoint,
        crossed=_crossed(series, endpoint),
    )


@lab_page
def scan(request: HttpRequest, lab: Lab, pk: int) -> HttpResponse:
    the_scan = get_object_or_404(
        Scan.objects.visible_to(request.user).select_related("time_point__mouse__study"), pk=pk
    )
    lab = _follow_lab(request, lab, the_scan.lab_id)
    predictions = results.latest_predictions(the_scan)
    config = layers.viewer_config(the_scan, predictions)
    return page(
        request,
        lab,
        "frontend/scan.html",
        nav="dashboard",
        scan=the_scan,
        predictions=predictions,
        jobs=results.jobs_of([the_scan]).get(the_scan.pk, []),
        volumes=config["volumes"],
        qc_rows=[results.qc_row(p) for p in predictions],
        config=config,
        review_url=_review_url("scan", the_scan.pk) if the_scan.annotations.exists() else None,
    )

"""Top-level URLs: each app owns its own ``api/urls.py`` (REST) and pages."""

from django.conf import settings
from django.contrib import admin
from django.urls import include, path

urlpatterns = [
    path("admin/", admin.site.urls),
    path("api/", include("scans.api.urls")),
    path("api/", include("inference.api.urls")),
    path("api/", include("review.api.urls")),
    path("", include("frontend.urls")),
]

if settings.DEBUG:
    from django.conf.urls.static import static

    urlpatterns += static(settings.MEDIA_URL, document_root=settings.MEDIA_ROOT)

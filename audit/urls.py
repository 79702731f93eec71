"""Routes of the audit log: the API under ``/api/`` and the lab's page."""

from django.urls import path

from . import views

urlpatterns = [
    path("api/audit/", views.AuditEventList.as_view(), name="audit-list"),
    path("labs/<int:pk>/audit/", views.lab_audit_page, name="lab-audit"),
]

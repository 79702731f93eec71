from django.apps import AppConfig


class LabsConfig(AppConfig):
    default_auto_field = "django.db.models.BigAutoField"
    name = "labs"

    def ready(self) -> None:
        # Registers the named rules (labs.member, labs.reviewer, ...) with django-rules.
        from . import rules  # noqa: F401

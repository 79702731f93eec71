from django.apps import AppConfig


class AuditConfig(AppConfig):
    default_auto_field = "django.db.models.BigAutoField"
    name = "audit"

    def ready(self) -> None:
        # Membership changes are recorded from signals, so the admin, the command and the
        # services are all covered without each calling audit.record.
        from . import signals

        signals.connect_model_signals()

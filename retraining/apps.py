from django.apps import AppConfig


class RetrainingConfig(AppConfig):
    name = "retraining"
    verbose_name = "Retraining"
    default_auto_field = "django.db.models.BigAutoField"

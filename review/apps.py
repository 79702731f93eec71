from django.apps import AppConfig


class ReviewConfig(AppConfig):
    default_auto_field = "django.db.models.BigAutoField"
    name = "review"

    def ready(self) -> None:
        # Volumes, CSVs and charts (segmentation, below this app) use a person's correction of a
        # prediction where there is one: hand them the finder (``segmentation.corrections``).
        from segmentation.corrections import register_finder

        from .corrections import newest_corrections

        register_finder(newest_corrections)

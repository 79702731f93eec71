"""labseg: a lab server for preclinical mouse micro-CT segmentation."""

from .celery import app as celery_app

__all__ = ["celery_app"]
__version__ = "0.1.0"

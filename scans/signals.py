"""Signals the scans app sends, so apps above it can act without scans importing them.

``scan_registered(sender=Scan, scan=..., user=...)`` is sent once a new scan is stored and its
transaction committed; the segmentation app queues the default models on it when
``LABSEG_SEGMENT_ON_UPLOAD`` is set (``segmentation/apps.py``).
"""

from __future__ import annotations

from django.dispatch import Signal

scan_registered = Signal()

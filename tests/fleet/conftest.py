"""Fixtures of the fleet tests: the segmentation tests' tiny models, lab and member, a private
broker, and workers (see ``tests/fleet/fleet.py``)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.segmentation.conftest import lab, member, models, tiny_models_root, upload_scan
from tests.workers import PrivateRedis, private_broker

__all__ = ["lab", "member", "models", "tiny_models_root", "upload_scan"]


@pytest.fixture
def broker(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[PrivateRedis]:
    yield from private_broker(tmp_path, monkeypatch)

"""Fixtures shared by every test folder.

Tests run on real PostgreSQL and Redis (``make test`` sets DATABASE_URL and CELERY_BROKER_URL).
Every test gets its own MEDIA_ROOT so that "storage unchanged" can be checked exactly.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parent.parent
# CI keeps ../shared beside the clone; LABSEG_SHARED_DIR points elsewhere (a clone in another folder).
SHARED = Path(os.environ.get("LABSEG_SHARED_DIR", str(REPO.parent / "shared")))
REALDATA = SHARED / "realdata" / "mouse_ct_atlas"


@pytest.fixture(autouse=True)
def media_root(tmp_path: Path, settings) -> Path:  # type: ignore[no-untyped-def]
    root = tmp_path / "media"
    root.mkdir()
    settings.MEDIA_ROOT = root
    settings.STORAGES = {
        **settings.STORAGES,
        "default": {
            "BACKEND": "django.core.files.storage.FileSystemStorage",
            "OPTIONS": {"location": str(root), "base_url": "/media/"},
        },
    }
    return root


@pytest.fixture
def realdata() -> Path:
    if not REALDATA.exists():
        pytest.fail(f"the real mouse micro-CT files are missing: expected {REALDATA}")
    return REALDATA


@pytest.fixture(scope="session")
def browser() -> Iterator[Any]:
    """Debian's Chromium through Playwright, one per test session (see tests/chromium.py)."""
    from playwright.sync_api import sync_playwright

    from tests.chromium import CHROMIUM, launch

    if not CHROMIUM.exists():
        pytest.fail(f"the browser tests need Debian's Chromium at {CHROMIUM} (apt-get install chromium)")
    niivue = REPO / "frontend" / "static" / "vendor" / "niivue" / "niivue.js"
    if not niivue.exists():
        pytest.fail(f"NiiVue is not installed at {niivue}: run `bash frontend/vendor.sh` (make install does)")
    # Playwright's sync API keeps an asyncio loop running in this thread, which Django's ORM guard
    # mistakes for async code; the tests only call the ORM synchronously, between browser steps.
    os.environ.setdefault("DJANGO_ALLOW_ASYNC_UNSAFE", "true")
    with sync_playwright() as playwright:
        chromium = launch(playwright)
        yield chromium
        chromium.close()

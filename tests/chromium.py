"""How labseg's browser tests and ``bench/viewer.py`` start Debian's Chromium through Playwright.

One Playwright instance per process: Playwright's sync API keeps an asyncio loop running in the
thread, and a second ``sync_playwright()`` in the same process fails, so the test session shares
the ``browser`` fixture of ``tests/conftest.py``.
"""

from __future__ import annotations

from pathlib import Path

CHROMIUM = Path("/usr/bin/chromium")
# Headless as root, no GPU, and none of Chromium's background connections (the network is closed).
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


def launch(playwright):  # type: ignore[no-untyped-def]
    """Chromium launched from an open ``sync_playwright()`` context."""
    return playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)

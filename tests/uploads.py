"""Sending a file through the resumable upload API, as a script would (tests only)."""

from __future__ import annotations

import hashlib
from typing import Any

from rest_framework.test import APIClient


def resumable_upload(
    client: APIClient,
    content: bytes,
    filename: str,
    *,
    chunk_bytes: int,
    sha256: str | None = None,
    **fields: str,
) -> Any:
    """Open an upload, send ``content`` in ``chunk_bytes`` pieces and complete it with ``fields``
    (study, mouse ...); ``sha256`` defaults to the content's own. Returns the completion's answer."""
    created = client.post("/api/uploads/", {"filename": filename, "size_bytes": len(content)}, format="json")
    assert created.status_code == 201, created.content
    upload_id = created.json()["id"]
    for start in range(0, len(content), chunk_bytes):
        piece = content[start : start + chunk_bytes]
        sent = client.put(
            f"/api/uploads/{upload_id}/",
            piece,
            content_type="application/octet-stream",
            HTTP_CONTENT_RANGE=f"bytes {start}-{start + len(piece) - 1}/{len(content)}",
        )
        assert sent.status_code == 200, sent.content
    digest = sha256 if sha256 is not None else hashlib.sha256(content).hexdigest()
    return client.post(f"/api/uploads/{upload_id}/complete/", {"sha256": digest, **fields}, format="json")

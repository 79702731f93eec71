"""Sending a file through the resumable upload API, as a script would (tests only)."""

from __future__ import annotations

import hashlib
from typing import Any

from rest_framework.test import APIClient


def put_chunk(client: APIClient, upload_id: str, piece: bytes, start: int, total: int) -> Any:
    """Send ``piece`` as the bytes from ``start`` of a ``total``-byte upload; the answer."""
    return client.put(
        f"/api/uploads/{upload_id}/",
        piece,
        content_type="application/octet-stream",
        HTTP_CONTENT_RANGE=f"bytes {start}-{start + len(piece) - 1}/{total}",
    )


def send_chunks(client: APIClient, content: bytes, filename: str, *, chunk_bytes: int, **opening: Any) -> str:
    """Open an upload (``opening``: lab, study) and send every byte of ``content`` in ``chunk_bytes``
    pieces, without completing it; the upload's id."""
    opened = {"filename": filename, "size_bytes": len(content), **opening}
    created = client.post("/api/uploads/", opened, format="json")
    assert created.status_code == 201, created.content
    upload_id = str(created.json()["id"])
    for start in range(0, len(content), chunk_bytes):
        sent = put_chunk(client, upload_id, content[start : start + chunk_bytes], start, len(content))
        assert sent.status_code == 200, sent.content
    return upload_id


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
    upload_id = send_chunks(client, content, filename, chunk_bytes=chunk_bytes)
    digest = sha256 if sha256 is not None else hashlib.sha256(content).hexdigest()
    return client.post(f"/api/uploads/{upload_id}/complete/", {"sha256": digest, **fields}, format="json")

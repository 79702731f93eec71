"""Existing DRF tokens (``authtoken_token``, plain text) become hashed, expiring API tokens: each
keeps working with the same secret for ``LABSEG_TOKEN_TTL_DAYS`` from this migration, and the
plain keys are deleted. The table is read with SQL because ``rest_framework.authtoken`` is no
longer installed; a database that never had it is left as it is."""

from __future__ import annotations

import hashlib
from datetime import timedelta
from typing import Any

from django.conf import settings
from django.db import migrations
from django.utils import timezone

PLAIN = "authtoken_token"


def hash_plain_tokens(apps: Any, schema_editor: Any) -> None:
    connection = schema_editor.connection
    if PLAIN not in connection.introspection.table_names():
        return
    ApiToken = apps.get_model("labs", "ApiToken")
    expires = timezone.now() + timedelta(days=float(settings.LABSEG_TOKEN_TTL_DAYS))
    with connection.cursor() as cursor:
        cursor.execute(f"SELECT key, user_id FROM {PLAIN}")
        rows = cursor.fetchall()
        for key, user_id in rows:
            ApiToken.objects.create(
                user_id=user_id,
                prefix=key[:8],
                digest=hashlib.sha256(key.encode()).hexdigest(),
                expires_at=expires,
            )
        cursor.execute(f"DELETE FROM {PLAIN}")


class Migration(migrations.Migration):
    dependencies = [("labs", "0002_login_failures_and_api_tokens")]

    operations = [migrations.RunPython(hash_plain_tokens, migrations.RunPython.noop)]

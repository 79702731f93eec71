"""Lab and Membership now belong to the labs app (``labs/migrations/0001_initial.py``): model
state only, the tables ``scans_lab`` and ``scans_membership`` stay where they are.

The foreign keys of Study, Mouse and Scan point at ``labs.Lab`` (the same table, so the database
is not touched), and the old state is removed. The content types of the two models are renamed
from the scans app to the labs app, so permissions already granted on them and admin log entries
keep pointing at the right model (the rows are the framework's, not user data).
"""

from typing import Any

import django.db.models.deletion
from django.db import migrations, models

MOVED = ("lab", "membership")


def content_types_to(source: str, target: str) -> Any:
    """A RunPython function moving the two content type rows from app ``source`` to ``target``."""

    def rename(apps: Any, schema_editor: Any) -> None:
        rows = apps.get_model("contenttypes", "ContentType").objects.using(schema_editor.connection.alias)
        for model in MOVED:
            old = rows.filter(app_label=source, model=model)
            if not old.exists():
                continue
            # A row for the target exists only when post_migrate ran between the two migrations;
            # the old row is the one granted permissions point at, so it wins.
            rows.filter(app_label=target, model=model).delete()
            old.update(app_label=target)

    return rename


def lab_foreign_key(related_name: str) -> models.ForeignKey:
    return models.ForeignKey(
        on_delete=django.db.models.deletion.CASCADE, related_name=related_name, to="labs.lab"
    )


class Migration(migrations.Migration):
    dependencies = [
        ("contenttypes", "0002_remove_content_type_name"),
        ("labs", "0001_initial"),
        ("scans", "0002_upload_session"),
    ]

    operations = [
        migrations.SeparateDatabaseAndState(
            state_operations=[
                migrations.AlterField(model_name="study", name="lab", field=lab_foreign_key("studies")),
                migrations.AlterField(model_name="mouse", name="lab", field=lab_foreign_key("mice")),
                migrations.AlterField(model_name="scan", name="lab", field=lab_foreign_key("scans")),
                migrations.RemoveField(model_name="lab", name="members"),
                migrations.DeleteModel(name="Membership"),
                migrations.DeleteModel(name="Lab"),
            ],
            database_operations=[],
        ),
        migrations.RunPython(content_types_to("scans", "labs"), content_types_to("labs", "scans")),
    ]

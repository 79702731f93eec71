"""Lab and Membership move here from the scans app: model state only.

The tables stay as they are (``scans_lab``, ``scans_membership``, created by
``scans/migrations/0001_initial.py``), so no row moves and no user data is touched; the database
operations are empty. ``scans/migrations/0003_lab_moves_to_labs.py`` removes the old state and
points the scans foreign keys at ``labs.Lab``; it also renames the content types so the admin
permissions already granted on labs and memberships keep working.
"""

import django.db.models.deletion
from django.conf import settings
from django.db import migrations, models


class Migration(migrations.Migration):
    initial = True

    dependencies = [
        migrations.swappable_dependency(settings.AUTH_USER_MODEL),
        ("scans", "0002_upload_session"),
    ]

    operations = [
        migrations.SeparateDatabaseAndState(
            state_operations=[
                migrations.CreateModel(
                    name="Lab",
                    fields=[
                        (
                            "id",
                            models.BigAutoField(
                                auto_created=True, primary_key=True, serialize=False, verbose_name="ID"
                            ),
                        ),
                        ("name", models.CharField(max_length=120, unique=True)),
                        ("created_at", models.DateTimeField(auto_now_add=True)),
                    ],
                    options={"db_table": "scans_lab", "ordering": ["name"]},
                ),
                migrations.CreateModel(
                    name="Membership",
                    fields=[
                        (
                            "id",
                            models.BigAutoField(
                                auto_created=True, primary_key=True, serialize=False, verbose_name="ID"
                            ),
                        ),
                        (
                            "role",
                            models.CharField(
                                choices=[("member", "Member"), ("reviewer", "Reviewer"), ("admin", "Lab admin")],
                                default="member",
                                max_length=16,
                            ),
                        ),
                        ("created_at", models.DateTimeField(auto_now_add=True)),
                        (
                            "lab",
                            models.ForeignKey(
                                on_delete=django.db.models.deletion.CASCADE,
                                related_name="memberships",
                                to="labs.lab",
                            ),
                        ),
                        (
                            "user",
                            models.ForeignKey(
                                on_delete=django.db.models.deletion.CASCADE,
                                related_name="memberships",
                                to=settings.AUTH_USER_MODEL,
                            ),
                        ),
                    ],
                    options={
                        "db_table": "scans_membership",
                        "constraints": [
                            models.UniqueConstraint(fields=("lab", "user"), name="unique_membership")
                        ],
                    },
                ),
                migrations.AddField(
                    model_name="lab",
                    name="members",
                    field=models.ManyToManyField(
                        related_name="labs", through="labs.Membership", to=settings.AUTH_USER_MODEL
                    ),
                ),
            ],
            database_operations=[],
        ),
    ]

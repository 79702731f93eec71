"""The move of Lab and Membership from the scans app to the labs app changes Django's model state
only: a database made by the previous migrations (scans 0002, no labs app) migrates forward with
its rows, tables, foreign keys and granted permissions intact, and back again."""

from __future__ import annotations

from io import StringIO
from typing import Any

import pytest
from django.core.management import call_command
from django.db import connection
from django.db.migrations.executor import MigrationExecutor

pytestmark = pytest.mark.django_db(transaction=True)

#: Unapplies labs 0001 and scans 0003: the database the migrations before the move made.
BEFORE: list[tuple[str, str | None]] = [("labs", None)]
PREVIOUS_SCANS = ("scans", "0002_upload_session")


def migrate(targets: list[tuple[str, str | None]]) -> Any:
    """Migrate to ``targets``; returns the historical apps of the scans, auth and contenttypes
    state reached (the whole state for the latest migrations)."""
    executor = MigrationExecutor(connection)
    executor.migrate(targets)
    executor.loader.build_graph()
    leaves = executor.loader.graph.leaf_nodes()
    if targets == BEFORE:
        nodes = [PREVIOUS_SCANS, *(node for node in leaves if node[0] in ("auth", "contenttypes"))]
        return executor.loader.project_state(nodes).apps
    return executor.loader.project_state(leaves).apps


def latest() -> list[tuple[str, str | None]]:
    return list(MigrationExecutor(connection).loader.graph.leaf_nodes())


def table_names() -> set[str]:
    with connection.cursor() as cursor:
        return set(connection.introspection.table_names(cursor))


def test_a_database_of_the_previous_migrations_keeps_its_labs_members_and_permissions():
    old = migrate(BEFORE)
    with pytest.raises(LookupError):
        old.get_model("labs", "Lab")
    user = old.get_model("auth", "User").objects.create(username="ana", is_staff=True)
    lab = old.get_model("scans", "Lab").objects.create(name="Imaging lab")
    old.get_model("scans", "Membership").objects.create(lab=lab, user=user, role="reviewer")
    study = old.get_model("scans", "Study").objects.create(lab=lab, name="Flank tumours")
    content_type = old.get_model("contenttypes", "ContentType").objects.get(app_label="scans", model="lab")
    permissions = old.get_model("auth", "Permission").objects
    permission = permissions.get(content_type=content_type, codename="change_lab")
    user.user_permissions.add(permission)
    tables_before = table_names()

    new = migrate(latest())

    # Nothing renamed or dropped; the move made no table (Lab and Membership keep scans_lab and
    # scans_membership). Tables of models added since (tokens, audit, ...) are new, as they should be.
    assert tables_before <= table_names()
    assert not (table_names() - tables_before) & {"labs_lab", "labs_membership"}
    lab_model = new.get_model("labs", "Lab")
    moved = lab_model.objects.get(name="Imaging lab")
    assert moved.pk == lab.pk
    assert list(moved.memberships.values_list("user__username", "role")) == [("ana", "reviewer")]
    assert new.get_model("scans", "Study").objects.get(pk=study.pk).lab_id == lab.pk
    assert new.get_model("scans", "Study")._meta.get_field("lab").related_model is lab_model
    content_types = new.get_model("contenttypes", "ContentType").objects
    assert not content_types.filter(app_label="scans", model__in=["lab", "membership"]).exists()
    renamed = content_types.get(app_label="labs", model="lab")
    assert renamed.pk == content_type.pk  # the same row: granted permissions still point at it

    from django.contrib.auth import get_user_model

    ana = get_user_model().objects.get(username="ana")
    assert ana.has_perm("labs.change_lab")


def test_the_move_migrates_back_and_forth():
    migrate(BEFORE)
    call_command("migrate", "scans", "0002", verbosity=0)
    call_command("migrate", verbosity=0)
    out = StringIO()
    call_command("makemigrations", "--check", "--dry-run", stdout=out)
    assert "No changes detected" in out.getvalue()

"""Management commands: import_dataset (idempotent), add_lab_member, create_demo."""

from __future__ import annotations

from io import StringIO
from pathlib import Path

import numpy as np
import pytest
from django.contrib.auth import get_user_model
from django.core.management import call_command
from django.core.management.base import CommandError

from inference.structures import BY_NAME
from labs.models import Lab, Membership
from scans.models import Annotation, Mouse, Scan, Study

from .niftis import nifti_bytes, volume


def _write(path: Path, content: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(content)


@pytest.fixture
def tumor_db(tmp_path: Path) -> Path:
    """A tiny tree in the public tumor database layout: two mice, three time points, two annotators."""
    root = tmp_path / "tumor-db"
    for dataset, group, mouse, time_point, seed in [
        ("Dataset 1", "M01_M02_8d", "M02", "8d", 1),
        ("Dataset 1", "M01_M02_8d", "M01", "8d", 2),
        ("Dataset 2", "M03_3h", "M03", "3h", 3),
    ]:
        folder = root / dataset / group / f"{mouse}_{time_point}"
        data = volume(seed=seed)
        tumor = (data > 0).astype("uint8")
        _write(folder / f"CT_{mouse}_{time_point}.nii.gz", nifti_bytes(data))
        _write(folder / f"Annotator_A_{mouse}_{time_point}.nii.gz", nifti_bytes(tumor))
        _write(folder / f"Annotator_B_{mouse}_{time_point}.nii.gz", nifti_bytes(tumor[::-1].copy()))
        _write(folder / f"STAPLE_{mouse}_{time_point}.nii.gz", nifti_bytes(tumor[:, ::-1].copy()))
    return root


def _import(root: Path) -> str:
    out = StringIO()
    call_command(
        "import_dataset",
        str(root),
        "--study",
        "Tumor DB",
        "--lab",
        "Imaging lab",
        stdout=out,
        stderr=StringIO(),
    )
    return out.getvalue()


def test_import_dataset_creates_mice_time_points_scans_and_one_annotation_per_annotator(db, tumor_db):
    summary = _import(tumor_db)

    assert "3 scans imported" in summary
    study = Study.objects.get(name="Tumor DB", lab__name="Imaging lab")
    assert sorted(Mouse.objects.filter(study=study).values_list("identifier", flat=True)) == [
        "M01",
        "M02",
        "M03",
    ]
    scan = Scan.objects.get(time_point__mouse__identifier="M03")
    assert (scan.time_point.label, scan.time_point.offset_hours) == ("3h", 3.0)
    assert scan.time_point.mouse.cohort.name == "Dataset 2"
    assert sorted(scan.annotations.values_list("annotator_name", flat=True)) == ["A", "B", "STAPLE"]
    assert scan.annotations.first().structures == {"tumor": 1}


def test_import_dataset_is_idempotent(db, tumor_db, media_root):
    _import(tumor_db)
    files = sorted(p for p in media_root.rglob("*") if p.is_file())

    summary = _import(tumor_db)

    assert "0 scans imported, 3 already there; 0 annotations imported, 9 already there" in summary
    assert (Scan.objects.count(), Annotation.objects.count()) == (3, 9)
    assert sorted(p for p in media_root.rglob("*") if p.is_file()) == files


def test_import_dataset_reports_a_refused_file_and_goes_on(db, tumor_db):
    broken = next(tumor_db.rglob("CT_M01_8d.nii.gz"))
    broken.write_bytes(broken.read_bytes()[:500])
    err = StringIO()

    call_command(
        "import_dataset", str(tumor_db), "--study", "Tumor DB", "--lab", "L", stdout=StringIO(), stderr=err
    )

    assert Scan.objects.count() == 2
    assert "CT_M01_8d.nii.gz: nibabel cannot read the header and its extensions (truncated)" in err.getvalue()


def test_import_dataset_leaves_the_source_files_untouched(db, tumor_db):
    before = {p: p.read_bytes() for p in tumor_db.rglob("*") if p.is_file()}

    _import(tumor_db)

    assert {p: p.read_bytes() for p in tumor_db.rglob("*") if p.is_file()} == before


def test_add_lab_member_creates_the_user_and_sets_the_role(db):
    out = StringIO()

    call_command(
        "add_lab_member",
        "--lab",
        "Lab X",
        "--user",
        "carol",
        "--role",
        "reviewer",
        "--create-user",
        "--password",
        "pale-mice-42x",
        stdout=out,
    )
    call_command("add_lab_member", "--lab", "Lab X", "--user", "carol", "--role", "admin", stdout=out)

    carol = get_user_model().objects.get(username="carol")
    assert carol.check_password("pale-mice-42x")
    assert Membership.objects.get(user=carol, lab__name="Lab X").role == "admin"


def test_add_lab_member_refuses_an_unknown_user_without_create_user(db):
    with pytest.raises(CommandError, match="add --create-user"):
        call_command("add_lab_member", "--lab", "Lab X", "--user", "nobody")


def test_create_demo_is_idempotent_and_prints_the_credentials(db):
    first, second = StringIO(), StringIO()

    call_command("create_demo", stdout=first)
    call_command("create_demo", stdout=second)

    assert "http://127.0.0.1:8000/ as demo / labseg-demo" in first.getvalue()
    assert Lab.objects.filter(name="Demo lab").count() == 1
    demo = get_user_model().objects.get(username="demo")
    assert Membership.objects.get(user=demo).role == "admin"


def test_create_demo_prints_the_address_make_run_serves(db):
    out = StringIO()

    call_command("create_demo", "--url", "http://0.0.0.0:8123/", stdout=out)

    assert "log in at http://0.0.0.0:8123/ as demo" in out.getvalue()


def test_create_api_token_scripts_an_api_token_shown_once(db):
    from labs.models import ApiToken

    get_user_model().objects.create_user(username="robot", password="x-123456")
    out = StringIO()

    call_command("create_api_token", "robot", stdout=out)

    secret = out.getvalue().split()[-1]
    assert "valid until" in out.getvalue() and len(secret) >= 40
    assert ApiToken.objects.get(user__username="robot").prefix == secret[:8]
    assert not ApiToken.objects.filter(digest=secret).exists()


def test_ground_truth_label_maps_become_annotations_never_scans(db, tumor_db):
    # A phantom dataset in the tumor database layout carries GroundTruth_* label maps (canonical
    # structure ids, uint8, mostly 0) beside each CT: annotations of that CT, not a second scan.
    for ct in tumor_db.rglob("CT_*.nii.gz"):
        stem = ct.name.removeprefix("CT_").removesuffix(".nii.gz")
        data = volume(seed=len(stem))
        truth = np.where(data > 0, BY_NAME["tumor"].id, 0).astype("uint8")
        truth[:2] = BY_NAME["liver"].id
        _write(ct.with_name(f"GroundTruth_{stem}.nii.gz"), nifti_bytes(truth))

    summary = _import(tumor_db)

    assert "3 scans imported" in summary
    assert Scan.objects.count() == 3
    truths = Annotation.objects.filter(annotator_name="GroundTruth")
    assert truths.count() == 3
    assert {(k, v) for t in truths for k, v in t.structures.items()} == {
        ("liver", BY_NAME["liver"].id),
        ("tumor", BY_NAME["tumor"].id),
    }

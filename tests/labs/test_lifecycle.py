"""The annotation lifecycle (review.services): every creation starts the trail, one reader of the
structure table, and one meaning of consensus."""

from __future__ import annotations

import io
from io import StringIO
from pathlib import Path

import numpy as np
import pytest
from django.core.management import call_command
from rest_framework.test import APIClient

from frontend import layers
from inference.structures import BY_NAME
from labs.models import Membership
from review.files import annotation_values, label_values
from review.models import AnnotationTransition
from review.services import (
    approve_annotation,
    consensus_annotations,
    create_annotation,
    reject_annotation,
    replace_annotation,
    structure_table,
)
from scans.models import Annotation, Scan
from scans.services import register_scan
from scans.validation import ScanRejected
from tests.factories import LabFactory, member_of
from tests.scans.niftis import labels_for, nifti_bytes, volume

pytestmark = pytest.mark.django_db

TUMOR = BY_NAME["tumor"].id


@pytest.fixture(autouse=True)
def no_segmentation_on_upload(settings) -> None:  # type: ignore[no-untyped-def]
    settings.LABSEG_SEGMENT_ON_UPLOAD = False


@pytest.fixture
def lab():  # type: ignore[no-untyped-def]
    return LabFactory(name="Imaging lab")


@pytest.fixture
def member(lab):  # type: ignore[no-untyped-def]
    return member_of(lab, username="max")


@pytest.fixture
def reviewer(lab):  # type: ignore[no-untyped-def]
    return member_of(lab, role=Membership.Role.REVIEWER, username="rita")


@pytest.fixture
def scan(lab, member) -> Scan:  # type: ignore[no-untyped-def]
    return register_scan(
        lab=lab,
        uploaded_file_path_or_file=io.BytesIO(nifti_bytes(volume())),
        original_filename="CT_M01_0h.nii.gz",
        study_name="Flank tumours",
        mouse_identifier="M01",
        time_point_label="0h",
        user=member,
    )


def label_file(value: int = 1, shift: int = 0) -> io.BytesIO:
    return io.BytesIO(nifti_bytes(np.roll(labels_for(volume(), value=value), shift, axis=0)))


def trail(annotation: Annotation) -> list[tuple[str, str, str]]:
    rows = AnnotationTransition.objects.filter(annotation=annotation).order_by("at", "pk")
    return [(t.from_status, t.to_status, t.note) for t in rows]


def test_an_upload_through_the_api_starts_the_trail(scan, member):
    client = APIClient()
    client.force_login(member)
    form = {"annotator": "A", "structures": '{"tumor": 1}', "file": label_file()}
    form["file"].name = "Annotator_A.nii.gz"

    response = client.post(f"/api/scans/{scan.pk}/annotations/", form, format="multipart")

    assert response.status_code == 201, response.content
    annotation = Annotation.objects.get(pk=response.json()["id"])
    assert trail(annotation) == [("", "submitted", "uploaded")]
    assert annotation.transitions.get().by == member


def test_a_dataset_import_starts_the_trail_of_every_annotation(lab, tmp_path: Path):
    folder = tmp_path / "Dataset 1" / "M01_M02_8d" / "M02_8d"
    folder.mkdir(parents=True)
    (folder / "CT_M02_8d.nii.gz").write_bytes(nifti_bytes(volume()))
    (folder / "Annotator_A_M02_8d.nii.gz").write_bytes(label_file().getvalue())
    (folder / "STAPLE_M02_8d.nii.gz").write_bytes(label_file(shift=1).getvalue())

    call_command("import_dataset", str(tmp_path), "--study", "Tumor DB", "--lab", lab.name, stdout=StringIO())

    annotations = Annotation.objects.order_by("annotator_name")
    assert [a.annotator_name for a in annotations] == ["A", "STAPLE"]
    for annotation in annotations:
        [(before, after, note)] = trail(annotation)
        assert (before, after) == ("", "submitted") and note.startswith("imported from ")
        assert note.endswith(annotation.original_filename)
        assert annotation.structures == {"tumor": 1}


def test_a_refused_file_leaves_neither_annotation_nor_trail(scan):
    with pytest.raises(ScanRejected, match="not in the structure mapping"):
        create_annotation(
            scan=scan, file=label_file(value=3), original_filename="A.nii.gz", annotator_name="A",
            structures={"tumor": 1},
        )  # fmt: skip

    assert not Annotation.objects.exists() and not AnnotationTransition.objects.exists()


def test_a_replacement_has_one_creation_entry_naming_the_version(scan, member, reviewer):
    first = create_annotation(scan=scan, file=label_file(), original_filename="A.nii.gz", user=member)
    reject_annotation(annotation=first, reviewer=reviewer, note="Too wide.")

    second = replace_annotation(
        annotation=first, file=label_file(shift=1), original_filename="A_v2.nii.gz", user=member
    )

    assert trail(first) == [("", "submitted", "uploaded"), ("submitted", "rejected", "Too wide.")]
    assert trail(second) == [("", "submitted", f"version 2, replaces annotation {first.pk}")]


def test_the_structure_table_is_read_one_way_everywhere(scan, member):
    tumor_as_one = create_annotation(
        scan=scan, file=label_file(value=1), original_filename="A.nii.gz", annotator_name="A",
        structures={"Tumor": 1},
    )  # fmt: skip
    canonical_ids = create_annotation(
        scan=scan, file=label_file(value=TUMOR, shift=1), original_filename="B.nii.gz", user=member
    )

    # What is stored: canonical names -> the file's own values, every value of the file mapped.
    assert tumor_as_one.structures == {"tumor": 1}
    assert canonical_ids.structures == {"tumor": TUMOR}
    # The one reader, and the two places that use it.
    assert annotation_values(tumor_as_one.structures) == {TUMOR: 1}
    assert label_values(tumor_as_one.structures, np.zeros(1)) == {TUMOR: 1}
    assert layers.resolve_layer(scan, f"ann-{tumor_as_one.pk}").relabel == ({1: TUMOR},)
    assert layers.resolve_layer(scan, f"ann-{canonical_ids.pk}").relabel == ({TUMOR: TUMOR},)


def test_an_empty_table_means_no_structure_not_a_tumor():
    # 1 is the heart's id in the canonical table; nothing is guessed for a file that maps nothing.
    assert BY_NAME["heart"].id == 1
    assert annotation_values({}) == {}
    assert structure_table(None, {0, 1}) == {"heart": 1}
    assert structure_table({"Tumor": 1}, {0, 1}) == {"tumor": 1}


def test_a_consensus_is_made_of_approved_annotations_only_in_the_viewer_too(scan, member, reviewer):
    made = []
    for name, shift in (("A", 0), ("B", 1), ("C", 2)):
        made.append(
            create_annotation(
                scan=scan, file=label_file(shift=shift), original_filename=f"{name}.nii.gz",
                annotator_name=name, structures={"tumor": 1},
            )
        )  # fmt: skip
    approve_annotation(annotation=made[0], reviewer=reviewer)
    assert consensus_annotations(scan) == [made[0]]
    assert "consensus" not in [row["key"] for row in layers.viewer_layers(scan, [])]

    approve_annotation(annotation=made[2], reviewer=reviewer)
    reject_annotation(annotation=made[1], reviewer=reviewer, note="Off by a slice.")

    assert consensus_annotations(scan) == [made[0], made[2]]
    consensus = layers.resolve_layer(scan, "consensus")
    assert [f.name for f in consensus.files] == [made[0].file.name, made[2].file.name]
    assert consensus.stem == f"consensus_{made[0].pk}-{made[2].pk}"  # cached per set of approvals
    row = next(row for row in layers.viewer_layers(scan, []) if row["key"] == "consensus")
    assert row["title"] == layers.CONSENSUS_TITLE and "approved" in row["description"]

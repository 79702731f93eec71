"""Consensus, agreement and study statistics through the REST API, on stored NIfTI files."""

from __future__ import annotations

import csv
import io

import nibabel as nib
import numpy as np
import pytest
from django.core.files.storage import default_storage
from rest_framework.test import APIClient

from inference import metrics
from review.models import Agreement, AnnotationRevision, Consensus, PredictionComparison
from review.services import approve_annotation
from scans.models import Annotation
from segmentation.models import InferenceJob, ModelVersion, Prediction
from tests.review.conftest import ball, make_annotation, make_scan, nifti_bytes, store

pytestmark = pytest.mark.django_db


def client_for(user) -> APIClient:  # type: ignore[no-untyped-def]
    client = APIClient()
    client.force_authenticate(user)
    return client


def approved_tumor_scan(tumor_scan, reviewer, **kwargs):  # type: ignore[no-untyped-def]
    scan, annotations = tumor_scan(**kwargs)
    for a in annotations:
        approve_annotation(annotation=a, reviewer=reviewer)
    return scan, annotations


def load(name: str) -> np.ndarray:
    with default_storage.open(name, "rb") as handle:
        import gzip

        return np.asanyarray(nib.Nifti1Image.from_bytes(gzip.decompress(handle.read())).dataobj)


def masks_of(annotations: list[Annotation]) -> list[np.ndarray]:
    return [load(a.file.name) == 14 for a in annotations]


def make_prediction(scan, labels: np.ndarray, *, name: str = "tumor-net", version: str = "1.0") -> Prediction:  # type: ignore[no-untyped-def]
    model, _ = ModelVersion.objects.get_or_create(
        name=name,
        version=version,
        defaults={"task": "tumor", "sha256": "0" * 64, "structures": [0, 14], "card": {}, "folder": "x"},
    )
    job = InferenceJob.objects.create(scan=scan, model_version=model, state=InferenceJob.State.SUCCEEDED)
    stored = store(
        f"labs/{scan.lab_id}/predictions/{scan.pk}_{name}.nii.gz", nifti_bytes(labels.astype(np.uint8))
    )
    return Prediction.objects.create(
        job=job, scan=scan, model_version=model, labels=stored, uncertainty=stored, manifest={}
    )


def test_consensus_stores_majority_staple_and_disagreement_maps_with_rater_reliability(tumor_scan, reviewer):
    scan, annotations = approved_tumor_scan(tumor_scan, reviewer)

    response = client_for(reviewer).post(f"/api/scans/{scan.pk}/consensus", {}, format="json")

    assert response.status_code == 201, response.content
    (consensus,) = response.json()["consensus"]
    assert consensus["structure"] == "tumor"
    assert [r["annotator_name"] for r in consensus["raters"]] == ["A", "B", "C"]
    assert all(0.8 < r["sensitivity"] <= 1 and 0.9 < r["specificity"] <= 1 for r in consensus["raters"])
    row = Consensus.objects.get(scan=scan)
    masks = masks_of(annotations)
    assert np.array_equal(load(row.majority.name), metrics.majority_vote(masks).astype(np.uint8) * 14)
    assert np.array_equal(load(row.staple.name) == 14, metrics.staple(masks).consensus())
    assert load(row.disagreement.name) == pytest.approx(metrics.disagreement_map(masks))
    file_response = client_for(reviewer).get(consensus["files"]["disagreement"])
    assert file_response.status_code == 200


def test_agreement_rows_hold_pairwise_dice_ci_gen_kappa_and_volume_rmse(tumor_scan, reviewer):
    scan, annotations = approved_tumor_scan(tumor_scan, reviewer)
    client = client_for(reviewer)
    client.post(f"/api/scans/{scan.pk}/consensus", {}, format="json")

    body = client.get(f"/api/scans/{scan.pk}/agreement").json()

    (row,) = body["annotators"]
    masks = masks_of(annotations)
    volumes = np.array([m.sum() * 0.4 * 0.4 * 0.5 for m in masks])
    assert row["ci_gen"] == pytest.approx(metrics.ci_gen(masks))
    assert row["fleiss_kappa"] == pytest.approx(metrics.fleiss_kappa(masks))
    assert row["mean_pairwise_dice"] == pytest.approx(np.mean(list(metrics.pairwise_dice(masks).values())))
    assert row["volume_rmse_mm3"] == pytest.approx(np.sqrt(np.mean((volumes - volumes.mean()) ** 2)))
    assert row["max_volume_difference_mm3"] == pytest.approx(volumes.max() - volumes.min())
    assert [(p["first"], p["second"]) for p in row["pairs"]] == [("A", "B"), ("A", "C"), ("B", "C")]
    assert 0.8 < row["mean_pairwise_dice"] < 0.97
    table = list(
        csv.DictReader(
            io.StringIO(
                b"".join(client.get(f"/api/scans/{scan.pk}/agreement.csv").streaming_content).decode()
            )
        )
    )
    assert [(r["kind"], r["first"], r["second"]) for r in table] == [
        ("annotators", "all 3 annotators", ""),
        ("annotator_vs_annotator", "A", "B"),
        ("annotator_vs_annotator", "A", "C"),
        ("annotator_vs_annotator", "B", "C"),
    ]
    assert float(table[0]["fleiss_kappa"]) == pytest.approx(row["fleiss_kappa"], rel=1e-5)
    listed = client.get(f"/api/scans/{scan.pk}/consensus").json()
    assert [c["structure"] for c in listed["consensus"]] == ["tumor"]


def test_a_prediction_is_compared_with_each_annotator_and_the_consensus_beside_the_human_baseline(
    tumor_scan, reviewer
):
    scan, annotations = approved_tumor_scan(tumor_scan, reviewer)
    predicted = ball(tuple(scan.shape), (16.5, 15.5, 14), 7.2)
    make_prediction(scan, predicted.astype(np.uint8) * 14)

    client_for(reviewer).post(f"/api/scans/{scan.pk}/consensus", {}, format="json")

    rows = PredictionComparison.objects.filter(scan=scan)
    assert sorted(r.reference_label for r in rows) == [
        "A",
        "B",
        "C",
        "Majority-vote consensus",
        "STAPLE consensus",
    ]
    masks = masks_of(annotations)
    first = rows.get(annotation=annotations[0])
    assert first.dice == pytest.approx(metrics.dice(predicted, masks[0]))
    assert first.hd95_mm == pytest.approx(metrics.hd95_mm(masks[0], predicted, (0.4, 0.4, 0.5)))
    assert first.msd_mm == pytest.approx(metrics.msd_mm(masks[0], predicted, (0.4, 0.4, 0.5)))
    assert first.dice_matching_any == pytest.approx(metrics.dice_matching_any(predicted, masks))
    assert first.human_dice == pytest.approx(Agreement.objects.get(scan=scan).mean_pairwise_dice)
    assert first.dice_matching_any >= first.dice


def test_consensus_needs_two_approved_annotations(tumor_scan, reviewer):
    scan, (first, *_) = tumor_scan()
    approve_annotation(annotation=first, reviewer=reviewer)

    response = client_for(reviewer).post(f"/api/scans/{scan.pk}/consensus", {}, format="json")

    assert response.status_code == 400
    assert "at least two approved annotations" in response.json()["detail"]


def test_annotations_with_their_own_label_values_are_read_through_their_structure_table(lab, reviewer):
    shape = (20, 20, 20)
    scan = make_scan(lab=lab, ct=np.zeros(shape, np.int16))
    # Tumor database files label the tumor 1, which is the heart in the canonical table.
    for name, radius in (("A", 5.0), ("B", 6.0)):
        a = make_annotation(
            scan=scan,
            labels=ball(shape, (10, 10, 10), radius).astype(np.uint8),
            annotator=name,
            structures={"tumor": 1},
        )
        approve_annotation(annotation=a, reviewer=reviewer)

    response = client_for(reviewer).post(f"/api/scans/{scan.pk}/consensus", {}, format="json")

    assert [c["structure"] for c in response.json()["consensus"]] == ["tumor"]


def test_another_lab_cannot_read_or_compute_agreement(tumor_scan, reviewer, other_lab):
    from tests.factories import member_of

    scan, _ = approved_tumor_scan(tumor_scan, reviewer)
    outsider = member_of(other_lab, role="admin")
    client = client_for(outsider)

    assert client.post(f"/api/scans/{scan.pk}/consensus", {}, format="json").status_code == 404
    assert client.get(f"/api/scans/{scan.pk}/agreement").status_code == 404
    assert client.get(f"/api/studies/{scan.study.pk}/agreement.csv").status_code == 404
    assert client.get(f"/api/studies/{scan.study.pk}/dice.json").status_code == 404


def test_study_csvs_dice_values_and_variability(lab, reviewer, tumor_scan):
    from tests.factories import StudyFactory

    study = StudyFactory(lab=lab)
    for mouse, time_point in (("M01", "0h"), ("M01", "24h"), ("M02", "0h")):
        scan, _ = approved_tumor_scan(tumor_scan, reviewer, study=study, mouse=mouse, time_point=time_point)
        make_prediction(scan, ball(tuple(scan.shape), (16, 15, 14), 7.1).astype(np.uint8) * 14)
        client_for(reviewer).post(f"/api/scans/{scan.pk}/consensus", {}, format="json")
    client = client_for(reviewer)

    agreement = list(
        csv.DictReader(
            io.StringIO(
                b"".join(client.get(f"/api/studies/{study.pk}/agreement.csv").streaming_content).decode()
            )
        )
    )
    variability = list(
        csv.DictReader(
            io.StringIO(
                b"".join(client.get(f"/api/studies/{study.pk}/variability.csv").streaming_content).decode()
            )
        )
    )
    dice = client.get(f"/api/studies/{study.pk}/dice.json")

    kinds = {row["kind"] for row in agreement}
    assert kinds == {
        "annotators",
        "annotator_vs_annotator",
        "model_vs_annotation",
        "model_vs_majority",
        "model_vs_staple",
    }
    assert {row["mouse"] for row in agreement} == {"M01", "M02"}
    (tumor,) = variability
    assert tumor["structure"] == "tumor"
    assert (tumor["n_mice"], tumor["n_scans"], tumor["n_annotators"]) == ("2", "3", "3")
    # Identical drawings on every scan: no spread between mice or time points, some between annotators.
    assert float(tumor["intersubject_percent"]) == pytest.approx(0.0, abs=1e-9)
    assert float(tumor["intraannotator_percent"]) == pytest.approx(0.0, abs=1e-9)
    assert 1.0 < float(tumor["interannotator_percent"]) < 40.0
    # The box plots' numbers: three annotators give three pairs per scan, the model one per annotator.
    assert dice.status_code == 200
    assert len(dice.json()["tumor"]["annotator vs annotator"]) == 9
    assert len(dice.json()["tumor"]["model vs annotator"]) == 9
    assert all(0.0 <= v <= 1.0 for values in dice.json()["tumor"].values() for v in values)


def test_two_models_on_the_same_scans_get_a_wilcoxon_test(lab, reviewer, tumor_scan):
    from tests.factories import StudyFactory

    study = StudyFactory(lab=lab)
    shape = (32, 30, 28)
    for index in range(6):
        scan, _ = approved_tumor_scan(tumor_scan, reviewer, study=study, mouse=f"M{index:02d}")
        make_prediction(scan, ball(shape, (16, 15, 14), 7.1).astype(np.uint8) * 14, name="good", version="1")
        make_prediction(scan, ball(shape, (18, 15, 14), 6.0).astype(np.uint8) * 14, name="poor", version="1")
        client_for(reviewer).post(f"/api/scans/{scan.pk}/consensus", {}, format="json")

    rows = list(
        csv.DictReader(
            io.StringIO(
                b"".join(
                    client_for(reviewer).get(f"/api/studies/{study.pk}/models.csv").streaming_content
                ).decode()
            )
        )
    )

    staple_row = next(r for r in rows if r["reference"] == "staple")
    assert (staple_row["first"], staple_row["second"], staple_row["n_pairs"]) == ("good@1", "poor@1", "6")
    assert float(staple_row["p_value"]) == pytest.approx(2 / 64)
    assert staple_row["significant"] == "True"


def test_a_prediction_is_promoted_to_a_draft_annotation_that_remembers_it(tumor_scan, member):
    scan, _ = tumor_scan()
    prediction = make_prediction(scan, ball(tuple(scan.shape), (16, 15, 14), 7.0).astype(np.uint8) * 14)

    response = client_for(member).post(f"/api/predictions/{prediction.pk}/promote", {}, format="json")

    assert response.status_code == 201, response.content
    body = response.json()
    assert (body["status"], body["prediction"], body["structures"]) == ("draft", prediction.pk, {"tumor": 14})
    annotation = Annotation.objects.get(pk=body["id"])
    assert AnnotationRevision.objects.get(annotation=annotation).prediction == prediction
    assert np.array_equal(load(annotation.file.name), load(prediction.labels.name))

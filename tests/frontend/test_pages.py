"""The researcher's pages and files through Django's test client: lab scoping and the switcher,
the viewer's layers (preview, full resolution, regions), QC pictures and CSV downloads."""

from __future__ import annotations

import csv
import gzip
import io
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import pytest
from django.http import StreamingHttpResponse
from django.http.response import HttpResponseBase
from django.test import Client

from inference.structures import BY_NAME
from labs.models import Lab
from review.models import Consensus, ConsensusRater
from review.services import approve_annotation, create_annotation
from scans.models import Scan
from scans.services import register_scan
from segmentation.models import Prediction
from tests.demo_scan import add_prediction, write_phantom
from tests.factories import LabFactory, member_of
from tests.nifti import load_nifti

pytestmark = pytest.mark.django_db

SHAPE = (40, 32, 64)


@pytest.fixture
def phantom_files(tmp_path: Path) -> tuple[Path, Path, Path]:
    files = (tmp_path / "CT_M01_0h.nii", tmp_path / "labels.nii", tmp_path / "uncertainty.nii")
    write_phantom(*files, shape=SHAPE, spacing_mm=0.5)
    return files


@pytest.fixture
def lab() -> Lab:
    return LabFactory.create(name="Tumor Lab")


@pytest.fixture
def user(lab: Lab) -> Any:
    return member_of(lab, username="rita")


@pytest.fixture
def client_for(user: Any) -> Client:
    client = Client()
    client.force_login(user)
    return client


@pytest.fixture
def scan(lab: Lab, user: Any, phantom_files: tuple[Path, Path, Path], settings: Any) -> Scan:
    settings.LABSEG_SEGMENT_ON_UPLOAD = False
    ct, labels, uncertainty = phantom_files
    scan = register_scan(
        lab=lab,
        uploaded_file_path_or_file=ct,
        original_filename=ct.name,
        study_name="Phantom study",
        mouse_identifier="M01",
        time_point_label="0h",
        user=user,
    )
    add_prediction(scan=scan, labels_path=labels, uncertainty_path=uncertainty)
    return scan


def _streamed(response: HttpResponseBase) -> bytes:
    """The body of a streamed download (a FileResponse or a CSV StreamingHttpResponse)."""
    assert isinstance(response, StreamingHttpResponse), type(response).__name__
    return response.getvalue()


def _nifti(response: HttpResponseBase) -> nib.Nifti1Image:
    body = _streamed(response)
    return nib.Nifti1Image.from_bytes(gzip.decompress(body) if body[:2] == b"\x1f\x8b" else body)


def test_pages_show_only_the_current_labs_data_and_the_switcher_changes_it(scan: Scan, user: Any) -> None:
    other = LabFactory.create(name="Other Lab")
    member_of(other, username="otto")
    user.memberships.create(lab=other)
    client = Client()
    client.force_login(user)
    client.post("/lab/", {"lab": other.pk, "next": "/"})
    assert "Phantom study" not in client.get("/").content.decode()
    client.post("/lab/", {"lab": scan.lab_id, "next": "/"})
    page = client.get("/").content.decode()
    assert "Phantom study" in page and "Other Lab" in page  # the switcher lists both labs


def test_the_scan_page_says_how_the_scan_was_read(client_for: Client, scan: Scan) -> None:
    # The pipeline's own words from the run's manifest (here a calibrated 8-bit head whose brain
    # was grown to its skull), beside the QC verdict they explain.
    prediction = Prediction.objects.get(scan=scan)
    manifest = {
        **prediction.manifest,
        "qc": {
            "status": "needs_review",
            "reasons": [{"code": "intensity_calibrated", "message": "calibrated"}],
            "pass_agreement": {"heart": 0.951, "kidney_left": 0.9},
        },
        "intensity": {"units": "calibrated", "findings": ["Not in Hounsfield units (values 0 to 132)."]},
        "orientation": {"summary": "Header and anatomy disagree: the mouse lies on its side."},
        "postprocess": {"braincase": {"finding": "The brain the model drew (242 mm^3) was grown."}},
    }
    # Predictions are immutable through the model; a queryset update stands for a run that wrote this.
    Prediction.objects.filter(pk=prediction.pk).update(manifest=manifest)

    page = client_for.get(f"/scans/{scan.pk}/").content.decode()

    reading = page[page.index("How the scan was read") :]
    for words in ("Not in Hounsfield units", "lies on its side", "was grown", "heart 0.95, kidney left 0.90"):
        assert words in reading.split("</details>")[0]


def test_a_user_outside_the_lab_sees_nothing_of_it(scan: Scan) -> None:
    outsider_lab = LabFactory.create(name="Elsewhere")
    client = Client()
    client.force_login(member_of(outsider_lab, username="eve"))
    for url in (f"/scans/{scan.pk}/", f"/scans/{scan.pk}/layers/ct.nii.gz", f"/scan/{scan.pk}/volumes.csv"):
        assert client.get(url).status_code == 404, url
    client.post("/lab/", {"lab": scan.lab_id, "next": "/"})
    assert "Phantom study" not in client.get("/").content.decode()


def test_the_viewer_page_carries_layers_volumes_lesions_and_metastasis_counts(
    client_for: Client, scan: Scan
) -> None:
    response = client_for.get(f"/scans/{scan.pk}/")
    config = response.context["config"]
    prediction = Prediction.objects.get(scan=scan)
    assert [layer["key"] for layer in config["layers"]] == [
        "ct",
        f"pred-{prediction.pk}",
        f"unc-{prediction.pk}",
    ]
    assert {v["name"] for v in config["volumes"]} >= {"liver", "heart", "tumor", "metastasis"}
    assert sum(config["metastasisCounts"].values()) == len(config["lesions"]) == 3
    assert config["models"][0]["label"] == "demo-phantom@0"
    assert config["defaultWindow"] == "soft"  # the phantom is in HU, with air at -1000
    assert b"vendor/niivue/niivue.js" in response.content
    assert config["metastasesFoundFromMm"] == {}  # the demo's model measured no smallest size


def test_the_viewer_says_from_what_size_a_count_runs(client_for: Client, scan: Scan) -> None:
    prediction = Prediction.objects.get(scan=scan)
    organ = next(o for o, n in prediction.metastasis_counts.items() if n is not None)
    # As the pipeline stores a model whose card measured that size (predictions are immutable).
    manifest = {**prediction.manifest, "metastases_found_from_mm": {organ: 0.5}}
    Prediction.objects.filter(pk=prediction.pk).update(manifest=manifest)

    config = client_for.get(f"/scans/{scan.pk}/").context["config"]

    assert config["metastasesFoundFromMm"] == {organ: 0.5}


def test_the_preview_is_made_once_on_a_coarser_grid_that_lies_on_the_scan(
    client_for: Client, scan: Scan, settings: Any, media_root: Path
) -> None:
    settings.LABSEG_PREVIEW_MAX_VOXELS = int(np.prod(SHAPE)) // 8
    prediction = Prediction.objects.get(scan=scan)
    ct = _nifti(client_for.get(f"/scans/{scan.pk}/layers/ct.nii.gz"))
    labels = _nifti(client_for.get(f"/scans/{scan.pk}/layers/pred-{prediction.pk}.nii.gz"))
    assert ct.shape == labels.shape == (20, 16, 32)
    np.testing.assert_allclose(ct.affine, labels.affine)
    np.testing.assert_allclose(ct.affine @ [0, 0, 0, 1], np.asarray(scan.affine) @ [0.5, 0.5, 0.5, 1])
    assert labels.get_data_dtype() == np.uint8
    assert BY_NAME["metastasis"].id in np.unique(np.asarray(labels.dataobj))
    cached = sorted(p.name for p in (media_root / "previews" / f"scan_{scan.pk}").iterdir())
    assert cached == ["ct.f2.nii.gz", f"pred-{prediction.pk}.own.f2.nii.gz"]


def test_a_model_layer_holds_only_that_models_structures(client_for: Client, scan: Scan) -> None:
    # A lesion model's file also holds the organ map its lesions were allocated with; its layer
    # must not paint those organs (unticking "Organs" would leave them on screen).
    prediction = Prediction.objects.get(scan=scan)
    lesion_ids = [0, BY_NAME["tumor"].id, BY_NAME["metastasis"].id]
    type(prediction.model_version).objects.filter(pk=prediction.model_version_id).update(
        structures=lesion_ids
    )

    shown = np.unique(
        np.asarray(_nifti(client_for.get(f"/scans/{scan.pk}/layers/pred-{prediction.pk}.nii.gz")).dataobj)
    )
    full = np.unique(
        np.asarray(
            _nifti(client_for.get(f"/scans/{scan.pk}/layers/pred-{prediction.pk}.nii.gz?level=full")).dataobj
        )
    )

    assert set(shown.tolist()) <= set(lesion_ids) and BY_NAME["metastasis"].id in shown
    assert set(full.tolist()) <= set(lesion_ids) and BY_NAME["liver"].id not in full


def test_a_big_scan_is_refused_whole_but_served_by_region(
    client_for: Client, scan: Scan, settings: Any
) -> None:
    settings.LABSEG_PREVIEW_MAX_BYTES = scan.size_bytes - 1
    refused = client_for.get(f"/scans/{scan.pk}/layers/ct.nii.gz?level=full")
    assert refused.status_code == 413
    assert "Full resolution of this region" in refused.json()["detail"]
    settings.LABSEG_PREVIEW_MAX_VOXELS = 16**3
    centre_mm = np.asarray(scan.affine) @ [20, 16, 32, 1]
    response = client_for.get(f"/scans/{scan.pk}/layers/ct.nii.gz?region={','.join(map(str, centre_mm[:3]))}")
    region = _nifti(response)
    assert region.shape == (16, 16, 16)
    assert response["X-Labseg-Region"] == "12,8,24,28,24,40"
    source = load_nifti(scan.file.path)
    np.testing.assert_array_equal(np.asarray(region.dataobj), np.asarray(source.dataobj)[12:28, 8:24, 24:40])
    bad = client_for.get(f"/scans/{scan.pk}/layers/ct.nii.gz?region=here")
    assert bad.status_code == 413 and "mm" in bad.json()["detail"]


def test_annotations_are_outlined_in_canonical_ids_and_two_make_a_consensus(
    client_for: Client, scan: Scan, user: Any, tmp_path: Path
) -> None:
    tumor = np.zeros(SHAPE, dtype=np.uint8)
    tumor[30:38, 10:20, 20:30] = 1
    annotations = []
    for name, shift in (("A", 0), ("B", 1)):
        path = tmp_path / f"Annotator_{name}_M01_0h.nii.gz"
        nib.save(nib.Nifti1Image(np.roll(tumor, shift, axis=0), np.asarray(scan.affine)), str(path))
        annotations.append(
            create_annotation(
                scan=scan,
                file=path,
                original_filename=path.name,
                annotator_name=name,
                user=user,
                structures={"tumor": 1},
            )
        )

    def layers() -> list[dict[str, Any]]:
        return client_for.get(f"/scans/{scan.pk}/").context["config"]["layers"]

    # The consensus is made of approved annotations only (review.services.consensus_annotations).
    assert [k["key"] for k in layers() if k["kind"] == "consensus"] == []
    assert client_for.get(f"/scans/{scan.pk}/layers/consensus.nii.gz").status_code == 404
    reviewer = member_of(scan.lab, role="reviewer", username="rev")
    for annotation in annotations:
        approve_annotation(annotation=annotation, reviewer=reviewer)
    rows = layers()
    keys = [layer["key"] for layer in rows]
    assert keys[-1] == "consensus" and sum(k.startswith("ann-") for k in keys) == 2
    assert rows[-1]["title"] == "Consensus (majority of approved)"
    assert "approved annotations" in rows[-1]["description"]
    drawn = _nifti(client_for.get(f"/scans/{scan.pk}/layers/{keys[-3]}.nii.gz"))
    assert set(np.unique(np.asarray(drawn.dataobj))) == {0, BY_NAME["tumor"].id}
    assert drawn.header.get_intent()[0] == "label"  # drawn as outlines
    consensus = np.asarray(_nifti(client_for.get(f"/scans/{scan.pk}/layers/consensus.nii.gz")).dataobj)
    assert set(np.unique(consensus)) == {0, BY_NAME["tumor"].id}
    # The QC picture outlines the consensus on the mid-coronal slice.
    picture = _streamed(client_for.get(f"/scans/{scan.pk}/qc.png"))
    assert picture[:4] == b"\x89PNG"


def test_the_qc_picture_and_thumbnail_are_pngs(client_for: Client, scan: Scan) -> None:
    full = _streamed(client_for.get(f"/scans/{scan.pk}/qc.png"))
    thumb = _streamed(client_for.get(f"/scans/{scan.pk}/qc.png?size=thumb"))
    assert full[:8] == thumb[:8] == b"\x89PNG\r\n\x1a\n"
    from PIL import Image

    full_image, thumb_image = Image.open(io.BytesIO(full)), Image.open(io.BytesIO(thumb))
    assert thumb_image.height == 144 and full_image.width > full_image.height  # two panels side by side


def test_csv_downloads_per_study_mouse_and_scan_agree_with_the_stored_volumes(
    client_for: Client, scan: Scan
) -> None:
    prediction = Prediction.objects.get(scan=scan)
    stored = {v.name: v.volume_mm3 for v in prediction.volumes.all()}
    mouse = scan.time_point.mouse
    for scope, pk in (("study", mouse.study_id), ("mouse", mouse.pk), ("scan", scan.pk)):
        response = client_for.get(f"/{scope}/{pk}/volumes.csv")
        assert response["Content-Disposition"].startswith("attachment")
        rows = list(csv.DictReader(io.StringIO(_streamed(response).decode())))
        assert {r["structure"]: float(r["volume_mm3"]) for r in rows} == pytest.approx(stored)
    tumor = list(
        csv.DictReader(io.StringIO(b"".join(client_for.get(f"/mouse/{mouse.pk}/tumor.csv")).decode()))
    )
    assert len(tumor) == 1 and float(tumor[0]["tumor_volume_mm3"]) == pytest.approx(stored["tumor"])
    assert tumor[0]["days"] == "0.0" and tumor[0]["source"] == "demo-phantom@0"
    lesions = _streamed(client_for.get(f"/scan/{scan.pk}/lesions.csv")).decode()
    assert lesions.count("\n") == 1 + 3


def test_the_mouse_page_warns_when_the_tumor_crosses_the_humane_endpoint(
    client_for: Client, scan: Scan
) -> None:
    mouse = scan.time_point.mouse
    tumor_mm3 = Prediction.objects.get(scan=scan).volumes.get(name="tumor").volume_mm3
    calm = client_for.get(f"/mice/{mouse.pk}/").content.decode()
    assert 'id="endpoint-warning" class="alert" role="alert" hidden' in calm
    crossed = client_for.get(f"/mice/{mouse.pk}/?endpoint_ul={tumor_mm3 / 2:.3f}").content.decode()
    assert "reached the humane endpoint" in crossed


def test_the_mouse_series_carries_the_approved_annotations_consensus_with_its_range(
    client_for: Client, scan: Scan, user: Any, tmp_path: Path
) -> None:
    tumor = np.zeros(SHAPE, dtype=np.uint8)
    tumor[30:38, 10:20, 20:30] = 1
    annotations = []
    for name, shift in (("A", 0), ("B", 1)):
        path = tmp_path / f"Annotator_{name}_M01_0h.nii.gz"
        nib.save(nib.Nifti1Image(np.roll(tumor, shift, axis=0), np.asarray(scan.affine)), str(path))
        annotations.append(
            create_annotation(
                scan=scan, file=path, original_filename=path.name, annotator_name=name, user=user,
                structures={"tumor": 1},
            )
        )  # fmt: skip
    consensus = Consensus.objects.create(
        scan=scan,
        structure_id=BY_NAME["tumor"].id,
        majority="consensus/majority.nii.gz",
        staple="consensus/staple.nii.gz",
        disagreement="consensus/disagreement.nii.gz",
        majority_volume_mm3=100.0,
        staple_volume_mm3=101.0,
        disagreeing_voxels=8,
    )
    for annotation, volume in zip(annotations, (96.0, 104.0), strict=True):
        ConsensusRater.objects.create(
            consensus=consensus, annotation=annotation, sensitivity=0.9, specificity=0.99, volume_mm3=volume
        )
    page_data = client_for.get(f"/mice/{scan.time_point.mouse_id}/").context["page_data"]
    annotated = page_data["series"][0]["tumor_annotated"]
    assert [(p["volume_mm3"], p["low_mm3"], p["high_mm3"], p["days"]) for p in annotated] == [
        (100.0, 96.0, 104.0, 0.0)
    ]
    assert "2 approved annotations" in annotated[0]["source"]

"""The happy path with real mouse micro-CT files: stored exactly as nibabel reads them."""

from __future__ import annotations

import hashlib
import io

import nibabel as nib
import numpy as np
import pytest
from django.core.files.storage import default_storage

from scans.models import Scan

from .conftest import upload_annotation, upload_scan
from .niftis import labels_for, nifti_bytes, volume

REAL_SCANS = [
    "C57BL6_J_.nii.gz",
    "BALB_CJ_.nii.gz",
    "low_res_template_UCHAR.nii.gz",
]
REAL_LABEL_MAPS = [
    "low_res_template_UCHAR-label.nii.gz",
    "35_mic_23strain_mus_template_UCHAR-label.nii.gz",
]


@pytest.mark.parametrize("filename", REAL_SCANS)
def test_it_stores_a_real_micro_ct_scan_exactly_as_nibabel_reads_it(client_a, realdata, filename):
    path = realdata / filename
    content = path.read_bytes()
    image = nib.load(str(path))

    response = upload_scan(client_a, content, filename=filename, mouse=filename.split(".")[0][:60])

    assert response.status_code == 201, response.json()
    scan = Scan.objects.get(pk=response.json()["id"])  # read back from PostgreSQL
    assert scan.shape == list(image.shape[:3])
    assert scan.spacing_mm == [float(z) for z in image.header.get_zooms()[:3]]
    assert scan.affine == image.affine.tolist()
    assert scan.orientation == "".join(nib.aff2axcodes(image.affine))
    assert scan.dtype == str(image.get_data_dtype())
    assert scan.sha256 == hashlib.sha256(content).hexdigest()
    assert scan.size_bytes == len(content)
    with default_storage.open(scan.file.name, "rb") as stored:
        assert stored.read() == content  # the original file is never altered


@pytest.mark.parametrize("filename", REAL_LABEL_MAPS)
def test_a_real_label_map_is_refused_as_a_scan_and_nothing_is_stored(
    client_a, realdata, filename, media_root
):
    content = (realdata / filename).read_bytes()
    # Under a neutral name too: the content alone says it is a label map.
    for name in (filename, "CT_M01_0h.nii.gz"):
        response = upload_scan(client_a, content, filename=name, mouse="M01")

        assert response.status_code == 400
        assert "looks like a label map (an annotation), not a CT scan" in response.json()["detail"]
        assert "/annotations/" in response.json()["detail"]
    assert not Scan.objects.exists()
    assert not [p for p in media_root.rglob("*") if p.is_file() and "tmp" not in p.parts]


def test_it_records_lps_orientation_uint8_and_anisotropic_spacing(client_a, realdata):
    content = (realdata / "C57BL6_J_.nii.gz").read_bytes()

    body = upload_scan(client_a, content, filename="C57BL6_J_.nii.gz").json()

    assert body["orientation"] == "LPS"
    assert body["dtype"] == "uint8"
    assert body["shape"] == [170, 170, 147]
    assert body["spacing_mm"][0] == body["spacing_mm"][1] != body["spacing_mm"][2]


def test_its_intensity_statistics_match_a_full_read(client_a, realdata):
    path = realdata / "C57BL6_J_.nii.gz"
    data = np.asanyarray(nib.load(str(path)).dataobj).astype(np.float64)

    body = upload_scan(client_a, path.read_bytes(), filename=path.name).json()

    assert body["intensity_min"] == data.min()
    assert body["intensity_max"] == data.max()
    assert body["intensity_mean"] == pytest.approx(data.mean(), rel=1e-9)
    assert body["intensity_std"] == pytest.approx(data.std(), rel=1e-9)


def test_it_serves_the_stored_file_and_a_thumbnail(client_a, realdata):
    content = (realdata / "low_res_template_UCHAR.nii.gz").read_bytes()
    body = upload_scan(client_a, content, filename="low_res_template_UCHAR.nii.gz").json()

    download = client_a.get(body["file_url"])
    thumbnail = client_a.get(body["thumbnail_url"])

    assert download.status_code == 200
    assert b"".join(download.streaming_content) == content
    assert thumbnail.status_code == 200
    assert b"".join(thumbnail.streaming_content).startswith(b"\x89PNG")


def test_it_creates_mouse_and_time_point_and_accepts_a_label_map_on_the_scan_grid(client_a, realdata):
    scan = upload_scan(
        client_a, (realdata / "low_res_template_UCHAR.nii.gz").read_bytes(), time_point="8d"
    ).json()
    labels = (realdata / "low_res_template_UCHAR-label.nii.gz").read_bytes()

    response = upload_annotation(
        client_a,
        scan["id"],
        labels,
        filename="Annotator_A.nii.gz",
        structures='{"brain": 15, "bones": 1, "heart": 2, "liver": 3, "spleen": 21}',
    )

    assert response.status_code == 201, response.json()
    assert response.json()["structures"]["brain"] == 15
    assert scan["offset_hours"] == 192.0
    mouse = client_a.get(f"/api/mice/{scan['mouse']}/").json()
    assert [tp["label"] for tp in mouse["time_points"]] == ["8d"]


def test_a_nifti2_and_an_uncompressed_file_are_accepted(client_a):
    data = volume()

    nifti2 = upload_scan(client_a, nifti_bytes(data, version=2), filename="a.nii.gz", mouse="M01")
    plain = upload_scan(client_a, nifti_bytes(data + 1, compressed=False), filename="b.nii", mouse="M02")
    four_d = upload_scan(client_a, nifti_bytes((data + 2)[..., None]), filename="c.nii.gz", mouse="M03")

    assert (nifti2.status_code, plain.status_code, four_d.status_code) == (201, 201, 201)
    assert four_d.json()["shape"] == list(data.shape)


def test_an_annotation_without_mapping_uses_canonical_ids(client_a):
    scan = upload_scan(client_a, nifti_bytes(volume())).json()

    response = upload_annotation(client_a, scan["id"], nifti_bytes(labels_for(volume(), value=14)))

    assert response.json()["structures"] == {"tumor": 14}


@pytest.mark.parametrize("dtype", ["int16", ">i2", "uint16", "int8", "uint8", "float32", ">f8", "int32"])
def test_intensity_statistics_are_exact_for_every_voxel_type_and_byte_order(client_a, dtype):
    kind = np.dtype(dtype)
    values = volume(shape=(40, 30, 20), seed=5).astype(np.float64) / (1 if kind.kind == "f" else 8)
    data = (
        values.astype(kind) if kind.kind == "f" else np.clip(values, np.iinfo(kind).min, np.iinfo(kind).max)
    )
    header = nib.Nifti1Header(endianness=kind.byteorder if kind.byteorder in "<>" else None)
    header.set_data_dtype(kind)
    image = nib.Nifti1Image(data.astype(kind), np.diag([0.2, 0.2, 0.2, 1.0]), header)
    buffer = io.BytesIO()
    image.to_file_map({"image": nib.FileHolder(fileobj=buffer)})
    expected = np.asanyarray(nib.Nifti1Image.from_bytes(buffer.getvalue()).dataobj).astype(np.float64)

    body = upload_scan(client_a, buffer.getvalue(), filename="typed.nii").json()

    assert body["dtype"] == kind.newbyteorder("=").name
    assert (body["intensity_min"], body["intensity_max"]) == (expected.min(), expected.max())
    assert body["intensity_mean"] == pytest.approx(expected.mean(), rel=1e-12, abs=1e-9)
    assert body["intensity_std"] == pytest.approx(expected.std(), rel=1e-9)

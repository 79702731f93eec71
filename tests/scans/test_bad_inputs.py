"""A corpus of bad uploads: each refused with its own clear 4xx message, leaving nothing behind."""

from __future__ import annotations

import gzip
import os
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import pytest

from scans.models import Scan
from scans.services import register_scan
from scans.validation import ScanRejected

from .conftest import upload_annotation, upload_scan
from .niftis import affine_for, gzip_stream, header_only, labels_for, nifti_bytes, volume


@dataclass(frozen=True)
class BadScan:
    kind: str
    build: Callable[[], tuple[str, bytes]]
    status: int
    says: str


def _wrong_magic() -> tuple[str, bytes]:
    raw = bytearray(nifti_bytes(volume(), compressed=False))
    raw[344:348] = b"abc\x00"
    return "wrong_magic.nii", bytes(raw)


def _analyze_pair_header() -> tuple[str, bytes]:
    raw = bytearray(nifti_bytes(volume(), compressed=False))
    raw[344:348] = b"ni1\x00"
    return "pair.nii", bytes(raw)


def _complex_voxels() -> tuple[str, bytes]:
    return "complex.nii.gz", nifti_bytes((volume().astype(np.float32) * (1 + 1j)).astype(np.complex64))


def _gzip_bomb_behind_small_header() -> tuple[str, bytes]:
    # The header declares 64^3 uint8 voxels; the stream then inflates to 200 MB of zeros.
    return "bomb.nii.gz", gzip_stream(header_only((64, 64, 64)), 200 * 1024**2)


def _gzip_bomb_declared() -> tuple[str, bytes]:
    # 1024^3 float64 = 8 GiB once inflated (within the voxel limit), declared by the header, in 1 KB.
    return "bomb_declared.nii.gz", gzip_stream(header_only((1024, 1024, 1024), "float64"), 1024**2)


CORPUS = [
    BadScan("empty file", lambda: ("empty.nii.gz", b""), 400, "the file is empty"),
    BadScan(
        "random bytes named .nii.gz", lambda: ("random.nii.gz", os.urandom(4096)), 400, "not gzip-compressed"
    ),
    BadScan(
        "random bytes gzip-compressed",
        lambda: ("random2.nii.gz", gzip.compress(os.urandom(4096))),
        400,
        "neither 348 nor 540",
    ),
    BadScan(
        "truncated gzip",
        lambda: ("cut.nii.gz", nifti_bytes(volume())[:2000]),
        400,
        "compressed file ends early",
    ),
    BadScan(
        "truncated data",
        lambda: ("cut.nii", nifti_bytes(volume(), compressed=False)[:9000]),
        400,
        "but the file holds only",
    ),
    BadScan(
        "truncated inside the gzip data",
        lambda: ("cut2.nii.gz", gzip.compress(nifti_bytes(volume(), compressed=False)[:9000])),
        400,
        "only 8,648 are present",
    ),
    BadScan("wrong magic", _wrong_magic, 400, "magic string is wrong"),
    BadScan("analyze pair header", _analyze_pair_header, 400, ".hdr/.img pair"),
    BadScan(
        "tiny file",
        lambda: ("tiny.nii", b"\x5c\x01\x00\x00" + b"\x00" * 100),
        400,
        "too few for a NIfTI header",
    ),
    BadScan("2D image", lambda: ("flat.nii.gz", nifti_bytes(volume()[:, :, 0])), 400, "is 2D"),
    BadScan(
        "4D with many volumes",
        lambda: ("series.nii.gz", nifti_bytes(np.stack([volume()] * 3, axis=-1))),
        400,
        "holds 3 volumes",
    ),
    BadScan(
        "zero spacing",
        lambda: ("zero.nii.gz", nifti_bytes(volume(), pixdim=(0.0, 0.2, 0.2))),
        400,
        "spacing along x is 0.0 mm",
    ),
    BadScan(
        "negative spacing",
        lambda: ("neg.nii.gz", nifti_bytes(volume(), pixdim=(0.2, -0.2, 0.2))),
        400,
        "spacing along y is -0.2",
    ),
    BadScan(
        "NaN spacing",
        lambda: ("nan.nii.gz", nifti_bytes(volume(), pixdim=(0.2, 0.2, float("nan")))),
        400,
        "along z is not a number",
    ),
    BadScan(
        "header claiming 100000^3 voxels",
        lambda: ("huge.nii.gz", gzip.compress(header_only((100000, 100000, 100000), version=2))),
        413,
        "over the limit of 4096",
    ),
    BadScan("gzip bomb declared by the header", _gzip_bomb_declared, 413, "GiB once decompressed"),
    BadScan("gzip bomb behind a small header", _gzip_bomb_behind_small_header, 400, "possible gzip bomb"),
    BadScan(
        "all-NaN data",
        lambda: ("nans.nii.gz", nifti_bytes(np.full((8, 8, 8), np.nan, np.float32))),
        400,
        "every voxel is NaN",
    ),
    BadScan(
        "constant data",
        lambda: ("blank.nii.gz", nifti_bytes(np.full((8, 8, 8), 7, np.int16))),
        400,
        "the same value (7)",
    ),
    BadScan("unsupported voxel type", _complex_voxels, 400, "complex64 are not supported"),
    BadScan(
        "not a NIfTI name", lambda: ("scan.nrrd", nifti_bytes(volume())), 400, "is not a NIfTI file name"
    ),
    BadScan("a DICOM slice", lambda: ("IM_0001.dcm", nifti_bytes(volume())), 400, "dcm2niix -z y FOLDER"),
    BadScan("an archive", lambda: ("scans.zip", b"PK\x03\x04" + bytes(64)), 400, "unpack the archive"),
    BadScan("a slice image", lambda: ("rec_0001.tif", b"II*\x00" + bytes(64)), 400, "holds no voxel size"),
    BadScan(
        "gzip named .nii", lambda: ("scan.nii", nifti_bytes(volume())), 400, "rename it to end in .nii.gz"
    ),
]


@pytest.mark.parametrize("bad", CORPUS, ids=[bad.kind for bad in CORPUS])
def test_a_bad_scan_is_refused_with_its_own_message_and_leaves_nothing(client_a, snapshot, bad):
    filename, content = bad.build()
    before = snapshot()

    response = upload_scan(client_a, content, filename=filename)

    assert response.status_code == bad.status, response.json()
    assert bad.says in response.json()["detail"]
    before.assert_unchanged()


def test_every_kind_of_bad_scan_gets_a_different_message(client_a):
    messages = {
        upload_scan(client_a, bad.build()[1], filename=bad.build()[0]).json()["detail"] for bad in CORPUS
    }

    assert len(messages) == len(CORPUS)


def test_a_duplicate_is_refused_with_409_naming_the_existing_scan(client_a, snapshot, scan_bytes):
    first = upload_scan(client_a, scan_bytes).json()
    before = snapshot()

    response = upload_scan(client_a, scan_bytes, mouse="M09", time_point="3h")

    assert response.status_code == 409
    assert f"as scan {first['id']}" in response.json()["detail"]
    assert "mouse M01" in response.json()["detail"]
    before.assert_unchanged()


def test_the_same_file_in_another_lab_is_not_a_duplicate(client_a, client_b, scan_bytes):
    assert upload_scan(client_a, scan_bytes).status_code == 201
    assert upload_scan(client_b, scan_bytes).status_code == 201


def test_a_path_traversal_name_is_refused_by_the_service(lab_a, alice, snapshot, scan_bytes, tmp_path):
    source = tmp_path / "scan.nii.gz"
    source.write_bytes(scan_bytes)
    before = snapshot()

    with pytest.raises(ScanRejected, match="contains folder parts") as refusal:
        register_scan(
            lab=lab_a,
            uploaded_file_path_or_file=source,
            original_filename="../../etc/scan.nii.gz",
            study_name="S",
            mouse_identifier="M01",
            time_point_label="0h",
            modality="native_ct",
            user=alice,
        )

    assert refusal.value.status == 400
    before.assert_unchanged()
    assert source.read_bytes() == scan_bytes


def test_a_path_traversal_name_is_refused_when_opening_a_chunked_upload(client_a, snapshot):
    before = snapshot()

    response = client_a.post(
        "/api/uploads/", {"filename": "../../../etc/cron.d/x.nii.gz", "size_bytes": 10}, format="json"
    )

    assert response.status_code == 400
    assert "contains folder parts" in response.json()["detail"]
    before.assert_unchanged()


def test_a_multipart_path_traversal_name_cannot_leave_the_lab_folder(client_a, media_root, scan_bytes):
    response = upload_scan(client_a, scan_bytes, filename="../../../outside.nii.gz")

    scan = Scan.objects.get(pk=response.json()["id"])
    assert scan.file.name.startswith(f"labs/{scan.lab_id}/scans/")
    assert (media_root / scan.file.name).resolve().is_relative_to(media_root.resolve())


def test_a_time_point_that_is_not_understood_is_refused(client_a, snapshot, scan_bytes):
    before = snapshot()

    response = upload_scan(client_a, scan_bytes, time_point="day eight")

    assert response.status_code == 400
    assert "time point 'day eight' is not understood" in response.json()["detail"]
    before.assert_unchanged()


def test_a_scan_over_the_size_limit_is_refused_with_413(client_a, snapshot, scan_bytes, settings):
    settings.LABSEG_MAX_UPLOAD_BYTES = 1000
    before = snapshot()

    response = upload_scan(client_a, scan_bytes * 200)

    assert response.status_code == 413
    before.assert_unchanged()


@pytest.fixture
def scan_id(client_a, scan_bytes) -> int:
    return upload_scan(client_a, scan_bytes).json()["id"]


def test_an_annotation_on_another_grid_is_refused(client_a, snapshot, scan_id):
    before = snapshot()

    response = upload_annotation(client_a, scan_id, nifti_bytes(labels_for(volume((24, 20, 15)))))

    assert response.status_code == 400
    assert "differs from the scan grid 24 x 20 x 16" in response.json()["detail"]
    before.assert_unchanged()


def test_an_annotation_with_a_shifted_affine_is_refused(client_a, snapshot, scan_id):
    shifted = affine_for()
    shifted[0, 3] = 0.5
    before = snapshot()

    response = upload_annotation(client_a, scan_id, nifti_bytes(labels_for(volume()), affine=shifted))

    assert response.status_code == 400
    assert "not aligned with the scan" in response.json()["detail"]
    before.assert_unchanged()


def test_a_non_integer_label_file_is_refused(client_a, snapshot, scan_id):
    probabilities = (labels_for(volume()) / 14.0 * 0.7).astype(np.float32)
    before = snapshot()

    response = upload_annotation(client_a, scan_id, nifti_bytes(probabilities))

    assert response.status_code == 400
    assert "non-integer values" in response.json()["detail"]
    before.assert_unchanged()


def test_an_annotation_with_unknown_label_values_needs_a_mapping(client_a, snapshot, scan_id):
    before = snapshot()

    response = upload_annotation(client_a, scan_id, nifti_bytes(labels_for(volume(), value=40)))

    assert response.status_code == 400
    assert "label values 40 are not structure ids" in response.json()["detail"]
    before.assert_unchanged()

"""The command line, end to end in a real subprocess, and segment_file's outputs and progress."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from inference.assessment import CUT_BY_FIELD
from inference.cli import volume_lines
from inference.pipeline import VolumeRow, segment_file
from inference.pipeline.lesions import LesionInputError
from inference.registry import ModelCard
from inference.structures import BY_NAME
from tests.conftest import REPO
from tests.nifti import load_nifti


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "inference", *args], cwd=REPO, capture_output=True, text=True, timeout=120
    )


def read_csv(path: Path) -> list[dict[str, str]]:
    with path.open() as handle:
        return list(csv.DictReader(handle))


def test_segment_writes_every_output_on_the_scan_grid(
    phantom_file: Path, organ_model: ModelCard, tumor_model: ModelCard, tmp_path: Path
) -> None:
    out = tmp_path / "out"

    done = run_cli(
        "segment", str(phantom_file), "--out", str(out), "--threads", "1", "--device", "cpu",
        "--model", str(organ_model.folder), "--model", str(tumor_model.folder),
    )  # fmt: skip

    assert done.returncode == 0, done.stderr
    assert "100% done" in done.stderr
    scan = load_nifti(str(phantom_file))
    labels = load_nifti(str(out / "labels.nii.gz"))
    assert labels.shape == scan.shape and np.array_equal(labels.affine, scan.affine)
    assert set(np.unique(np.asarray(labels.dataobj))) == {0, 4, 12, 14}
    volumes = {row["structure"]: row for row in read_csv(out / "volumes.csv")}
    assert set(volumes) == {"liver", "brain", "tumor"}
    assert float(volumes["liver"]["volume_low_mm3"]) <= float(volumes["liver"]["volume_mm3"])
    assert float(volumes["liver"]["volume_mm3"]) <= float(volumes["liver"]["volume_high_mm3"])
    assert {row["assessment"] for row in volumes.values()} == {"measured"}
    [lesion] = read_csv(out / "lesions.csv")
    # The tumor ball sits inside the liver ball (the organ model calls its bright core "brain",
    # a small component dropped for the brain's largest): allocated to the liver it touches.
    assert (lesion["structure"], lesion["organ"], lesion["allocation"]) == ("tumor", "liver", "overlap")
    manifest = json.loads((out / "manifest.json").read_text())
    assert [m["sha256"] for m in manifest["models"]] == [organ_model.sha256, tumor_model.sha256]
    assert {m["provider"] for m in manifest["models"]} == {"CPUExecutionProvider"}
    assert manifest["threads"] == 1
    assert manifest["input_geometry"]["shape"] == list(scan.shape)
    assert {"load", "preprocess", "inference", "postprocess", "restore", "write", "total"} <= set(
        manifest["seconds"]
    )
    assert manifest["versions"]["onnxruntime"]


def test_segment_with_lesion_coordinates_counts_metastases_per_organ(
    phantom_file: Path, organ_model: ModelCard, tmp_path: Path
) -> None:
    points = tmp_path / "points.csv"
    # Voxel (16, 20, 30) at 0.2 mm lies in the liver ball, off its bright core; (2, 2, 2) is air.
    points.write_text("x_mm,y_mm,z_mm\n3.2,4.0,6.0\n0.4,0.4,0.4\n")
    progress: list[tuple[int, str]] = []

    result = segment_file(
        phantom_file,
        tmp_path / "out",
        cards=[organ_model],
        threads=1,
        lesions_from=points,
        progress=lambda p, s: progress.append((p, s)),
    )

    assert [(r.organ_name, r.allocation) for r in result.lesions] == [
        ("liver", "coordinates"),
        ("subcutaneous/other", "none"),
    ]
    assert result.metastasis_counts["liver"] == 1
    assert result.metastasis_counts["subcutaneous/other"] == 1
    percents = [p for p, _ in progress]
    assert percents == sorted(percents) and percents[0] == 0 and progress[-1] == (100, "done")
    assert not list((tmp_path / "out").glob(".partial-*"))


def test_a_tumor_only_run_allocates_with_an_earlier_organ_map(
    phantom_file: Path, organ_model: ModelCard, tumor_model: ModelCard, tmp_path: Path
) -> None:
    organs = segment_file(phantom_file, tmp_path / "organs", cards=[organ_model], threads=1)

    tumor = segment_file(
        phantom_file, tmp_path / "tumor", cards=[tumor_model], threads=1, organs_from=organs.labels_path
    )

    assert [(r.structure_id, r.organ_name) for r in tumor.lesions] == [(14, "liver")]
    assert [r.name for r in tumor.volumes] == ["tumor"]


def test_a_lesion_mask_on_another_grid_is_refused(
    phantom_file: Path, organ_model: ModelCard, tmp_path: Path
) -> None:
    mask = tmp_path / "mask.nii.gz"
    nib.save(nib.Nifti1Image(np.zeros((5, 5, 5), np.uint8), np.eye(4)), str(mask))

    with pytest.raises(LesionInputError, match="not on the scan's grid"):
        segment_file(phantom_file, tmp_path / "out", cards=[organ_model], lesions_from=mask)


def test_allocate_command_writes_lesions_and_counts(tmp_path: Path) -> None:
    organs = np.zeros((20, 20, 20), dtype=np.uint8)
    organs[2:10, 2:10, 2:10] = 4
    lesions = np.zeros_like(organs)
    lesions[4:6, 4:6, 4:6] = 15
    lesions[15:18, 15:18, 15:18] = 15
    affine = np.diag([0.5, 0.5, 0.5, 1.0])
    nib.save(nib.Nifti1Image(organs, affine), str(tmp_path / "organs.nii.gz"))
    nib.save(nib.Nifti1Image(lesions, affine), str(tmp_path / "lesions.nii.gz"))
    organs_path, lesions_path = str(tmp_path / "organs.nii.gz"), str(tmp_path / "lesions.nii.gz")

    done = run_cli(
        "allocate", "--organs", organs_path, "--lesions", lesions_path, "--out", str(tmp_path / "out")
    )

    assert done.returncode == 0, done.stderr
    rows = read_csv(tmp_path / "out" / "lesions.csv")
    assert [(r["organ"], r["allocation"]) for r in rows] == [
        ("liver", "centroid"),
        ("subcutaneous/other", "none"),
    ]
    counts = json.loads((tmp_path / "out" / "metastases.json").read_text())["metastasis_counts"]
    assert counts["liver"] == 1 and counts["subcutaneous/other"] == 1


def test_bad_input_exits_with_2_and_a_plain_message(tmp_path: Path) -> None:
    missing = run_cli("segment", str(tmp_path / "nope.nii.gz"), "--out", str(tmp_path / "out"))
    not_nifti = tmp_path / "scan.nii.gz"
    not_nifti.write_bytes(b"not a scan")
    unreadable = run_cli("segment", str(not_nifti), "--out", str(tmp_path / "out"), "--model", str(tmp_path))
    bad_task = run_cli("segment", str(not_nifti), "--out", str(tmp_path / "out"), "--task", "teeth")

    assert (missing.returncode, unreadable.returncode, bad_task.returncode) == (2, 2, 2)
    assert "no such scan" in missing.stderr
    assert "no model.json" in unreadable.stderr
    assert "Traceback" not in missing.stderr + unreadable.stderr + bad_task.stderr


def test_a_dicom_file_is_refused_with_how_to_convert_it(tmp_path: Path, organ_model: ModelCard) -> None:
    dicom = tmp_path / "IM_0001.dcm"
    dicom.write_bytes(b"\x00" * 128 + b"DICM" + bytes(64))

    refused = run_cli(
        "segment", str(dicom), "--out", str(tmp_path / "out"), "--model", str(organ_model.folder)
    )

    assert refused.returncode == 2
    assert "IM_0001.dcm is not a NIfTI file (.nii or .nii.gz)" in refused.stderr
    assert "dcm2niix -z y FOLDER" in refused.stderr and "Traceback" not in refused.stderr
    assert not (tmp_path / "out").exists()


def test_models_command_lists_the_registry(
    models_root: Path, organ_model: ModelCard, tumor_model: ModelCard
) -> None:
    done = run_cli("models", "--root", str(models_root))
    listed = run_cli("models", "--root", str(models_root), "--json")

    assert done.returncode == 0
    assert "tiny-organs@0.0.1" in done.stdout and "tiny-tumor@0.0.1" in done.stdout
    assert {card["sha256"] for card in json.loads(listed.stdout)} == {organ_model.sha256, tumor_model.sha256}


def test_the_printed_volumes_name_an_organ_not_found_or_cut_and_give_it_no_volume() -> None:
    rows = [
        VolumeRow(BY_NAME["heart"].id, "heart", 0, 0.0, 0.0, 0.0),
        VolumeRow(BY_NAME["liver"].id, "liver", 40, 20.0, 18.5, 21.0),
        VolumeRow(BY_NAME["kidney_left"].id, "kidney_left", 9, 4.5, 4.0, 5.0),
        VolumeRow(BY_NAME["tumor"].id, "tumor", 0, 0.0, 0.0, 0.0),
    ]

    lines = volume_lines(rows, cut=["kidney_left"])

    assert [line.split()[1:] for line in lines] == [
        ["-", "not", "found"],
        ["20.00", "mm3", "(18.50-21.00)"],
        ["-", *CUT_BY_FIELD.split()],
        ["0.00", "mm3", "(0.00-0.00)"],  # no tumor is a measurement
    ]

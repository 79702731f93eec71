"""The real heads scored against the atlas' skull template registered onto them (real_heads.py)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk  # noqa: N813  (the name every SimpleITK example uses)

from inference.metrics import dice
from inference.registry import find_model
from inference.training.real_heads import (
    CAVITY_LABEL,
    SKULL_LABELS,
    TEMPLATE,
    TEMPLATE_LABELS,
    main,
    register_template,
    score_head,
)


def _turned(image: sitk.Image, transform: sitk.Transform, interpolator: int) -> sitk.Image:
    """``image`` resampled through ``transform`` onto a grid as large as its own, about its centre."""
    return sitk.Resample(image, image, transform, interpolator, 0)


def test_the_template_is_found_again_however_it_is_turned(realdata: Path, tmp_path: Path) -> None:
    # The template made into a "head" lying obliquely: turned 90 degrees about one axis and 30
    # about another (none of the starting poses), so the fit has to find the pose by itself.
    template = sitk.ReadImage(str(realdata / TEMPLATE))
    labels = sitk.ReadImage(str(realdata / TEMPLATE_LABELS))
    centre = template.TransformContinuousIndexToPhysicalPoint([(n - 1) / 2 for n in template.GetSize()])
    turn = sitk.Euler3DTransform()
    turn.SetCenter(centre)
    turn.SetRotation(np.pi / 2, np.radians(30.0), 0.0)
    head = tmp_path / "turned.nii.gz"
    sitk.WriteImage(_turned(template, turn, sitk.sitkLinear), str(head))
    truth = sitk.GetArrayFromImage(_turned(labels, turn, sitk.sitkNearestNeighbor)).transpose(2, 1, 0)

    found = register_template(head, realdata)

    assert found.labels.shape == truth.shape
    # Found again: 0.95 for the cavity; the thin bones, one voxel off in places, 0.71.
    assert dice(found.labels == CAVITY_LABEL, truth == CAVITY_LABEL) > 0.93
    assert dice(np.isin(found.labels, SKULL_LABELS), np.isin(truth, SKULL_LABELS)) > 0.65


def test_the_served_models_draw_the_real_brain_inside_its_braincase(realdata: Path) -> None:
    cards = [find_model("mouse-organs"), find_model("mouse-tumor")]

    row = score_head(realdata / "BALB_CJ_.nii.gz", cards, atlas_dir=realdata)

    # A wrong pose carries the cavity off the skull: the head's own bone then agrees with the
    # registered skull at 0.2-0.3 at best; fitted, 0.63.
    assert row["bones"]["ceiling"] > 0.55
    brain = row["brain"]
    # The drawn brain lies inside the cavity, and fills most of it once grown into its braincase
    # (braincase.py; 348 mm^3 as the model drew it, Dice 0.80).
    assert brain["inside_cavity"] > 0.95
    assert 0.75 * brain["cavity_mm3"] < brain["drawn_mm3"] < brain["cavity_mm3"]
    assert brain["dice"] > 0.85
    # Bones agree with the template's skull about as well as its registration lets any bone map.
    assert row["bones"]["dice"] > row["bones"]["ceiling"] - 0.1


def test_the_command_writes_its_report_and_refuses_a_folder_without_the_atlas(
    realdata: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as stopped:
        main(["--atlas", str(tmp_path)])
    assert stopped.value.code == 2
    assert f"{tmp_path} lacks C57BL6_J_.nii.gz" in capsys.readouterr().err
    with pytest.raises(SystemExit) as stopped:
        main(["--atlas", str(realdata), "--model", str(tmp_path / "nowhere")])
    assert stopped.value.code == 2
    assert "no model.json" in capsys.readouterr().err

    report_path = tmp_path / "report.json"
    main(["--atlas", str(realdata), "--json", str(report_path)])

    report = json.loads(report_path.read_text())
    assert [row["head"] for row in report["heads"]] == ["C57BL6_J_.nii.gz", "BALB_CJ_.nii.gz"]
    assert report["models"][0].startswith("mouse-organs")
    printed = capsys.readouterr().out
    assert "brain Dice" in printed and "BALB_CJ_.nii.gz" in printed

"""Previews are made by a worker when a scan, its prediction and its annotation are stored
(frontend/apps.py queues frontend.tasks.make_previews_task), so a viewer never waits for one."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, cast

import nibabel as nib
import numpy as np
import pytest

from frontend import layers
from review.services import create_annotation
from scans.services import register_scan
from tests.demo_scan import add_prediction, write_phantom

pytestmark = pytest.mark.django_db(transaction=True)

SHAPE = (48, 40, 64)


def test_every_level_of_every_layer_is_stored_before_anyone_opens_the_viewer(
    worker: Any, lab: Any, researcher: Any, tmp_path: Path, settings: Any, media_root: Path
) -> None:
    settings.LABSEG_SEGMENT_ON_UPLOAD = False
    files = (tmp_path / "CT_M01_0h.nii", tmp_path / "labels.nii", tmp_path / "uncertainty.nii")
    write_phantom(*files, shape=SHAPE, spacing_mm=0.5)
    scan = register_scan(
        lab=lab,
        uploaded_file_path_or_file=files[0],
        original_filename=files[0].name,
        study_name="Previews",
        mouse_identifier="M01",
        time_point_label="0h",
        user=researcher,
    )
    prediction = add_prediction(scan=scan, labels_path=files[1], uncertainty_path=files[2])
    labels = cast(nib.Nifti1Image, nib.load(str(files[1])))
    drawn = tmp_path / "Annotator_A_M01_0h.nii.gz"
    nib.save(nib.Nifti1Image((np.asarray(labels.dataobj) == 4).astype(np.uint8), labels.affine), str(drawn))
    annotation = create_annotation(
        scan=scan,
        file=drawn,
        original_filename=drawn.name,
        annotator_name="A",
        user=researcher,
        structures={"liver": 1},
    )
    # The worker's settings are the defaults: each layer's two levels, by their factors there.
    factors = {layers.level_factor(scan, level) for level in layers.LEVELS}
    stems = ("ct", f"pred-{prediction.pk}.own", f"unc-{prediction.pk}", f"ann-{annotation.pk}")
    expected = {f"{stem}.f{factor}.nii.gz" for stem in stems for factor in factors}
    folder = media_root / "previews" / f"scan_{scan.pk}"

    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        stored = {p.name for p in folder.iterdir()} if folder.exists() else set()
        if expected <= stored:
            break
        time.sleep(0.5)

    assert expected <= stored, worker.log()
    # What the viewer then asks for is served from storage, not made again.
    made_at = {name: (folder / name).stat().st_mtime_ns for name in expected}
    for stem in stems:
        for level in layers.LEVELS:
            layer = layers.resolve_layer(scan, stem.removesuffix(".own"))
            assert Path(layers.preview_file(scan, layer, level)).name in expected
    assert {name: (folder / name).stat().st_mtime_ns for name in expected} == made_at

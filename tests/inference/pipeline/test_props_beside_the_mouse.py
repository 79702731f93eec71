"""Props a lab lays in the scanner beside a mouse are no tumors (pipeline/postprocess.clean).

A syringe of water beside the Digimouse CT, not touching it, came out as a 22 mm^3 "subcutaneous
tumor" (the QC held the run for review: a lesion outside the body). A tumor grows on a mouse, so a
tumor component apart from every mouse is left out; end to end with the served models."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from inference.phantom import digimouse
from inference.phantom.writer import save_nifti
from inference.pipeline import segment_file
from inference.pipeline.qc import OK
from inference.structures import BY_NAME
from tests.nifti import load_nifti


@pytest.mark.skipif(
    not (digimouse.DEFAULT_DIR / digimouse.FILENAME).is_file(), reason="Digimouse atlas not present"
)
def test_a_water_syringe_beside_the_mouse_is_no_tumor(tmp_path: Path) -> None:
    phantom = digimouse.render_ct(digimouse.load(), seed=5, crop="whole")
    ct = phantom.ct.astype(np.float32)
    xs, ys, zs = np.nonzero(ct > -300)
    # A syringe 5.5 mm across (a 0.4 mm plastic wall round water) and 21 mm long, 3.8 mm to the
    # mouse's right of its body, along its abdomen.
    x, y = np.meshgrid(np.arange(ct.shape[0]), np.arange(ct.shape[1]), indexing="ij")
    across = np.hypot(x - (xs.min() - 18), y - int(ys.mean()))
    z = slice(int(zs.mean()) - 100, int(zs.mean()))
    rng = np.random.default_rng(0)
    ct[:, :, z] = np.where((across < 13)[:, :, None], 0.0, ct[:, :, z])
    ct[:, :, z] = np.where(((across >= 11) & (across < 13))[:, :, None], 120.0, ct[:, :, z])
    syringe = np.zeros(ct.shape, dtype=bool)
    syringe[:, :, z] = (across < 13)[:, :, None]
    ct[syringe] += rng.normal(0.0, 20.0, int(syringe.sum()))
    scan = tmp_path / "digimouse_and_syringe.nii.gz"
    save_nifti(np.rint(ct).astype(np.int16), phantom.affine, scan)

    result = segment_file(scan, tmp_path / "out", device="cpu", threads=2)

    labels = load_nifti(str(tmp_path / "out" / "labels.nii.gz")).get_fdata().astype(int)
    assert not np.isin(labels[syringe], [BY_NAME["tumor"].id, BY_NAME["metastasis"].id]).any()
    assert not (labels == BY_NAME["tumor"].id).any()  # the mouse has no tumor
    assert result.manifest["qc"]["status"] == OK, result.manifest["qc"]["reasons"]
    # The tumor model did draw it; the rule took it out (the manifest says so).
    removed = result.manifest["postprocess"]["tumor"]["components_removed"]
    assert BY_NAME["tumor"].id in {int(k) for k in removed}

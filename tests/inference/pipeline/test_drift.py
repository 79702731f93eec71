"""A scan whose level drifts with depth (beam hardening's cupping, uncorrected): the drift is read
from inside the organs (pipeline/drift.py), the liver's contrast-edge rule stands down, and the
run is held for review with the drift in the manifest; a scan as generated is left alone."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from inference.metrics import dice
from inference.phantom import generate_phantom
from inference.pipeline.drift import MAX_DEPTH_DRIFT_HU, depth, drift_finding, drifts, measure_drift
from inference.pipeline.qc import NEEDS_REVIEW
from inference.structures import BY_NAME
from inference.training.robustness import Case, cupping
from tests.inference.pipeline.segmented import segment_case

IDS = {s.name: s.id for s in BY_NAME.values()}
LIVER = BY_NAME["liver"].id


@pytest.fixture(scope="module")
def case() -> Case:
    # The organ model's own grid (0.63 mm): where the pipeline reads the drift.
    phantom = generate_phantom(9001, spacing_mm=0.63, n_annotators=0)
    return Case(name="p", ct=phantom.ct, labels=phantom.labels, affine=phantom.affine, meta=phantom.meta)


def test_depth_runs_from_the_outline_to_the_centre_of_each_slice(case: Case) -> None:
    where = depth(case.ct.astype(np.float32))
    z = int(np.argmax((case.labels == LIVER).sum(axis=(0, 1))))

    assert where.min() == 0.0 and where.max() == pytest.approx(1.0)
    assert np.all(where[0, 0, :] == 0.0)  # the air in the field's corner
    assert np.all(where[case.labels == BY_NAME["lung_left"].id] > 0.0)  # air inside the body is in it
    assert where[:, :, z].max() == pytest.approx(1.0)  # every slice that holds body reaches 1


def test_cupping_is_read_from_inside_the_organs_and_anatomy_is_not(case: Case) -> None:
    plain = measure_drift(case.ct.astype(np.float32), case.labels, IDS, spans_of=["bladder"])
    cupped = measure_drift(cupping(case, 50.0).ct.astype(np.float32), case.labels, IDS, spans_of=["bladder"])

    assert plain is not None and cupped is not None
    assert abs(plain.hu) < MAX_DEPTH_DRIFT_HU and not drifts(plain.hu)
    assert -60.0 < cupped.hu < -MAX_DEPTH_DRIFT_HU and drifts(cupped.hu)
    # Each organ covers part of the depth: the drift across it is that share of the whole.
    assert set(cupped.spans) >= {"liver", "bladder", "heart"}
    assert 0.0 < cupped.spans["liver"] < 1.0
    assert cupped.across("liver") == pytest.approx(abs(cupped.hu) * cupped.spans["liver"])
    assert cupped.across("not drawn") == pytest.approx(abs(cupped.hu))
    assert "darker" in drift_finding(cupped.hu) and "beam-hardening correction" in drift_finding(cupped.hu)


def test_too_few_organ_voxels_say_nothing(case: Case) -> None:
    empty = np.zeros_like(case.labels)

    assert measure_drift(case.ct.astype(np.float32), empty, IDS) is None
    assert not drifts(None)


def test_a_cupped_scan_is_held_for_review_and_its_liver_kept_as_drawn(tmp_path: Path) -> None:
    phantom = generate_phantom(9002, spacing_mm=0.42, n_annotators=0)
    base = Case(name="p", ct=phantom.ct, labels=phantom.labels, affine=phantom.affine, meta=phantom.meta)
    runs = {}
    for name, scan in (("plain", base), ("cupped", cupping(base, 50.0))):
        manifest, labels = segment_case(scan, tmp_path / name)
        runs[name] = (manifest, dice(labels == LIVER, phantom.labels == LIVER))

    plain, _ = runs["plain"]
    cupped, liver = runs["cupped"]
    assert abs(plain["intensity"]["depth_drift_hu"]) < MAX_DEPTH_DRIFT_HU
    assert "intensity_drift" not in {r["code"] for r in plain["qc"]["reasons"]}
    assert cupped["intensity"]["depth_drift_hu"] < -MAX_DEPTH_DRIFT_HU
    assert any("beam hardening" in f for f in cupped["intensity"]["findings"])
    assert cupped["qc"]["status"] == NEEDS_REVIEW
    assert "intensity_drift" in {r["code"] for r in cupped["qc"]["reasons"]}
    assert liver > 0.85

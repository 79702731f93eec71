"""Several mice in one field: each keeps its own organs, and the QC says the scan holds several."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from inference.phantom import generate_phantom
from inference.pipeline.animals import find_animals
from inference.pipeline.postprocess import clean, fill_holes
from inference.pipeline.qc import check_run
from inference.structures import BY_NAME
from inference.training import robustness
from inference.training.robustness import Case

SPACING_MM = 0.63
HEART, KIDNEY_LEFT, KIDNEY_RIGHT = (BY_NAME[n].id for n in ("heart", "kidney_left", "kidney_right"))
ORGANS = (0, HEART, KIDNEY_LEFT, KIDNEY_RIGHT)


@pytest.fixture(scope="module")
def two_mice() -> Case:
    cases = [
        Case(name=str(seed), ct=p.ct, labels=p.labels, affine=p.affine)
        for seed in (9000, 9001)
        for p in [generate_phantom(seed, spacing_mm=SPACING_MM, n_annotators=0)]
    ]
    return robustness.beside(cases[0], cases[1], True, seed=3)


def test_fill_holes_answers_as_scipy_does_in_3d_and_slice_by_slice() -> None:
    rng = np.random.default_rng(0)
    for _ in range(20):
        shape = tuple(int(n) for n in rng.integers(3, 20, 3))
        mask = ndimage.binary_dilation(rng.random(shape) < rng.uniform(0.05, 0.4))
        assert np.array_equal(fill_holes(mask), ndimage.binary_fill_holes(mask))
        for axis in range(3):
            expected = np.stack(
                [ndimage.binary_fill_holes(plane) for plane in np.moveaxis(mask, axis, 0)], axis=axis
            )
            assert np.array_equal(fill_holes(mask, across=axis), expected), axis


def test_two_mice_side_by_side_are_two_animals_numbered_left_to_right(two_mice: Case) -> None:
    animals, count = find_animals(two_mice.ct, [SPACING_MM] * 3)

    assert count == 2
    assert two_mice.region is not None
    first = two_mice.region[0]  # the first mouse lies at low x (on_right=True puts the other at high x)
    assert first.start == 0
    # Every organ of each mouse, the air-filled lungs included, lies in its own animal.
    for lung in ("lung_left", "lung_right", "heart", "liver"):
        in_first = animals[first][two_mice.labels[first] == BY_NAME[lung].id]
        assert np.mean(in_first == 1) > 0.95, lung
        rest = animals[first.stop :][two_mice.labels[first.stop :] == BY_NAME[lung].id]
        assert np.mean(rest == 2) > 0.95, lung


def test_one_mouse_with_a_bed_is_one_animal() -> None:
    phantom = generate_phantom(9000, spacing_mm=SPACING_MM, n_annotators=0)
    case = Case(name="p", ct=phantom.ct, labels=phantom.labels, affine=phantom.affine, meta=phantom.meta)
    bedded = robustness.add_bed(case, seed=4)

    assert find_animals(bedded.ct, [SPACING_MM] * 3)[1] == 1
    assert find_animals(np.full((8, 8, 8), -1000.0), [SPACING_MM] * 3)[1] == 0
    # A head alone on its bed: the bed's plate holds as much tissue as a quarter of the head, but
    # none of it deep under a surface. It was read as a second mouse.
    head = robustness.head(bedded)
    assert ndimage.label(head.ct > -250, structure=np.ones((3, 3, 3)))[1] == 2  # head and bed, apart
    assert find_animals(head.ct, [SPACING_MM] * 3)[1] == 1


def _scores(labels: np.ndarray) -> np.ndarray:
    channels = np.zeros(labels.shape, dtype=np.uint8)
    for channel, structure in enumerate(ORGANS[1:], start=1):
        channels[labels == structure] = channel
    return np.stack([(channels == c).astype(np.float32) * 5 for c in range(len(ORGANS))])


def test_each_mouse_keeps_its_heart_and_both_kidneys(two_mice: Case) -> None:
    animals, _ = find_animals(two_mice.ct, [SPACING_MM] * 3)
    truth = {s: int((two_mice.labels == s).sum()) for s in ORGANS[1:]}

    per_field = _scores(two_mice.labels)
    clean(per_field, ORGANS, [SPACING_MM] * 3)
    per_animal = _scores(two_mice.labels)
    report = clean(per_animal, ORGANS, [SPACING_MM] * 3, animals=animals)

    kept_field = np.asarray(ORGANS)[np.argmax(per_field, axis=0)]
    kept_animal = np.asarray(ORGANS)[np.argmax(per_animal, axis=0)]
    # Over the whole field, one heart and one kidney a side survive: the other mouse loses them.
    assert int((kept_field == HEART).sum()) < 0.75 * truth[HEART]
    # Per animal, both mice keep all three.
    for structure, voxels in truth.items():
        assert int((kept_animal == structure).sum()) == voxels, structure
    assert report.components_removed == {}


def test_the_qc_marks_a_field_with_several_mice_for_review() -> None:
    labels = np.zeros((6, 6, 6), dtype=np.uint8)
    scan = np.full(labels.shape, -1000, dtype=np.int16)
    common = dict(labels=labels, scan=scan, voxel_volume_mm3=1.0, volumes=[], lesions=[], structure_ids=[])

    one = check_run(**common)  # type: ignore[arg-type]
    two = check_run(**common, animals=2)  # type: ignore[arg-type]

    assert "several_animals" not in {r.code for r in one.reasons}
    [reason] = [r for r in two.reasons if r.code == "several_animals"]
    assert "2 mice" in reason.message and two.status == "needs_review"


def test_a_tumor_drawn_in_an_object_apart_from_the_mouse_is_none() -> None:
    # A syringe of water beside the mouse, not touching it, that a tumor model took for a tumor;
    # the mouse's own tumor, on its skin, is kept.
    phantom = generate_phantom(9000, spacing_mm=SPACING_MM, n_annotators=0)
    tumor = BY_NAME["tumor"].id
    ct = phantom.ct.astype(np.float32)
    xs = np.nonzero((ct > -250).any(axis=(1, 2)))[0]
    syringe = (slice(xs.max() + 4, xs.max() + 9), slice(20, 26), slice(40, 70))
    ct[syringe] = 0.0
    structures = (0, tumor)
    labels = np.where(phantom.labels == tumor, 1, 0).astype(np.uint8)
    assert labels.any()
    labels[syringe] = 1
    scores = np.stack([(labels == c).astype(np.float32) * 5 for c in range(2)])
    animals, count = find_animals(ct, [SPACING_MM] * 3)

    report = clean(scores, structures, [SPACING_MM] * 3, animals=animals)

    kept = np.argmax(scores, axis=0) == 1
    assert count == 1
    assert not kept[syringe].any()
    assert np.array_equal(kept, (phantom.labels == tumor))
    assert report.components_removed == {tumor: 1}
    # Without a mouse found (a crop of the tumor alone), every lesion is kept as drawn.
    scores = np.stack([(labels == c).astype(np.float32) * 5 for c in range(2)])
    clean(scores, structures, [SPACING_MM] * 3, animals=np.zeros_like(animals))
    assert (np.argmax(scores, axis=0) == 1)[syringe].all()

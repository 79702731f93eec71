"""The braincase check (pipeline/braincase.py): a brain drawn short is grown to the skull round it,
never past it, nor into what lies beyond the skull; a brain drawn well, the phantoms' and the real
Digimouse anatomy's, is left as it is."""

from __future__ import annotations

import numpy as np
import pytest

from inference.phantom import digimouse, generate_phantom
from inference.pipeline.braincase import FILLED, fill_braincase
from inference.structures import BY_NAME

BRAIN, BONES, LIVER = BY_NAME["brain"].id, BY_NAME["bones"].id, BY_NAME["liver"].id
SPACING = 0.2
SKULL_MM = 5.0  # inner radius of the skull


def _head(
    brain_mm: float, *, foramen: bool = False, vertebra: bool = False
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A round head: soft tissue (40 HU) to 7.5 mm, a 0.4 mm skull at 5 mm, a cheek bone beside
    it at 6.2-6.6 mm on one side, and a brain drawn as a ball of ``brain_mm``; with ``foramen``
    an opening 2 mm wide at the skull's base, with ``vertebra`` a ring of bone (a vertebra round
    its canal, 1-1.8 mm from the axis) 0.8-1.8 mm beyond it. Returns labels, HU and each voxel's
    distance (mm) from the centre."""
    n = 80
    axis = (np.arange(n) - n / 2 + 0.5) * SPACING
    x, y, z = np.meshgrid(axis, axis, axis, indexing="ij")
    radius = np.sqrt(x**2 + y**2 + z**2)
    hu = np.where(radius < 7.5, 40.0, -1000.0).astype(np.float32)
    labels = np.zeros((n, n, n), dtype=np.uint8)
    skull = (radius >= SKULL_MM) & (radius < SKULL_MM + 0.4)
    if foramen:
        skull &= ~((z < -3.0) & (np.sqrt(x**2 + y**2) < 2.0))  # an opening at the skull's base
    if vertebra:
        skull |= (z < -5.8) & (z > -6.8) & (np.sqrt(x**2 + y**2) >= 1.0) & (np.sqrt(x**2 + y**2) < 1.8)
    labels[skull] = BONES
    labels[(radius >= 6.2) & (radius < 6.6) & (x > 2.0)] = BONES  # a cheek bone beyond the skull
    labels[(radius >= 6.6) & (radius < 7.2) & (x < -3.0)] = LIVER  # another organ: never taken
    hu[labels == BONES] = 900.0
    labels[radius < brain_mm] = BRAIN
    return labels, hu, radius


def test_a_brain_drawn_short_fills_its_skull_and_stops_there() -> None:
    labels, hu, radius = _head(4.0)  # (4 / 5)^3: about half the braincase
    before = labels.copy()

    found = fill_braincase(labels, hu, (SPACING,) * 3)

    assert found is not None and found.grown and found.filled < FILLED
    brain = labels == BRAIN
    assert brain[radius < SKULL_MM - 0.3].all()  # the rim under the skull is brain now
    assert not brain[radius >= SKULL_MM].any()  # never the skull, the cheek or what lies beyond
    assert (labels == LIVER).sum() == (before == LIVER).sum()
    assert found.brain_mm3 == pytest.approx(4 / 3 * np.pi * SKULL_MM**3, rel=0.06)
    assert "grown" in (found.finding or "")


@pytest.mark.parametrize("vertebra", [False, True])
def test_an_opening_in_the_skull_lets_nothing_out(vertebra: bool) -> None:
    labels, hu, radius = _head(4.0, foramen=True, vertebra=vertebra)

    found = fill_braincase(labels, hu, (SPACING,) * 3)

    assert found is not None and found.grown
    # Through the opening the braincase reaches no further than the skull's outer surface (the
    # rays grazing its rim plug it, as the brainstem fills a foramen magnum), never out of it,
    # even where the rays through it meet a vertebra within reach of the drawn brain.
    assert not (labels == BRAIN)[radius >= SKULL_MM + 0.4].any()


def test_a_brain_drawn_well_and_a_head_without_skull_are_left_alone() -> None:
    labels, hu, _ = _head(4.85)
    before = labels.copy()

    found = fill_braincase(labels, hu, (SPACING,) * 3)

    assert found is not None and not found.grown and found.finding is None
    assert np.array_equal(labels, before)
    labels[labels == BONES] = 0
    assert fill_braincase(labels, hu, (SPACING,) * 3) is None  # no skull drawn: nothing to measure


@pytest.mark.parametrize("source", ["phantom", "digimouse"])
def test_true_brains_fill_their_braincase_and_stay_as_drawn(source: str) -> None:
    # The true Digimouse brain (real anatomy, CSF and meninges undrawn) fills 87 % of its
    # braincase as measured here, a phantom's about all of it: both above FILLED.
    if source == "phantom":
        case = generate_phantom(seed=11, spacing_mm=0.42, n_annotators=0)
    else:
        case = digimouse.render_ct(digimouse.load(), seed=1, spacing_mm=0.42, crop="whole")
    labels = case.labels.copy()

    found = fill_braincase(labels, case.ct.astype(np.float32), (0.42,) * 3)

    assert found is not None and not found.grown, found
    assert found.filled >= FILLED
    assert np.array_equal(labels, case.labels)


def test_two_mice_in_one_field_each_brain_is_measured_in_its_own_skull() -> None:
    short, hu_short, radius = _head(4.0)
    well, hu_well, _ = _head(4.85)
    labels = np.concatenate([short, well])  # side by side along x
    hu = np.concatenate([hu_short, hu_well])

    found = fill_braincase(labels, hu, (SPACING,) * 3)

    assert found is not None and found.grown
    assert np.array_equal(labels[80:], well)  # the well-drawn brain is left as it was
    assert (labels[:80] == BRAIN)[radius < SKULL_MM - 0.3].all()
    assert not (labels[:80] == BRAIN)[radius >= SKULL_MM].any()


@pytest.mark.parametrize("opening", ["closed", "foramen", "vertebra"])
def test_the_fill_turns_background_into_brain_and_nothing_else(opening: str) -> None:
    # predict_volume runs the fill beside the lesion search, which reads host organs and bone
    # only: that holds because the fill changes no voxel but background, and only into brain.
    labels, hu, _ = _head(4.0, foramen=opening == "foramen", vertebra=opening == "vertebra")
    before = labels.copy()
    found = fill_braincase(labels, hu, (SPACING,) * 3)
    changed = labels != before
    assert found is not None and changed.any()
    assert (before[changed] == 0).all() and (labels[changed] == BRAIN).all()

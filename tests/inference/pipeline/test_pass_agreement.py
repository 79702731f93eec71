"""How alike the shifted passes draw each structure (``infer.pass_agreement``), and the QC's
``unstable`` check that reads it: a network on anatomy it does not know answers differently when
the scan moves by one voxel of its grid."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace
from typing import cast

import numpy as np
import pytest

from inference.pipeline.infer import AGREEMENT_MIN_VOXELS, pass_agreement, run_model
from inference.pipeline.qc import MIN_PASS_AGREEMENT, unstable_reasons
from inference.pipeline.runtime import get_session
from inference.registry import ModelCard
from inference.structures import BY_NAME
from tests.inference.pipeline.test_shifted_passes import _pair_means

LIVER, HEART = BY_NAME["liver"].id, BY_NAME["heart"].id


def test_agreement_is_the_dice_between_two_passes_per_structure() -> None:
    card = cast(ModelCard, SimpleNamespace(structures=(0, LIVER, HEART)))
    first = np.zeros((12, 12, 12), np.uint8)
    first[2:6, 2:6, 2:6] = 1  # a 64-voxel liver
    first[9, 9, : AGREEMENT_MIN_VOXELS - 1] = 2  # a heart too small to judge
    second = np.zeros_like(first)
    second[3:7, 2:6, 2:6] = 1  # the liver one voxel over: 48 of 64 shared
    second[9, 9, :] = 2

    agreement = pass_agreement(card, first, second)

    assert agreement == {LIVER: pytest.approx(2 * 48 / 128)}


def test_passes_on_the_grid_s_own_phase_agree_and_others_do_not(tmp_path: Path) -> None:
    """A pooling network's answer depends on where its grid falls. Moved by two voxels (its pooling
    cell) it reads the same cells; moved by one it reads others, and on noise draws another map."""
    image = np.random.default_rng(0).normal(size=(24, 24, 24)).astype(np.float32)
    aligned = _pair_means(tmp_path / "aligned", {"shifted_passes": [[2, 2, 2]]})
    off = _pair_means(tmp_path / "off", {"shifted_passes": [[1, 1, 1]]})
    plain = _pair_means(tmp_path / "plain", {})

    same = run_model(get_session(aligned, threads=1), aligned, image).pass_agreement
    other = run_model(get_session(off, threads=1), off, image).pass_agreement

    assert same == {LIVER: 1.0}
    assert other[LIVER] < 0.8
    assert run_model(get_session(plain, threads=1), plain, image).pass_agreement == {}


def test_an_unstable_big_organ_is_named_in_words_and_a_cut_one_is_not() -> None:
    agreement = {"heart": 0.55, "liver": MIN_PASS_AGREEMENT, "kidney_left": 0.6, "brain": 0.3}

    [heart] = unstable_reasons(agreement, cut={"kidney_left"})

    assert (heart.code, heart.structure) == ("unstable", "heart")
    assert "Dice 0.55" in heart.message and "does not know this anatomy" in heart.message
    assert unstable_reasons({"heart": 0.97, "lung_left": 0.9}) == []
    # The water phantom of bench/qc_report.py: the passes draw specks the pipeline then drops.
    assert unstable_reasons({"liver": 0.35}, drawn=["bones"]) == []

"""On the phantoms' simulated annotators (inference.phantom): agreement figures in the ranges the
papers report for humans, and a consensus closer to the ground truth than any single annotator."""

from __future__ import annotations

import numpy as np
import pytest

from inference import metrics
from inference.phantom import generate_phantom
from inference.structures import BY_NAME
from review.analysis import analyse_scan
from review.models import Agreement, Consensus
from review.services import approve_annotation
from tests.review.conftest import make_annotation, make_scan

#: 0.42 mm (twice the tumor database's voxel) keeps each phantom under a second to build.
SPACING_MM = 0.42
SEEDS_WITH_TUMORS = (1, 2, 4, 5)
STRUCTURES = ("heart", "lung_left", "lung_right", "tumor", "spleen")


def torso_box(labels: np.ndarray, names: tuple[str, ...], margin: int = 6) -> tuple[slice, ...]:
    """The box around the named structures (a thorax-and-flank crop, as in the thorax datasets):
    STAPLE's cost grows with the voxel count, and the head and tail add nothing here."""
    inside = np.isin(labels, [BY_NAME[n].id for n in names])
    return tuple(
        slice(max(int(idx.min()) - margin, 0), int(idx.max()) + margin + 1) for idx in np.nonzero(inside)
    )


@pytest.fixture(scope="module")
def figures() -> dict[str, dict[str, list[float]]]:
    """Per structure, per figure, one value per phantom."""
    out: dict[str, dict[str, list[float]]] = {name: {} for name in STRUCTURES}
    for seed in SEEDS_WITH_TUMORS:
        phantom = generate_phantom(seed, spacing_mm=SPACING_MM, annotated=list(STRUCTURES))
        box = torso_box(phantom.labels, STRUCTURES)
        for name in STRUCTURES:
            sid = BY_NAME[name].id
            truth = phantom.labels[box] == sid
            masks = [m[box] == sid for m in phantom.annotators.values()]
            values = {
                "pairwise_dice": float(np.mean(list(metrics.pairwise_dice(masks).values()))),
                "ci_gen": metrics.ci_gen(masks),
                "kappa": metrics.fleiss_kappa(masks),
                "staple_vs_truth": metrics.dice(metrics.staple(masks).consensus(), truth),
                "majority_vs_truth": metrics.dice(metrics.majority_vote(masks), truth),
            }
            for index, mask in enumerate(masks):
                values[f"annotator{index}_vs_truth"] = metrics.dice(mask, truth)
            for key, value in values.items():
                out[name].setdefault(key, []).append(value)
    return out


def test_tumor_agreement_is_in_the_tumor_database_range(figures):
    tumor = figures["tumor"]
    # Jensen et al. 2024: pairwise Dice about 0.90, Fleiss' kappa 0.903 +- 0.046.
    assert 0.80 <= np.median(tumor["pairwise_dice"]) <= 0.95
    assert 0.80 <= np.median(tumor["kappa"]) <= 0.95


def test_thorax_conformity_is_in_the_range_between_observers(figures):
    # Malimban et al. 2022: CI_gen between observers, heart 79 %, lungs 86 %.
    assert 0.60 <= np.median(figures["heart"]["ci_gen"]) <= 0.90
    lungs = figures["lung_left"]["ci_gen"] + figures["lung_right"]["ci_gen"]
    assert 0.70 <= np.median(lungs) <= 0.95


def test_the_spleen_is_where_annotators_agree_least(figures):
    # AIMOS: native-CT spleen agreement is the poorest (interannotator Dice can fall below 0.40).
    spleen = np.median(figures["spleen"]["pairwise_dice"])
    assert spleen < 0.75
    assert all(spleen < np.median(figures[name]["pairwise_dice"]) for name in STRUCTURES if name != "spleen")


@pytest.mark.parametrize("consensus", ["staple_vs_truth", "majority_vs_truth"])
def test_the_consensus_is_closer_to_the_truth_than_any_single_annotator(figures, consensus):
    for name in STRUCTURES:
        consensus_dice = np.mean(figures[name][consensus])
        for annotator in range(3):
            assert consensus_dice > np.mean(figures[name][f"annotator{annotator}_vs_truth"]), (
                name,
                annotator,
            )


@pytest.mark.django_db
def test_the_stored_consensus_of_phantom_annotators_beats_each_of_them(lab, reviewer):
    phantom = generate_phantom(2, spacing_mm=SPACING_MM, annotated=["tumor", "heart"])
    box = torso_box(phantom.labels, ("tumor", "heart"))
    truth_labels = phantom.labels[box]
    scan = make_scan(lab=lab, ct=phantom.ct[box], spacing_mm=(SPACING_MM,) * 3)
    for name, labels in phantom.annotators.items():
        annotation = make_annotation(scan=scan, labels=labels[box], annotator=name)
        approve_annotation(annotation=annotation, reviewer=reviewer)

    result = analyse_scan(scan=scan, user=reviewer)

    assert sorted(c.structure_name for c in result.consensuses) == ["heart", "tumor"]
    from tests.review.test_consensus_and_agreement import load

    for consensus in Consensus.objects.filter(scan=scan):
        sid = consensus.structure_id
        truth = truth_labels == sid
        staple_dice = metrics.dice(load(consensus.staple.name) == sid, truth)
        annotator_dice = [metrics.dice(m[box] == sid, truth) for m in phantom.annotators.values()]
        assert staple_dice > max(annotator_dice), consensus.structure_name
    tumor = Agreement.objects.get(scan=scan, structure_id=BY_NAME["tumor"].id)
    assert 0.80 <= tumor.mean_pairwise_dice <= 0.97
    assert tumor.volume_rmse_percent < 15.0  # Jensen et al.: 6.9 %

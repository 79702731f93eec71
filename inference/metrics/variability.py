"""Volumetry variability of AIMOS Fig. 5f (Schoppe et al. 2020, eqs. 4-6).

Input is a table of volumes, one ``VolumeRecord`` per (mouse, time point, annotator, structure).
Each variability is a standard deviation expressed relative to the structure's mean volume
(0.16 = 16 %). Standard deviations are population SDs (``ddof=0``: divided by the number of
values, as in AIMOS's equations); pass ``ddof=1`` for sample SDs.

- mean volume: the mean over mice of ``v_m`` (below).
- intersubject: SD over mice of ``v_m = mean over time points t of v_m,t``, where ``v_m,t`` is the
  mean over the annotators who delineated that scan (AIMOS uses one annotation per scan; with
  several, averaging them keeps annotator noise out of the mouse-to-mouse spread).
- interannotator: mean over scans (mouse, time point) of the SD over annotators of ``v_m,t,a``;
  only scans with at least two annotators count.
- intraannotator: mean over mice of the SD over time points of the reference annotator's
  ``v_m,t,a=1``; only mice that annotator delineated at two or more time points count.

A figure that cannot be computed (too few mice, scans or time points) is ``nan``.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class VolumeRecord:
    mouse: str
    time_point: str
    annotator: str
    structure: str
    volume_mm3: float


@dataclass(frozen=True)
class Variability:
    """Fig. 5f for one structure; the three variabilities are fractions of ``mean_volume_mm3``."""

    structure: str
    mean_volume_mm3: float
    intersubject: float
    interannotator: float
    intraannotator: float
    n_mice: int
    n_scans: int
    n_annotators: int
    reference_annotator: str


def _sd(values: Sequence[float], ddof: int) -> float:
    return float(np.std(np.asarray(values, dtype=np.float64), ddof=ddof)) if len(values) > ddof else math.nan


def _relative(sd: float, mean: float) -> float:
    return sd / mean if mean > 0 and not math.isnan(sd) else math.nan


def _mean(values: Sequence[float]) -> float:
    return float(np.mean(values)) if len(values) else math.nan


def structure_variability(
    records: Iterable[VolumeRecord], *, reference_annotator: str | None = None, ddof: int = 0
) -> Variability:
    """Fig. 5f for the records of ONE structure (raises ``ValueError`` when they mix structures).

    ``reference_annotator`` ("annotator 1" of the intraannotator figure) defaults to the annotator
    with the most records, ties broken by name.
    """
    rows = list(records)
    if not rows:
        raise ValueError("no volumes were given")
    structures = {r.structure for r in rows}
    if len(structures) != 1:
        raise ValueError(f"the records mix structures {sorted(structures)}; pass one structure at a time")
    per_scan: dict[tuple[str, str], dict[str, float]] = defaultdict(dict)
    for r in rows:
        per_scan[(r.mouse, r.time_point)][r.annotator] = float(r.volume_mm3)
    annotators = sorted({r.annotator for r in rows})
    if reference_annotator is None:
        tally = {a: sum(1 for r in rows if r.annotator == a) for a in annotators}
        reference_annotator = min(annotators, key=lambda a: (-tally[a], a))

    per_mouse_scan_means: dict[str, list[float]] = defaultdict(list)
    for (mouse, _), by_annotator in per_scan.items():
        per_mouse_scan_means[mouse].append(_mean(list(by_annotator.values())))
    mouse_means = [_mean(v) for v in per_mouse_scan_means.values()]
    mean_volume = _mean(mouse_means)

    inter = [_sd(list(v.values()), ddof) for v in per_scan.values() if len(v) >= 2]
    reference_series: dict[str, list[float]] = defaultdict(list)
    for (mouse, _), by_annotator in per_scan.items():
        if reference_annotator in by_annotator:
            reference_series[mouse].append(by_annotator[reference_annotator])
    intra = [_sd(v, ddof) for v in reference_series.values() if len(v) >= 2]

    return Variability(
        structure=next(iter(structures)),
        mean_volume_mm3=mean_volume,
        intersubject=_relative(_sd(mouse_means, ddof) if len(mouse_means) >= 2 else math.nan, mean_volume),
        interannotator=_relative(_mean(inter), mean_volume),
        intraannotator=_relative(_mean(intra), mean_volume),
        n_mice=len(mouse_means),
        n_scans=len(per_scan),
        n_annotators=len(annotators),
        reference_annotator=reference_annotator,
    )


def volumetry_variability(
    records: Iterable[VolumeRecord], *, reference_annotator: str | None = None, ddof: int = 0
) -> list[Variability]:
    """Fig. 5f for every structure in the table, in order of first appearance."""
    by_structure: dict[str, list[VolumeRecord]] = defaultdict(list)
    for r in records:
        by_structure[r.structure].append(r)
    return [
        structure_variability(rows, reference_annotator=reference_annotator, ddof=ddof)
        for rows in by_structure.values()
    ]

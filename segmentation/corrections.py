"""Which numbers stand for a prediction: the model's, or a person's correction of them.

A prediction is never edited. A lab member may redraw it in the viewer (NiiVue's drawing tools);
the drawing is stored by the review app as a new annotation version that records the prediction
it started from (``review.corrections``). Wherever a volume is shown or exported (the CSVs of
``segmentation.exports`` and ``frontend.views.downloads``, the viewer's table and the study and
mouse charts of ``frontend.results``) it comes from :func:`measured`: the newest correction of the
prediction that no reviewer rejected where there is one, else the model's volumes with the lesions
a person excluded taken out. ``source`` says which: ``mouse-organs@2.0.0`` or
``corrected by ana from mouse-organs@2.0.0``.

The review app sits above this one (``labs <- scans <- segmentation <- review``), so it hands its
corrections in through :func:`register_finder` when Django starts (``review.apps``), as scans hands
new scans up through ``scans.signals``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from inference import structures
from inference.assessment import MEASURED, judge_volume

from .decisions import exclusions
from .models import Prediction

#: ``qc_status`` of numbers a person drew: checked by a person, so charted whatever the QC gate said.
CORRECTED = "corrected"


@dataclass(frozen=True)
class Correction:
    """The newest correction of one prediction: its annotation, who drew it, its version, and the
    voxels and mm^3 of each canonical structure id measured from its label map."""

    annotation_id: int
    by: str
    version: int
    volumes: dict[int, tuple[int, float]]


Finder = Callable[[Sequence[Prediction]], dict[int, Correction]]
_finders: list[Finder] = []


def register_finder(finder: Finder) -> None:
    """Set the function that finds corrections (prediction id -> newest correction)."""
    _finders[:] = [finder]


def corrections(predictions: Sequence[Prediction]) -> dict[int, Correction]:
    """Prediction id -> its newest correction that is not rejected (none: the model's numbers)."""
    found: dict[int, Correction] = {}
    if predictions:
        for finder in _finders:
            found.update(finder(predictions))
    return found


@dataclass(frozen=True)
class Volume:
    """One structure's volume as shown and exported. ``volume_mm3`` and the range are None for an
    organ that was not found (never 0: the field of view may not hold it)."""

    structure_id: int
    name: str
    voxels: int
    volume_mm3: float | None
    low_mm3: float | None
    high_mm3: float | None
    assessment: str


@dataclass(frozen=True)
class Measured:
    """A prediction's volumes from the source that stands for it."""

    prediction: Prediction
    correction: Correction | None
    source: str
    qc_status: str
    volumes: list[Volume]

    @property
    def charted(self) -> bool:
        """Charts, cohort means and alerts use it: a correction always, a prediction per its QC."""
        return self.correction is not None or self.prediction.charted

    def volume(self, structure_id: int) -> Volume | None:
        return next((v for v in self.volumes if v.structure_id == structure_id), None)


def source_label(prediction: Prediction, correction: Correction | None) -> str:
    label = prediction.model_version.label
    return label if correction is None else f"corrected by {correction.by} from {label}"


def measured(prediction: Prediction, correction: Correction | None) -> Measured:
    """``prediction``'s volumes (prefetch ``volumes``, ``qc_reviews``, ``lesions__reviews`` when
    reading many), or those of ``correction`` when there is one."""
    # An organ the scanned field cuts through was only partly scanned: no volume (the QC's
    # ``cut_by_field``, ``inference.pipeline.qc``).
    cut = set(prediction.qc["cut_by_field"])
    rows: list[Volume] = []
    if correction is not None:
        for sid in sorted(int(s) for s in prediction.model_version.structures):
            if sid == structures.BACKGROUND.id or sid not in structures.BY_ID:
                continue
            name = structures.by_id(sid).name
            voxels, mm3 = correction.volumes.get(sid, (0, 0.0))
            found, assessment = judge_volume(
                sid, voxels, cut, f"measured on correction v{correction.version}"
            )
            value = mm3 if found else None
            rows.append(Volume(sid, name, voxels, value, value, value, assessment))
        return Measured(prediction, correction, source_label(prediction, correction), CORRECTED, rows)
    excluded = exclusions(prediction)
    for v in prediction.volumes.all():
        sid = v.structure_id
        if sid == structures.BACKGROUND.id:
            continue
        measured_as = MEASURED
        if sid in excluded.volume_mm3:
            measured_as = f"measured, excluded lesions taken out ({excluded.volume_mm3[sid]:.3f} mm3)"
        found, assessment = judge_volume(sid, v.voxels, cut, measured_as)
        rows.append(
            Volume(
                sid,
                v.name,
                v.voxels,
                excluded.volume(sid, v.volume_mm3) if found else None,
                excluded.volume(sid, v.volume_low_mm3) if found else None,
                excluded.volume(sid, v.volume_high_mm3) if found else None,
                assessment,
            )
        )
    return Measured(prediction, None, source_label(prediction, None), prediction.qc["status"], rows)


def measured_all(predictions: Sequence[Prediction]) -> list[Measured]:
    """:func:`measured` for each prediction, their corrections found in one query."""
    found = corrections(predictions)
    return [measured(p, found.get(p.pk)) for p in predictions]

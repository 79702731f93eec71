"""What a structure's volume means: a measurement, or why there is none.

One judgement for every output that shows a volume: the pipeline's ``volumes.csv`` and command
line (``inference.pipeline.volumes``, ``inference.cli``), the REST API and the CSV exports
(``segmentation.models.StructureVolume.judgement``, ``segmentation.corrections``). Light on
purpose (the canonical label table only), so the web app's models import it without the pipeline.
"""

from __future__ import annotations

from collections.abc import Collection

from inference.structures import BY_ID, LESION_NAMES

#: A volume's ``assessment`` (``judge_volume``).
MEASURED = "measured"
NOT_FOUND = "not found"
CUT_BY_FIELD = "cut by the field of view: only part of it was scanned"


def judge_volume(
    structure_id: int, voxels: int, cut: Collection[str], measured_as: str = MEASURED
) -> tuple[bool, str]:
    """Whether a structure's volume is a measurement, and its ``assessment`` in words.

    A lesion of 0 voxels is one (no tumor). An organ the model did not draw is ``NOT_FOUND``: the
    scan may not hold it, or the model missed it. An organ in ``cut`` (the QC's ``cut_by_field``)
    was only partly scanned: ``CUT_BY_FIELD``. Neither has a volume. An id outside the canonical
    table (a volume stored by an older label table) is judged as an organ.
    """
    structure = BY_ID.get(structure_id)
    name = structure.name if structure is not None else None
    if name in cut:
        return False, CUT_BY_FIELD
    if voxels > 0 or name in LESION_NAMES:
        return True, measured_as
    return False, NOT_FOUND

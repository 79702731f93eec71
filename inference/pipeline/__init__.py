"""The segmentation pipeline: pure numpy, scipy, nibabel and ONNX Runtime (never Django).

One module per stage: ``io`` (load/save NIfTI), ``geometry`` (reorient/resample and their
inverses), ``normalise``, ``runtime`` (cached ONNX Runtime sessions), ``infer`` (whole volume or
sliding windows), ``postprocess`` (probabilities, component rules, uncertainty), ``nodules``
(lung metastases found by intensity), ``refiner`` (outline refiner networks), ``volumes``,
``lesions`` (allocation to organs), ``pictures`` (PNG previews), ``manifest``. ``predict_volume``
works on arrays; ``segment_file`` on files; the command line, the worker, training evaluation and
the tests all call these two.
"""

from inference.pipeline.lesions import LesionRow, allocate, metastasis_counts
from inference.pipeline.predict import PipelineOutput, predict_volume
from inference.pipeline.segment import SegmentResult, segment_file
from inference.pipeline.volumes import VolumeRow, structure_volumes

__all__ = [
    "LesionRow",
    "PipelineOutput",
    "SegmentResult",
    "VolumeRow",
    "allocate",
    "metastasis_counts",
    "predict_volume",
    "segment_file",
    "structure_volumes",
]

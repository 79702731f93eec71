"""The OpenAPI 3 description of ``/api/`` (drf-spectacular): ``/api/schema/`` and ``/api/docs/``.

Generic DRF views (serializer_class) describe themselves. The plain ``APIView`` ones (actions,
files, CSVs) are described here, in one place, with ``extend_schema_view``: what each takes (its
request body, query and path parameters) and what it answers. drf-spectacular imports this
module for its preprocessing hook (``SPECTACULAR_SETTINGS`` in settings.py) before it reads any
view, so the description is in place whenever a schema is generated. A new API view that
is missing here makes ``manage.py spectacular --validate --fail-on-warn`` fail (so does
``tests/labseg/test_openapi.py``).

The body a view reads is described as the fields it reads; the views themselves check every field
and refuse anything else with a 4xx (the schemathesis test in ``tests/labseg`` holds them to it).
"""

from __future__ import annotations

import logging
from importlib import import_module
from typing import Any

from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import (
    OpenApiParameter,
    OpenApiResponse,
    extend_schema,
    extend_schema_view,
    inline_serializer,
)
from rest_framework import serializers

from review.api import serializers as review_serializers
from scans.api import serializers as scan_serializers
from scans.models import Mouse, Scan
from segmentation.api import serializers as segmentation_serializers
from segmentation.models import InferenceJob

logger = logging.getLogger(__name__)

#: Views described here that no longer exist (renamed or removed): tests/labseg/test_openapi.py
#: fails on any, and the schema is still served without them.
STALE: list[str] = []


def describe(*views: str, **methods: Any) -> None:
    """``extend_schema_view(**methods)`` on each view, named ``module.Class`` (by name, so that a
    view renamed elsewhere is reported in ``STALE`` instead of breaking the schema)."""
    for dotted in views:
        module, _, name = dotted.rpartition(".")
        try:
            view = getattr(import_module(module), name, None)
        except ImportError:
            view = None
        if view is None:
            logger.warning("labseg/openapi.py describes %s, which no longer exists", dotted)
            STALE.append(dotted)
            continue
        extend_schema_view(**methods)(view)


def deduplicate_trailing_slashes(endpoints: list[tuple[Any, ...]], **_: Any) -> list[tuple[Any, ...]]:
    """Several action routes answer with and without a trailing slash (``/segment`` and
    ``/segment/``): the schema names the one without (as the README does)."""
    paths = {endpoint[0] for endpoint in endpoints}
    return [
        endpoint
        for endpoint in endpoints
        if not (endpoint[0].endswith("/") and endpoint[0].rstrip("/") in paths)
    ]


# --------------------------------------------------------------------------------------------
# Shapes that no serializer of the views names
# --------------------------------------------------------------------------------------------


def _binary(content_type: str, what: str) -> dict[Any, Any]:
    return {
        (200, content_type): OpenApiResponse(OpenApiTypes.BINARY, description=what),
        302: OpenApiResponse(description="On S3 storage: a redirect to a presigned URL of the file."),
        404: OpenApiResponse(description="No such row in your labs."),
    }


def _text(content_type: str, what: str) -> dict[Any, Any]:
    return {(200, content_type): OpenApiResponse(OpenApiTypes.STR, description=what)}


def _kind(*kinds: str) -> OpenApiParameter:
    return OpenApiParameter("kind", str, OpenApiParameter.PATH, enum=list(kinds))


_id = OpenApiParameter("id", int, OpenApiParameter.PATH)

_offset = inline_serializer(
    "UploadOffset",
    {"offset": serializers.IntegerField(), "size_bytes": serializers.IntegerField()},
)

_note = review_serializers.NoteSerializer
_annotation = review_serializers.ReviewedAnnotationSerializer
_prediction = segmentation_serializers.PredictionSerializer


class AnnotationHistorySerializer(review_serializers.ReviewedAnnotationSerializer):
    """``GET /api/annotations/{id}/history``: the annotation and every transition of its review."""

    transitions = review_serializers.TransitionSerializer(many=True, read_only=True)

    class Meta(review_serializers.ReviewedAnnotationSerializer.Meta):
        fields = [*review_serializers.ReviewedAnnotationSerializer.Meta.fields, "transitions"]


class CorrectionSerializer(review_serializers.AnnotationSerializer):
    """``POST /api/predictions/{id}/corrections``: the stored annotation, its correction version
    and the source label the prediction's volumes now carry."""

    prediction = serializers.IntegerField()
    version = serializers.IntegerField(allow_null=True)
    source = serializers.CharField()  # type: ignore[assignment]  # a field here, not Field.source

    class Meta(review_serializers.AnnotationSerializer.Meta):
        fields = [*review_serializers.AnnotationSerializer.Meta.fields, "prediction", "version", "source"]


_consensus_answer = inline_serializer(
    "ConsensusAnswer",
    {
        "scan": serializers.IntegerField(),
        "consensus": review_serializers.ConsensusSerializer(many=True),
        "analysis": serializers.DictField(allow_null=True, help_text="The latest background analysis."),
    },
)

_decision = {
    "qc": inline_serializer(
        "QcDecision",
        {
            "decision": serializers.ChoiceField(["accepted", "rejected"]),
            "note": serializers.CharField(required=False, allow_blank=True),
        },
    ),
    "lesion": inline_serializer(
        "LesionDecision",
        {
            "decision": serializers.ChoiceField(["excluded", "confirmed"]),
            "reason": serializers.CharField(required=False, allow_blank=True),
        },
    ),
}


# --------------------------------------------------------------------------------------------
# scans
# --------------------------------------------------------------------------------------------

describe(
    "scans.api.views.ScanListCreate",
    get=extend_schema(
        parameters=[
            OpenApiParameter("study", int, description="Only this study's scans."),
            OpenApiParameter("mouse", int, description="Only this mouse's scans."),
            OpenApiParameter("lab", int, description="Only this lab's scans."),
            OpenApiParameter("study_name", str, description="By the study's name."),
            OpenApiParameter("mouse_name", str, description="By the mouse's identifier."),
            OpenApiParameter("time_point", str, description="By the time point's label (0h, 8d, ...)."),
        ]
    ),
    post=extend_schema(
        request={
            "multipart/form-data": inline_serializer(
                "ScanUpload",
                {
                    "file": serializers.FileField(help_text="The NIfTI file (.nii or .nii.gz)."),
                    "study": serializers.CharField(),
                    "lab": serializers.CharField(required=False),
                    "mouse": serializers.CharField(),
                    "time_point": serializers.CharField(),
                    "modality": serializers.ChoiceField(Scan.Modality.values, required=False),
                },
            )
        },
        responses={201: scan_serializers.ScanSerializer},
    ),
)
describe(
    "scans.api.views.ScanDetail",
    delete=extend_schema(
        description="Moves the scan to the bin (lab admins); restorable until the purge.",
        responses={200: scan_serializers.ScanSerializer},
    ),
)
describe(
    "scans.api.views.ScanRestore", post=extend_schema(request=None, responses=scan_serializers.ScanSerializer)
)
describe(
    "scans.api.views.ScanFile",
    get=extend_schema(responses=_binary("application/gzip", "The file as uploaded.")),
)
describe(
    "scans.api.views.ScanThumbnail",
    get=extend_schema(responses=_binary("image/png", "A preview of the scan.")),
)
describe("scans.api.views.MouseList", get=extend_schema(parameters=[OpenApiParameter("study", int)]))
describe(
    "scans.api.views.MouseDetail",
    patch=extend_schema(
        request=inline_serializer(
            "MouseChanges",
            {
                "identifier": serializers.CharField(required=False),
                "cohort": serializers.IntegerField(required=False, allow_null=True),
                "strain": serializers.CharField(required=False, allow_blank=True),
                "sex": serializers.ChoiceField(Mouse.Sex.values, required=False),
                "notes": serializers.CharField(required=False, allow_blank=True),
            },
        ),
        responses=scan_serializers.MouseSerializer,
    ),
)
describe(
    "scans.api.views.MouseMerge",
    post=extend_schema(
        request=inline_serializer("MouseMerge", {"into": serializers.IntegerField()}),
        responses=scan_serializers.MouseSerializer,
    ),
)
describe(
    "scans.api.views.ScanMove",
    post=extend_schema(
        request=inline_serializer(
            "ScanMove", {"mouse": serializers.IntegerField(), "time_point": serializers.CharField()}
        ),
        responses=scan_serializers.ScanSerializer,
    ),
)
describe(
    "scans.api.views.CohortCreate",
    post=extend_schema(
        request=inline_serializer(
            "CohortCreate",
            {"name": serializers.CharField(), "treatment": serializers.CharField(required=False)},
        ),
        responses={
            201: inline_serializer(
                "Cohort",
                {
                    "id": serializers.IntegerField(),
                    "name": serializers.CharField(),
                    "treatment": serializers.CharField(),
                },
            )
        },
    ),
)
describe(
    "scans.api.views.StructureList",
    get=extend_schema(
        responses=inline_serializer(
            "Structure",
            {
                "id": serializers.IntegerField(),
                "name": serializers.CharField(),
                "display_name": serializers.CharField(),
                "colour": serializers.CharField(),
                "rgb": serializers.ListField(child=serializers.IntegerField()),
                "group": serializers.CharField(),
                "kind": serializers.CharField(),
            },
            many=True,
        )
    ),
)
describe(
    "scans.api.views.UploadCreate",
    post=extend_schema(
        request=scan_serializers.CreateUploadSerializer,
        responses={
            201: inline_serializer(
                "UploadSession",
                {
                    "id": serializers.UUIDField(),
                    "offset": serializers.IntegerField(),
                    "size_bytes": serializers.IntegerField(),
                },
            )
        },
    ),
)
describe(
    "scans.api.views.UploadChunk",
    get=extend_schema(responses=_offset),
    put=extend_schema(
        parameters=[
            OpenApiParameter(
                "Content-Range",
                str,
                OpenApiParameter.HEADER,
                required=True,
                description="bytes FIRST-LAST/TOTAL; FIRST must be the current offset (else 409).",
            )
        ],
        request={"application/octet-stream": OpenApiTypes.BINARY},
        responses=_offset,
    ),
)
describe(
    "scans.api.views.UploadComplete",
    post=extend_schema(
        request=scan_serializers.CompleteUploadSerializer, responses={201: scan_serializers.ScanSerializer}
    ),
)


# --------------------------------------------------------------------------------------------
# segmentation
# --------------------------------------------------------------------------------------------

describe(
    "segmentation.api.views.SegmentScanView",
    post=extend_schema(
        request=inline_serializer(
            "SegmentRequest",
            {
                "models": serializers.ListField(
                    child=serializers.CharField(),
                    required=False,
                    help_text="name@version of each model; the default models when absent.",
                )
            },
        ),
        responses={
            202: inline_serializer(
                "SegmentAnswer", {"jobs": segmentation_serializers.InferenceJobSerializer(many=True)}
            )
        },
    ),
)
describe(
    "segmentation.api.views.JobList",
    get=extend_schema(
        parameters=[
            OpenApiParameter("scan", int, description="Only this scan's jobs."),
            OpenApiParameter("ids", str, description="Comma-separated job ids (at most 200)."),
            OpenApiParameter("state", str, enum=[str(v) for v in InferenceJob.State.values]),
        ]
    ),
)
describe(
    "segmentation.api.views.JobCancel",
    post=extend_schema(request=None, responses=segmentation_serializers.InferenceJobSerializer),
)
describe(
    "segmentation.api.views.PredictionFileView",
    get=extend_schema(
        operation_id="predictions_file_retrieve",
        parameters=[_kind("labels", "uncertainty")],
        responses=_binary("application/gzip", "The label map or uncertainty map (NIfTI, gzip)."),
    ),
)
describe(
    "segmentation.api.views.ScanExportView",
    "segmentation.api.views.StudyExportView",
    get=extend_schema(
        parameters=[_kind("volumes", "lesions", "metastases")], responses=_text("text/csv", "CSV")
    ),
)
describe(
    "segmentation.api.views.PredictionQCView",
    post=extend_schema(request=_decision["qc"], responses=_prediction),
)
describe(
    "segmentation.api.views.LesionReviewView",
    post=extend_schema(request=_decision["lesion"], responses=_prediction),
)


# --------------------------------------------------------------------------------------------
# review
# --------------------------------------------------------------------------------------------

describe(
    "review.api.views.SubmitView",
    "review.api.views.ApproveView",
    "review.api.views.RejectView",
    "review.api.views.ReopenView",
    post=extend_schema(request=_note, responses=_annotation),
)
describe(
    "review.api.views.ReplaceView",
    post=extend_schema(
        request={"multipart/form-data": review_serializers.ReplaceSerializer},
        responses={201: _annotation},
    ),
)
describe("review.api.views.HistoryView", get=extend_schema(responses=AnnotationHistorySerializer))
describe("review.api.views.PromoteView", post=extend_schema(request=None, responses={201: _annotation}))
describe(
    "review.api.views.ConsensusView",
    get=extend_schema(responses=_consensus_answer),
    post=extend_schema(
        request=inline_serializer(
            "ConsensusRequest",
            {
                "structures": serializers.ListField(child=serializers.CharField(), required=False),
                "background": serializers.BooleanField(required=False),
            },
        ),
        responses={201: _consensus_answer, 202: _consensus_answer},
    ),
)
describe(
    "review.api.views.ConsensusFileView",
    get=extend_schema(
        parameters=[_kind("majority", "staple", "disagreement")],
        responses=_binary("application/gzip", "A consensus map (NIfTI, gzip)."),
    ),
)
describe(
    "review.api.views.AgreementView",
    get=extend_schema(
        responses=inline_serializer(
            "ScanAgreement",
            {
                "scan": serializers.IntegerField(),
                "annotators": review_serializers.AgreementSerializer(many=True),
                "predictions": review_serializers.ComparisonSerializer(many=True),
                "hd95": serializers.CharField(),
                "msd": serializers.CharField(),
            },
        )
    ),
)
describe(
    "review.api.views.ScanAgreementCsvView",
    "review.api.views.StudyAgreementCsvView",
    "review.api.views.StudyVariabilityCsvView",
    "review.api.views.StudyModelsCsvView",
    get=extend_schema(responses=_text("text/csv", "CSV")),
)
describe(
    "review.api.views.StudyDiceView",
    get=extend_schema(
        responses=OpenApiResponse(
            OpenApiTypes.OBJECT,
            description='Structure name -> {"model vs annotator": [dice, ...], '
            '"annotator vs annotator": [...]}.',
        )
    ),
)
describe(
    "review.api.corrections.CorrectionView",
    post=extend_schema(
        request={
            "multipart/form-data": inline_serializer(
                "CorrectionUpload",
                {"file": serializers.FileField(help_text="The drawn label map: NIfTI on the scan's grid.")},
            )
        },
        responses={201: CorrectionSerializer},
    ),
)
describe(
    "review.api.views.ScanAnnotations",
    post=extend_schema(
        request={
            "multipart/form-data": inline_serializer(
                "AnnotationUpload",
                {
                    "file": serializers.FileField(help_text="NIfTI on the scan's grid, or .seg.nrrd."),
                    "annotator": serializers.CharField(required=False),
                    "structures": serializers.CharField(
                        required=False, help_text='JSON: {"tumor": 1} (structure name to label value).'
                    ),
                },
            )
        },
        responses={201: review_serializers.AnnotationSerializer},
    ),
)
describe(
    "review.api.views.AnnotationFile",
    get=extend_schema(responses=_binary("application/gzip", "The annotation file.")),
)
describe(
    "review.api.views.AnnotationSegNrrd",
    "review.api.views.PredictionSegNrrd",
    get=extend_schema(responses=_binary("application/octet-stream", "A 3D Slicer .seg.nrrd file.")),
)
describe(
    "review.api.views.ItksnapLabels",
    get=extend_schema(responses=_text("text/plain", "ITK-SNAP label description file.")),
)


# --------------------------------------------------------------------------------------------
# The bin of mice and studies (scans/api/bin.py)
# --------------------------------------------------------------------------------------------

_object = OpenApiResponse(OpenApiTypes.OBJECT, description="The row as JSON.")
_objects = OpenApiResponse(
    inline_serializer("BinRow", {"id": serializers.IntegerField()}, many=True),
    description="The rows in the bin of your labs, newest first.",
)

describe("scans.api.bin.BinMice", "scans.api.bin.BinStudies", get=extend_schema(responses=_objects))
describe(
    "scans.api.bin.MouseRestore",
    "scans.api.bin.StudyRestore",
    post=extend_schema(request=None, responses=_object),
)


# --------------------------------------------------------------------------------------------
# retraining (retraining/api/views.py)
# --------------------------------------------------------------------------------------------

describe(
    "retraining.api.views.TrainingSets",
    get=extend_schema(
        operation_id="training_sets_list",
        responses=OpenApiResponse(
            inline_serializer("TrainingSetRow", {"id": serializers.IntegerField()}, many=True),
            description="The training sets of your labs.",
        ),
    ),
    post=extend_schema(
        request=inline_serializer(
            "TrainingSetRequest",
            {
                "name": serializers.CharField(),
                "task": serializers.CharField(),
                "study": serializers.IntegerField(required=False),
                "lab": serializers.IntegerField(required=False),
                "validation_fraction": serializers.FloatField(required=False),
                "seed": serializers.IntegerField(required=False),
            },
        ),
        responses={201: _object},
    ),
)
describe(
    "retraining.api.views.TrainingSetDetail",
    "retraining.api.views.TrainingJobDetail",
    "retraining.api.views.LabModels",
    get=extend_schema(responses=_object),
)
describe(
    "retraining.api.views.Train",
    post=extend_schema(
        request=inline_serializer(
            "TrainRequest",
            {
                "epochs": serializers.IntegerField(required=False),
                "steps_per_epoch": serializers.IntegerField(required=False),
                "learning_rate": serializers.FloatField(required=False),
                "minutes": serializers.FloatField(required=False),
                "from_scratch": serializers.BooleanField(required=False),
            },
        ),
        responses={202: _object},
    ),
)
describe("retraining.api.views.CancelTraining", post=extend_schema(request=None, responses=_object))
describe(
    "retraining.api.views.RollBack",
    post=extend_schema(
        request=inline_serializer("RollBackRequest", {"reason": serializers.CharField()}),
        responses={201: _object},
    ),
)
describe(
    "retraining.api.views.Promote",
    post=extend_schema(
        request=inline_serializer(
            "PromotionRequest",
            {"reason": serializers.CharField(), "lab": serializers.IntegerField(required=False)},
        ),
        responses={201: _object},
    ),
)
describe(
    "retraining.api.views.Rerun",
    post=extend_schema(
        request=inline_serializer("RerunRequest", {"task": serializers.CharField(required=False)}),
        responses={202: _object},
    ),
)
describe(
    "retraining.api.views.ModelChanges",
    get=extend_schema(
        parameters=[
            OpenApiParameter("before", int, required=True, description="A model version's id."),
            OpenApiParameter("after", int, required=True, description="A model version's id."),
        ],
        responses=_object,
    ),
)

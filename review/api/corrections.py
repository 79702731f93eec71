"""``POST /api/predictions/{id}/corrections``: a label map drawn over a prediction in the viewer
(multipart ``file``, NIfTI on the scan's grid), stored as the prediction's next correction
version (``review.corrections``). Answers 201 with the annotation, its version and the source
label the volumes now carry; refusals are plain 4xx and store nothing."""

from __future__ import annotations

from django.shortcuts import get_object_or_404
from rest_framework import status
from rest_framework.parsers import MultiPartParser
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from segmentation.corrections import corrections, source_label
from segmentation.models import Prediction

from .. import corrections as service
from .serializers import AnnotationSerializer


class CorrectionView(APIView):
    parser_classes = [MultiPartParser]

    def post(self, request: Request, pk: int) -> Response:
        queryset = Prediction.objects.visible_to(request.user).select_related("scan__lab", "model_version")
        prediction = get_object_or_404(queryset, pk=pk)
        upload = request.FILES.get("file")
        if upload is None:
            return Response(
                {"detail": "attach the drawn label map as the multipart field 'file'"}, status=400
            )
        annotation = service.save_correction(
            prediction=prediction, file=upload, user=request.user, original_filename=upload.name or ""
        )
        newest = corrections([prediction]).get(prediction.pk)
        data = dict(AnnotationSerializer(annotation).data)
        data.update(
            {
                "prediction": prediction.pk,
                "version": newest.version if newest else None,
                "source": source_label(prediction, newest),
            }
        )
        return Response(data, status=status.HTTP_201_CREATED)

"""schemathesis against the OpenAPI schema (``/api/schema/``) on a live server, PostgreSQL behind it:
no generated request may get a 5xx.

A lab admin's token (the deepest checks: admin-only actions are reached, not refused early) and
real rows: a scan uploaded through the service, its predictions by the tiny models (run in this
process, no broker), a promoted annotation, an open resumable upload. Every operation gets cases
whose path ids are those rows (positive: bodies and queries as the schema describes them;
negative: wrong types, missing or extra fields, out-of-range values, ids of other types).
Bounded: ``EXAMPLES`` per operation and mode, no shrinking, DELETE last (it bins the scan).

Not fuzzed: ``PUT /api/uploads/{id}/``, a raw byte stream framed by ``Content-Range`` that
schemathesis cannot generate meaningfully (random bytes with a random header); its refusals are
tested in tests/scans/test_chunked_upload.py.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given, strategies
from hypothesis import settings as hypothesis_settings
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error

from labs.models import Membership
from labs.tokens import issue
from review import services as review_services
from scans import uploads
from scans.models import Scan
from scans.services import register_scan
from segmentation import services
from segmentation.models import InferenceJob, Lesion, Prediction
from tests.factories import LabFactory, member_of
from tests.segmentation.tiny import write_phantom, write_tiny_models

pytestmark = pytest.mark.django_db(transaction=True)

#: Cases per operation and mode (positive, negative); the same cases every run (derandomized).
#: LABSEG_FUZZ_EXAMPLES=N runs N new random cases per operation and mode instead (a deeper run).
EXAMPLES = int(os.environ.get("LABSEG_FUZZ_EXAMPLES", "4"))
RANDOM = "LABSEG_FUZZ_EXAMPLES" in os.environ
#: What cannot be fuzzed meaningfully (see the module's docstring).
EXCLUDED = {"PUT /api/uploads/{id}/"}


def _rows(tmp_path: Path, settings_: Any) -> tuple[str, dict[str, dict[str, Any]]]:
    """A lab admin's token and, per first path segment, the real ids to put in paths."""
    models_root = write_tiny_models(tmp_path / "models")
    settings_.LABSEG_MODELS_DIR = models_root
    settings_.LABSEG_SEGMENT_ON_UPLOAD = False
    services.sync_models(root=models_root)
    lab = LabFactory.create(name="Fuzz lab")
    admin = member_of(lab, role=Membership.Role.ADMIN, username="fuzz-admin")
    phantom = write_phantom(tmp_path / "phantom.nii.gz", seed=3)
    scan = register_scan(
        lab=lab,
        uploaded_file_path_or_file=phantom,
        original_filename=phantom.name,
        study_name="Fuzz study",
        mouse_identifier="M01",
        time_point_label="8d",
        modality=Scan.Modality.NATIVE_CT,
        user=admin,
    )
    for version in services.default_model_versions():
        # Created directly and run here: a request would publish to the broker.
        job = InferenceJob.objects.create(scan=scan, model_version=version, requested_by=admin)
        done = services.run_job(job.pk, worker_host="fuzz")
        assert done is not None and done.state == "succeeded", done and done.error
    prediction = Prediction.objects.filter(scan=scan).order_by("pk").first()
    assert prediction is not None
    annotation = review_services.promote_prediction(prediction=prediction, user=admin)
    session = uploads.create_upload(user=admin, filename="big.nii.gz", size_bytes=1024)
    lesion = Lesion.objects.filter(prediction__scan=scan).first()
    ids: dict[str, dict[str, Any]] = {
        "scans": {"id": scan.pk},
        "bin": {"id": scan.pk},
        "studies": {"id": scan.time_point.mouse.study_id},
        "mice": {"id": scan.time_point.mouse_id},
        "jobs": {"id": InferenceJob.objects.filter(scan=scan).first().pk},  # type: ignore[union-attr]
        "predictions": {"id": prediction.pk},
        "lesions": {"id": lesion.pk if lesion else 1},
        "annotations": {"id": annotation.pk},
        "uploads": {"id": str(session.pk)},
        "consensus": {"id": 1},
    }
    return issue(admin)[1], ids


def _order(label: str) -> tuple[int, str]:
    return (1 if label.startswith("DELETE ") else 0, label)


def test_no_generated_request_gets_a_server_error(
    live_server: Any, tmp_path: Path, settings: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    settings.DEBUG_PROPAGATE_EXCEPTIONS = False
    token, ids = _rows(tmp_path, settings)
    headers = {"Authorization": f"Token {token}"}
    schema = schemathesis.openapi.from_url(
        f"{live_server.url}/api/schema/?format=json", headers=headers, timeout=30
    )
    operations = sorted(
        (result.ok() for result in schema.get_all_operations()),  # type: ignore[union-attr]
        key=lambda op: _order(op.label),
    )
    assert len(operations) >= 55
    started = time.monotonic()
    failures: list[str] = []
    cases = 0

    for operation in operations:
        if operation.label in EXCLUDED:
            continue
        real = ids.get(operation.path.split("/")[2], {}) if "{" in operation.path else {}
        real = {name: value for name, value in real.items() if "{" + name + "}" in operation.path}
        strategy = strategies.one_of(
            operation.as_strategy(GenerationMode.POSITIVE, path_parameters=real),
            operation.as_strategy(GenerationMode.NEGATIVE, path_parameters=real),
        )

        @given(case=strategy)
        @hypothesis_settings(
            max_examples=EXAMPLES * 2,
            deadline=None,
            database=None,
            derandomize=not RANDOM,
            phases=[Phase.explicit, Phase.generate],
            suppress_health_check=list(HealthCheck),
        )
        def fuzz(case: Any) -> None:
            nonlocal cases
            cases += 1
            case.call_and_validate(
                base_url=live_server.url, headers=headers, checks=[not_a_server_error], timeout=60
            )

        _run(fuzz, operation.label, failures)

    seconds = time.monotonic() - started
    with capsys.disabled():
        print(
            f"\nschemathesis: {len(operations) - len(EXCLUDED)} operations, {cases} cases, "
            f"{len(failures)} with a server error, {seconds:.0f} s"
        )
    assert failures == [], "\n\n".join(failures)


def _run(fuzz: Callable[[], None], label: str, failures: list[str]) -> None:
    try:
        fuzz()
    except (Exception, BaseExceptionGroup) as error:  # record it and fuzz the other operations
        failures.append(f"{label}: {error}"[:3000])

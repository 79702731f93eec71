"""The lab's retraining loop end to end, with real workers on PostgreSQL and Redis, through the API
and one Chromium page.

A "new scanner" (``inference/phantom/new_scanner.py``: smoother kernel, compressed soft-tissue
contrast, offset and gain) images four phantom mice at two time points; ground-truth tumors are
uploaded as approved annotations (tumor only: partial labels); a training set splits the mice with
one frozen for validation; a ``train`` worker fine-tunes the shipped tumor model (killed after its
first epoch and restarted: the job resumes from the checkpoint), the candidate must beat the
shipped model on the frozen split; an admin promotes it on the comparison page, the study is
re-run by a ``cpu`` worker, the volume changes are read, and the lab rolls back.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import pytest
from rest_framework.test import APIClient

from inference.phantom.generator import generate_phantom
from inference.phantom.new_scanner import new_scanner
from labs.models import Lab, Membership
from retraining.models import TrainingJob
from segmentation import services as segmentation
from segmentation.models import InferenceJob, ModelVersion, Prediction
from tests.factories import LabFactory, member_of
from tests.workers import PrivateRedis, Workers, private_broker, started_workers, wait_for

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]

# Playwright's sync API keeps an asyncio loop running in this thread (see tests/frontend/conftest.py).
os.environ.setdefault("DJANGO_ALLOW_ASYNC_UNSAFE", "true")

REPO = Path(__file__).resolve().parents[2]
PASSWORD = "labseg-pass-123"
#: Phantom seeds with a flank tumor; each is one mouse, scanned at 0h and at 8d (tumors grown 1.6x).
MICE = {"N1": 10, "N2": 14, "N3": 15, "N4": 20}
TIME_POINTS = {"0h": (1.0, 0), "8d": (1.6, 1)}


@pytest.fixture
def broker(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[PrivateRedis]:
    yield from private_broker(tmp_path, monkeypatch)


@pytest.fixture
def workers(tmp_path: Path, media_root: Path, broker: PrivateRedis) -> Iterator[Workers]:
    if shutil.which("redis-server") is None:
        pytest.fail("the end-to-end tests need redis-server on PATH")
    yield from started_workers(tmp_path, media_root, broker)


@pytest.fixture
def shipped(db: Any, settings: Any) -> dict[str, ModelVersion]:
    settings.LABSEG_MODELS_DIR = REPO / "inference" / "models"
    segmentation.sync_models(root=settings.LABSEG_MODELS_DIR)
    return {mv.task: mv for mv in ModelVersion.objects.filter(is_default=True)}


def _write_scan(folder: Path, mouse: str, seed: int, label: str) -> tuple[Path, Path]:
    growth, index = TIME_POINTS[label]
    phantom = generate_phantom(seed, spacing_mm=0.63, growth=growth, time_index=index, n_annotators=1)
    ct = folder / f"CT_{mouse}_{label}.nii.gz"
    truth = folder / f"A_{mouse}_{label}.nii.gz"
    nib.save(nib.Nifti1Image(np.rint(new_scanner(phantom.ct)).astype(np.int16), phantom.affine), str(ct))
    tumor = (phantom.labels == 14).astype(np.uint8)
    nib.save(nib.Nifti1Image(tumor, phantom.affine), str(truth))
    return ct, truth


def _finished(client: APIClient, urls: list[str]) -> list[dict[str, Any]] | None:
    states = [client.get(url).json() for url in urls]
    return states if all(s["state"] in ("succeeded", "failed", "cancelled") for s in states) else None


def test_a_lab_retrains_compares_promotes_reruns_and_rolls_back(
    shipped: dict[str, ModelVersion],
    workers: Workers,
    tmp_path: Path,
    settings: Any,
    browser: Any,
    live_server: Any,
) -> None:
    settings.LABSEG_SEGMENT_ON_UPLOAD = False
    lab = LabFactory.create(name="New scanner lab")
    admin = member_of(lab, role=Membership.Role.ADMIN, username="ada")
    client = APIClient()
    client.force_authenticate(admin)
    env = {"LABSEG_TRAIN_THREADS": "1", "LABSEG_INFERENCE_THREADS": "1"}
    workers.start("cpu", queues="cpu", with_beat=True, env=env)
    workers.start("train1", queues="train", env=env)

    # 1-2. New-scanner scans, and their ground truth as approved tumor-only annotations.
    study_id = None
    for mouse, seed in MICE.items():
        for label in TIME_POINTS:
            ct, truth = _write_scan(tmp_path, mouse, seed, label)
            with ct.open("rb") as handle:
                answer = client.post(
                    "/api/scans/",
                    {"file": handle, "study": "New scanner", "mouse": mouse, "time_point": label},
                    format="multipart",
                )
            assert answer.status_code == 201, answer.content
            scan = answer.json()
            study_id = scan["study"] if isinstance(scan["study"], int) else scan["study"]["id"]
            with truth.open("rb") as handle:
                annotation = client.post(
                    f"/api/scans/{scan['id']}/annotations/",
                    {"file": handle, "annotator": "A", "structures": '{"tumor": 1}'},
                    format="multipart",
                )
            assert annotation.status_code == 201, annotation.content
            approved = client.post(f"/api/annotations/{annotation.json()['id']}/approve")
            assert approved.status_code == 200, approved.content

    # The shipped model's segmentation of the study, for the comparison after the re-run.
    before = client.post(f"/api/studies/{study_id}/rerun", {"task": "tumor"}, format="json")
    assert before.status_code == 202, before.content
    assert {j["model"] for j in before.json()["jobs"]} == {shipped["tumor"].label}

    # 3. A training set with a mouse-level frozen split.
    created = client.post(
        "/api/training-sets/",
        {"name": "New scanner tumors", "task": "tumor", "study": study_id, "validation_fraction": 0.25},
        format="json",
    )
    assert created.status_code == 201, created.content
    training_set = created.json()
    assert len(training_set["validation_mice"]) == 1
    sides: dict[int, set[str]] = {}
    for item in training_set["items"]:
        sides.setdefault(item["mouse"], set()).add(item["split"])
        assert len(item["annotations"][0]["sha256"]) == 64 and len(item["scan_sha256"]) == 64
        assert item["structures"] == [14]
    assert all(len(s) == 1 for s in sides.values()), sides
    assert training_set["counts"] == {"train": 6, "validation": 2}

    # 4. A short fine-tune on the train queue; its worker dies after the first epoch and another
    # resumes from the checkpoint.
    asked = client.post(
        f"/api/training-sets/{training_set['id']}/train", {"epochs": 3, "steps_per_epoch": 5}, format="json"
    )
    assert asked.status_code == 202, asked.content
    job_url = asked.json()["url"]
    assert asked.json()["base_model"]["label"] == shipped["tumor"].label
    first = wait_for(
        lambda: (lambda j: j if j["epoch"] >= 1 or j["state"] == "failed" else None)(
            client.get(job_url).json()
        ),
        timeout_s=600,
        what="the first epoch",
        workers=workers,
    )
    assert first["state"] == "running", (first["error"], workers.logs())
    assert first["loss"] is not None and first["validation_dice"] is not None
    workers.kill("train1")
    workers.start("train2", queues="train", env=env)
    done = wait_for(
        lambda: _finished(client, [job_url]), timeout_s=900, what="the training", workers=workers
    )[0]
    assert done["state"] == "succeeded", (done["error"], workers.logs())
    assert done["attempts"] >= 2  # a loaded machine may take it back once more; each resumes
    assert [h["epoch"] for h in done["history"]] == [1, 2, 3]
    candidate = done["candidate"]
    assert candidate["lab"] == lab.pk

    # The candidate beats the shipped model on the frozen split, on the new scanner's scans.
    tumor = done["comparison"]["structures"]["14"]
    assert len(tumor["scans"]) == 2
    print("frozen split tumor Dice", tumor["median"])
    assert tumor["median"]["candidate"]["dice"] > tumor["median"]["current"]["dice"]
    assert tumor["wilcoxon"]["n_pairs"] == 2

    # Lab isolation: another lab sees none of it.
    other = member_of(LabFactory.create(name="Other lab"), role=Membership.Role.ADMIN, username="bob")
    stranger = APIClient()
    stranger.force_authenticate(other)
    stranger.force_login(other)
    for url in (
        f"/api/training-sets/{training_set['id']}/",
        job_url,
        f"/retraining/jobs/{done['id']}/",
        f"/api/labs/{lab.pk}/models/",
    ):
        assert stranger.get(url).status_code == 404, url
    assert (
        stranger.post(f"/api/training-sets/{training_set['id']}/train", {}, format="json").status_code == 404
    )
    assert (
        stranger.post(f"/api/models/{candidate['id']}/promote", {"reason": "x"}, format="json").status_code
        == 404
    )
    assert candidate["id"] not in [m["id"] for m in stranger.get("/api/models/").json()]

    # 5-6. The comparison page: box plots, then promote with one click.
    context = browser.new_context()
    try:
        page = context.new_page()
        page.set_default_timeout(30_000)
        errors: list[str] = []
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.goto(f"{live_server.url}/login/")
        page.fill("#id_username", admin.username)
        page.fill("#id_password", PASSWORD)
        page.click("button[type=submit]")
        page.wait_for_url(f"{live_server.url}/")
        page.goto(f"{live_server.url}/retraining/jobs/{done['id']}/")
        page.wait_for_selector("#dice-boxes svg")
        assert page.locator("#comparison-table tr[data-structure=tumor]").count() == 1
        page.fill("#promote-form input[name=reason]", "beats the shipped model on our scanner")
        page.click("#promote-form button")
        page.wait_for_function("document.getElementById('promote-result').textContent.startsWith('Promoted')")
        assert not errors, errors
    finally:
        context.close()
    models = client.get(f"/api/labs/{lab.pk}/models/").json()
    assert models["defaults"]["tumor"]["id"] == candidate["id"]
    assert models["promotions"][0]["by"] == "ada"
    assert models["promotions"][0]["reason"] == "beats the shipped model on our scanner"

    # Re-run the study with the lab's new default; the old predictions keep their version.
    wait_for(
        lambda: _finished(client, [f"/api/jobs/{j['id']}/" for j in before.json()["jobs"]]),
        timeout_s=300,
        what="the shipped model's segmentations",
        workers=workers,
    )
    rerun = client.post(f"/api/studies/{study_id}/rerun", {"task": "tumor"}, format="json")
    assert rerun.status_code == 202, rerun.content
    assert {j["model"] for j in rerun.json()["jobs"]} == {candidate["label"]}
    finished = wait_for(
        lambda: _finished(client, [f"/api/jobs/{j['id']}/" for j in rerun.json()["jobs"]]),
        timeout_s=300,
        what="the re-run",
        workers=workers,
    )
    assert all(j["state"] == "succeeded" for j in finished), finished
    assert Prediction.objects.filter(model_version=shipped["tumor"]).count() == 8
    assert Prediction.objects.filter(model_version_id=candidate["id"]).count() == 8
    changes = client.get(
        f"/api/studies/{study_id}/model-changes", {"before": shipped["tumor"].pk, "after": candidate["id"]}
    ).json()
    tumor_rows = [c for c in changes["changes"] if c["structure"] == "tumor"]
    assert len(tumor_rows) == 8
    assert set(changes["tumor_curves"]) == set(MICE)
    assert all(len(c["before"]) == 2 and len(c["after"]) == 2 for c in changes["tumor_curves"].values())
    assert all(isinstance(c["beyond_uncertainty"], bool) for c in tumor_rows)

    # Roll back: one call, recorded; new segmentations use the shipped model again.
    rolled = client.post(f"/api/labs/{lab.pk}/models/tumor/roll-back", {"reason": "check"}, format="json")
    assert rolled.status_code == 201, rolled.content
    assert rolled.json()["model"]["id"] == shipped["tumor"].pk
    assert segmentation.lab_default(Lab.objects.get(pk=lab.pk), "tumor") == shipped["tumor"]
    assert TrainingJob.objects.get(pk=done["id"]).candidate_id == candidate["id"]
    assert InferenceJob.objects.filter(model_version_id=candidate["id"]).count() == 8

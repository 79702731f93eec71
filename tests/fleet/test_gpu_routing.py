"""Routing to GPU workers: jobs go to the ``gpu`` queue while a live worker consumes it, else to ``cpu``.

No GPU is lent to these tests: the worker consuming ``gpu`` is a CPU worker started with ``-Q gpu``
(named ``gpu-standin``). It stands in for routing only; what a real GPU worker adds (the CUDA
provider) is covered by the provider fallback tests in tests/inference/pipeline/test_runtime.py.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import onnxruntime as ort
import pytest

from labseg import fleet
from scans.models import Scan
from segmentation import services
from segmentation.models import InferenceJob, ModelVersion, Prediction
from tests.workers import REPO, PrivateRedis, Workers, started_workers, wait_for

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]


@pytest.fixture
def workers(tmp_path: Path, media_root: Path, broker: PrivateRedis) -> Iterator[Workers]:
    fleet.forget_gpu_workers()
    yield from started_workers(tmp_path, media_root, broker)
    fleet.forget_gpu_workers()


def _ready(workers: Workers, name: str) -> bool:
    log = workers.tmp_path / f"{name}.log"
    return log.exists() and " ready." in log.read_text(errors="replace")


def test_jobs_go_to_the_gpu_queue_while_a_gpu_worker_is_up_and_to_cpu_otherwise(
    models: dict[str, ModelVersion], upload_scan: Callable[..., Scan], workers: Workers, settings: Any
) -> None:
    settings.LABSEG_GPU_WORKERS_CACHE_S = 60.0
    workers.start("cpu-worker", queues="cpu")
    wait_for(lambda: _ready(workers, "cpu-worker"), timeout_s=60, what="the CPU worker", workers=workers)
    assert services.queue_for(models["organs"]) == "cpu"

    workers.start("gpu-standin", queues="gpu")
    wait_for(lambda: _ready(workers, "gpu-standin"), timeout_s=60, what="the gpu worker", workers=workers)
    assert services.queue_for(models["organs"]) == "cpu", "the answer is cached for the setting's seconds"
    fleet.forget_gpu_workers()
    seen = {w.name.split("@")[0]: w.queues for w in fleet.workers_seen()}
    assert seen == {"cpu-worker": ("cpu",), "gpu-standin": ("gpu",)}

    scan = upload_scan()
    [job] = services.request_segmentation(scan=scan, model_versions=[models["organs"]])
    assert job.queue == "gpu"
    wait_for(
        lambda: InferenceJob.objects.filter(pk=job.pk, state="succeeded").exists(),
        timeout_s=60,
        what="the job on the gpu queue",
        workers=workers,
    )
    job.refresh_from_db()
    assert job.worker_host.startswith("gpu-standin@")
    assert Prediction.objects.filter(scan=scan).count() == 1

    workers.kill("gpu-standin")
    fleet.forget_gpu_workers()
    [lesions] = services.request_segmentation(scan=scan, model_versions=[models["tumor"]])
    assert lesions.queue == "cpu"
    wait_for(
        lambda: InferenceJob.objects.filter(pk=lesions.pk, state="succeeded").exists(),
        timeout_s=60,
        what="the job on the cpu queue",
        workers=workers,
    )
    lesions.refresh_from_db()
    assert lesions.worker_host.startswith("cpu-worker@")


def test_no_broker_that_broadcasts_means_no_gpu_workers(settings: Any) -> None:
    fleet.forget_gpu_workers()
    settings.CELERY_BROKER_URL = "filesystem://"
    assert fleet.workers_seen() == [] and fleet.gpu_workers_up() is False
    fleet.forget_gpu_workers()


@pytest.mark.skipif("CUDAExecutionProvider" in ort.get_available_providers(), reason="this machine has CUDA")
def test_segment_speed_on_cuda_without_cuda_says_so_and_measures_nothing() -> None:
    done = subprocess.run(
        [sys.executable, "bench/segment_speed.py", "--device", "cuda"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )

    assert done.returncode != 0
    assert "has no CUDA provider" in done.stderr and "Nothing was measured" in done.stderr
    assert "scans per hour" not in done.stdout

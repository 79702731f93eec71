"""What docker/compose.yaml and docker/Dockerfile promise, read from the files (no Docker here):
scaling workers, a one-shot migrate that the services wait for, a TLS proxy as the only published
web entry, memory limits everywhere, a beat health check, MinIO, GPU and training profiles."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml

DOCKER = Path(__file__).resolve().parents[2] / "docker"


def _compose() -> dict[str, Any]:
    loaded = yaml.safe_load((DOCKER / "compose.yaml").read_text())
    assert isinstance(loaded, dict)
    return loaded


def test_only_the_tls_proxy_is_published_and_web_runs_gunicorn() -> None:
    services = _compose()["services"]
    published = {name for name, s in services.items() if s.get("ports")}
    assert published == {"proxy"}
    assert {p.split(":")[-1] for p in services["proxy"]["ports"]} == {"443", "80", "9443"}
    assert "./certs:/certs:ro" in services["proxy"]["volumes"]
    caddyfile = (DOCKER / "proxy" / "Caddyfile").read_text()
    assert "tls /certs/cert.pem /certs/key.pem" in caddyfile and "reverse_proxy web:8000" in caddyfile
    assert re.search(r":80 \{\s+redir https://", caddyfile)
    assert services["web"]["command"][0] == "gunicorn" and services["web"]["expose"] == ["8000"]


def test_migrations_run_once_in_a_service_the_others_wait_for() -> None:
    services = _compose()["services"]
    assert "migrate" in " ".join(services["migrate"]["command"])
    assert services["migrate"]["restart"] == "no"
    for name in ("web", "worker", "beat", "gpu-worker"):
        wait = services[name]["depends_on"]["migrate"]
        assert wait["condition"] == "service_completed_successfully", name
        assert "migrate" not in str(services[name].get("command", "")), name
    dockerfile = (DOCKER / "Dockerfile").read_text()
    assert "manage.py migrate" not in dockerfile


def test_every_service_has_a_memory_limit_and_beat_a_health_check() -> None:
    services = _compose()["services"]
    for name, service in services.items():
        limit = service.get("mem_limit") or service.get("deploy", {}).get("resources", {}).get("limits")
        assert limit, f"{name} has no memory limit"
    assert "healthcheck" in services["beat"] and "celerybeat-schedule" in str(services["beat"]["healthcheck"])


def test_workers_scale_and_s3_and_gpu_have_their_profiles() -> None:
    services = _compose()["services"]
    worker = services["worker"]
    assert "container_name" not in worker and not worker.get("ports"), "--scale worker=N needs both"
    assert "-Q" in worker["command"] and worker["command"][worker["command"].index("-Q") + 1] == "cpu"
    gpu = services["gpu-worker"]
    assert gpu["profiles"] == ["gpu"] and gpu["build"]["target"] == "gpu"
    assert gpu["command"][gpu["command"].index("-Q") + 1] == "gpu"
    assert services["minio"]["profiles"] == ["minio"] and services["minio-bucket"]["profiles"] == ["minio"]
    assert services["web"]["depends_on"]["minio-bucket"]["required"] is False
    dockerfile = (DOCKER / "Dockerfile").read_text()
    assert "FROM base AS gpu" in dockerfile and "requirements-gpu.txt" in dockerfile
    requirements = (DOCKER.parent / "requirements-gpu.txt").read_text()
    assert re.search(r"^onnxruntime-gpu\[cuda,cudnn\]==1\.22\.\*$", requirements, re.M)
    server = (DOCKER.parent / "requirements.txt").read_text()
    assert re.search(r"^onnxruntime==1\.22\.\*$", server, re.M), (
        "the GPU build follows the CPU build's version"
    )


def test_torch_is_only_in_the_training_image() -> None:
    """The retraining loop's worker serves the `train` queue from the one image built with
    requirements-train.txt; the server's and the GPU worker's requirements have no torch."""
    services = _compose()["services"]
    train = services["train-worker"]
    assert train["profiles"] == ["train"] and train["build"]["target"] == "train"
    assert train["command"][train["command"].index("-Q") + 1] == "train"
    assert train["mem_limit"]
    dockerfile = (DOCKER / "Dockerfile").read_text()
    stages = re.split(r"^FROM ", dockerfile, flags=re.M)
    with_torch = [
        stage.split()[2] for stage in stages[1:] if "pip install -r requirements-train.txt" in stage
    ]
    assert with_torch == ["train"]
    for name in ("requirements.txt", "requirements-gpu.txt"):
        assert not re.search(r"^torch", (DOCKER.parent / name).read_text(), re.M), name
